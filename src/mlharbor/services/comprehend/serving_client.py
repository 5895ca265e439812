"""The API side of serving workers: the wire format (see ``serving.py``) and multiplexed connections to the
workers, which may run on any machine (their addresses come from the database)."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

_HEADER = 4

Entities = list[list[Any]]  # per document: [begin, end, type, score]


def frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    return len(body).to_bytes(_HEADER, "big") + body


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    size = int.from_bytes(await reader.readexactly(_HEADER), "big")
    return json.loads(await reader.readexactly(size))


class WorkerGone(Exception):
    """The connection to a serving worker failed; the request can be tried on another one."""


class Throttled(Exception):
    """The worker refused the request: the endpoint's inference units are used up."""


class WorkerConnection:
    """One multiplexed connection to a serving worker: many requests in flight, replies matched by id."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.in_flight = 0
        self._ids = itertools.count()
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._opening: asyncio.Lock = asyncio.Lock()
        self.closed = False

    async def _open(self) -> asyncio.StreamWriter:
        async with self._opening:
            if self._writer is None:
                host, port = self.address.rsplit(":", 1)
                try:
                    reader, self._writer = await asyncio.open_connection(host, int(port))
                except OSError as exc:
                    self.closed = True
                    raise WorkerGone(str(exc)) from exc
                self._reader_task = asyncio.create_task(self._read_replies(reader))
            return self._writer

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                reply = await read_frame(reader)
                future = self._waiting.pop(reply.get("i"), None)
                if future is not None and not future.done():
                    future.set_result(reply)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            self._fail(WorkerGone(f"connection to {self.address} lost: {exc!r}"))
        except asyncio.CancelledError:
            self._fail(WorkerGone("connection closed"))
            raise

    def _fail(self, exc: Exception) -> None:
        self.closed = True
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(exc)
        self._waiting.clear()

    async def infer(self, texts: list[str]) -> Entities:
        if self.closed:
            raise WorkerGone("connection closed")
        writer = await self._open()
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        self.in_flight += 1
        try:
            writer.write(frame({"i": request_id, "t": texts}))
            reply = await future
        except (ConnectionError, RuntimeError) as exc:
            self._fail(WorkerGone(str(exc)))
            raise WorkerGone(str(exc)) from exc
        finally:
            self.in_flight -= 1
            self._waiting.pop(request_id, None)
        if "throttled" in reply:
            raise Throttled(reply["throttled"])
        if "error" in reply:
            raise RuntimeError(f"inference failed: {reply['error']}")
        return reply["e"]

    def close(self) -> None:
        self.closed = True
        if self._reader_task is not None:
            self._reader_task.cancel()
        if self._writer is not None:
            self._writer.close()


class WorkerPool:
    """The API process's connections to serving workers, keyed by address (one event loop owns them)."""

    def __init__(self) -> None:
        self._connections: dict[str, WorkerConnection] = {}

    def connection(self, addresses: list[str]) -> WorkerConnection:
        """The least busy open connection among ``addresses`` (opened lazily)."""
        best: WorkerConnection | None = None
        for address in addresses:
            conn = self._connections.get(address)
            if conn is None or conn.closed:
                conn = self._connections[address] = WorkerConnection(address)
            if best is None or conn.in_flight < best.in_flight:
                best = conn
        assert best is not None
        return best
