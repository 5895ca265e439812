"""Objects as plain files: ``s3://bucket/key`` is ``<root>/<bucket>/<key>``.

Keys come from API callers, so this module treats them as hostile. A key is split on "/" and each
segment must be an ordinary file name: no empty segments (so no leading "/" or "//"), no "." or
"..", no backslash, no NUL. Keys are never percent-decoded: ``%2e%2e`` is a literal folder name.
Then the path is resolved (following symlinks) and must still lie inside ``<root>/<bucket>``, so a
symlink placed inside the root cannot lead out of it either.

Where a file system cannot mirror S3:

* Folder markers. S3 consoles create empty objects named ``folder/``; here a folder is implied by
  the files in it. ``put`` to a key ending in "/" raises :class:`InvalidS3Uri`; reading one finds
  nothing (:class:`BlobNotFound`, ``exists`` is False), deleting one does nothing.
* ``a/b`` and ``a/b/c`` cannot both exist (a path is a file or a folder): :class:`BlobConflict`.
* Buckets are folders, created on the first ``put``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from mlharbor.blobs.store import (
    BlobConflict,
    BlobNotFound,
    BlobStore,
    InvalidS3Uri,
    ObjectInfo,
    S3Uri,
    require_object_key,
)

# Atomic writes leave a temp file next to the target while they run; keys may not use the prefix
# so that list() can skip these files without hiding real objects.
_TMP_PREFIX = ".mlharbor-tmp-"
_MAX_SEGMENT_BYTES = 255  # NAME_MAX on the file systems we run on


class LocalBlobStore(BlobStore):
    def __init__(self, root: Path | str) -> None:
        # Resolve once: containment checks compare resolved paths (e.g. /tmp -> /private/tmp).
        self._root = Path(root).resolve()

    @property
    def root(self) -> Path:
        return self._root

    # --- reading -------------------------------------------------------------------------------------
    def get(self, uri: S3Uri | str) -> bytes:
        with self.open_read(uri) as stream:
            return stream.read()

    def open_read(self, uri: S3Uri | str) -> BinaryIO:
        parsed = require_object_key(S3Uri.of(uri))
        if _is_marker(parsed.key):
            raise BlobNotFound(f"no object at {parsed}")
        try:
            return open(self._object_path(parsed), "rb")  # noqa: SIM115 - the caller closes it
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise BlobNotFound(f"no object at {parsed}") from None

    def exists(self, uri: S3Uri | str) -> bool:
        parsed = require_object_key(S3Uri.of(uri))
        return not _is_marker(parsed.key) and self._object_path(parsed).is_file()

    def list(self, prefix_uri: S3Uri | str) -> list[ObjectInfo]:
        prefix = S3Uri.of(prefix_uri)
        base = self._bucket_dir(prefix.bucket)
        # Only walk the folder the prefix pins down: "data/tr" walks data/, "data/" walks data/.
        folder, _, _ = prefix.key.rpartition("/")
        start = self._resolve_inside(base, folder, prefix) if folder else base
        # Symlinked folders are not listed (os.walk does not follow them either), which also keeps
        # symlink loops from listing a/a/a/... forever; get() still follows links that stay inside.
        if start != base / folder or not start.is_dir():
            return []
        found: list[ObjectInfo] = []
        for dirpath, dirnames, filenames in os.walk(start):
            here = Path(dirpath)
            rel_dir = here.relative_to(base).as_posix()
            rel_dir = "" if rel_dir == "." else rel_dir + "/"
            # Skip folders no key can name, and those that cannot hold a match (cheap narrow prefixes).
            dirnames[:] = [
                d
                for d in dirnames
                if _segment_problem(d) is None and _may_match(rel_dir + d + "/", prefix.key)
            ]
            for name in filenames:
                key = rel_dir + name
                # List exactly what get() would serve: no temp files, no names that are not valid
                # keys, no symlinks that dangle or lead out of the bucket.
                if not key.startswith(prefix.key) or _segment_problem(name) is not None:
                    continue
                try:
                    uri = S3Uri(prefix.bucket, key)
                    st = (here / name).lstat()
                    if stat.S_ISLNK(st.st_mode):  # walked folders are real ones; only links need the check
                        st = self._object_path(uri).stat()
                except (InvalidS3Uri, OSError):  # also: removed while we walk
                    continue
                if stat.S_ISREG(st.st_mode):
                    found.append(
                        ObjectInfo(
                            uri=uri,
                            key=key,
                            size=st.st_size,
                            last_modified=datetime.fromtimestamp(st.st_mtime, UTC),
                        )
                    )
        found.sort(key=lambda info: info.key)
        return found

    # --- writing -------------------------------------------------------------------------------------
    def put(self, uri: S3Uri | str, data: bytes, *, kms_key_id: str | None = None) -> None:
        self._write(uri, lambda fh: fh.write(data))

    def put_file(self, uri: S3Uri | str, path: Path | str) -> None:
        with open(path, "rb") as src:
            self._write(uri, lambda fh: shutil.copyfileobj(src, fh, 1024 * 1024))

    def delete(self, uri: S3Uri | str) -> None:
        parsed = require_object_key(S3Uri.of(uri))
        if _is_marker(parsed.key):
            return
        # Not following the last symlink: deleting a key that is a symlink removes the link,
        # never the file it points to.
        path = self._object_path(parsed, follow_final=False)
        if path.is_dir() and not path.is_symlink():  # only "a/b/..." objects exist, not "a/b"
            return
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        self._prune_empty_parents(path.parent, self._bucket_dir(parsed.bucket))

    # --- internals -----------------------------------------------------------------------------------
    def _write(self, uri: S3Uri | str, fill: Callable[[BinaryIO], object]) -> None:
        parsed = require_object_key(S3Uri.of(uri))
        if _is_marker(parsed.key):
            raise InvalidS3Uri(f"{parsed} ends with '/': the local store keeps no folder-marker objects")
        bucket_dir = self._bucket_dir(parsed.bucket)
        # os.replace acts on a symlink itself, so a key that is a symlink gets replaced by a file.
        path = self._resolve_inside(bucket_dir, parsed.key, parsed, follow_final=False)
        folder = path.parent
        # Same folder as the target so os.replace is a rename on one file system. mkstemp makes the file
        # 0600: objects are the server's private data. The folder is made only when it is missing (the
        # common case, a folder that exists, costs no mkdir).
        for attempt in range(5):
            try:
                fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=folder)
                break
            except (FileNotFoundError, NotADirectoryError):
                # Either an object sits where a folder must go, or the folder is missing (never made, or
                # a concurrent delete() pruned it): make it and try again.
                if _file_in_the_way(folder, bucket_dir):
                    raise BlobConflict(f"cannot store {parsed}: a parent of that key is an object") from None
                if attempt == 4:
                    raise
                with contextlib.suppress(FileExistsError, FileNotFoundError):
                    folder.mkdir(parents=True, exist_ok=True)
        try:
            with os.fdopen(fd, "wb") as fh:
                fill(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)  # atomic: readers see the old object or the new one, never half
        except IsADirectoryError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise BlobConflict(f"cannot store {parsed}: objects under {parsed.key}/ exist") from None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        # The rename is durable once its folder is: without this a power cut could lose an object whose
        # write was acknowledged (a PERSISTED fragment, a trained model).
        try:
            folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            # A concurrent delete() removed the new object and pruned its folder: put-then-delete,
            # nothing left to make durable.
            return
        try:
            os.fsync(folder_fd)
        finally:
            os.close(folder_fd)

    def _bucket_dir(self, bucket: str) -> Path:
        # S3Uri already keeps "/", "." and ".." out of bucket names; the folder must not be a
        # symlink either (the root is resolved, so any difference after resolving is a link).
        path = self._root / bucket
        if path.resolve() != path:
            raise InvalidS3Uri(f"s3://{bucket}/: the bucket folder leads outside the object store")
        return path

    def _object_path(self, uri: S3Uri, *, follow_final: bool = True) -> Path:
        return self._resolve_inside(self._bucket_dir(uri.bucket), uri.key, uri, follow_final=follow_final)

    def _resolve_inside(self, base: Path, rel: str, uri: S3Uri, *, follow_final: bool = True) -> Path:
        """``base / rel`` with each segment checked and symlinks resolved; refused if it leaves base."""
        for segment in rel.split("/"):
            _check_segment(segment, uri)
        path = base / rel
        try:
            parent = path.parent.resolve()
            resolved = path.resolve() if follow_final else parent / path.name
        except (OSError, RuntimeError) as exc:  # a symlink loop: RuntimeError on 3.11, OSError later
            raise InvalidS3Uri(f"{uri}: cannot resolve the local path ({exc})") from None
        if not _inside(parent, base) or not _inside(resolved, base) or resolved == base:
            raise InvalidS3Uri(f"{uri} resolves outside the object store")
        return resolved

    def _prune_empty_parents(self, folder: Path, bucket_dir: Path) -> None:
        # Empty folders left behind would block a later put of an object named like the folder.
        while folder != bucket_dir and _inside(folder, bucket_dir):
            try:
                folder.rmdir()
            except OSError:  # not empty, or already gone
                return
            folder = folder.parent


def _check_segment(segment: str, uri: S3Uri) -> None:
    problem = _segment_problem(segment)
    if problem is not None:
        raise InvalidS3Uri(f"{uri}: the local object store refuses keys with {problem}")


def _segment_problem(segment: str) -> str | None:
    """Why one "/"-separated part of a key cannot be a file name here, or None if it can."""
    if segment in ("", ".", ".."):
        return "empty, '.' or '..' path segments"
    if "\\" in segment or "\0" in segment:
        return "'\\' or NUL characters"
    if segment.startswith(_TMP_PREFIX):
        return f"segments starting with {_TMP_PREFIX!r}"
    if len(segment.encode("utf-8", "surrogatepass")) > _MAX_SEGMENT_BYTES:
        return f"segments longer than {_MAX_SEGMENT_BYTES} bytes"
    return None


def _is_marker(key: str) -> bool:
    return key.endswith("/")


def _file_in_the_way(folder: Path, bucket_dir: Path) -> bool:
    while folder != bucket_dir and _inside(folder, bucket_dir):
        # One stat per folder: exists() then is_dir() raced a concurrent prune (a folder removed between
        # the two calls looked like a file and failed the put with a false BlobConflict).
        try:
            if not stat.S_ISDIR(folder.stat().st_mode):
                return True
        except (FileNotFoundError, NotADirectoryError):
            pass  # gone (pruned), or a parent is a file: the loop reaches that parent
        folder = folder.parent
    return False


def _inside(path: Path, base: Path) -> bool:
    return path == base or path.is_relative_to(base)


def _may_match(folder_key: str, prefix: str) -> bool:
    """Whether keys under ``folder_key`` (ending in "/") can start with ``prefix``."""
    return folder_key.startswith(prefix) or prefix.startswith(folder_key)
