"""The object API of the local store: the shared contract plus what only a folder of files can show
(key checks, xattr records, lazy etags, crashed writers, folder walking cost)."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import mlharbor.blobs.local as local_module
from mlharbor.blobs.local import LocalBlobStore
from mlharbor.blobs.store import BlobConflict, BlobNotFound, BlobStore, InvalidS3Uri

from .object_api_contract import ObjectApiContract, brute_force, md5, read_all, shape

XATTR = "user.mlharbor.object"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "objects"


@pytest.fixture
def local(root: Path) -> LocalBlobStore:
    return LocalBlobStore(root)


@pytest.fixture
def needs_xattrs(tmp_path: Path) -> None:
    """Skips where the test folder's file system keeps no user xattrs (tmpfs before Linux 6.6): the store
    then runs degraded, which test_without_xattrs_it_still_works covers on any file system."""
    probe = tmp_path / "xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.mlharbor.probe", b"1")
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            pytest.skip("no user extended attributes on this file system")
        raise
    finally:
        probe.unlink()


class TestLocalObjectApi(ObjectApiContract):
    @pytest.fixture
    def store(self, local: LocalBlobStore, needs_xattrs: None) -> BlobStore:
        return local

    @pytest.fixture
    def bucket(self) -> str:
        return "bucket"


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".mlharbor-tmp-")]


def record(path: Path) -> dict:
    return json.loads(os.getxattr(path, XATTR))


# --- keys -----------------------------------------------------------------------------------------
HOSTILE = [
    "s3://b/../x",
    "s3://b/a/../../x",
    "s3://b/./x",
    "s3://b//x",
    "s3://b/a//c",
    "s3://b/..\\x",
    "s3://b/a\0b",
    "s3://b/.mlharbor-tmp-x",
    "s3://b/" + "n" * 256,
]


@pytest.mark.parametrize("uri", HOSTILE)
def test_hostile_keys_are_refused_up_front(local: LocalBlobStore, root: Path, uri: str) -> None:
    with pytest.raises(InvalidS3Uri):
        local.open_write(uri)
    with pytest.raises(InvalidS3Uri):
        local.open_object(uri)
    with pytest.raises(InvalidS3Uri):
        local.stat(uri)
    with pytest.raises(InvalidS3Uri):
        local.copy("s3://b/ok", uri, etag="e", attributes={})
    with pytest.raises(InvalidS3Uri):
        local.compose(uri, [], etag="e", attributes={})
    assert not root.parent.joinpath("x").exists()
    assert not root.exists() or temp_files(root) == []


def test_folder_marker_keys_are_refused(local: LocalBlobStore) -> None:
    with pytest.raises(InvalidS3Uri):
        local.open_write("s3://b/folder/")
    with pytest.raises(BlobNotFound):
        local.open_object("s3://b/folder/")


def test_percent_encoding_is_a_literal_name(local: LocalBlobStore, root: Path) -> None:
    with local.open_write("s3://b/%2e%2e/x") as writer:
        writer.write(b"literal")
        writer.commit(etag="e", attributes={})
    assert (root / "b" / "%2e%2e" / "x").read_bytes() == b"literal"
    assert [key for key, _ in local.list_page("b")] == ["%2e%2e/x"]


def test_symlink_out_of_the_root_is_refused(local: LocalBlobStore, root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (root / "b").mkdir(parents=True)
    (root / "b" / "link").symlink_to(outside, target_is_directory=True)
    (root / "b" / "filelink").symlink_to(outside / "secret")
    for key in ["link/secret", "link/new", "filelink"]:
        with pytest.raises(InvalidS3Uri):
            local.open_object(f"s3://b/{key}")
    with pytest.raises(InvalidS3Uri):
        local.open_write("s3://b/link/new")
    with pytest.raises(InvalidS3Uri):
        local.compose("s3://b/out", ["s3://b/filelink"], etag="e", attributes={})
    assert local.list_page("b") == []
    assert local.list_page("b", prefix="link/") == []
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


def test_conflicts_are_known_up_front(local: LocalBlobStore) -> None:
    local.put("s3://b/a/b", b"file")
    with pytest.raises(BlobConflict):
        local.open_write("s3://b/a/b/c")
    local.put("s3://b/x/y/z", b"deep")
    with pytest.raises(BlobConflict):
        local.open_write("s3://b/x/y")


def test_conflict_arising_while_writing_fails_the_commit(local: LocalBlobStore, root: Path) -> None:
    writer = local.open_write("s3://b/x")
    writer.write(b"1")
    local.put("s3://b/x/y", b"now a folder")
    with pytest.raises(BlobConflict):
        writer.commit(etag="e", attributes={})
    assert temp_files(root) == []


# --- records and etags ----------------------------------------------------------------------------
@pytest.mark.usefixtures("needs_xattrs")
def test_commit_sets_the_record_before_the_rename(
    local: LocalBlobStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict] = []
    real_replace = os.replace

    def replace(src: str, dst: Path) -> None:
        seen.append(json.loads(os.getxattr(src, XATTR)))  # the temp file already carries it
        real_replace(src, dst)

    with local.open_write("s3://b/k") as writer:
        writer.write(b"data")
        monkeypatch.setattr(os, "replace", replace)
        writer.commit(etag="e-2", attributes={"ct": "x/y"})
        monkeypatch.undo()
    assert seen and seen[0]["etag"] == "e-2" and seen[0]["attributes"] == {"ct": "x/y"}
    assert record(root / "b" / "k")["etag"] == "e-2"


@pytest.mark.usefixtures("needs_xattrs")
def test_put_writes_no_record_and_the_etag_is_cached_lazily(
    local: LocalBlobStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = os.urandom(100_000)
    local.put("s3://b/p", payload)
    path = root / "b" / "p"
    assert os.listxattr(path) == []  # put stays as cheap as before
    hashed: list[int] = []
    real_md5 = local_module._md5_of_fd

    def counting_md5(fd: int, size: int) -> str:
        hashed.append(size)
        return real_md5(fd, size)

    monkeypatch.setattr(local_module, "_md5_of_fd", counting_md5)
    assert local.stat("s3://b/p").etag == hashlib.md5(payload).hexdigest()
    assert record(path)["etag"] == hashlib.md5(payload).hexdigest()
    assert local.stat("s3://b/p").etag == hashlib.md5(payload).hexdigest()
    assert read_all(local, "s3://b/p")[0].etag == hashlib.md5(payload).hexdigest()
    assert dict(local.list_page("b"))["p"].etag == hashlib.md5(payload).hexdigest()  # type: ignore[union-attr]
    assert hashed == [len(payload)]  # once


def test_file_rewritten_in_place_gets_a_new_etag(local: LocalBlobStore, root: Path) -> None:
    with local.open_write("s3://b/k") as writer:
        writer.write(b"committed")
        writer.commit(etag="multi-2", attributes={"a": "1"})
    path = root / "b" / "k"
    inode = path.stat().st_ino
    time.sleep(0.01)
    with open(path, "r+b") as fh:  # "cp new k": same inode, so the xattr stays
        fh.write(b"rewritten by hand")
    assert path.stat().st_ino == inode
    meta = local.stat("s3://b/k")
    assert (meta.etag, dict(meta.attributes)) == (md5(b"rewritten by hand"), {})


@pytest.mark.usefixtures("needs_xattrs")
def test_reader_keeps_the_version_it_opened(local: LocalBlobStore) -> None:
    with local.open_write("s3://b/k") as writer:
        writer.write(b"old bytes")
        writer.commit(etag="old", attributes={"v": "1"})
    with local.open_object("s3://b/k") as reader:
        with local.open_write("s3://b/k") as writer:
            writer.write(b"new")
            writer.commit(etag="new", attributes={"v": "2"})
        assert (reader.meta.etag, reader.meta.size, dict(reader.meta.attributes)) == ("old", 9, {"v": "1"})
        assert b"".join(reader.chunks()) == b"old bytes"
        local.delete("s3://b/k")
        assert b"".join(reader.chunks(4)) == b"bytes"
    with pytest.raises(ValueError, match="closed"):
        list(reader.chunks())


def test_lazy_etag_never_describes_a_replacement(local: LocalBlobStore, root: Path) -> None:
    # The etag is cached through the descriptor that was hashed: a file renamed over the key meanwhile
    # keeps no record of the old content.
    local.put("s3://b/k", b"first")
    reader = local.open_object("s3://b/k")
    local.put("s3://b/k", b"second")
    reader.close()
    assert local.stat("s3://b/k").etag == md5(b"second")


def test_without_xattrs_it_still_works(
    local: LocalBlobStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unsupported(*args: object) -> None:
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", unsupported)
    monkeypatch.setattr(os, "getxattr", unsupported)
    with caplog.at_level(logging.WARNING, logger="mlharbor.blobs.local"):
        for n in range(2):
            with local.open_write(f"s3://b/k{n}") as writer:
                writer.write(b"abc")
                meta = writer.commit(etag="abc-1", attributes={"a": "1"})
            assert dict(meta.attributes) == {}
        local.put("s3://b/p", b"put")
        assert local.stat("s3://b/k0").etag == md5(b"abc")  # computed each time
        assert local.stat("s3://b/p").etag == md5(b"put")
        assert [k for k, _ in local.list_page("b")] == ["k0", "k1", "p"]
    warnings = [r for r in caplog.records if "extended attributes" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.usefixtures("needs_xattrs")
def test_attributes_too_large_for_the_file_system(local: LocalBlobStore, root: Path) -> None:
    with local.open_write("s3://b/k") as writer:
        writer.write(b"x")
        with pytest.raises(ValueError, match="extended attribute"):
            writer.commit(etag="e", attributes={"big": "v" * 100_000})
    assert not local.exists("s3://b/k")
    assert temp_files(root) == []


# --- writers leave nothing ------------------------------------------------------------------------
def test_aborted_writer_leaves_no_file_and_no_folder(local: LocalBlobStore, root: Path) -> None:
    local.create_bucket("b")
    with local.open_write("s3://b/new/deep/obj") as writer:
        writer.write(b"x")
    assert list((root / "b").iterdir()) == []
    local.put("s3://b/new", b"an object named like the folder")  # nothing blocks it


def test_bytes_go_to_a_temp_file_next_to_the_object(local: LocalBlobStore, root: Path) -> None:
    with local.open_write("s3://b/d/k") as writer:
        writer.write(b"x" * 1000)
        (tmp,) = temp_files(root)
        assert tmp.parent == root / "b" / "d" and tmp.stat().st_size == 1000
        assert local.list_page("b") == []  # never listed
        writer.commit(etag="e", attributes={})
    assert temp_files(root) == []


def test_concurrent_writers_leave_no_temp_files(local: LocalBlobStore, root: Path) -> None:
    def work(n: int) -> None:
        for i in range(20):
            with local.open_write(f"s3://b/d{i % 3}/k") as writer:
                writer.write(bytes([n]) * 100)
                if i % 4:
                    writer.commit(etag=md5(bytes([n]) * 100), attributes={})

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert temp_files(root) == []
    for key, meta in local.list_page("b"):
        assert meta is not None
        assert meta.etag == md5(local.get(f"s3://b/{key}"))


# --- compose --------------------------------------------------------------------------------------
def test_compose_copies_in_the_kernel(local: LocalBlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.copy_file_range

    def counting(src: int, dst: int, count: int, offset_src: int | None = None) -> int:
        calls.append(count)
        return real(src, dst, count, offset_src)

    monkeypatch.setattr(os, "copy_file_range", counting)
    local.put("s3://b/p1", b"a" * 5000)
    local.put("s3://b/p2", b"b" * 7000)
    local.compose("s3://b/out", ["s3://b/p1", "s3://b/p2"], etag="e-2", attributes={})
    assert local.get("s3://b/out") == b"a" * 5000 + b"b" * 7000
    assert calls and sum(calls) >= 12000


def test_compose_falls_back_to_copying(local: LocalBlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def cross_device(*args: object) -> int:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", cross_device)
    parts = [os.urandom(3 * 1024 * 1024 + 5), b"tail"]
    local.put("s3://b/p1", parts[0])
    local.put("s3://b/p2", parts[1])
    meta = local.compose("s3://b/out", ["s3://b/p1", "s3://b/p2"], etag="e-2", attributes={"x": "y"})
    assert local.get("s3://b/out") == b"".join(parts)
    assert meta.size == len(b"".join(parts))


def test_compose_does_not_hash_the_parts(local: LocalBlobStore, root: Path) -> None:
    local.put("s3://b/p", b"part")
    local.compose("s3://b/out", ["s3://b/p"], etag="e-1", attributes={})
    assert os.listxattr(root / "b" / "p") == []


# --- buckets and crashed writers ------------------------------------------------------------------
CRASHING_WRITER = textwrap.dedent(
    """
    import os, sys
    from mlharbor.blobs.local import LocalBlobStore
    writer = LocalBlobStore(sys.argv[1]).open_write(sys.argv[2])
    writer.write(b"half an upload")
    print("written", flush=True)
    sys.stdin.read()  # killed here
    """
)


@pytest.fixture
def crashed_writer(root: Path) -> Callable[[str], None]:
    """Runs a writer in another process and kills it with SIGKILL mid-upload."""

    def crash(uri: str) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-c", CRASHING_WRITER, str(root), uri],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stdout.readline() == b"written\n"
        proc.kill()
        proc.wait()
        assert proc.stdin is not None
        proc.stdin.close()
        proc.stdout.close()

    return crash


def age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_sweep_temporary(local: LocalBlobStore, root: Path, crashed_writer: Callable[[str], None]) -> None:
    crashed_writer("s3://b/crashed/deep/obj")
    local.put("s3://b/keep", b"object")
    live = local.open_write("s3://b/live")
    live.write(b"still uploading")
    fresh = root / "b" / ".mlharbor-tmp-fresh"
    fresh.write_bytes(b"a put that is running")
    for path in temp_files(root):
        if path != fresh:
            age(path, 3600)
    assert len(temp_files(root)) == 3

    assert local.sweep_temporary(older_than_seconds=600) == 1  # the crashed one only
    assert not (root / "b" / "crashed").exists()  # and the folders it made
    assert fresh.exists()
    live.commit(etag="e", attributes={})  # the live writer was not disturbed
    assert local.get("s3://b/live") == b"still uploading"
    assert local.sweep_temporary(older_than_seconds=0) == 1  # now the stale put too
    assert temp_files(root) == []
    assert local.get("s3://b/keep") == b"object"
    assert LocalBlobStore(root / "missing").sweep_temporary(0) == 0


def test_delete_bucket(local: LocalBlobStore, root: Path, crashed_writer: Callable[[str], None]) -> None:
    local.create_bucket("b")
    assert (root / "b").is_dir()
    local.put("s3://b/d/obj", b"x")
    with pytest.raises(BlobConflict):
        local.delete_bucket("b")
    local.delete("s3://b/d/obj")
    crashed_writer("s3://b/d/e/crashed")
    assert temp_files(root)
    local.delete_bucket("b")  # the crashed writer's leftovers and its folders go first
    assert not (root / "b").exists()


def test_delete_bucket_with_a_live_writer(local: LocalBlobStore, root: Path) -> None:
    local.create_bucket("b")
    with local.open_write("s3://b/uploading") as writer:
        writer.write(b"x")
        with pytest.raises(BlobConflict):
            local.delete_bucket("b")
        writer.commit(etag="e", attributes={})
    assert local.get("s3://b/uploading") == b"x"


def test_delete_bucket_with_stray_files(local: LocalBlobStore, root: Path) -> None:
    (root / "b" / "sub").mkdir(parents=True)
    (root / "b" / "sub" / "back\\slash").write_bytes(b"no key names this")
    assert local.list_page("b") == []
    with pytest.raises(BlobConflict):
        local.delete_bucket("b")


def test_create_bucket_over_a_file(local: LocalBlobStore, root: Path) -> None:
    root.mkdir()
    (root / "b").write_bytes(b"")
    with pytest.raises(BlobConflict):
        local.create_bucket("b")


# --- listing the folder tree ----------------------------------------------------------------------
@pytest.fixture(params=["fresh", "cached"])
def listings(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways list_page reads a folder: afresh (every folder here was just written, so too recently to
    be cached) and from the store's cache of folder listings (made to take every folder at once; safe
    here, as nothing changes a folder while it is listed)."""
    if request.param == "cached":
        monkeypatch.setattr(local_module, "_LISTING_SAFE_AGE_NS", -(10**18))
    return request.param


