"""Face collections: the account's collections, and for each one its faces (ExternalImageId, confidence, and
a thumbnail of the image a face was indexed from, with its box drawn over it, when IndexFaces read that image
from S3), and a search by dropping a photo (SearchFacesByImage, run by the page through the API call).

Pages read ``face_collections`` and ``faces`` directly, for the signed-in account and region. A source image
is served by the console only from a bucket the signed-in account owns (``s3_buckets``), read from the object
store and shrunk in a worker thread; another account's collection (or image) is 404.
"""

from __future__ import annotations

import io
import logging
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from PIL import Image
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mlharbor.blobs.store import BlobConflict, BlobNotFound, InvalidS3Uri, S3Uri
from mlharbor.console.session import Who
from mlharbor.console.web import Paging, console_of, data, error, page, readable_buckets, render
from mlharbor.context import Server
from mlharbor.services.rekognition import images
from mlharbor.store import tables as t

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 320
JPEG_QUALITY = 85
FACE_COLUMNS = tuple(
    t.faces.c[name]
    for name in ("face_id", "image_id", "external_image_id", "confidence", "box", "created_at", "source")
)
VERSION_MARK = "?versionId="  # IndexFaces records s3://bucket/key?versionId=... when a Version was named


def _find(conn: Any, who: Who, collection_id: str) -> Any:
    fc = t.face_collections
    return conn.execute(
        select(fc).where(
            fc.c.account_id == who.account_id, fc.c.region == who.region, fc.c.collection_id == collection_id
        )
    ).first()


def source_uri(source: str | None) -> S3Uri | None:
    """The object a face's ``source`` names (its version left out: the object store keeps none)."""
    if not source:
        return None
    # The mark is split off at its LAST occurrence: a key containing "?versionId=" itself, indexed with a
    # Version, still reads right. A key containing it indexed without one is read as a shorter key and a
    # version (the stored format cannot tell the two apart): its thumbnail is then that shorter key's object,
    # or none; still only from the same bucket, one the account owns.
    where = source.rpartition(VERSION_MARK)[0] if VERSION_MARK in source else source
    try:
        uri = S3Uri.parse(where)
    except InvalidS3Uri:
        return None
    return uri if uri.key else None


# --- the list ----------------------------------------------------------------------------------------------
async def collection_list(request: Request, who: Who) -> Response:
    paging = Paging.of(request)
    fc = t.face_collections
    query = (
        select(fc.c.collection_id, fc.c.face_count, fc.c.model_version, fc.c.created_at)
        .where(fc.c.account_id == who.account_id, fc.c.region == who.region)
        .order_by(fc.c.collection_id)
        .offset(paging.offset)
        .limit(paging.limit)
    )
    with console_of(request).server.store.read() as conn:
        rows, more = paging.split(conn.execute(query).all())
    return render(
        request, who, "collections.html", section="collections", collections=rows, paging=paging, more=more
    )


# --- one collection ----------------------------------------------------------------------------------------
async def collection_page(request: Request, who: Who) -> Response:
    collection_id = request.path_params["collection_id"]
    paging = Paging.of(request)
    f = t.faces
    server = console_of(request).server
    with server.store.read() as conn:
        collection = _find(conn, who, collection_id)
        if collection is None:
            response = render(request, who, "collection.html", section="collections", missing=collection_id)
            response.status_code = 404
            return response
        query = (
            select(*FACE_COLUMNS)
            .where(f.c.collection_arn == collection.arn)
            .order_by(f.c.seq.desc())  # newest first (the (collection_arn, seq) index)
            .offset(paging.offset)
            .limit(paging.limit)
        )
        rows, more = paging.split(conn.execute(query).all())
        uris = {row.face_id: source_uri(row.source) for row in rows}
        readable = readable_buckets(conn, server, who, {u.bucket for u in uris.values() if u is not None})
    shown = {face_id for face_id, uri in uris.items() if uri is not None and uri.bucket in readable}
    faces = [{**row._asdict(), "thumbnail": row.face_id in shown} for row in rows]
    return render(
        request, who, "collection.html", section="collections", collection=collection, faces=faces,
        paging=paging, more=more,
    )  # fmt: skip


# --- a face's source image ---------------------------------------------------------------------------------
class _NotFound(Exception):
    pass


class _Unavailable(Exception):
    """The object store (S3) did not answer: a 503."""


def _thumbnail(server: Server, who: Who, collection_id: str, face_id: str) -> bytes:
    f = t.faces
    with server.store.read() as conn:
        collection = _find(conn, who, collection_id)
        if collection is None:
            raise _NotFound(f"No collection {collection_id}.")
        source = conn.execute(
            select(f.c.source).where(f.c.collection_arn == collection.arn, f.c.face_id == face_id)
        ).scalar_one_or_none()
        uri = source_uri(source)
        if uri is None:
            raise _NotFound("The face's image is not known.")
        if not readable_buckets(conn, server, who, {uri.bucket}):
            raise _NotFound("The face's image is not in a bucket of this account.")
    try:
        if server.blobs.stat(uri).size > images.MAX_S3_BYTES:
            raise _NotFound("The face's image is too large to show.")
        content = server.blobs.get(uri)
    except (BlobNotFound, BlobConflict, InvalidS3Uri, OSError):
        raise _NotFound("The face's image is no longer there.") from None
    except (BotoCoreError, ClientError) as exc:  # object_store = "s3": its errors other than not found
        log.warning("console: reading %s from the object store failed: %r", uri, exc)
        raise _Unavailable("The object store cannot be read right now.") from None
    try:
        with Image.open(io.BytesIO(content)) as picture:
            if picture.width * picture.height > images.MAX_PIXELS:
                raise _NotFound("The face's image is too large to show.")
            picture.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))  # JPEG: decoded at a reduced scale
            picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            buffer = io.BytesIO()
            picture.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    except (OSError, SyntaxError, Image.DecompressionBombError, ValueError):
        raise _NotFound("The face's image cannot be decoded.") from None
    return buffer.getvalue()


async def face_source(request: Request, who: Who) -> Response:
    """GET /console/collections/{collection_id}/faces/{face_id}/source.jpg: the face's source image, small."""
    params = request.path_params
    try:
        content = await run_in_threadpool(
            _thumbnail, console_of(request).server, who, params["collection_id"], params["face_id"]
        )
    except _NotFound as exc:
        return error("ResourceNotFoundException", str(exc), 404)
    except _Unavailable as exc:
        return error("ServiceUnavailableException", str(exc), 503)
    return Response(content, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})


ROUTES: list[BaseRoute] = [
    Route("/console/collections", page(collection_list)),
    Route("/console/collections/{collection_id}", page(collection_page)),
    Route("/console/collections/{collection_id}/faces/{face_id}/source.jpg", data(face_source)),
]
