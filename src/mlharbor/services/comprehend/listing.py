"""The List* operations of Comprehend resources: one filter member, keyset pages, signed tokens.

Every list pages by keyset in the database, so a page costs one indexed query however deep it is, and a
token is the signed position of the last entry returned: the rows of a resource (recognizers, endpoints,
detection jobs) on (time, arn), the recognizer summaries (one per name) on the name. A resource created or
deleted between two pages therefore never shifts the next page: nothing is shown twice or skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from itertools import groupby
from typing import Any

from sqlalchemy import Column, ColumnElement, Connection, Row, Select, Table, bindparam, select, tuple_

from mlharbor.context import Call
from mlharbor.errors import BadPaginationToken, InvalidFilterException

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


class GroupedListing:
    """A list with one entry per distinct ``key`` (e.g. recognizer name) in key order, paged on the key.

    A page is two indexed queries: the next ``limit`` keys after the position (grouped in the index on
    (account, region, key), which stops at the limit), then the ``columns`` of those keys' rows only,
    ordered by ``order`` within each group.
    """

    def __init__(self, table: Table, key: Column[Any], columns: Sequence[Column[Any]], order: Column[Any]):
        self.key = key
        owner = (table.c.account_id == bindparam("account_id")) & (table.c.region == bindparam("region"))
        keys = select(key).where(owner).group_by(key).order_by(key).limit(bindparam("limit"))
        self._keys = {False: keys, True: keys.where(key > bindparam("after"))}
        self._members = (
            select(*columns)
            .where(owner, key.in_(bindparam("keys", expanding=True)))
            .order_by(key, order, table.c.arn)
        )

    def respond(
        self,
        call: Call,
        params: dict[str, Any],
        member: str,
        summarize: Callable[[list[Row[Any]]], dict[str, Any]],
    ) -> dict[str, Any]:
        """The whole List* operation: ``{member: [summarize(rows of one key), ...], "NextToken": ...}``."""
        limit = params.get("MaxResults", DEFAULT_PAGE)
        values: dict[str, Any] = {"account_id": call.account_id, "region": call.region, "limit": limit + 1}
        if "NextToken" in params:
            after = call.server.pager.decode(call.page_scope(), params["NextToken"]).get("k")
            if not isinstance(after, str):
                raise BadPaginationToken("Invalid Token")
            values["after"] = after
        with call.store.read() as conn:
            keys = conn.execute(self._keys["after" in values], values).scalars().all()
            page = keys[:limit]
            rows = conn.execute(self._members, {**values, "keys": page}).all() if page else []
        name = self.key.name
        result: dict[str, Any] = {
            member: [summarize(list(group)) for _, group in groupby(rows, key=lambda r: getattr(r, name))]
        }
        if len(keys) > limit:
            result["NextToken"] = call.server.pager.encode(call.page_scope(), {"k": page[-1]})
        return result
