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
* Buckets are folders, created on the first ``put`` (or by ``create_bucket``).

ETags and attributes (for the S3 API). An object written through :meth:`LocalBlobStore.open_write`
carries ``{"etag", "attributes", "size", "mtime_ns"}`` as JSON in one extended attribute,
``user.mlharbor.object``, set on the temp file before the rename, so bytes and metadata change
together. ``put``/``put_file`` set none (they stay exactly as cheap as before): the etag of such an
object (the hex MD5 of its bytes) is computed the first time ``stat``/``open_object``/``list_page``
needs it and cached in the same attribute through the already-open file descriptor, so it always
describes the file that was hashed, never a replacement. ``size``/``mtime_ns`` date the record: a file
rewritten in place behind the store's back (``cp new old``) no longer matches it, and its etag is
computed again (its attributes are then lost: they described other bytes). ``last_modified`` is the
file's mtime.

* Extended attributes must fit the file system: ext4 keeps about 4 KB per file, so ``commit`` refuses
  (ValueError) attributes much larger than S3's own 2 KB of user metadata.
* File systems without user extended attributes (ENOTSUP: some tmpfs, NFS, overlay set-ups) work in a
  degraded mode, with one warning logged: the etag is computed (MD5 of the file) on every
  ``stat``/``open_object``/``list_page``, so a committed multipart etag ("<hex>-3") reads back as the
  plain MD5, and attributes are not kept (``{}``).
* Writers that crash (kill -9) leave ``.mlharbor-tmp-*`` files; :meth:`LocalBlobStore.sweep_temporary`
  removes them. A live :class:`ObjectWriter` holds an ``flock`` on its temp file, so sweeping never
  removes one that is still being written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import heapq
import json
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from mlharbor.blobs.store import (
    MAX_KEY_BYTES,
    BlobConflict,
    BlobNotFound,
    BlobStore,
    InvalidS3Uri,
    ObjectInfo,
    ObjectMeta,
    ObjectReader,
    ObjectWriter,
    S3Uri,
    check_commit,
    require_object_key,
)

log = logging.getLogger(__name__)

# Atomic writes leave a temp file next to the target while they run; keys may not use the prefix
# so that list() can skip these files without hiding real objects.
_TMP_PREFIX = ".mlharbor-tmp-"
_MAX_SEGMENT_BYTES = 255  # NAME_MAX on the file systems we run on
# The extended attribute holding an object's etag and attributes (see the module docstring).
_XATTR = "user.mlharbor.object"
# O_NONBLOCK: opening a FIFO someone dropped into a bucket must not hang the reader (it is then refused
# as "not a regular file"); it changes nothing for regular files.
_O_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
_IO_CHUNK = 1 << 20
_NO_XATTRS = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})
# copy_file_range refuses these combinations of files and file systems; compose then copies by hand.
_NO_COPY_RANGE = frozenset({errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM})
_MAX_BUCKET_PATHS = 1024  # bucket folder paths kept (a Path costs ~2 µs to build)
# list_page keeps each folder's sorted names (see _Listings) while the folder's ctime says it is unchanged.
# A change to a folder (a file created, renamed in or removed) sets its ctime from the kernel's coarse
# clock: one tick (1-10 ms on Linux), whole seconds on some file systems (ext3's small inodes, HFS+; FAT's
# mtime: 2 s). Two changes within one tick leave the same ctime, so a listing read between them would
# pass as current and miss the second change. Hence a listing is only kept if the folder was last changed
# at least this long before it was read: any later change then sets a different ctime, and each use
# compares it. Folders changed in the last seconds are read afresh (correct, costs the full read).
_LISTING_SAFE_AGE_NS = 2_000_000_000
# Names kept in all cached listings together (a name costs ~60-100 bytes): least recently used go first.
_LISTING_BUDGET = 1_000_000


