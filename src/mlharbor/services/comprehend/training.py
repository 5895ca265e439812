"""Recognizer training: the worker that trains, and the reconcile pass that schedules and repairs it.

Desired state lives in the database (a Stop moves the row to STOP_REQUESTED). The worker reads it
between batches and writes the actual outcome; the reconcile pass starts queued work, finishes stops
of work that is not running, retries work a crash interrupted, and removes deleted recognizers.
"""

from __future__ import annotations

import io
import logging
import math
import random
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from mlharbor.blobs.store import BlobStore, open_blob_store
from mlharbor.runtime import WorkContext
from mlharbor.services import attempts
from mlharbor.services.attempts import Fence, with_details
from mlharbor.services.comprehend import recognizers as er
from mlharbor.store.db import Store
from mlharbor.store.tables import entity_recognizers as table

log = logging.getLogger(__name__)

# Dev F1 on real, noisy text keeps creeping up for many epochs after a plateau (measured on WNUT-2016);
# an epoch is cheap, so wait longer than the engine's default before giving up.
MAX_EPOCHS = 60
PATIENCE = 8
DROPOUT = 0.1  # spaCy's default training config uses 0.1


def _note(store: Store, arn: str, fence: Fence, message: str, curve: dict[str, Any] | None = None) -> None:
    """Progress text in Message while training, with the training curve so far (the console draws it,
    Describe does not show it); not a state change, so the version is left alone."""
    with store.begin() as conn:
        conn.execute(
            update(table)
            .where(table.c.arn == arn, table.c.status == "TRAINING", fence.clause(table))
            .values(message=message, curve=curve)
        )


def curve_of(points: list[list[float]], best_epoch: int, attempt: int) -> dict[str, Any]:
    """The ``curve`` column: dev F1 (0..1) per epoch, ``[[epoch, f1], ...]``, the best epoch so far, and the
    attempt that drew it (a retried attempt starts a fresh curve)."""
    return {"epochs": [list(point) for point in points], "best_epoch": best_epoch, "attempt": attempt}


# --- The worker -----------------------------------------------------------------------------------
def train_worker(ctx: WorkContext, payload: dict[str, Any]) -> dict[str, Any]:
    return attempts.run_worker(ctx, payload, _train)


