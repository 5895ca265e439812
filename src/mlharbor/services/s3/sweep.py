"""Removes what writers killed mid-write (kill -9, power cut) left in the local object store: temp files that
no reader ever sees, but that hold disk space (a half-uploaded 5 GB object).

A live writer adds bytes at least every ``request_body_idle_seconds`` (an upload that pauses longer is cut
off with RequestTimeout), so a temp file untouched for longer belongs to a writer that is gone. The first
pass runs when the server starts, then every ``INTERVAL`` seconds: each walks the whole store.
"""

from __future__ import annotations

import logging
import time

from mlharbor.context import Server

INTERVAL = 600.0
log = logging.getLogger("mlharbor.s3")


class TempSweep:
    def __init__(self, server: Server) -> None:
        self.server = server
        self._next = 0.0

    def reconcile(self) -> None:
        sweep = getattr(self.server.blobs, "sweep_temporary", None)
        if sweep is None or time.monotonic() < self._next:
            return  # only the local store writes temp files
        self._next = time.monotonic() + INTERVAL
        removed = sweep(max(2 * self.server.settings.request_body_idle_seconds, 1.0))
        if removed:
            log.info("removed %d temp files left by writers that died mid-write", removed)
