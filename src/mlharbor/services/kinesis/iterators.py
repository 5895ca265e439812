"""Shard iterators: opaque, signed positions in a shard that expire five minutes after they are issued.

An iterator carries the stream's internal id (so one of a deleted stream never reads its re-created
namesake), the shard, the counter after which reading continues, and when it was issued. It is signed with
the pagination secret under the caller's account and region, so it cannot be forged or used by another
account. GetRecords hands out a fresh one each time, as AWS does. The lifetime is a setting
(``kinesis_iterator_lifetime_seconds``, AWS's 5 minutes by default).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from mlharbor.api.pagination import Pager
from mlharbor.errors import BadPaginationToken, ExpiredIteratorException, InvalidArgumentException


@dataclass(frozen=True, slots=True)
class Position:
    stream_id: str
    shard: int
    after: int  # read records whose counter is greater than this


def _scope(account_id: str, region: str) -> tuple[str, ...]:
    return (account_id, region, "kinesis-shard-iterator")


def issue(pager: Pager, account_id: str, region: str, position: Position) -> str:
    issued_ms = int(time.time() * 1000)
    return pager.encode(
        _scope(account_id, region),
        {"s": position.stream_id, "h": position.shard, "a": position.after, "t": issued_ms},  # fmt: skip
    )


def read(pager: Pager, account_id: str, region: str, token: str, lifetime_s: float) -> Position:
    try:
        data = pager.decode(_scope(account_id, region), token)
        position = Position(str(data["s"]), int(data["h"]), int(data["a"]))
        issued_ms = int(data["t"])
    except (BadPaginationToken, KeyError, TypeError, ValueError):
        raise InvalidArgumentException(f"Invalid ShardIterator: {token[:64]}") from None
    now_ms, lifetime_ms = int(time.time() * 1000), int(lifetime_s * 1000)
    if now_ms - issued_ms > lifetime_ms:
        raise ExpiredIteratorException(
            f"Iterator expired. The iterator was created at time {_clock(issued_ms)} while right now it is "
            f"{_clock(now_ms)} which is further in the future than the tolerated delay of {lifetime_ms} "
            "milliseconds."
        )
    return position


def _clock(ms: int) -> str:
    """The Java Date text AWS's message shows: ``Mon Nov 14 00:00:00 UTC 2016``."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%a %b %d %H:%M:%S UTC %Y")
