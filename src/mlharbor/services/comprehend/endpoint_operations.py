"""Recognizer endpoints and DetectEntities: one small function per AWS operation."""

from __future__ import annotations

from mlharbor.api.services import Handler

OPERATIONS: dict[str, Handler] = {}
