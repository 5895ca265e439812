"""Console sign-in: an access key and its secret from the server's credentials, remembered in a signed cookie.

The cookie holds the access key, the region and a fingerprint of the secret, signed with a secret every
server of the deployment shares (``server_state``), so any API server accepts it and a rotated secret ends
the sessions made with the old one. Nothing is kept per session on the server.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

from mlharbor.config import Credential

COOKIE = "mlharbor_console"
MAX_AGE_SECONDS = 12 * 3600
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class Who:
    """The signed-in user: every page and data call is scoped to (account_id, region)."""

    access_key_id: str
    account_id: str
    region: str


class Sessions:
    def __init__(self, credentials: dict[str, Credential], secret: bytes) -> None:
        self.credentials = credentials
        self.secret = secret
        self.serializer = URLSafeTimedSerializer(secret, salt="mlharbor-console-session")

    def sign_in(self, access_key_id: str, secret_access_key: str, region: str) -> str | None:
        """The cookie value for a correct key and secret, None otherwise (compared in constant time)."""
        credential = self.credentials.get(access_key_id)
        if credential is None or not hmac.compare_digest(
            credential.secret_access_key.encode(), secret_access_key.encode()
        ):
            return None
        return self.serializer.dumps([access_key_id, region, self._fingerprint(credential)])

    def who(self, token: str | None) -> Who | None:
        """The user a cookie names, or None when it is missing, altered, expired or its secret changed."""
        if not token:
            return None
        try:
            access_key_id, region, fingerprint = self.serializer.loads(token, max_age=MAX_AGE_SECONDS)
        except (BadSignature, ValueError, TypeError):
            return None
        credential = self.credentials.get(access_key_id)
        if credential is None or not hmac.compare_digest(str(fingerprint), self._fingerprint(credential)):
            return None
        return Who(access_key_id, credential.account_id, region)

    def _fingerprint(self, credential: Credential) -> str:
        """Names the secret without revealing it: keyed by the server's secret, so the cookie gives nothing
        to guess a weak secret offline with."""
        return hmac.new(self.secret, credential.secret_access_key.encode(), hashlib.sha256).hexdigest()[:32]
