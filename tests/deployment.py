"""What the tests (and bench/scale.py) of several servers and of the Ray runtime share: reading a processor's
records from MLHarbor's Kinesis, and finding the Ray node that runs a processor's worker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WORKER_PREFIX = "mlharbor-sp "  # a stream worker names its thread (on Ray, the actor's) this, then its name


class Records:
    """Everything put on one Kinesis stream so far (one shard), decoded; ``kinesis`` may be swapped for a
    client of another server (the iterator is valid on every server of a deployment)."""

    def __init__(self, kinesis: Any, name: str) -> None:
        self.kinesis, self.items = kinesis, []
        shard = kinesis.list_shards(StreamName=name)["Shards"][0]["ShardId"]
        self.iterator = kinesis.get_shard_iterator(
            StreamName=name, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]

    def read(self) -> list[dict[str, Any]]:
        response = self.kinesis.get_records(ShardIterator=self.iterator, Limit=1000)
        self.iterator = response["NextShardIterator"]
        self.items += [json.loads(r["Data"]) for r in response["Records"]]
        return self.items

    def after(self, moment: float) -> bool:
        """Whether a record of a frame the server received after ``moment`` (epoch seconds) arrived."""
        return any(r["InputInformation"]["KinesisVideo"]["ServerTimestamp"] > moment for r in self.read())


def worker_threads(pids: list[int], processor: str) -> list[Path]:
    """The threads among ``pids``' that run ``processor``'s stream worker (their /proc task folders)."""
    found = []
    for pid in pids:
        for comm in Path(f"/proc/{pid}/task").glob("*/comm"):
            try:
                thread = comm.read_text().strip()
            except OSError:
                continue
            if thread.startswith(WORKER_PREFIX) and processor.startswith(thread.removeprefix(WORKER_PREFIX)):
                found.append(comm.parent)
    return found


def node_of(cluster: Any, processor: str) -> str | None:
    """The Ray worker node (``tests.runtime.ray_cluster``) whose processes run the processor's worker."""
    return next(
        (name for name, node in cluster.workers.items() if worker_threads(node.pids(), processor)), None
    )
