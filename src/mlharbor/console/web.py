"""What every console page shares: who is signed in, templates, paging, JSON answers.

A page handler is ``async def page(request, who) -> Response``, wrapped by ``page`` (HTML: an anonymous
visitor is sent to the sign-in page) or ``data`` (JSON: 401). ``request.state.console`` is the
``Console`` (server, sessions, operations). Pages read the store directly, always filtered on the signed-in
account and region; actions go through ``Console.operations`` (the API's own operations).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from mlharbor import __version__
from mlharbor.console.invoke import Operations
from mlharbor.console.session import COOKIE, Sessions, Who
from mlharbor.context import Server
from mlharbor.store.tables import s3_buckets

PAGE_SIZE = 50  # rows per page of a list: 1,000 resources stay 20 quick pages
# Data calls that change something must carry this header: a cross-site form or image cannot send it, so a
# signed-in browser cannot be made to act by another site (the cookie is SameSite=Strict as well).
ACTION_HEADER = "x-mlharbor-console"
# A block of a page refreshing itself (console.js, data-refresh) names its id here, so the page can skip
# work that only other blocks show.
REFRESH_HEADER = "x-mlharbor-refresh"

Handler = Callable[[Request, Who], Awaitable[Response]]


@dataclass
class Console:
    server: Server
    sessions: Sessions
    operations: Operations


def console_of(request: Request) -> Console:
    return request.app.state.console


def signed_in(request: Request) -> Who | None:
    return console_of(request).sessions.who(request.cookies.get(COOKIE))


def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """An HTML page: only for a signed-in user; others are sent to sign in, and come back after."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        who = signed_in(request)
        if who is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/console/login?next={_quote(target)}", status_code=303)
        response = await handler(request, who)
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    return wrapped


def data(handler: Handler, action: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """A JSON (or media) call from a console page: 401 without a session; an action also needs the header."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        who = signed_in(request)
        if who is None:
            return JSONResponse({"code": "NotSignedIn", "message": "Sign in to the console"}, status_code=401)
        if action and request.headers.get(ACTION_HEADER) != "1":
            return JSONResponse({"code": "Forbidden", "message": f"missing {ACTION_HEADER}"}, status_code=403)
        response = await handler(request, who)
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    return wrapped


def action(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    return data(handler, action=True)


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="/")


# --- Templates ---------------------------------------------------------------------------------------------
def _when(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(epoch: float | None) -> str:
    if epoch is None:
        return ""
    seconds = max(0, int(time.time() - epoch))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


templates = Environment(
    loader=PackageLoader("mlharbor.console", "templates"),
    autoescape=select_autoescape(["html", "svg"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters["when"] = _when
templates.filters["ago"] = _ago
templates.globals["version"] = __version__

NAV = (
    ("overview", "Overview", "/console/"),
    ("processors", "Stream processors", "/console/processors"),
    ("videos", "Video streams", "/console/videos"),
    ("collections", "Face collections", "/console/collections"),
    ("recognizers", "Entity recognizers", "/console/recognizers"),
    ("endpoints", "Endpoints & jobs", "/console/endpoints"),
)


def render(
    request: Request, who: Who | None, template: str, section: str = "", **context: Any
) -> HTMLResponse:
    html = templates.get_template(template).render(
        who=who, nav=NAV, section=section, path=request.url.path, **context
    )
    return HTMLResponse(html)


def error(code: str, message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


def readable_buckets(conn: Any, server: Server, who: Who, names: set[str]) -> set[str]:
    """Those of ``names`` whose objects the console may show the signed-in account: its own buckets
    (``s3_buckets``), never MLHarbor's own (a processor or job may name any bucket as its destination)."""
    settings = server.settings
    names = names - {settings.models_bucket, settings.video_bucket, settings.uploads_bucket}
    if not names:
        return set()
    buckets = s3_buckets
    query = select(buckets.c.name).where(
        buckets.c.name.in_(sorted(names)), buckets.c.account_id == who.account_id
    )
    return set(conn.execute(query).scalars())


@dataclass(frozen=True)
class Paging:
    """``?page=N`` (1-based) of a list of PAGE_SIZE rows; ``more`` is known by reading one row extra."""

    number: int
    size: int = PAGE_SIZE

    @classmethod
    def of(cls, request: Request) -> Paging:
        try:
            number = int(request.query_params.get("page", "1"))
        except ValueError:
            number = 1
        return cls(max(1, min(number, 100_000)))

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.size

    @property
    def limit(self) -> int:
        return self.size + 1  # one more tells whether there is a next page

    def split(self, rows: list[Any]) -> tuple[list[Any], bool]:
        return rows[: self.size], len(rows) > self.size
