"""Work ids: which kind of work, for which resource, which run of it.

A work id names one run of one piece of long work everywhere: the executor's handle (a local process, a
Ray actor's name), the lease row in the database, logs. It is structured, so nothing has to find its kind or
its resource by looking for substrings; ``str`` gives the text form and ``parse`` reads it back.
"""

from __future__ import annotations

from dataclasses import dataclass

SEPARATOR = "|"  # in no ARN, stream name or account id


@dataclass(frozen=True, order=True, slots=True)
class WorkId:
    kind: str  # the declared work kind ("training", "stream", ...)
    key: str  # the resource it works for (an ARN, a configured stream)
    run: str  # which run of it ("<incarnation>/attempt-2", "<incarnation>/gen-4/unit-0")

    def __post_init__(self) -> None:
        if SEPARATOR in self.kind or SEPARATOR in self.key:
            raise ValueError(f"a work id's kind and key may not contain {SEPARATOR!r}")

    def __str__(self) -> str:
        return f"{self.kind}{SEPARATOR}{self.key}{SEPARATOR}{self.run}"

    @classmethod
    def parse(cls, text: str) -> WorkId | None:
        """The work id ``text`` spells, or None for text no kind made."""
        parts = text.split(SEPARATOR, 2)
        if len(parts) != 3 or not all(parts):
            return None
        return cls(*parts)
