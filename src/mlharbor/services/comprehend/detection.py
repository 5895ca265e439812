"""Entities detection jobs: the worker that runs a recognizer over S3 input, and the reconcile pass.

Desired state lives in the database (StopEntitiesDetectionJob moves the row to STOP_REQUESTED). The
worker streams the input, runs the recognizer in big batches, looks for a stop between batches and
writes the output once, at the end, so a retried attempt simply writes it again. The reconcile pass
starts queued jobs when a slot is free, finishes stops of jobs that have no worker, and retries jobs a
crash interrupted.

Input (``InputDataConfig.S3Uri``): every object whose key starts with the URI's key (a single object
is just the case of one match), sorted by key; "folder/" marker objects are skipped. ONE_DOC_PER_LINE
splits each object on LF, CR or CRLF (AWS's documented line ends; Line counts from 0) and
ONE_DOC_PER_FILE makes each object one document. A leading UTF-8 byte-order mark is dropped.

Output: ``<OutputDataConfig.S3Uri>/<account>-NER-<job id>/output/output.tar.gz``, a gzip tar with one
member, ``output``: JSON Lines, one object per input document, in input order::

    {"File": "docs.txt", "Line": 0, "Entities": [{"BeginOffset": 0, "EndOffset": 5, "Score": 0.99,
     "Text": "Maria", "Type": "PERSON"}]}

Offsets are code-point indices into the document (Python ``str`` indices), EndOffset exclusive. A
document that cannot be processed gets ``ErrorCode``/``ErrorMessage`` instead of ``Entities`` and the job
still completes: ``DOCUMENT_SIZE_EXCEEDED`` (over 1,000,000 bytes of UTF-8, AWS's limit for custom
models) or ``INVALID_ENCODING`` (not UTF-8).
"""

from __future__ import annotations

import json
import logging
import re
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from botocore.exceptions import ClientError
from sqlalchemy import Row, select, update

from mlharbor.blobs.store import (
    BlobConflict,
    BlobNotFound,
    BlobStore,
    InvalidS3Uri,
    ObjectInfo,
    S3Uri,
    open_blob_store,
)
from mlharbor.runtime import WorkContext
from mlharbor.services import attempts
from mlharbor.services.attempts import Fence, with_details
from mlharbor.services.comprehend import jobs
from mlharbor.services.comprehend import recognizers as er
from mlharbor.store.db import Store
from mlharbor.store.tables import entities_detection_jobs as table
from mlharbor.store.tables import entity_recognizers

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 0.5
# A batch closes at this many documents or characters, whichever comes first. Measured: a batch of a few
# hundred short documents keeps spaCy's matrix work efficient, while the scored parse slows down when one
# batch holds much more than ~16K characters (its arrays outgrow the CPU caches: 256 one-KB documents ran
# 40% slower than 16). The budget also bounds memory and the time until a stop is seen.
BATCH_DOCUMENTS = 512
BATCH_CHARACTERS = 16 * 1024
MAX_DOCUMENT_BYTES = 1_000_000  # AWS's per-document limit for custom models on asynchronous jobs
READ_CHUNK = 1024 * 1024
GZIP_LEVEL = 1  # JSON Lines: level 1 compresses ~220 MB/s (level 6: ~60) to a 16% larger archive

_BREAK = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"
_ENCODE = json.JSONEncoder(ensure_ascii=False, check_circular=False, separators=(",", ":")).encode


class InputError(Exception):
    """The job's input cannot be used; ``str(exc)`` is the job's Message."""


# --- State changes shared by the worker and the reconcile pass ------------------------------------
# --- The worker -----------------------------------------------------------------------------------
def detect_worker(ctx: WorkContext, payload: dict[str, Any]) -> dict[str, Any]:
    return attempts.run_worker(ctx, payload, _detect)


