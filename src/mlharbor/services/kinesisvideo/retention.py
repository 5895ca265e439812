"""The retention pass: deletes fragments past their stream's DataRetentionInHours, and those of deleted
streams.

Readers never see an expired fragment (every query compares ``expires_at`` with the time), so this pass
only reclaims space. It removes the index row first, then the object: a reader that found the row a moment
earlier may fail to read the object, which GetMedia reports like any vanished fragment; a crash in between
leaves an object no row names (see docs/ARCHITECTURE.md). Expiry is indexed, so a pass with nothing to do
costs one index probe.
"""

from __future__ import annotations

import logging
import time

from mlharbor.context import Server
from mlharbor.services.kinesisvideo import fragments

log = logging.getLogger(__name__)

BATCH = 500  # fragments per transaction; a pass repeats until none is left


class RetentionPass:
    def __init__(self, server: Server) -> None:
        self.server = server

    def reconcile(self) -> None:
        while True:
            now = time.time()
            with self.server.store.begin() as conn:
                batch = fragments.expired(conn, now, BATCH)
                for fragment in batch:
                    fragments.forget(conn, fragment)
            for fragment in batch:
                self.server.blobs.delete(fragment.blob_uri)
            if batch:
                log.debug("retention: deleted %d fragments", len(batch))
            if len(batch) < BATCH:
                return
