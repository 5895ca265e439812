"""Opaque, tamper-proof pagination tokens.

A token is a signed JSON position. The signature's salt is the caller's scope (account, region,
operation), so a token cannot be edited, replayed by another account, or used on another list call.
The scope is not carried in the token itself: Rekognition caps tokens at 255 characters.
"""

from __future__ import annotations

from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer

from mlharbor.errors import BadPaginationToken


class Pager:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _serializer(self, scope: tuple[str, ...]) -> URLSafeSerializer:
        return URLSafeSerializer(self._secret, salt="mlharbor-page|" + "|".join(scope))

    def encode(self, scope: tuple[str, ...], position: dict[str, Any]) -> str:
        return self._serializer(scope).dumps(position)

    def decode(self, scope: tuple[str, ...], token: str) -> dict[str, Any]:
        try:
            data = self._serializer(scope).loads(token)
        except BadSignature:
            raise BadPaginationToken("Invalid Token") from None
        if not isinstance(data, dict):
            raise BadPaginationToken("Invalid Token")
        return data