def cached_folders(local: LocalBlobStore) -> list[str]:
    return list(local._listings._folders)


def test_list_page_skips_what_is_no_object(
    local: LocalBlobStore, root: Path, tmp_path: Path, listings: str
) -> None:
    local.put("s3://b/real/obj", b"x")
    base = root / "b"
    (base / "empty" / "deeper").mkdir(parents=True)  # no object: no common prefix
    (base / "tmponly").mkdir()
    (base / "tmponly" / ".mlharbor-tmp-x").write_bytes(b"half")
    (base / "bad\\name").write_bytes(b"x")
    (base / "undecodable").mkdir()
    os.mkfifo(base / "fifo")
    (tmp_path / "outside").write_bytes(b"secret")
    (base / "out-link").symlink_to(tmp_path / "outside")
    (base / "in-link").symlink_to(base / "real" / "obj")
    (base / "dir-link").symlink_to(base / "real", target_is_directory=True)
    (base / "dangling").symlink_to(base / "nowhere")
    if sys.platform == "linux":
        (base / os.fsdecode(b"bad-\xff")).write_bytes(b"not UTF-8")
    assert [(k, m is None) for k, m in local.list_page("b")] == [("in-link", False), ("real/obj", False)]
    assert shape(local.list_page("b", delimiter="/")) == [("in-link", False), ("real/", True)]
    in_link = dict(local.list_page("b"))["in-link"]
    assert in_link is not None and in_link.etag == md5(b"x")