def _detect(ctx: WorkContext, store: Store, payload: dict[str, Any]) -> dict[str, Any]:
    arn, fence = payload["arn"], Fence.from_payload(payload)
    with store.read() as conn:
        row = jobs.row(conn, arn)
    if not fence.holds(row):
        return {"stopped": False, "skipped": True}
    if row.status == "SUBMITTED":
        state = jobs.move(store, arn, {"SUBMITTED": "IN_PROGRESS"}, fence=fence)
    else:
        state = row.status  # IN_PROGRESS again after a crash: the row already says so
    if state != "IN_PROGRESS":
        jobs.finish_stop(store, arn, fence)  # stopped before it started
        return {"stopped": True}

    started, cpu_started = time.monotonic(), time.process_time()
    stop = attempts.StopWatch(ctx, store, table, arn, fence, "IN_PROGRESS")
    blobs = open_blob_store(payload["object_store"], Path(payload["data_dir"]))
    spec = row.spec
    input_config = spec["InputDataConfig"]
    per_line = input_config.get("InputFormat", "ONE_DOC_PER_LINE") == "ONE_DOC_PER_LINE"
    try:
        recognizer = _recognizer(store, row)
        objects = _input_objects(blobs, input_config["S3Uri"])
    except InputError as exc:
        jobs.fail(store, arn, str(exc), fence)
        return {"stopped": False}
    if stop():
        return _stopped(store, blobs, row, fence)

    from mlharbor.services.comprehend.training import load_model

    loading = time.monotonic()
    try:
        model = load_model(blobs, recognizer.artifact_uri)
    except (BlobNotFound, OSError, ValueError, tarfile.TarError) as exc:
        jobs.fail(store, arn, f"The recognizer's model could not be loaded: {exc}", fence)
        return {"stopped": False}
    loaded = time.monotonic()
    if stop():
        return _stopped(store, blobs, row, fence)

    with tempfile.TemporaryDirectory(prefix="mlharbor-job-") as tmp:
        results = Path(tmp) / "output"
        try:
            with results.open("wb", buffering=READ_CHUNK) as out:
                documents_in = _documents(blobs, input_config["S3Uri"], objects, per_line)
                counts = _run(model, documents_in, out, stop, _Progress(ctx, store, arn, fence))
        except InputError as exc:
            jobs.fail(store, arn, str(exc), fence)
            return {"stopped": False}
        documents, errors, stopped = counts
        if stopped:
            return _stopped(store, blobs, row, fence, results, documents)
        _write_archive(blobs, results, _output(row), Path(tmp) / "output.tar.gz")
    seconds = time.monotonic() - started
    log.info(
        "%s: %d document(s) in %.1f s (%.0f documents/s; model loaded in %.2f s; %.1f CPU s)",
        arn, documents, seconds, documents / max(seconds, 1e-9), loaded - loading,
        time.process_time() - cpu_started,
    )  # fmt: skip
    message = (
        f"{errors} document(s) could not be processed; their output lines carry ErrorCode and ErrorMessage."
        if errors
        else None
    )
    # Completion wins over a stop that arrived after the last batch, as AWS documents.
    jobs.move(
        store, arn, {"IN_PROGRESS": "COMPLETED", "STOP_REQUESTED": "COMPLETED"}, fence=fence,
        message=message, end_time=round(time.time(), 3),
        details=with_details(DocumentsProcessed=documents, DocumentErrors=errors),
    )  # fmt: skip
    return {"stopped": False, "documents": documents}


def _stopped(
    store: Store,
    blobs: BlobStore,
    row: Row[Any],
    fence: Fence,
    results: Path | None = None,
    documents: int = 0,
) -> dict[str, Any]:
    """The worker saw a stop. Only a stop the user asked for ends the job STOPPED, with the documents
    processed so far written out (none, with ``results`` None: stopped before the first batch). A stop
    because the server went away, or because a newer attempt took over, leaves the row to the reconcile
    pass."""
    with store.read() as conn:
        current = jobs.row(conn, row.arn)
    if not fence.holds(current) or current.status != "STOP_REQUESTED":
        return {"stopped": True}
    with tempfile.TemporaryDirectory(prefix="mlharbor-job-") as tmp:
        if results is None:
            results = Path(tmp) / "output"
            results.write_bytes(b"")
        _write_archive(blobs, results, _output(row), Path(tmp) / "output.tar.gz")
    jobs.finish_stop(store, row.arn, fence, documents)
    return {"stopped": True}


def _output(row: Row[Any]) -> str:
    return jobs.output_uri(row.spec["OutputDataConfig"]["S3Uri"], row.account_id, row.job_id)


