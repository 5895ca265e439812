"""The List* operations of Comprehend resources: one filter member, keyset pages, signed tokens.

Every list (recognizers, endpoints, detection jobs) pages on (time, arn) in the database, so a page costs
one indexed query however deep it is, and a token is the signed position of the last row returned.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Column, ColumnElement, Connection, Row, Select, Table, bindparam, select, tuple_

from mlharbor.context import Call
from mlharbor.errors import InvalidFilterException

DEFAULT_PAGE = 100


class Listing:
    """One resource's list query: this account's rows, optional filters, ordered by (time, arn)."""

    def __init__(
        self,
        table: Table,
        time_column: Column[Any],
        filters: dict[str, ColumnElement[bool]],
        newest_first: str | None = None,
    ) -> None:
        """``filters`` maps API filter members to conditions with a bind parameter of the same name;
        ``newest_first`` names the filter member with which the API documents descending order."""
        self.table, self.time_column, self.filters, self.newest_first = (
            table,
            time_column,
            filters,
            newest_first,
        )
        self._owner = (table.c.account_id == bindparam("account_id")) & (
            table.c.region == bindparam("region")
        )
        # Statements are built once per filter combination: building a select cost more than running it.
        self._statements: dict[tuple[tuple[str, ...], bool], Select[Any]] = {}

    def _statement(self, names: tuple[str, ...], paged: bool) -> Select[Any]:
        statement = self._statements.get((names, paged))
        if statement is None:
            query = select(self.table).where(self._owner, *(self.filters[name] for name in names))
            descending = self.newest_first in names
            key = tuple_(self.time_column, self.table.c.arn)
            if paged:
                after = tuple_(bindparam("after_t"), bindparam("after_a"))
                query = query.where(key < after if descending else key > after)
            order = (
                (self.time_column.desc(), self.table.c.arn.desc())
                if descending
                else (self.time_column, self.table.c.arn)
            )
            statement = self._statements[(names, paged)] = query.order_by(*order).limit(bindparam("limit"))
        return statement

    def rows(
        self,
        conn: Connection,
        account_id: str,
        region: str,
        filters: dict[str, Any],
        after: tuple[float, str] | None,
        limit: int,
    ) -> list[Row[Any]]:
        values: dict[str, Any] = {"account_id": account_id, "region": region, "limit": limit}
        for name, value in filters.items():
            values[name] = value.timestamp() if isinstance(value, datetime) else value
        if after is not None:
            values.update(after_t=after[0], after_a=after[1])
        return conn.execute(self._statement(tuple(sorted(filters)), after is not None), values).all()

    def respond(
        self, call: Call, params: dict[str, Any], member: str, describe: Callable[[Row[Any]], dict[str, Any]]
    ) -> dict[str, Any]:
        """The whole List* operation: ``{member: [...], "NextToken": ...}``."""
        filters = params.get("Filter", {})
        if len(filters) > 1:
            raise InvalidFilterException("Only one filter member can be specified at a time.")
        limit = params.get("MaxResults", DEFAULT_PAGE)
        after = None
        if "NextToken" in params:
            position = call.server.pager.decode(call.page_scope(), params["NextToken"])
            after = (float(position["t"]), str(position["a"]))
        with call.store.read() as conn:
            rows = self.rows(conn, call.account_id, call.region, filters, after, limit + 1)
        result: dict[str, Any] = {member: [describe(row) for row in rows[:limit]]}
        if len(rows) > limit:
            last = rows[limit - 1]
            position = {"t": getattr(last, self.time_column.name), "a": last.arn}
            result["NextToken"] = call.server.pager.encode(call.page_scope(), position)
        return result
