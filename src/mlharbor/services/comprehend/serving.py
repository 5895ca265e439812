"""The serving worker behind an endpoint, and the API side's client for it.

A worker keeps one recognizer model loaded and answers on a loopback TCP port it picks itself; it
announces ``{"address": "host:port", "ready": true}`` through its heartbeat, which the executor makes
visible to the API process (with Ray, the same progress record would carry a node address).

Wire format, both ways: frames of a 4-byte big-endian length and a JSON object. Request
``{"i": id, "t": [text, ...]}``; reply ``{"i": id, "e": [[[begin, end, type, score], ...], ...]}``,
``{"i": id, "error": "..."}`` or ``{"i": id, "throttled": "..."}`` (the worker holds its requests to its
share of the endpoint's inference units, ``capacity.py``). Replies may come in any order; ``i`` pairs
them with requests.

Batching: inference runs on the worker's event loop thread, so requests that arrive while a batch is
being computed wait in the socket buffers and are all read, then computed together, when it ends. Under
load, batches grow by themselves; a lone request is computed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from mlharbor.blobs.store import open_blob_store
from mlharbor.logs import setup_logging
from mlharbor.runtime import WorkContext
from mlharbor.runtime.memory import keep_freed_memory
from mlharbor.services.comprehend.capacity import Capacity
from mlharbor.services.comprehend.serving_client import frame, read_frame

log = logging.getLogger(__name__)

MAX_BATCH_DOCUMENTS = 32  # bounds the wait of the last request in a batch
HEARTBEAT_SECONDS = 5.0


# --- The worker -----------------------------------------------------------------------------------
def serve_worker(ctx: WorkContext, payload: dict[str, Any]) -> dict[str, Any]:
    keep_freed_memory()
    setup_logging(payload.get("log_format", "text"))
    from mlharbor.services.comprehend.training import load_model

    blobs = open_blob_store(payload["object_store"], Path(payload["data_dir"]))
    model = load_model(blobs, payload["artifact_uri"])
    model.predict(["Warm up the model before the first request."])  # first use allocates buffers
    capacity = None
    if payload.get("limits"):
        capacity = Capacity(payload["units"] / payload["workers"], payload["units"])
    asyncio.run(_serve(ctx, model, payload.get("host", "127.0.0.1"), capacity))
    return {"stopped": True}  # a server only ends when it is told to


async def _serve(ctx: WorkContext, model: Any, host: str, capacity: Capacity | None) -> None:
    queue: list[tuple[asyncio.StreamWriter, Any, list[str]]] = []
    arrived = asyncio.Event()
    writers: set[asyncio.StreamWriter] = set()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            while True:
                request = await read_frame(reader)
                texts = request.get("t") or []
                refused = capacity and capacity.admit(sum(map(len, texts)), max(1, len(texts)))
                if refused:
                    writer.write(frame({"i": request.get("i"), "throttled": refused}))
                    continue
                queue.append((writer, request.get("i"), texts))
                arrived.set()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass  # the client went away, or sent garbage: drop the connection
        except asyncio.CancelledError:
            pass  # shutting down; ending quietly keeps asyncio from logging the cancellation as an error
        finally:
            writers.discard(writer)
            writer.close()

    server = await asyncio.start_server(connection, host, 0)
    port = server.sockets[0].getsockname()[1]
    address = f"{host}:{port}"
    ctx.heartbeat({"address": address, "ready": True, "served": 0, "rate": 0.0})
    log.info("serving on %s", address)
    served, last_beat, served_at_beat = 0, time.monotonic(), 0
    async with server:
        while not ctx.stop_requested():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), 0.25)
            arrived.clear()
            if queue:
                batch = _take(queue)
                _answer(model, batch)
                served += sum(len(texts) for _, _, texts in batch)
                if queue:
                    arrived.set()
                await asyncio.sleep(0)  # let the readers collect what arrived meanwhile
            now = time.monotonic()
            if now - last_beat >= HEARTBEAT_SECONDS:
                # Documents served in all, and per second since the last beat (the console's throughput);
                # an idle worker's progress does not change, so its lease is not rewritten.
                rate = round((served - served_at_beat) / (now - last_beat), 1)
                ctx.heartbeat({"address": address, "ready": True, "served": served, "rate": rate})
                last_beat, served_at_beat = now, served
        for writer in list(writers):
            writer.close()


def _take(queue: list[tuple[asyncio.StreamWriter, Any, list[str]]]) -> list[Any]:
    taken, documents = 0, 0
    for _, _, texts in queue:
        if taken and documents + len(texts) > MAX_BATCH_DOCUMENTS:
            break
        taken += 1
        documents += len(texts)
    batch = queue[:taken]
    del queue[:taken]
    return batch


def _answer(model: Any, batch: list[tuple[asyncio.StreamWriter, Any, list[str]]]) -> None:
    texts = [text for _, _, request_texts in batch for text in request_texts]
    try:
        found = model.predict(texts, batch_size=max(1, len(texts)))
    except Exception as exc:  # a model failure answers the requests; the server keeps serving
        log.exception("inference failed")
        for writer, request_id, _ in batch:
            writer.write(frame({"i": request_id, "error": f"{type(exc).__name__}: {exc}"}))
        return
    position = 0
    for writer, request_id, request_texts in batch:
        entities = [
            [[span.start, span.end, span.label, span.score] for span in spans]
            for spans in found[position : position + len(request_texts)]
        ]
        position += len(request_texts)
        if not writer.is_closing():
            writer.write(frame({"i": request_id, "e": entities}))
