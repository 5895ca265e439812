"""Per-shard write limits of PROVISIONED streams: 1,000 records and 1 MiB per second per shard, as AWS.

A token bucket per shard, refilled continuously, holding at most one second's worth (a burst). A record
that does not fit is refused with ProvisionedThroughputExceededException: PutRecord fails, PutRecords
reports it in that record's result and stores the others. ON_DEMAND streams are not limited here (AWS
scales their shards; MLHarbor has nothing to scale).

The buckets live in the server process: with several API servers a shard can take up to that many times
the limit (docs/COMPATIBILITY.md). Only throttling depends on this; records and sequence numbers are in
the database.
"""

from __future__ import annotations

import threading
import time

RECORDS_PER_SECOND = 1000.0
BYTES_PER_SECOND = 1024.0 * 1024.0


class _Bucket:
    __slots__ = ("records", "bytes", "at")

    def __init__(self, now: float) -> None:
        self.records, self.bytes, self.at = RECORDS_PER_SECOND, BYTES_PER_SECOND, now


class ShardLimits:
    def __init__(self) -> None:
        self._buckets: dict[tuple[str, int], _Bucket] = {}
        self._lock = threading.Lock()  # handlers run on the event loop and in threads

    def admit(self, stream_id: str, shard: int, size: int) -> bool:
        """Take one record of ``size`` bytes from the shard's allowance; False if it does not fit now."""
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.get((stream_id, shard))
            if bucket is None:
                bucket = self._buckets[(stream_id, shard)] = _Bucket(now)
            elapsed, bucket.at = now - bucket.at, now
            bucket.records = min(RECORDS_PER_SECOND, bucket.records + elapsed * RECORDS_PER_SECOND)
            bucket.bytes = min(BYTES_PER_SECOND, bucket.bytes + elapsed * BYTES_PER_SECOND)
            # A record bigger than a second's allowance (MaxRecordSizeInKiB allows 10 MiB) goes through when
            # the bucket is full and leaves it in debt, which later records wait out.
            if bucket.records < 1 or bucket.bytes < min(size, BYTES_PER_SECOND):
                return False
            bucket.records -= 1
            bucket.bytes -= size
            return True

    def forget(self, stream_id: str) -> None:
        with self._lock:
            for key in [k for k in self._buckets if k[0] == stream_id]:
                del self._buckets[key]
