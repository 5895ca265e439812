"""Rekognition face collections and face detection: one small function per AWS operation."""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from mlharbor import arns
from mlharbor.api.services import Handler, blocking
from mlharbor.context import Call
from mlharbor.engines.faces import MODEL_VERSION, THOROUGH_SIDE, Face, FaceEngine
from mlharbor.errors import (
    InvalidParameterException,
    ResourceAlreadyExistsException,
    ServiceQuotaExceededException,
)
from mlharbor.services import tags
from mlharbor.services.rekognition import collections as coll
from mlharbor.services.rekognition import face_details, images, tag_limits
from mlharbor.store.tables import face_collections as collections_table

MAX_FACES_CONSIDERED = 100  # AWS: IndexFaces and DetectFaces look at the 100 largest faces
MAX_MATCHES = 4096  # the model's MaxFaces limit; also the default (every match above the threshold)
DEFAULT_THRESHOLD = 80.0
DEFAULT_PAGE = 1000
# Faces per collection: AWS's default quota (adjustable there to 20 million).
COLLECTION_FACE_LIMIT = 10_000_000
NO_FACES = "There are no faces in the image. Should be at least 1."


# --- shared parts ----------------------------------------------------------------------------------------
class _Engines:
    """One face engine per core, lent to a request at a time: dlib's parts keep per-call state, and more
    concurrent face computations than cores would only queue inside the CPU (and cost ~40 MB each)."""

    def __init__(self) -> None:
        self._free: queue.SimpleQueue[FaceEngine] = queue.SimpleQueue()
        self._made = 0
        self._lock = threading.Lock()

    @contextmanager
    def lend(self, call: Call) -> Iterator[FaceEngine]:
        try:
            engine = self._free.get_nowait()
        except queue.Empty:
            with self._lock:
                make = self._made < (os.cpu_count() or 1)
                self._made += make
            engine = self._make(call) if make else self._free.get()
        try:
            yield engine
        finally:
            self._free.put(engine)

    def _make(self, call: Call) -> FaceEngine:
        settings = call.server.settings
        try:
            return FaceEngine(
                detector=settings.face_detector,
                descriptor=settings.face_descriptor,
                cache_dir=settings.model_cache_dir,
                packages_dir=settings.model_packages_dir,
            )
        except BaseException:
            with self._lock:
                self._made -= 1  # not made: a later request tries again instead of waiting forever
            raise


_ENGINES = _Engines()


def _indexes(call: Call) -> coll.Indexes:
    return call.server.extras["rekognition.collections"]  # built with the server (app.py)


def _detect(engine: FaceEngine, pixels: numpy.ndarray, *, thorough: bool) -> list[face_details.Measured]:
    """The faces, largest first (as AWS orders them). Not ``thorough`` (SearchFacesByImage, whose latency is
    what users feel): the thorough look only when the fast one finds nothing."""
    faces = engine.detect(pixels, thorough=thorough)
    harder = engine.detector != "hog" or max(pixels.shape[:2]) <= THOROUGH_SIDE  # else HOG's look is the same
    if not faces and not thorough and harder:
        faces = engine.detect(pixels, thorough=True)
    measured = [face_details.measure(pixels, face) for face in faces]
    measured.sort(key=lambda m: -m.area)  # AWS: largest first
    return measured[:MAX_FACES_CONSIDERED]


def _collection(call: Call, collection_id: str) -> Any:
    with call.store.read() as conn:
        return coll.require(conn, call.account_id, call.region, collection_id)


def _matches(
    call: Call, collection: Any, descriptor: numpy.ndarray, params: dict[str, Any], skip: int | None = None
) -> list[dict[str, Any]]:
    return coll.matches(
        call.store,
        _indexes(call),
        collection,
        descriptor,
        limit=params.get("MaxFaces", MAX_MATCHES),
        threshold=params.get("FaceMatchThreshold", DEFAULT_THRESHOLD),
        skip=skip,
    )