def _train(ctx: WorkContext, store: Store, payload: dict[str, Any]) -> dict[str, Any]:
    arn, fence = payload["arn"], Fence.from_payload(payload)
    with store.read() as conn:
        row = conn.execute(select(table).where(table.c.arn == arn)).first()
    if not fence.holds(row):
        return {"stopped": False, "skipped": True}
    if row.status == "SUBMITTED":
        state = er.move(
            store, arn, {"SUBMITTED": "TRAINING"}, fence=fence, curve=None,
            message="Loading training data", details=with_details(TrainingStartTime=time.time()),
        )  # fmt: skip
    else:
        state = row.status  # TRAINING again after a crash: the row already says so
        if row.curve is not None:  # a new attempt trains from the start: its curve too
            _note(store, arn, fence, row.message or "Loading training data", curve=None)
    if state != "TRAINING":
        er.finish_stop(store, arn, fence)  # stopped before it started
        return {"stopped": True}

    from mlharbor.services.comprehend.datasets import DataError, load_dataset

    spec = row.spec
    stop = attempts.StopWatch(ctx, store, table, arn, fence, "TRAINING")
    blobs = open_blob_store(payload["object_store"], Path(payload["data_dir"]))
    try:
        dataset = load_dataset(blobs, spec["InputDataConfig"], spec["LanguageCode"])
    except DataError as exc:
        er.fail(store, arn, str(exc), fence)
        return {"stopped": False}
    if stop():  # every phase boundary is a place to honour a stop quickly
        er.finish_stop(store, arn, fence)
        return {"stopped": True}
    # Imported here, after the row says TRAINING and the data is known good: spaCy takes a second.
    from mlharbor.engines import ner

    if stop():
        er.finish_stop(store, arn, fence)
        return {"stopped": True}

    rng = random.Random(arn)
    train_docs, test_docs = _hold_out(dataset.train, dataset.test, rng)
    fit_docs, dev_docs = _hold_out(train_docs, None, rng)

    points: list[list[float]] = []  # this attempt's curve, written whole with every epoch's Message

    def on_epoch(report: Any) -> None:
        text = (
            f"Training: epoch {report.epoch}, dev F1 {report.dev_f1 * 100:.1f} "
            f"(best {report.best_f1 * 100:.1f} at epoch {report.best_epoch})"
        )
        log.info("%s %s", arn, text)
        ctx.heartbeat({"epoch": report.epoch, "dev_f1": report.dev_f1})
        points.append([report.epoch, round(report.dev_f1, 4)])
        _note(store, arn, fence, text, curve_of(points, report.best_epoch, fence.attempt))

    types = [t["Type"] for t in spec["InputDataConfig"]["EntityTypes"]]
    result = ner.train(
        fit_docs, dev_docs, language=spec["LanguageCode"], labels=types, should_stop=stop, on_epoch=on_epoch,
        max_epochs=MAX_EPOCHS, patience=PATIENCE, dropout=DROPOUT,
    )  # fmt: skip
    if result.stopped or result.model is None:
        er.finish_stop(store, arn, fence)
        return {"stopped": True}

    evaluation = ner.evaluate(result.model, test_docs)
    artifact = payload["artifact_uri"]
    _store_model(blobs, artifact, result.model)
    warnings = list(dataset.warnings)
    if result.alignment.adjusted:
        warnings.append(
            f"{result.alignment.adjusted} annotation(s) did not fall on token boundaries "
            "and were widened to whole tokens"
        )
    if result.alignment.dropped:
        warnings.append(
            f"{result.alignment.dropped} annotation(s) could not be placed on tokens and were skipped"
        )
    metadata = _metadata(types, len(train_docs), len(test_docs), evaluation, dataset.train_mentions)
    ended = time.time()
    # Completion wins over a stop that arrived too late to interrupt training, as AWS documents.
    final = "TRAINED_WITH_WARNING" if warnings else "TRAINED"
    moved = er.move(
        store, arn, {"TRAINING": final, "STOP_REQUESTED": final}, fence=fence,
        message="; ".join(warnings) or None, artifact_uri=artifact,
        details=with_details(
            RecognizerMetadata=metadata, TrainingEndTime=ended, EndTime=ended, BestEpoch=result.best_epoch,
        ),
    )  # fmt: skip
    if moved is None:  # deleted or superseded meanwhile: do not leave the artifact behind
        blobs.delete(artifact)
    return {"stopped": False, "f1": evaluation.overall.f1}


def _hold_out(docs: list[Any], given: list[Any] | None, rng: random.Random) -> tuple[list[Any], list[Any]]:
    """Without a given test set AWS keeps 10% of the documents aside; we do the same (at least one)."""
    if given is not None:
        return list(docs), list(given)
    shuffled = list(docs)
    rng.shuffle(shuffled)
    count = max(1, math.ceil(len(shuffled) * 0.1)) if len(shuffled) > 1 else 0
    return shuffled[count:], shuffled[:count]


def _metadata(types: list[str], trained: int, tested: int, evaluation: Any, mentions: dict[str, int]) -> dict:
    def scaled(scores: Any) -> dict[str, float]:
        # Plain-text recognizers report on a 0-100 scale.
        return {
            "Precision": round(scores.precision * 100, 2),
            "Recall": round(scores.recall * 100, 2),
            "F1Score": round(scores.f1 * 100, 2),
        }

    per_type = []
    for name in types:
        entry: dict[str, Any] = {"Type": name, "NumberOfTrainMentions": mentions.get(name, 0)}
        if name in evaluation.per_type:
            entry["EvaluationMetrics"] = scaled(evaluation.per_type[name])
        per_type.append(entry)
    return {
        "NumberOfTrainedDocuments": trained,
        "NumberOfTestDocuments": tested,
        "EvaluationMetrics": scaled(evaluation.overall),
        "EntityTypes": per_type,
    }


def _store_model(blobs: BlobStore, uri: str, model: Any) -> None:
    with tempfile.TemporaryDirectory(prefix="mlharbor-model-") as tmp:
        model.save(Path(tmp) / "model")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            tar.add(Path(tmp) / "model", arcname="model")
        blobs.put(uri, buffer.getvalue())


def load_model(blobs: BlobStore, uri: str) -> Any:
    """The trained model behind a recognizer's artifact (used by inference and by tests)."""
    from mlharbor.engines import ner

    with tempfile.TemporaryDirectory(prefix="mlharbor-model-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(blobs.get(uri)), mode="r:gz") as tar:
            tar.extractall(tmp, filter="data")
        return ner.NerModel.load(Path(tmp) / "model")