def _recognizer(store: Store, job: Row[Any]) -> Row[Any]:
    with store.read() as conn:
        recognizer = conn.execute(
            select(entity_recognizers).where(
                entity_recognizers.c.arn == job.recognizer_arn,
                entity_recognizers.c.account_id == job.account_id,
                entity_recognizers.c.region == job.region,
            )
        ).first()
    if recognizer is None or recognizer.status not in er.TRAINED or not recognizer.artifact_uri:
        state = "gone" if recognizer is None else recognizer.status
        raise InputError(f"The entity recognizer {job.recognizer_arn} is {state}; it must be trained.")
    return recognizer


# --- Input ----------------------------------------------------------------------------------------
def _input_objects(blobs: BlobStore, uri: str) -> list[ObjectInfo]:
    """Every object whose key starts with the URI's key, sorted by key (AWS: "if more than one file
    begins with the prefix, Amazon Comprehend uses all of them")."""
    try:
        infos = [i for i in blobs.list(uri) if not i.key.endswith("/")]
    except InvalidS3Uri as exc:
        raise InputError(f"The input S3Uri {uri} is not valid: {exc}.") from None
    except ClientError as exc:
        raise _client_error(uri, exc) from None
    if not infos:
        raise InputError(f"No input documents found at {uri}: there is no object with that key or prefix.")
    if not any(i.size for i in infos):
        raise InputError(f"The input at {uri} is empty: every object under it has 0 bytes.")
    return infos


def _client_error(uri: str, exc: ClientError) -> Exception:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    if 400 <= int(status) < 500:  # the input's fault (no access, no bucket); 5xx is ours to retry
        return InputError(f"Could not read {uri}: {error.get('Code', status)} ({error.get('Message', '')}).")
    return exc


def _file_name(prefix: str, key: str) -> str:
    """The File value of an output line: the key relative to the folder the prefix names (the base name
    when the URI names one object). ``in/`` and ``in`` both give ``a.txt`` for ``in/a.txt``; a partial
    name such as ``data/tr`` is taken relative to its folder, ``data/``."""
    if prefix.endswith("/"):
        folder = prefix
    elif key.startswith(prefix + "/"):
        folder = prefix + "/"
    else:
        folder = prefix.rpartition("/")[0]
        folder = folder + "/" if folder else ""
    return key[len(folder) :]


# A document: (file, line or None, text or None, (error code, message) or None).
_Document = tuple[str, int | None, str | None, tuple[str, str] | None]


def _documents(blobs: BlobStore, uri: str, objects: list[ObjectInfo], per_line: bool) -> Iterator[_Document]:
    prefix = S3Uri.parse(uri).key
    for info in objects:
        name = _file_name(prefix, info.key)
        try:
            if per_line:
                with blobs.open_read(info.uri) as stream:
                    yield from _line_documents(name, stream)
            elif info.size > MAX_DOCUMENT_BYTES:
                yield name, None, None, _too_big(info.size)
            else:
                yield _file_document(name, blobs.get(info.uri))
        except (BlobNotFound, BlobConflict, InvalidS3Uri):
            raise InputError(f"Could not read {info.uri}: the object does not exist any more.") from None
        except ClientError as exc:
            raise _client_error(str(info.uri), exc) from None


def _too_big(size: int | None) -> tuple[str, str]:
    """``size`` None: a line so long that it was skipped unread, only known to be over the limit."""
    told = f"{size:,} bytes" if size is not None else f"more than {MAX_DOCUMENT_BYTES:,} bytes"
    return (
        "DOCUMENT_SIZE_EXCEEDED",
        f"The document is {told}; a custom entity recognizer accepts at most "
        f"{MAX_DOCUMENT_BYTES:,} bytes of UTF-8 per document.",
    )


def _decode(data: bytes) -> tuple[str | None, tuple[str, str] | None]:
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return None, (
            "INVALID_ENCODING",
            f"The document is not valid UTF-8: byte 0x{data[exc.start]:02x} at byte offset {exc.start} "
            "cannot be decoded.",
        )


def _file_document(name: str, data: bytes) -> _Document:
    data = data.removeprefix(_BOM)
    if len(data) > MAX_DOCUMENT_BYTES:
        return name, None, None, _too_big(len(data))
    text, error = _decode(data)
    return name, None, text, error


def _line_documents(name: str, stream: BinaryIO) -> Iterator[_Document]:
    for number, raw in enumerate(_split_lines(stream)):
        if raw is None or len(raw) > MAX_DOCUMENT_BYTES:
            yield name, number, None, _too_big(None if raw is None else len(raw))
            continue
        text, error = _decode(raw.removeprefix(_BOM) if number == 0 else raw)
        yield name, number, text, error


