"""The user's label detection model, taken to stream workers through the object store.

The user puts ``labels.onnx`` (and ``labels.json``) in ``<data-dir>/models/`` of the server. A worker may run
on another machine (another server, a Ray node), so it never reads that folder: the server that starts a
session publishes the model's files under a name made of their content hash,
``s3://<models_bucket>/rekognition/label-model/<sha256>/``, once, and the payload names that folder; the
worker copies it into a temporary folder and loads it from there.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from mlharbor.blobs.store import BlobStore

FILES = ("labels.onnx", "labels.json")  # engines/labels.py's MODEL_FILE and CLASSES_FILE


def publish(blobs: BlobStore, models_dir: Path, bucket: str) -> str | None:
    """The object-store folder holding the installed model, stored there if it was not; None without one."""
    present = [models_dir / name for name in FILES if (models_dir / name).is_file()]
    if not any(path.name == FILES[0] for path in present):
        return None
    digest = hashlib.sha256()
    for path in present:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    folder = f"s3://{bucket}/rekognition/label-model/{digest.hexdigest()}"
    for path in present:
        if not blobs.exists(f"{folder}/{path.name}"):
            blobs.put_file(f"{folder}/{path.name}", path)
    return folder


def fetch(blobs: BlobStore, folder: str | None) -> tempfile.TemporaryDirectory[str]:
    """A temporary models folder with the published model's files (empty without a model)."""
    local = tempfile.TemporaryDirectory(prefix="mlharbor-labels-")
    if folder is not None:
        for name in FILES:
            if blobs.exists(f"{folder}/{name}"):
                (Path(local.name) / name).write_bytes(blobs.get(f"{folder}/{name}"))
    return local
