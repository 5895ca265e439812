"""The Kinesis retention pass: trims records past their stream's retention period, and finishes
DeleteStream (a DELETING stream's records, then its shards and the stream itself).

Readers never see an expired record (GetRecords compares arrival times with the retention), so trimming
only reclaims space; it goes in batches so that no transaction holds the database for long.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import delete, select

from mlharbor.context import Server
from mlharbor.services.kinesis import records
from mlharbor.store.tables import kinesis_records as records_table
from mlharbor.store.tables import kinesis_shards as shards_table
from mlharbor.store.tables import kinesis_streams as table

log = logging.getLogger(__name__)

BATCH = 5_000  # records per transaction


class RetentionPass:
    def __init__(self, server: Server) -> None:
        self.server = server

    def reconcile(self) -> None:
        now = time.time()
        with self.server.store.read() as conn:
            rows = conn.execute(select(table.c.stream_id, table.c.status, table.c.retention_hours)).all()
            shard_rows = conn.execute(select(shards_table.c.stream_id, shards_table.c.shard_index)).all()
        shards: dict[str, list[int]] = {}
        for stream_id, index in shard_rows:
            shards.setdefault(stream_id, []).append(index)
        for stream_id, status, hours in rows:
            gone = status == "DELETING"
            cutoff = None if gone else now - hours * 3600
            for shard in shards.get(stream_id, []):
                while True:
                    with self.server.store.begin() as conn:
                        deleted = records.trim(conn, stream_id, shard, cutoff, BATCH)
                    if deleted:
                        log.debug("kinesis retention: %d records of %s shard %d", deleted, stream_id, shard)
                    if deleted < BATCH:
                        break
            if gone:
                with self.server.store.begin() as conn:
                    # Shards first: a PutRecords that read the stream before it was deleted takes its
                    # sequence numbers from them, so once they are gone (and its transaction has committed,
                    # the shard rows' locks order it first) no record can be added; then what such a
                    # PutRecords left behind.
                    conn.execute(delete(shards_table).where(shards_table.c.stream_id == stream_id))
                    conn.execute(delete(records_table).where(records_table.c.stream_id == stream_id))
                    conn.execute(delete(table).where(table.c.stream_id == stream_id))
