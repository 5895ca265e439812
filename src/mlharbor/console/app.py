"""The console's Starlette app: sign-in, static files, the operation call, and every page module's routes.

``mlharbor.app.Application`` hands it every request under /console/ that carries no AWS signature (a signed
request there is S3's: a bucket named "console").
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from mlharbor import errors
from mlharbor.api.services import Service
from mlharbor.api.throttle import Throttle
from mlharbor.config import Credential
from mlharbor.console import collections, endpoints, overview, processors, recognizers, videos
from mlharbor.console.invoke import Operations
from mlharbor.console.session import COOKIE, DEFAULT_REGION, MAX_AGE_SECONDS, Sessions, Who
from mlharbor.console.web import Console, action, console_of, error, render, signed_in
from mlharbor.context import Server

PAGE_MODULES = (overview, processors, videos, collections, recognizers, endpoints)
MAX_CALL_BYTES = 8 * 1024 * 1024  # a photo dropped for SearchFacesByImage (5 MB) in base64
MAX_FORM_BYTES = 16 * 1024  # the sign-in form
REGION = re.compile(r"^[a-z0-9-]{1,32}$")


class TooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused once it passes ``limit`` bytes (before reading more than that): the
    console's routes are not behind the gateway's body budget, and sign-in needs no session."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge
    return bytes(body)


def build_console(
    server: Server, services: dict[str, Service], credentials: dict[str, Credential], throttle: Throttle
) -> Starlette:
    console = Console(
        server=server,
        sessions=Sessions(credentials, server.store.server_secret("console-session")),
        operations=Operations(server, services, throttle),
    )
    routes: list[BaseRoute] = [
        Route("/console", lambda _: RedirectResponse("/console/", status_code=308)),
        Route("/console/login", login_page, methods=["GET"]),
        Route("/console/login", login, methods=["POST"]),
        Route("/console/logout", logout, methods=["POST"]),
        Route("/console/api/call/{service}/{operation}", action(call), methods=["POST"]),
        Mount("/console/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static"),
    ]
    for module in PAGE_MODULES:
        routes += module.ROUTES
    app = Starlette(routes=routes)
    app.state.console = console
    return app


async def login_page(request: Request) -> Response:
    if signed_in(request) is not None:
        return RedirectResponse(_next(request), status_code=303)
    return render(request, None, "login.html", next=_next(request), region=DEFAULT_REGION, failed=False)


async def login(request: Request) -> Response:
    # A urlencoded form (what the page sends); read directly rather than pulling in a multipart parser.
    try:
        body = await read_body(request, MAX_FORM_BYTES)
    except TooLarge:
        return error("RequestEntityTooLarge", "request too large", 413)
    form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
    key, secret = form.get("access_key_id", "").strip(), form.get("secret_access_key", "")
    region = (form.get("region", "") or DEFAULT_REGION).strip()
    target = _next(request, form.get("next", ""))
    token = console_of(request).sessions.sign_in(key, secret, region) if _region_ok(region) else None
    if token is None:
        response = render(request, None, "login.html", next=target, region=region, failed=True)
        response.status_code = 401
        return response
    response = RedirectResponse(target, status_code=303)
    secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
    response.set_cookie(
        COOKIE, token, max_age=MAX_AGE_SECONDS, httponly=True, samesite="strict", path="/console",
        secure=secure,
    )  # fmt: skip
    return response


async def logout(request: Request) -> Response:
    # Another site's form cannot sign the user out (browsers say where a request comes from).
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return error("Forbidden", "cross-site sign-out refused", 403)
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(COOKIE, path="/console")
    return response


async def call(request: Request, who: Who) -> Response:
    """POST /console/api/call/{service}/{operation} with the operation's JSON input: the API's answer."""
    try:
        body = await read_body(request, MAX_CALL_BYTES)
    except TooLarge:
        return error("RequestEntityTooLarge", "request too large", 413)
    try:
        params: Any = json.loads(body or b"{}")
    except ValueError:
        return error("SerializationException", "the body is not JSON")
    endpoint = f"{request.url.scheme}://{request.headers.get('host', '')}"
    try:
        result = await console_of(request).operations.invoke(
            who, request.path_params["service"], request.path_params["operation"], params, endpoint
        )
    except errors.AwsError as exc:
        return error(exc.code, exc.message, exc.status)
    return Response(json.dumps(result), media_type="application/json")


def _next(request: Request, given: str | None = None) -> str:
    target = given if given is not None else request.query_params.get("next", "")
    # Only a console path: never an open redirect to another site.
    return target if target.startswith("/console/") and not target.startswith("//") else "/console/"


def _region_ok(region: str) -> bool:
    return REGION.match(region) is not None