class LocalBlobStore(BlobStore):
    def __init__(self, root: Path | str) -> None:
        # Resolve once: containment checks compare resolved paths (e.g. /tmp -> /private/tmp).
        self._root = Path(root).resolve()
        # False once the file system said it keeps no user xattrs (degraded mode, see the docstring).
        self._xattrs = hasattr(os, "setxattr")
        self._xattr_lock = threading.Lock()
        self._bucket_paths: dict[str, Path] = {}
        self._listings = _Listings(_LISTING_BUDGET)

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

    # --- the S3 API: versions, etags, pages ---------------------------------------------------------
    def open_write(self, uri: S3Uri | str) -> ObjectWriter:
        return self._open_writer(uri)

    def open_object(self, uri: S3Uri | str) -> ObjectReader:
        parsed, fd, st = self._open_object_fd(uri)
        try:
            meta = self._meta_of(fd, st)
        except BaseException:
            os.close(fd)
            raise
        return _LocalReader(parsed, fd, meta)

    def list_page(
        self, bucket: str, *, prefix: str = "", start_after: str = "", delimiter: str = "", limit: int = 1000
    ) -> list[tuple[str, ObjectMeta | None]]:
        base = self._bucket_dir(S3Uri(bucket).bucket)
        if limit <= 0:
            return []
        # Start in the folder the prefix pins down, as list() does: "data/tr" starts in data/.
        folder, _, _ = prefix.rpartition("/")
        start, rel = base, ""
        if folder:
            try:
                start = self._resolve_inside(base, folder, S3Uri(bucket))
            except InvalidS3Uri:  # a segment no stored key can have, or a folder leading outside: no match
                return []
            if start != base / folder:  # a symlinked folder: not listed (list() does not list it either)
                return []
            rel = folder + "/"
        if not start.is_dir():
            return []
        return _Page(self, bucket, prefix, start_after, delimiter, limit).collect(start, rel)

    def compose(
        self,
        uri: S3Uri | str,
        parts: Sequence[S3Uri | str],
        *,
        etag: str,
        attributes: Mapping[str, str],
    ) -> ObjectMeta:
        check_commit(etag, attributes)  # refuse bad arguments before copying gigabytes
        sources = [S3Uri.of(part) for part in parts]
        with self._open_writer(uri) as writer:
            for source in sources:
                # Not open_object: composing needs no etag of the parts, and their lazy MD5 would cost a read.
                _, fd, st = self._open_object_fd(source)
                try:
                    writer.append_file(fd, st.st_size)
                finally:
                    os.close(fd)
            return writer.commit(etag=etag, attributes=attributes)

    def create_bucket(self, bucket: str) -> None:
        base = self._bucket_dir(S3Uri(bucket).bucket)
        try:
            base.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a file named like the bucket
            raise BlobConflict(f"cannot create bucket {bucket}: {base} is not a folder") from None
        _fsync_folder(self._root)  # an acknowledged bucket survives a power cut

    def delete_bucket(self, bucket: str) -> None:
        base = self._bucket_dir(S3Uri(bucket).bucket)
        if not base.is_dir():
            return
        if _Page(self, bucket, "", "", "", 1).has_object(str(base), ""):
            raise BlobConflict(f"bucket {bucket} is not empty")
        # Left-overs of crashed writers and emptied folders go; a live writer's temp file (locked) stays,
        # and so does anything else no key names (a stray file): then the bucket is not empty after all.
        for dirpath, _dirnames, filenames in os.walk(base, topdown=False):
            for name in filenames:
                if name.startswith(_TMP_PREFIX):
                    _remove_unlocked(os.path.join(dirpath, name))
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
        if base.exists():
            raise BlobConflict(f"bucket {bucket} is not empty: objects are being written or files remain")
        _fsync_folder(self._root)

    def sweep_temporary(self, older_than_seconds: float) -> int:
        """Remove ``.mlharbor-tmp-*`` files not written to for ``older_than_seconds``, left by writers
        that crashed, and the folders that held only them; returns how many files. Temp files of live
        :meth:`open_write` writers are locked and never removed; those of a ``put`` still running are
        spared by the age limit (every write refreshes their mtime). For the server to call at start."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        if not self._root.is_dir():
            return 0
        for dirpath, _dirnames, filenames in os.walk(self._root, topdown=False):
            folder = Path(dirpath)
            swept = False
            for name in filenames:
                if name.startswith(_TMP_PREFIX) and _remove_unlocked(os.path.join(dirpath, name), cutoff):
                    removed += 1
                    swept = True
            if swept and folder != self._root and folder.parent != self._root:
                # As delete() does: an empty folder left behind would block an object named like it.
                self._prune_empty_parents(folder, self._bucket_of(folder))
        return removed

    # --- object API internals ------------------------------------------------------------------------
    def _open_writer(self, uri: S3Uri | str) -> _LocalWriter:
        parsed, path, bucket_dir = self._write_target(uri)
        # Known up front, unlike put() which learns it at the rename: objects under "<key>/" exist.
        if path.is_dir() and not path.is_symlink():
            raise BlobConflict(f"cannot store {parsed}: objects under {parsed.key}/ exist")
        fd, tmp = self._make_temp(parsed, path.parent, bucket_dir)
        try:
            # Held until the writer commits or aborts (or its process dies): sweeping skips locked files.
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        return _LocalWriter(self, parsed, path, bucket_dir, fd, tmp)

    def _open_object_fd(self, uri: S3Uri | str) -> tuple[S3Uri, int, os.stat_result]:
        """The object's file, open for reading, and its stat. Raises BlobNotFound / InvalidS3Uri."""
        parsed = require_object_key(S3Uri.of(uri))
        if _is_marker(parsed.key):
            raise BlobNotFound(f"no object at {parsed}")
        opened = _open_regular(self._object_path(parsed))
        if opened is None:
            raise BlobNotFound(f"no object at {parsed}")
        return (parsed, *opened)

    def _bucket_of(self, folder: Path) -> Path:
        return self._root / folder.relative_to(self._root).parts[0]

    def _meta_of(self, fd: int, st: os.stat_result) -> ObjectMeta:
        """The meta of the open file: its committed or cached record if that still dates the file, else
        the MD5 of its bytes (cached in the record for next time)."""
        record = self._read_record(fd)
        if record is not None and (record["size"], record["mtime_ns"]) == (st.st_size, st.st_mtime_ns):
            return ObjectMeta(st.st_size, record["etag"], _mtime(st), record["attributes"])
        etag = _md5_of_fd(fd, st.st_size)
        after = os.fstat(fd)
        # Only cache what describes the file as it is now (not one rewritten in place while we hashed).
        if (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns):
            self._cache_record(fd, _record(etag, {}, st))
        return ObjectMeta(st.st_size, etag, _mtime(st), {})

    def _read_record(self, fd: int) -> dict[str, Any] | None:
        if not self._xattrs:
            return None
        try:
            raw = os.getxattr(fd, _XATTR)
        except OSError as exc:
            if exc.errno in _NO_XATTRS:
                self._lost_xattrs()
            return None  # ENODATA (none yet, e.g. written by put) or unreadable: compute the etag
        return _parse_record(raw)

    def _cache_record(self, fd: int, value: bytes) -> None:
        if not self._xattrs:
            return
        try:
            os.setxattr(fd, _XATTR, value)
        except OSError as exc:
            # Not ours to write (a file placed by another user), read-only, or full: compute it next time.
            if exc.errno in _NO_XATTRS:
                self._lost_xattrs()

    def _commit_record(self, fd: int, value: bytes, uri: S3Uri) -> bool:
        """Store a writer's record on its temp file; False if this file system keeps none."""
        if not self._xattrs:
            return False
        try:
            os.setxattr(fd, _XATTR, value)
        except OSError as exc:
            if exc.errno in _NO_XATTRS:
                self._lost_xattrs()
                return False
            if exc.errno in (errno.E2BIG, errno.ENOSPC, errno.ERANGE):
                raise ValueError(
                    f"{uri}: the etag and attributes take {len(value)} bytes, more than this file system "
                    "keeps in an extended attribute (ext4: about 4 KB)"
                ) from exc
            raise
        return True

    def _lost_xattrs(self) -> None:
        with self._xattr_lock:
            if not self._xattrs:
                return
            self._xattrs = False
        log.warning(
            "the object store at %s has no user extended attributes: etags are computed on every read "
            "and object attributes (content type, user metadata) are not kept",
            self._root,
        )

    # --- internals -----------------------------------------------------------------------------------
    def _write(self, uri: S3Uri | str, fill: Callable[[BinaryIO], object]) -> None:
        parsed, path, bucket_dir = self._write_target(uri)
        folder = path.parent
        fd, tmp = self._make_temp(parsed, folder, bucket_dir)
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
        _fsync_folder(folder)

    def _write_target(self, uri: S3Uri | str) -> tuple[S3Uri, Path, Path]:
        """The checked key, the path its object goes to, and its bucket folder."""
        parsed = require_object_key(S3Uri.of(uri))
        if _is_marker(parsed.key):
            raise InvalidS3Uri(f"{parsed} ends with '/': the local store keeps no folder-marker objects")
        bucket_dir = self._bucket_dir(parsed.bucket)
        # os.replace acts on a symlink itself, so a key that is a symlink gets replaced by a file.
        path = self._resolve_inside(bucket_dir, parsed.key, parsed, follow_final=False)
        return parsed, path, bucket_dir

    def _make_temp(self, parsed: S3Uri, folder: Path, bucket_dir: Path) -> tuple[int, str]:
        # Same folder as the target so os.replace is a rename on one file system. mkstemp makes the file
        # 0600: objects are the server's private data. The folder is made only when it is missing (the
        # common case, a folder that exists, costs no mkdir).
        for attempt in range(5):
            try:
                return tempfile.mkstemp(prefix=_TMP_PREFIX, dir=folder)
            except (FileNotFoundError, NotADirectoryError):
                # Either an object sits where a folder must go, or the folder is missing (never made, or
                # a concurrent delete() pruned it): make it and try again.
                if _file_in_the_way(folder, bucket_dir):
                    raise BlobConflict(f"cannot store {parsed}: a parent of that key is an object") from None
                if attempt == 4:
                    raise
                with contextlib.suppress(FileExistsError, FileNotFoundError):
                    folder.mkdir(parents=True, exist_ok=True)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _bucket_dir(self, bucket: str) -> Path:
        # S3Uri already keeps "/", "." and ".." out of bucket names; the folder must not be a symlink
        # either. The root is resolved, so only the last component can be a link: one lstat tells (what
        # Path.resolve found with an lstat per component of the whole path, ~30 µs a call).
        path = self._bucket_paths.get(bucket)
        if path is None:
            path = self._root / bucket
            if len(self._bucket_paths) >= _MAX_BUCKET_PATHS:  # names come from callers: keep it bounded
                self._bucket_paths.clear()
            self._bucket_paths[bucket] = path
        try:
            st = os.lstat(path)
        except OSError:  # missing (created on the first put), or the root is not there: nothing to follow
            return path
        if stat.S_ISLNK(st.st_mode):
            raise InvalidS3Uri(f"s3://{bucket}/: the bucket folder leads outside the object store")
        return path

    def _object_path(self, uri: S3Uri, *, follow_final: bool = True) -> Path:
        return self._resolve_inside(self._bucket_dir(uri.bucket), uri.key, uri, follow_final=follow_final)

    def _resolve_inside(self, base: Path, rel: str, uri: S3Uri, *, follow_final: bool = True) -> Path:
        """``base / rel`` with each segment checked and symlinks resolved; refused if it leaves base.

        ``base`` is a bucket folder (:meth:`_bucket_dir`: no symlink, under the resolved root), so when no
        component below it is a symlink the path resolves to itself. That is checked with one lstat per
        key segment (what realpath would lstat below base anyway); only a path through a symlink takes
        the full resolve. The segments are plain names (no "", ".", ".."), so joining them is exact.
        """
        segments = rel.split("/")
        for segment in segments:
            _check_segment(segment, uri)
        path = base / rel
        here = str(base)
        for segment in segments if follow_final else segments[:-1]:
            here = here + "/" + segment
            try:
                mode = os.lstat(here).st_mode
            except OSError:  # missing, or below a file (ENOTDIR): nothing further down can be a link
                return path
            if stat.S_ISLNK(mode):
                return self._resolve_links(base, path, uri, follow_final=follow_final)
            if not stat.S_ISDIR(mode):  # a file: nothing below it exists
                return path
        return path

    def _resolve_links(self, base: Path, path: Path, uri: S3Uri, *, follow_final: bool) -> Path:
        """The slow path of :meth:`_resolve_inside`, for a path through a symlink."""
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