def _split_lines(stream: BinaryIO) -> Iterator[bytes | None]:
    """The stream's lines (LF, CR or CRLF ends; no empty line after a final break), read in chunks.
    A line that grows past the document limit is not kept in memory: it is reported as None."""
    carry = b""
    oversized = False  # the line being read is already too long; its bytes are being skipped
    while True:
        chunk = stream.read(READ_CHUNK)
        if not chunk:
            break
        data = carry + chunk if carry else chunk
        hold = data.endswith(b"\r")  # perhaps the first half of a CRLF split across chunks
        if hold:
            data = data[:-1]
        parts = _BREAK.split(data)
        carry = parts.pop()
        for part in parts:
            if oversized:
                oversized = False
                yield None
            else:
                yield part
        if len(carry) > MAX_DOCUMENT_BYTES:
            oversized, carry = True, b""
        if hold:
            carry += b"\r"
    if carry.endswith(b"\r"):
        carry = carry[:-1]
        yield None if oversized else carry
    elif carry or oversized:
        yield None if oversized else carry


# --- Inference and output -------------------------------------------------------------------------
class _Progress:
    """Every half second: a heartbeat to the executor, and "Processed N documents" in the job's Message
    (not a state change, so the version is left alone)."""

    def __init__(self, ctx: WorkContext, store: Store, arn: str, fence: Fence) -> None:
        self.ctx, self.store, self.arn, self.fence = ctx, store, arn, fence
        self._next = time.monotonic() + HEARTBEAT_SECONDS

    def __call__(self, documents: int) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + HEARTBEAT_SECONDS
        self.ctx.heartbeat({"documents": documents})
        with self.store.begin() as conn:
            conn.execute(
                update(table)
                .where(table.c.arn == self.arn, table.c.status == "IN_PROGRESS", self.fence.clause(table))
                .values(message=f"Processed {documents} document(s)")
            )


def _run(
    model: Any, documents: Iterator[_Document], out: BinaryIO, stop: Any, progress: Any
) -> tuple[int, int, bool]:
    """Run the model over every document, writing one JSON line each. Returns (documents, documents
    with an error, stopped)."""
    processed = errors = 0
    batch: list[_Document] = []
    characters = 0
    exhausted = False
    while not exhausted:
        for document in documents:
            batch.append(document)
            if document[2] is not None:
                characters += len(document[2])
            if len(batch) >= BATCH_DOCUMENTS or characters >= BATCH_CHARACTERS:
                break
        else:
            exhausted = True
        if batch:
            errors += _write_batch(model, batch, out)
            processed += len(batch)
            batch, characters = [], 0
        progress(processed)
        if not exhausted and stop():
            return processed, errors, True
    return processed, errors, False


def _write_batch(model: Any, batch: list[_Document], out: BinaryIO) -> int:
    texts = [d[2] for d in batch if d[2] is not None]
    predictions = iter(model.predict_iter(texts, batch_size=max(1, len(texts))))
    lines = []
    errors = 0
    for file, line, text, error in batch:
        record: dict[str, Any] = {"File": file}
        if line is not None:
            record["Line"] = line
        if text is None:
            assert error is not None
            record["ErrorCode"], record["ErrorMessage"] = error
            errors += 1
        else:
            record["Entities"] = [
                {
                    "BeginOffset": span.start,
                    "EndOffset": span.end,
                    "Score": span.score,
                    "Text": text[span.start : span.end],
                    "Type": span.label,
                }
                for span in next(predictions)
            ]
        lines.append(_ENCODE(record))
    lines.append("")
    out.write("\n".join(lines).encode("utf-8"))
    return errors


def _write_archive(blobs: BlobStore, results: Path, uri: str, archive: Path) -> None:
    """Pack the JSON Lines into a gzip tar with one member named ``output`` and store it at ``uri``
    (one write: readers see no archive or the whole one)."""
    info = tarfile.TarInfo("output")
    info.size = results.stat().st_size
    info.mtime = int(time.time())
    info.mode = 0o644
    with tarfile.open(archive, "w:gz", compresslevel=GZIP_LEVEL) as tar, results.open("rb") as src:
        tar.addfile(info, src)
    blobs.put_file(uri, archive)