# --- collections -----------------------------------------------------------------------------------------
def create_collection(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    collection_id = params["CollectionId"]
    new_tags = params.get("Tags", {})
    tag_limits.check(len(new_tags))
    arn = arns.collection(call.region, call.account_id, collection_id)
    exists = ResourceAlreadyExistsException(f"The collection id: {collection_id} already exists")
    try:
        with call.store.begin() as conn:
            if coll.find(conn, call.account_id, call.region, collection_id) is not None:
                raise exists
            conn.execute(
                insert(collections_table).values(
                    arn=arn,
                    account_id=call.account_id,
                    region=call.region,
                    collection_id=collection_id,
                    model_version=MODEL_VERSION,
                    created_at=round(time.time(), 3),
                    face_count=0,
                    version=0,
                )
            )
            tags.put(conn, arn, new_tags)
    except IntegrityError:
        raise exists from None  # lost a race with an identical create
    return {"StatusCode": 200, "CollectionArn": arn, "FaceModelVersion": MODEL_VERSION}


def describe_collection(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    row = _collection(call, params["CollectionId"])
    return {
        "FaceCount": row.face_count,
        "FaceModelVersion": row.model_version,
        "CollectionARN": row.arn,
        "CreationTimestamp": row.created_at,
        "UserCount": 0,  # the Users API (CreateUser, AssociateFaces) is not implemented
    }


def list_collections(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    limit = params.get("MaxResults") or DEFAULT_PAGE
    after = None
    if "NextToken" in params:
        after = str(call.server.pager.decode(call.page_scope(), params["NextToken"])["c"])
    with call.store.read() as conn:
        rows = coll.page(conn, call.account_id, call.region, after, limit + 1)
    result: dict[str, Any] = {
        "CollectionIds": [r.collection_id for r in rows[:limit]],
        "FaceModelVersions": [r.model_version for r in rows[:limit]],
    }
    if len(rows) > limit:
        result["NextToken"] = call.server.pager.encode(
            call.page_scope(), {"c": rows[limit - 1].collection_id}
        )
    return result


@blocking
def delete_collection(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    collection = _collection(call, params["CollectionId"])
    with _indexes(call).dropping(call.store, collection) as conn:
        coll.delete_collection(conn, collection)
        tags.remove_all(conn, collection.arn)
    return {"StatusCode": 200}


# --- faces -----------------------------------------------------------------------------------------------
@blocking
def index_faces(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    collection = _collection(call, params["CollectionId"])
    pixels = images.load(call.server.blobs, params["Image"])
    attributes = params.get("DetectionAttributes")
    with _ENGINES.lend(call) as engine:
        measured = _detect(engine, pixels, thorough=True)
        passing, unindexed = _select(measured, pixels, params)
        embedded = engine.embed(pixels, [m.face for m in passing])
    records = _face_records(params, passing, embedded)
    _store_faces(call, collection, records)
    return {
        "FaceRecords": [
            {"Face": coll.face_json(r), "FaceDetail": m.detail(attributes)}
            for r, m in zip(records, passing, strict=True)
        ],
        "FaceModelVersion": collection.model_version,
        "UnindexedFaces": unindexed,
    }


def _select(
    measured: list[face_details.Measured], pixels: numpy.ndarray, params: dict[str, Any]
) -> tuple[list[face_details.Measured], list[dict[str, Any]]]:
    """IndexFaces' choice: the faces to index, and UnindexedFaces with their reasons."""
    attributes = params.get("DetectionAttributes")
    quality_filter = params.get("QualityFilter", "AUTO")
    unindexed, passing = [], []
    for m in measured:
        why = face_details.reasons(m, pixels, quality_filter)
        if why:
            unindexed.append({"Reasons": why, "FaceDetail": m.detail(attributes)})
        else:
            passing.append(m)
    # Over MaxFaces, AWS drops the lowest quality faces first, then the smallest.
    ranked = sorted(range(len(passing)), key=lambda i: (-round(passing[i].confidence), -passing[i].area))
    keep = set(ranked[: params.get("MaxFaces", len(passing))])
    for i, m in enumerate(passing):
        if i not in keep:
            unindexed.append({"Reasons": ["EXCEEDS_MAX_FACES"], "FaceDetail": m.detail(attributes)})
    return [m for i, m in enumerate(passing) if i in keep], unindexed


def _face_records(
    params: dict[str, Any], measured: list[face_details.Measured], embedded: list[Face]
) -> list[dict[str, Any]]:
    image_id, now, source = str(uuid.uuid4()), time.time(), _source(params["Image"])
    return [
        {
            "face_id": str(uuid.uuid4()),
            "image_id": image_id,
            "external_image_id": params.get("ExternalImageId"),
            "confidence": m.confidence,
            "box": m.box,
            "model_version": MODEL_VERSION,
            "created_at": now,
            "descriptor": face.descriptor,
            "source": source,
        }
        for m, face in zip(measured, embedded, strict=True)
    ]


SOURCE_MAX = 2048  # faces.source


def _source(image: dict[str, Any]) -> str | None:
    """Where the indexed image came from, for the console: ``s3://bucket/key`` (``?versionId=`` when one
    was named and it fits), or None for Bytes."""
    s3_object = image.get("S3Object")
    if s3_object is None:
        return None
    where = f"s3://{s3_object.get('Bucket', '')}/{s3_object.get('Name', '')}"
    versioned = f"{where}?versionId={s3_object['Version']}" if s3_object.get("Version") else where
    if len(versioned) <= SOURCE_MAX:
        return versioned
    return where if len(where) <= SOURCE_MAX else None


def _store_faces(call: Call, collection: Any, records: list[dict[str, Any]]) -> None:
    if not records:
        return
    with _indexes(call).writing(call.store, collection) as write:
        if write.face_count + len(records) > COLLECTION_FACE_LIMIT:
            raise ServiceQuotaExceededException(
                f"The collection can hold at most {COLLECTION_FACE_LIMIT} faces."
            )
        write.insert(records)


@blocking
def list_faces(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    collection = _collection(call, params["CollectionId"])
    limit = params.get("MaxResults") or DEFAULT_PAGE
    scope = (*call.page_scope(), collection.arn, str(collection.created_at))
    after = None
    if "NextToken" in params:
        after = str(call.server.pager.decode(scope, params["NextToken"])["f"])
    if "UserId" in params:
        rows = []  # no face is associated with a user: the Users API is not implemented
    else:
        with call.store.read() as conn:
            rows = coll.face_rows(
                conn, collection.arn, after=after, face_ids=params.get("FaceIds"), limit=limit + 1
            )
    result: dict[str, Any] = {
        "Faces": [coll.face_json(r._mapping) for r in rows[:limit]],
        "FaceModelVersion": collection.model_version,
    }
    if len(rows) > limit:
        result["NextToken"] = call.server.pager.encode(scope, {"f": rows[limit - 1].face_id})
    return result


@blocking
def delete_faces(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    collection = _collection(call, params["CollectionId"])
    face_ids = list(dict.fromkeys(params["FaceIds"]))
    with _indexes(call).writing(call.store, collection) as write:
        found = write.delete(face_ids)
    return {
        "DeletedFaces": [f for f in face_ids if f in found],
        "UnsuccessfulFaceDeletions": [
            {"FaceId": f, "Reasons": ["FACE_NOT_FOUND"]} for f in face_ids if f not in found
        ],
    }


# --- search and detection --------------------------------------------------------------------------------
@blocking
def search_faces(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    collection = _collection(call, params["CollectionId"])
    face_id = params["FaceId"]
    with call.store.read() as conn:
        found = coll.descriptor_of(conn, collection.arn, face_id)
    if found is None:
        raise InvalidParameterException(f"The face id: {face_id} does not exist in the collection.")
    seq, descriptor = found
    return {
        "SearchedFaceId": face_id,
        "FaceMatches": _matches(call, collection, descriptor, params, skip=seq),
        "FaceModelVersion": collection.model_version,
    }


@blocking
def search_faces_by_image(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    collection = _collection(call, params["CollectionId"])
    pixels = images.load(call.server.blobs, params["Image"])
    quality_filter = params.get("QualityFilter", "NONE")
    with _ENGINES.lend(call) as engine:
        candidates = [
            m
            for m in _detect(engine, pixels, thorough=False)
            if not face_details.reasons(m, pixels, quality_filter)
        ]
        if not candidates:
            raise InvalidParameterException(NO_FACES)
        # The largest face, as AWS searches; but HOG's weakest detections (under AUTO's confidence bar)
        # are mostly not faces, and one can outsize the real face: searched only if nothing else is.
        confident = [m for m in candidates if m.confidence >= face_details.BARS["AUTO"].confidence]
        largest = (confident or candidates)[0]
        (face,) = engine.embed(pixels, [largest.face])
    assert face.descriptor is not None
    return {
        "SearchedFaceBoundingBox": largest.box,
        "SearchedFaceConfidence": largest.confidence,
        "FaceMatches": _matches(call, collection, face.descriptor, params),
        "FaceModelVersion": collection.model_version,
    }


@blocking
def detect_faces(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    pixels = images.load(call.server.blobs, params["Image"])
    attributes = params.get("Attributes")
    with _ENGINES.lend(call) as engine:
        measured = _detect(engine, pixels, thorough=True)
    return {"FaceDetails": [m.detail(attributes) for m in measured]}


def find_taggable(call: Call, arn: str) -> str | None:
    """The ARN if it names one of this account's collections (tagging shares the stream processors')."""
    with call.store.read() as conn:
        row = coll.find_by_arn(conn, call.account_id, call.region, arn)
    return None if row is None else row.arn


OPERATIONS: dict[str, Handler] = {
    "CreateCollection": create_collection,
    "DescribeCollection": describe_collection,
    "ListCollections": list_collections,
    "DeleteCollection": delete_collection,
    "IndexFaces": index_faces,
    "ListFaces": list_faces,
    "DeleteFaces": delete_faces,
    "SearchFaces": search_faces,
    "SearchFacesByImage": search_faces_by_image,
    "DetectFaces": detect_faces,
}
