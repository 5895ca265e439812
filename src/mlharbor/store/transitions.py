"""State machines as data, applied through one compare-and-set function.

Nothing else writes a ``status`` column. A transition names the state it expects to leave and the
row version it read; if another request got there first, the update matches no row and the caller
re-reads instead of producing an illegal state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, update
from sqlalchemy.sql import ColumnElement


class IllegalTransition(Exception):
    def __init__(self, machine: str, current: str, target: str) -> None:
        super().__init__(f"{machine}: {current} -> {target} is not allowed")
        self.current = current
        self.target = target


@dataclass(frozen=True)
class StateMachine:
    name: str
    initial: str
    # state -> states it may move to
    moves: Mapping[str, frozenset[str]]

    def __post_init__(self) -> None:
        unknown = {t for targets in self.moves.values() for t in targets} - set(self.moves)
        if unknown or self.initial not in self.moves:
            raise ValueError(f"{self.name}: states {sorted(unknown)} have no row in the table")

    def allows(self, current: str, target: str) -> bool:
        return target in self.moves.get(current, frozenset())


def machine(name: str, initial: str, table: Mapping[str, tuple[str, ...]]) -> StateMachine:
    return StateMachine(name, initial, {state: frozenset(targets) for state, targets in table.items()})


def transition(
    conn: Connection,
    table: Table,
    sm: StateMachine,
    where: ColumnElement[bool],
    *,
    current: str,
    version: int,
    target: str,
    **values: Any,
) -> bool:
    """Move one row from ``current`` (read at ``version``) to ``target``.

    Returns False when the row changed meanwhile (the caller re-reads).
    """
    if not sm.allows(current, target):
        raise IllegalTransition(sm.name, current, target)
    result = conn.execute(
        update(table)
        .where(where, table.c.status == current, table.c.version == version)
        .values(status=target, version=table.c.version + 1, **values)
    )
    return result.rowcount == 1
