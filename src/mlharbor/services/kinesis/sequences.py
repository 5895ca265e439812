"""Sequence numbers: 56-digit decimal strings, as AWS's are, that name a shard and a record in it.

``49`` then the shard's index and the record's counter in fixed-width fields, so within a shard the
numbers grow with the counter (and string order is number order: they all have 56 digits). The counter
comes from the shard's row (records.put), so numbers only grow, also across restarts. A shard's
StartingSequenceNumber is its counter 0, before its first record.
"""

from __future__ import annotations

from mlharbor.errors import InvalidArgumentException

_BASE = 49 * 10**54
_SHARD_SPAN = 10**42  # counters below this; shard indexes below 10**12 (ShardIds have 12 digits)


def format(shard_index: int, counter: int) -> str:  # noqa: A001 - the module's verb, used as sequences.format
    return str(_BASE + shard_index * _SHARD_SPAN + counter)


def base(shard_index: int) -> int:
    """The number of the shard's counter 0: ``str(base(s) + n) == format(s, n)``, for formatting many."""
    return _BASE + shard_index * _SHARD_SPAN


def parse(value: str, shard_index: int, where: str) -> int:
    """The counter of a sequence number given for shard ``shard_index``; InvalidArgumentException (AWS's
    wording) when it is not one of this shard's."""
    number = int(value)  # the model's pattern admits only decimal digits
    offset = number - _BASE
    if offset < 0 or offset // _SHARD_SPAN != shard_index:
        raise InvalidArgumentException(
            f"StartingSequenceNumber {value} used in GetShardIterator on shard {where} is invalid because it "
            "did not come from this stream."
        )
    return offset % _SHARD_SPAN