def _fsync_folder(folder: Path) -> None:
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


# --- the object API: records, files, writers, readers, pages ---------------------------------------------


def _mtime(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime_ns / 1e9, UTC)


def _record(etag: str, attributes: Mapping[str, str], st: os.stat_result) -> bytes:
    """The xattr value: the etag and attributes, dated by the size and mtime of the file they describe."""
    value = {"etag": etag, "attributes": dict(attributes), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _parse_record(raw: bytes) -> dict[str, Any] | None:
    """The record, or None if it is not one this version wrote (then the etag is computed again)."""
    try:
        value = json.loads(raw)
        ok = (
            isinstance(value.get("etag"), str)
            and isinstance(value.get("size"), int)
            and isinstance(value.get("mtime_ns"), int)
            and isinstance(value.get("attributes"), dict)
            and all(isinstance(v, str) for v in value["attributes"].values())
        )
    except (ValueError, AttributeError):
        return None
    return value if ok else None


def _md5_of_fd(fd: int, size: int) -> str:
    # pread: no shared file offset, so a reader's chunks() may run meanwhile. MD5 names content here,
    # it does not protect anything (usedforsecurity=False keeps FIPS builds working).
    digest = hashlib.md5(usedforsecurity=False)
    buffer = bytearray(_IO_CHUNK)
    view = memoryview(buffer)
    offset = 0
    while offset < size:
        n = os.preadv(fd, [view], offset)
        if n == 0:
            break  # shrank meanwhile (changed in place): the caller does not cache this etag
        digest.update(view[:n])
        offset += n
    return digest.hexdigest()


def _open_regular(path: Path | str, flags: int = 0) -> tuple[int, os.stat_result] | None:
    """The regular file at ``path`` opened for reading, with its stat; None if there is none."""
    try:
        fd = os.open(path, _O_READ | flags)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink (a file swapped for a link meanwhile)
            return None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # a folder ("a/b" when only "a/b/c" exists), a FIFO, ...
        os.close(fd)
        return None
    return fd, st


def _remove_unlocked(path: str, cutoff: float | None = None) -> bool:
    """Remove a temp file unless a live writer holds its lock (or it was written after ``cutoff``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if cutoff is not None and os.fstat(fd).st_mtime >= cutoff:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # an ObjectWriter is still writing it
        try:
            os.unlink(path)
        except FileNotFoundError:  # committed (renamed away) or removed meanwhile
            return False
        return True
    finally:
        os.close(fd)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


_SHRANK = "a part shrank while it was being copied (changed outside the store)"


def _copy_file(src_fd: int, dst_fd: int, size: int) -> None:
    """Append ``size`` bytes of ``src_fd`` (from its start) at ``dst_fd``'s position: in the kernel with
    copy_file_range (a reflink on XFS/btrfs), else through a buffer."""
    offset = 0
    if hasattr(os, "copy_file_range"):
        while offset < size:
            try:
                copied = os.copy_file_range(src_fd, dst_fd, size - offset, offset)
            except OSError as exc:
                if exc.errno not in _NO_COPY_RANGE:
                    raise
                break  # this pair of files cannot: copy the rest by hand
            if copied == 0:
                raise OSError(errno.EIO, _SHRANK)
            offset += copied
    while offset < size:
        data = os.pread(src_fd, min(_IO_CHUNK, size - offset), offset)
        if not data:
            raise OSError(errno.EIO, _SHRANK)
        _write_all(dst_fd, memoryview(data))
        offset += len(data)


class _LocalWriter(ObjectWriter):
    """Bytes go straight to the temp file (os.write, no buffer in between: the caller's chunks are
    already big, and compose appends with copy_file_range at the same file position)."""

    def __init__(
        self, store: LocalBlobStore, uri: S3Uri, path: Path, bucket_dir: Path, fd: int, tmp: str
    ) -> None:
        self.bytes_written = 0
        self._store = store
        self._uri = uri
        self._path = path
        self._bucket_dir = bucket_dir
        self._fd: int | None = fd
        self._tmp = tmp

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        _write_all(self._open_fd(), view)
        self.bytes_written += view.nbytes

    def append_file(self, src_fd: int, size: int) -> None:
        """Append a whole file (compose)."""
        _copy_file(src_fd, self._open_fd(), size)
        self.bytes_written += size

    def commit(self, *, etag: str, attributes: Mapping[str, str]) -> ObjectMeta:
        fd = self._open_fd()
        try:
            kept = check_commit(etag, attributes)
            st = os.fstat(fd)  # after the last write: the mtime the record is dated with
            if not self._store._commit_record(fd, _record(etag, kept, st), self._uri):
                kept = {}  # degraded mode: what later reads will report
            os.fsync(fd)  # bytes and the record together
            self._rename()
        except BaseException:
            self.abort()
            raise
        # Closed only now: the lock kept sweeping away from the temp file up to the rename.
        self._fd = None
        os.close(fd)
        _fsync_folder(self._path.parent)
        return ObjectMeta(st.st_size, etag, _mtime(st), kept)

    def abort(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)
        # The folder open_write made for this object must not outlive it: it would block a key named like it.
        self._store._prune_empty_parents(self._path.parent, self._bucket_dir)

    def _rename(self) -> None:
        try:
            os.replace(self._tmp, self._path)
        except IsADirectoryError:
            raise BlobConflict(f"cannot store {self._uri}: objects under {self._uri.key}/ exist") from None
        except FileNotFoundError:
            raise BlobNotFound(
                f"cannot store {self._uri}: its temp file was removed while it was written (bucket deleted?)"
            ) from None

    def _open_fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"the writer for {self._uri} is already committed or aborted")
        return self._fd

    def __del__(self) -> None:
        # A writer dropped without commit or abort leaves nothing behind either.
        with contextlib.suppress(Exception):
            self.abort()


class _LocalReader(ObjectReader):
    """Holds the file open: a replacement (a rename onto the path) never touches the bytes read here."""

    def __init__(self, uri: S3Uri, fd: int, meta: ObjectMeta) -> None:
        self.meta = meta
        self._uri = uri
        self._fd: int | None = fd

    def chunks(self, start: int = 0, end: int | None = None, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        start, end = self._bounds(start, end, chunk_size)  # checked now, not at the first next()
        return self._chunks(start, end, chunk_size)

    def _chunks(self, start: int, end: int, chunk_size: int) -> Iterator[bytes]:
        offset = start
        while offset < end:
            if self._fd is None:
                raise ValueError(f"the reader for {self._uri} is closed")
            data = os.pread(self._fd, min(chunk_size, end - offset), offset)
            if not data:
                raise OSError(errno.EIO, f"{self._uri} shrank while it was read (changed outside the store)")
            offset += len(data)
            yield data

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


# Entry kinds in a listed folder. A folder sorts as name + "/" and a file as its name: within one folder
# that is exactly the UTF-8 byte order of the full keys (no name holds "/", so no folder's "x/" is a
# prefix of another entry), and every key under a folder comes right after it.
_DIR, _FILE, _LINK = 0, 1, 2


def _valid_name(name: str) -> bool:
    # Names that are not UTF-8 (undecodable bytes come back as surrogates) can be no S3 key.
    if _segment_problem(name) is not None:
        return False
    if name.isascii():
        return True
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _key_fits(key: str) -> bool:
    return len(key) <= MAX_KEY_BYTES // 4 or len(key.encode("utf-8")) <= MAX_KEY_BYTES


class _Page:
    """One list_page call: a lazy walk of the bucket in key order that stops after ``limit`` entries.

    A file system gives no order, so each folder on the way is read whole (see ``_entries``; a folder not
    changed for a while is read once and its sorted names kept, see ``_Listings``: a page then bisects to
    where it starts and costs what it lists, however large the folder), but only
    folders that can hold entries of the page are read: folders whose keys all sort at or before
    ``start_after``, lie outside the prefix, or roll up into a common prefix are skipped unread
    (apart from a cheap "holds any object?" probe that stops at the first one).
    Python's str order is code point order, which is UTF-8 byte order: keys compare as plain strs.
    """

    def __init__(
        self, store: LocalBlobStore, bucket: str, prefix: str, start_after: str, delimiter: str, limit: int
    ) -> None:
        self.store = store
        self.bucket = bucket
        self.prefix = prefix
        self.start_after = start_after
        self.delimiter = delimiter
        self.limit = limit
        self.out: list[tuple[str, ObjectMeta | None]] = []
        # The common prefix just emitted: the keys under it come right after it and are left out.
        self.skip: str | None = None

    def collect(self, start: Path, rel: str) -> list[tuple[str, ObjectMeta | None]]:
        stack = [self._entries(str(start), rel)]
        while stack and len(self.out) < self.limit:
            entry = next(stack[-1], None)
            if entry is None:
                stack.pop()
                continue
            key, kind, path = entry  # within the prefix: _entries keeps no other
            if kind == _DIR:
                inner = self._visit_folder(key, path)
                if inner is not None:
                    stack.append(inner)
            else:
                self._visit_file(key, kind, path)
        return self.out

    def _visit_folder(self, key: str, path: str) -> Iterator[tuple[str, int, str]] | None:
        """The folder's entries to walk, or None if it is skipped or rolled up whole."""
        if self.skip is not None and key.startswith(self.skip):
            return None
        common = self._rollup(key)
        if common is None:
            return self._entries(path, key)
        # Every key in the folder rolls up into ``common``: one entry, if the folder holds any object.
        if common > self.start_after and self.has_object(path, key):
            self.out.append((common, None))
            self.skip = common
        return None

    def _visit_file(self, key: str, kind: int, path: str) -> None:
        if key <= self.start_after or (self.skip is not None and key.startswith(self.skip)):
            return
        if not _key_fits(key):
            return
        common = self._rollup(key)
        if common is not None:
            if common > self.start_after and (kind == _FILE or self._link_target(key) is not None):
                self.out.append((common, None))
                self.skip = common
            return
        meta = self._meta(key, kind, path)
        if meta is not None:
            self.out.append((key, meta))

    def _rollup(self, key: str) -> str | None:
        """The common prefix of every key starting with ``key``, or None if they do not share one. A
        delimiter that only starts inside ``key`` (a folder "p/" and the delimiter "/x") is not found:
        the keys under it may differ, so the folder is walked and its keys grouped one by one."""
        if not self.delimiter:
            return None
        at = key.find(self.delimiter, len(self.prefix))
        if at < 0:
            return None
        return key[: at + len(self.delimiter)]

    def _entries(self, folder: str, rel: str) -> Iterator[tuple[str, int, str]]:
        """The folder's entries that can matter, as (full key, kind, path), in key order.

        Cheap per entry, since a flat folder may hold the whole bucket: names whose keys all sort at or
        before start_after or lie outside the prefix are dropped on sight (so callers see only keys
        within the prefix), and the rest go on a heap that yields them lazily (heapify is linear; a
        page pops only what it uses, unlike a full sort). Only popped entries get the dearer checks
        (valid key, symlink).
        """
        tail = self.start_after[len(rel) :] if self.start_after.startswith(rel) else ""
        if not tail and self.start_after > rel:
            return iter(())  # start_after sorts after every key in this folder
        # Only the start folder can have a prefix tail (deeper folders lie wholly inside the prefix).
        need = self.prefix[len(rel) :] if self.prefix.startswith(rel) else ""
        listing = self.store._listings.get(folder)
        if listing is not None:
            return listing.entries(folder, rel, tail, need)
        heap: list[tuple[str, bool, os.DirEntry[str]]] = []
        try:
            with os.scandir(folder) as scan:
                for item in scan:
                    try:
                        is_dir = item.is_dir(follow_symlinks=False)  # from d_type: no system call
                    except OSError:
                        continue
                    name = item.name + "/" if is_dir else item.name
                    if tail and name <= tail and not (is_dir and tail.startswith(name)):
                        continue  # it and every key under it sort at or before start_after
                    if need and not name.startswith(need):
                        continue
                    heap.append((name, is_dir, item))  # names are unique: ties never reach the DirEntry
        except (FileNotFoundError, NotADirectoryError):  # removed while we walk
            return iter(())
        heapq.heapify(heap)
        return _drain(heap, rel)

    def has_object(self, folder: str, rel: str) -> bool:
        """Whether the folder holds any object; stops at the first (os.scandir reads lazily)."""
        try:
            with os.scandir(folder) as scan:
                for item in scan:
                    entry = _classify(item, rel)
                    if entry is None:
                        continue
                    key, kind, path = entry
                    if kind == _DIR:
                        if self.has_object(path, key):
                            return True
                    elif _key_fits(key) and (kind == _FILE or self._link_target(key) is not None):
                        return True
        except (FileNotFoundError, NotADirectoryError):
            return False
        return False

    def _link_target(self, key: str) -> Path | None:
        """Where a symlinked key leads, if that is a regular file inside the bucket (the usual check)."""
        try:
            target = self.store._object_path(S3Uri(self.bucket, key))
        except InvalidS3Uri:
            return None
        return target if target.is_file() else None

    def _meta(self, key: str, kind: int, path: str) -> ObjectMeta | None:
        if kind == _LINK:
            target = self._link_target(key)
            if target is None:
                return None
            opened = _open_regular(target)
        else:
            # O_NOFOLLOW: this was a plain file when the folder was read; a link swapped in since is skipped.
            opened = _open_regular(path, os.O_NOFOLLOW)
        if opened is None:
            return None  # removed meanwhile
        fd, st = opened
        try:
            return self.store._meta_of(fd, st)
        finally:
            os.close(fd)


def _drain(heap: list[tuple[str, bool, os.DirEntry[str]]], rel: str) -> Iterator[tuple[str, int, str]]:
    while heap:
        _, _, item = heapq.heappop(heap)
        entry = _classify(item, rel)
        if entry is not None:
            yield entry


def _classify(item: os.DirEntry[str], rel: str) -> tuple[str, int, str] | None:
    """(full key, kind, path) for a folder entry that can be (or hold) an object, else None."""
    name = item.name
    if not _valid_name(name):
        return None
    try:
        if item.is_dir(follow_symlinks=False):
            return rel + name + "/", _DIR, item.path
        if item.is_file(follow_symlinks=False):
            return rel + name, _FILE, item.path
        # Symlinked folders are not listed (as in list()); a symlinked file is checked when it is reached.
        if item.is_symlink() and not item.is_dir():
            return rel + name, _LINK, item.path
    except OSError:
        return None
    return None


class _Listing:
    """One folder's entries that can be (or hold) objects, as a folder reads, sorted in key order: names
    (folders as name + "/", as _Page sorts them) and which of them are symlinks. Never changed once made, so
    threads share it without a lock."""

    __slots__ = ("links", "names", "signature")

    def __init__(self, signature: tuple[int, int, int], names: list[str], links: frozenset[str]) -> None:
        self.signature = signature
        self.names = names
        self.links = links

    @classmethod
    def read(cls, folder: str, signature: tuple[int, int, int]) -> _Listing | None:
        names: list[str] = []
        links: list[str] = []
        try:
            with os.scandir(folder) as scan:
                for item in scan:
                    name = item.name
                    if not _valid_name(name):  # temp files, names no key can have
                        continue
                    try:
                        if item.is_dir(follow_symlinks=False):  # d_type: no system call
                            names.append(name + "/")
                        elif item.is_file(follow_symlinks=False):
                            names.append(name)
                        elif item.is_symlink():
                            # Where it leads is checked when it is listed (the target may change meanwhile
                            # without touching this folder); a link to a folder is then skipped.
                            names.append(name)
                            links.append(name)
                    except OSError:
                        continue
        except (FileNotFoundError, NotADirectoryError):  # removed meanwhile
            return None
        names.sort()
        return cls(signature, names, frozenset(links))

    def entries(self, folder: str, rel: str, tail: str, need: str) -> Iterator[tuple[str, int, str]]:
        """As _Page._entries: the entries after ``tail`` (but the folder holding it) starting with ``need``,
        found by bisection, so a page costs what it lists however large the folder."""
        names = self.names
        start = bisect_right(names, tail) if tail else 0
        first: list[str] = []
        cut = tail.find("/")
        if cut >= 0:  # the folder that holds start_after: the keys after it in there come first
            holder = tail[: cut + 1]
            at = bisect_left(names, holder)
            if at < len(names) and names[at] == holder and holder.startswith(need):
                first.append(holder)
        if need:
            start = max(start, bisect_left(names, need))
        return self._walk(folder, rel, first, start, need)

    def _walk(
        self, folder: str, rel: str, first: list[str], start: int, need: str
    ) -> Iterator[tuple[str, int, str]]:
        names, links = self.names, self.links
        for name in first:
            yield rel + name, _DIR, os.path.join(folder, name[:-1])
        for at in range(start, len(names)):
            name = names[at]
            if need and not name.startswith(need):
                return  # sorted: no later name starts with it either
            if name[-1] == "/":
                yield rel + name, _DIR, os.path.join(folder, name[:-1])
            else:
                yield rel + name, _LINK if name in links else _FILE, os.path.join(folder, name)


class _Listings:
    """The store's cache of folder listings (:class:`_Listing`), least recently used first, holding at most
    ``budget`` names in all. A listing is used only while the folder's (inode, ctime, mtime) is what it was
    when the folder was read, and kept only for folders unchanged for ``_LISTING_SAFE_AGE_NS`` (see there)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._lock = threading.Lock()
        self._folders: OrderedDict[str, _Listing] = OrderedDict()
        self._names = 0

    def get(self, folder: str) -> _Listing | None:
        """The folder's listing, read now if the cached one is stale; None if the folder is too recently
        changed to be cached (or is gone): the caller then reads it itself."""
        try:
            st = os.stat(folder)
        except OSError:
            self._drop(folder)
            return None
        signature = (st.st_ino, st.st_ctime_ns, st.st_mtime_ns)
        with self._lock:
            listing = self._folders.get(folder)
            if listing is not None and listing.signature == signature:
                self._folders.move_to_end(folder)
                return listing
        # time.time_ns: the clock the kernel dates files by (its coarse variant).
        if time.time_ns() - max(st.st_ctime_ns, st.st_mtime_ns) < _LISTING_SAFE_AGE_NS:
            self._drop(folder)
            return None
        # Read after the stat: what changes later sets a newer ctime, and the next use reads it again.
        listing = _Listing.read(folder, signature)
        if listing is None or len(listing.names) > self.budget:
            self._drop(folder)
            return listing
        with self._lock:
            old = self._folders.pop(folder, None)
            if old is not None:
                self._names -= len(old.names)
            self._folders[folder] = listing
            self._names += len(listing.names)
            while self._names > self.budget:
                _, evicted = self._folders.popitem(last=False)
                self._names -= len(evicted.names)
        return listing

    def _drop(self, folder: str) -> None:
        with self._lock:
            old = self._folders.pop(folder, None)
            if old is not None:
                self._names -= len(old.names)