@pytest.fixture
def fast_root(tmp_path: Path) -> Iterator[Path]:
    """A folder in memory where there is one: creating 20,000 files on a VM's disk can take seconds."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path / "objects"
        return
    with tempfile.TemporaryDirectory(dir=shm, prefix="mlharbor-test-") as folder:
        yield Path(folder)


def test_list_page_walks_only_the_folders_it_needs(fast_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = LocalBlobStore(fast_root)
    # 20,000 keys in 20 folders, placed by hand (files put there are objects too; no fsync per file).
    keys = [f"d{i // 1000:02d}/k{i:05d}" for i in range(20_000)]
    for folder in {key.split("/")[0] for key in keys}:
        (fast_root / "big" / folder).mkdir(parents=True)
    for key in keys:
        os.close(os.open(fast_root / "big" / key, os.O_CREAT | os.O_WRONLY, 0o600))

    scanned: list[str] = []
    real_scandir = os.scandir

    def counting(path: str) -> Iterator[os.DirEntry[str]]:
        scanned.append(os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counting)
    started = time.perf_counter()
    page = local.list_page("big", start_after="d19/k19900", limit=50)
    elapsed = time.perf_counter() - started
    assert [key for key, _ in page] == keys[19_901:19_951]
    assert len(scanned) == 2, scanned  # the bucket folder and d19/, not the other 19
    assert elapsed < 5  # generous: the folder count above is the real check

    scanned.clear()
    page = local.list_page("big", prefix="d07/", start_after="d07/k07990")
    assert [key for key, _ in page] == keys[7991:8000]
    assert len(scanned) == 1  # d07/ only

    scanned.clear()
    page = local.list_page("big", delimiter="/", start_after="d05/")
    assert shape(page) == [(f"d{n:02d}/", True) for n in range(6, 20)]
    assert len(scanned) == 1 + 14  # the bucket, then one "holds an object?" probe per common prefix

    scanned.clear()
    page = local.list_page("big", delimiter="/", start_after="d05/", limit=3)
    assert len(page) == 3 and len(scanned) == 1 + 3


def test_list_page_with_hostile_prefixes_is_empty(local: LocalBlobStore) -> None:
    local.put("s3://b/a/x", b"1")
    for prefix in ["../", "a/../", "a//", "/a", "a\\x/", ".mlharbor-tmp-/", "a/b/"]:
        assert local.list_page("b", prefix=prefix) == []
    with pytest.raises(InvalidS3Uri):
        local.list_page("..")


def test_list_page_against_brute_force_with_deep_trees(local: LocalBlobStore, listings: str) -> None:
    names = {f"{a}{sep}{b}" for a in ["p", "p-", "p.q", "p0", "q"] for sep in ["/", "-", "/x/", "/x-"]
             for b in ["1", "1/2", "2-3/4", "é"]}  # fmt: skip
    # A key that is also a "folder" of another ("p/1" and "p/1/2") cannot exist here: keep the longer.
    keys = sorted(k for k in names if not any(other.startswith(k + "/") for other in names))
    for key in keys:
        local.put(f"s3://b/{key}", b"")
    assert len(set(keys)) == len(keys)
    for delimiter in ["", "/", "-", "x", "/x/"]:
        for prefix in ["", "p", "p/", "p/x", "p/x/"]:
            full = brute_force(keys, prefix, "", delimiter)
            for start_after in ["", *[name for name, _ in full]]:
                page = local.list_page(
                    "b", prefix=prefix, start_after=start_after, delimiter=delimiter, limit=4
                )
                assert shape(page) == brute_force(keys, prefix, start_after, delimiter, 4), (
                    delimiter,
                    prefix,
                    start_after,
                )
    assert bool(cached_folders(local)) == (listings == "cached")


class CountingScandir:
    """Wraps os.scandir: counts the folders read and the entries read from them."""

    def __init__(self) -> None:
        self.folders = 0
        self.entries = 0
        self._real = os.scandir

    def __call__(self, path: str) -> CountingScandir._Scan:
        self.folders += 1
        return CountingScandir._Scan(self, self._real(path))

    class _Scan:
        def __init__(self, counter: CountingScandir, scan: Iterator[os.DirEntry[str]]) -> None:
            self._counter = counter
            self._scan = scan

        def __enter__(self) -> Iterator[os.DirEntry[str]]:
            return self

        def __exit__(self, *exc: object) -> None:
            self._scan.close()  # type: ignore[attr-defined]

        def __iter__(self) -> Iterator[os.DirEntry[str]]:
            for item in self._scan:
                self._counter.entries += 1
                yield item


SAFE_AGE_S = 0.2  # the tests' stand-in for _LISTING_SAFE_AGE_NS: well above a kernel clock tick


def test_listing_cache_sees_puts_and_deletes(
    local: LocalBlobStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_module, "_LISTING_SAFE_AGE_NS", int(SAFE_AGE_S * 1e9))
    folder = str(root / "b" / "f")

    def keys() -> list[str]:
        return [key for key, _ in local.list_page("b", prefix="f/")]

    def settle() -> None:  # the folder is now old enough for its listing to be cached
        time.sleep(SAFE_AGE_S * 1.5)
        keys()
        assert folder in cached_folders(local)

    local.put("s3://b/f/a", b"1")
    assert keys() == ["f/a"]
    assert cached_folders(local) == []  # changed too recently to trust its ctime
    settle()
    # Two writes in quick succession right after a cached listing, with listings in between and after.
    local.put("s3://b/f/b", b"2")
    assert keys() == ["f/a", "f/b"]
    local.put("s3://b/f/c", b"3")
    assert keys() == ["f/a", "f/b", "f/c"]
    assert cached_folders(local) == []
    settle()
    with local.open_write("s3://b/f/d") as writer:
        writer.write(b"4")
        writer.commit(etag="e", attributes={})
    assert keys() == ["f/a", "f/b", "f/c", "f/d"]
    settle()
    local.delete("s3://b/f/b")
    assert keys() == ["f/a", "f/c", "f/d"]
    local.delete("s3://b/f/c")
    assert keys() == ["f/a", "f/d"]
    settle()
    # Changed behind the store's back, and a new subfolder (a common prefix) in a cached folder.
    os.unlink(folder + "/a")
    local.put("s3://b/f/sub/x", b"5")
    assert keys() == ["f/d", "f/sub/x"]
    assert shape(local.list_page("b", prefix="f/", delimiter="/")) == [("f/d", False), ("f/sub/", True)]
    settle()
    # A file that vanishes while its folder's listing is cached (it cannot without changing the folder;
    # this stands in for one removed between the check and the open): skipped, as before.
    monkeypatch.setattr(local_module, "_open_regular", lambda path, flags=0: None)
    assert keys() == []


def test_listing_cache_is_bounded(local: LocalBlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_module, "_LISTING_SAFE_AGE_NS", -(10**18))
    local._listings.budget = 5
    for folder in "abc":
        for n in range(2):
            local.put(f"s3://b/{folder}/{n}", b"")
    for folder in "abc":
        local.list_page("b", prefix=f"{folder}/")
    assert [Path(f).name for f in cached_folders(local)] == ["b", "c"]  # 2 names each: "a" went first
    assert local._listings._names == 4


def test_list_page_pages_through_a_huge_flat_folder(fast_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = LocalBlobStore(fast_root)
    keys = [f"k{i:05d}" for i in range(50_000)]
    (fast_root / "flat").mkdir()
    for key in reversed(keys):
        os.close(os.open(fast_root / "flat" / key, os.O_CREAT | os.O_WRONLY, 0o600))
    monkeypatch.setattr(local_module, "_LISTING_SAFE_AGE_NS", int(SAFE_AGE_S * 1e9))
    time.sleep(SAFE_AGE_S * 1.5)
    counter = CountingScandir()
    monkeypatch.setattr(os, "scandir", counter)
    listed: list[str] = []
    while True:
        page = local.list_page("flat", start_after=listed[-1] if listed else "", limit=1000)
        listed += [key for key, _ in page]
        if len(page) < 1000:
            break
    assert listed == keys
    # One read of the folder for all 50 pages (reading it per page read 2.5 million entries).
    assert counter.folders == 1 and counter.entries == len(keys)
    # A deep page after a change: read again once, then from the cache.
    local.put("s3://flat/k49999x", b"")
    time.sleep(SAFE_AGE_S * 1.5)
    assert [key for key, _ in local.list_page("flat", start_after="k49998")] == ["k49999", "k49999x"]
    assert [key for key, _ in local.list_page("flat", start_after="k48999", limit=2)] == ["k49000", "k49001"]
    assert counter.folders == 2 and counter.entries == 2 * len(keys) + 1


def test_symlinks_made_after_the_first_call_are_refused(
    local: LocalBlobStore, root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "x").write_bytes(b"secret")
    (outside / "deep" / "x").write_bytes(b"secret")
    local.put("s3://b/a/deep/x", b"mine")
    local.put("s3://b2/x", b"mine")
    for uri in ["s3://b/a/deep/x", "s3://b2/x"]:
        assert local.get(uri) == b"mine"
    # An intermediate folder, then a deeper one, swapped for links out of the root.
    (root / "b" / "a").rename(root / "b" / "a-real")
    (root / "b" / "a").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InvalidS3Uri):
        local.get("s3://b/a/deep/x")
    with pytest.raises(InvalidS3Uri):
        local.put("s3://b/a/deep/new", b"")
    (root / "b" / "a").unlink()
    (root / "b" / "a").mkdir()
    (root / "b" / "a" / "deep").symlink_to(outside / "deep", target_is_directory=True)
    with pytest.raises(InvalidS3Uri):
        local.get("s3://b/a/deep/x")
    # The bucket folder itself.
    (root / "b2").rename(root / "b2-real")
    (root / "b2").symlink_to(outside, target_is_directory=True)
    for call in [
        lambda: local.get("s3://b2/x"),
        lambda: local.list_page("b2"),
        lambda: local.exists("s3://b2/x"),
    ]:
        with pytest.raises(InvalidS3Uri):
            call()
    assert sorted(p.name for p in outside.rglob("*")) == ["deep", "x", "x"]
