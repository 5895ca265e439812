"""The object API for the S3 service (open_write, open_object, stat, list_page, compose, copy, buckets):
the behaviour both back ends share. test_object_api_local.py and test_object_api_s3.py run it.

Not collected by itself (the file name does not start with ``test_``).
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from mlharbor.blobs.store import BlobConflict, BlobNotFound, BlobStore, ObjectMeta, S3Uri

# Names whose order trips up naive listings: '-' (0x2d) and '.' (0x2e) sort before '/' (0x2f), '0' after
# it; multi-byte UTF-8 (U+FF61 is 3 bytes, U+1F600 is 4: UTF-16 order would put it first); "%2e%2e" is a
# literal name. No key is both an object and a "folder" (the local store cannot hold "a" and "a/b").
TRICKY_KEYS = [
    "a-b",
    "a.b",
    "a0",
    "a b",
    "a/b-c",
    "a/b.c",
    "a/b0",
    "a/b/c",
    "a/b/c-d/e",
    "a/b/cd",
    "a/bc",
    "a%2e",
    "%2e%2e/x",
    "b",
    "é/x",
    "éa",
    "\uff61",
    "\U0001f600/y",
    "\U0001f600-",
    "z~",
    "A",
    "Z/-",
    "a-/x",
    "a-b-c/d",
    "x/y-z/w",
    "x/y/z",
    "x/y0",
    "x/y-",
    "x-y/z",
]
PREFIXES = ["", "a", "a/", "a/b", "a/b/", "x/y", "é", "a-", "zzz"]
DELIMITERS = ["", "/", "-", "b/", "/c"]
STARTS_AFTER = ["", "a", "a-", "a/b", "a/b/", "a/b/c", "a/b/c-d/e", "a/b0", "b", "x/y-", "\U0001f600", "zzzz"]

Entry = tuple[str, bool]  # (key or common prefix, is a common prefix)


def brute_force(
    keys: list[str], prefix: str = "", start_after: str = "", delimiter: str = "", limit: int | None = None
) -> list[Entry]:
    """ListObjectsV2 by its definition, over every key: the reference list_page must match."""
    entries: list[Entry] = []
    for key in sorted(keys, key=lambda k: k.encode("utf-8")):
        if not key.startswith(prefix):
            continue
        at = key.find(delimiter, len(prefix)) if delimiter else -1
        entry = (key[: at + len(delimiter)], True) if at >= 0 else (key, False)
        if not entries or entries[-1] != entry:
            entries.append(entry)
    after = start_after.encode("utf-8")
    entries = [entry for entry in entries if entry[0].encode("utf-8") > after]
    return entries if limit is None else entries[:limit]


def shape(page: list[tuple[str, ObjectMeta | None]]) -> list[Entry]:
    return [(name, meta is None) for name, meta in page]


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def read_all(store: BlobStore, uri: str) -> tuple[ObjectMeta, bytes]:
    with store.open_object(uri) as reader:
        return reader.meta, b"".join(reader.chunks())


def vm_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def peak_rss_growth_mib(work: Callable[[], object]) -> float:
    """How far the process's resident memory rose above its level before ``work``, sampled every 5 ms
    (RSS counts what the process holds, not the page cache the written file sits in)."""
    base = vm_rss_kib()
    peak = base
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.005):
            peak = max(peak, vm_rss_kib())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        work()
    finally:
        done.set()
        sampler.join()
    return (max(peak, vm_rss_kib()) - base) / 1024


class ObjectApiContract:
    """Subclasses provide the ``store`` and ``bucket`` fixtures (an empty bucket)."""

    # How big the shared memory test writes (the S3 one uploads it to moto, which keeps it in memory).
    memory_test_mib = 256
    starts_after = STARTS_AFTER
    resume_limits = [1, 3]

    @pytest.fixture
    def uri(self, bucket: str) -> Callable[[str], str]:
        return lambda key: f"s3://{bucket}/{key}"

    # --- writing ----------------------------------------------------------------------------------------
    def test_write_commit_round_trip(self, store: BlobStore, uri: Callable[[str], str]) -> None:
        attributes = {"content-type": "text/plain; charset=ü", "x-amz-meta-note": 'a "quoted"\nline €'}
        with store.open_write(uri("dir/obj.txt")) as writer:
            writer.write(b"hello ")
            writer.write(memoryview(b"world"))
            assert writer.bytes_written == 11
            meta = writer.commit(etag="0123abcd-2", attributes=attributes)
        assert (meta.size, meta.etag, dict(meta.attributes)) == (11, "0123abcd-2", attributes)
        assert meta.last_modified.utcoffset() is not None
        stat = store.stat(uri("dir/obj.txt"))
        assert (stat.size, stat.etag, dict(stat.attributes)) == (11, "0123abcd-2", attributes)
        read_meta, data = read_all(store, uri("dir/obj.txt"))
        assert data == b"hello world"
        assert (read_meta.size, read_meta.etag, dict(read_meta.attributes)) == (11, "0123abcd-2", attributes)
        assert store.get(uri("dir/obj.txt")) == b"hello world"  # the old API sees it too

    def test_committed_meta_matches_stat(self, store: BlobStore, uri: Callable[[str], str]) -> None:
        with store.open_write(uri("k")) as writer:
            writer.write(b"x" * 1000)
            meta = writer.commit(etag=md5(b"x" * 1000), attributes={"a": "1"})
        stat = store.stat(uri("k"))
        assert (stat.size, stat.etag, dict(stat.attributes)) == (meta.size, meta.etag, dict(meta.attributes))
        assert abs((stat.last_modified - meta.last_modified).total_seconds()) < 2

    def test_replace_changes_bytes_and_meta_together(
        self, store: BlobStore, uri: Callable[[str], str]
    ) -> None:
        store.put(uri("k"), b"old")
        with store.open_write(uri("k")) as writer:
            writer.write(b"new!")
            writer.commit(etag="e2", attributes={"v": "2"})
        meta, data = read_all(store, uri("k"))
        assert (data, meta.etag, dict(meta.attributes), meta.size) == (b"new!", "e2", {"v": "2"}, 4)

    def test_abort_leaves_nothing(self, store: BlobStore, uri: Callable[[str], str]) -> None:
        writer = store.open_write(uri("new/deep/obj"))
        writer.write(b"partial")
        writer.abort()
        writer.abort()  # twice is fine
        assert not store.exists(uri("new/deep/obj"))
        with pytest.raises(BlobNotFound):
            store.stat(uri("new/deep/obj"))
        with pytest.raises(ValueError):
            writer.write(b"more")
        with pytest.raises(ValueError):
            writer.commit(etag="e", attributes={})
        assert store.list_page(S3Uri.parse(uri("")).bucket) == []

    def test_uncommitted_context_manager_aborts(self, store: BlobStore, uri: Callable[[str], str]) -> None:
        with store.open_write(uri("k")) as writer:
            writer.write(b"never committed")
        assert not store.exists(uri("k"))
        with pytest.raises(RuntimeError), store.open_write(uri("k")) as writer:
            writer.write(b"x")
            raise RuntimeError("client went away")
        assert not store.exists(uri("k"))
        store.put(uri("k"), b"old")
        with pytest.raises(RuntimeError), store.open_write(uri("k")) as writer:
            writer.write(b"new")
            raise RuntimeError("client went away")
        assert store.get(uri("k")) == b"old"

    def test_dropped_writer_leaves_nothing(self, store: BlobStore, uri: Callable[[str], str]) -> None:
        writer = store.open_write(uri("dropped"))
        writer.write(b"x" * 100)
        del writer  # neither committed nor aborted
        assert not store.exists(uri("dropped"))
        assert store.list_page(S3Uri.parse(uri("")).bucket) == []

    def test_commit_once(self, store: BlobStore, uri: Callable[[str], str]) -> None:
        writer = store.open_write(uri("k"))
        writer.write(b"x")
        writer.commit(etag="e", attributes={})
        writer.abort()  # after commit: nothing happens
        with pytest.raises(ValueError):
            writer.commit(etag="e", attributes={})
        with pytest.raises(ValueError):
            writer.write(b"y")
        assert store.get(uri("k")) == b"x"

    @pytest.mark.parametrize(
        ("etag", "attributes", "error"),
        [("", {}, ValueError), ('"quoted"', {}, ValueError), ("e", {"a": 1}, TypeError)],
    )
    def test_bad_commit_arguments_abort(
        self, store: BlobStore, uri: Callable[[str], str], etag: str, attributes: dict, error: type
    ) -> None:
        writer = store.open_write(uri("k"))
        writer.write(b"x")
        with pytest.raises(error):
            writer.commit(etag=etag, attributes=attributes)
        assert not store.exists(uri("k"))

    def test_concurrent_writers_leave_one_whole_object(
        self, store: BlobStore, uri: Callable[[str], str]
    ) -> None:
        payloads = [bytes([n]) * (64 * 1024 + n) for n in range(8)]
        barrier = threading.Barrier(len(payloads))
        errors: list[BaseException] = []

        def write(n: int) -> None:
            try:
                with store.open_write(uri("same/key")) as writer:
                    half = len(payloads[n]) // 2
                    writer.write(payloads[n][:half])
                    barrier.wait()  # everyone mid-object at once
                    writer.write(payloads[n][half:])
                    barrier.wait()
                    writer.commit(etag=md5(payloads[n]), attributes={"writer": str(n)})
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(n,)) for n in range(len(payloads))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        meta, data = read_all(store, uri("same/key"))
        assert data in payloads
        assert meta.etag == md5(data)
        assert meta.size == len(data)
        assert meta.attributes == {"writer": str(data[0])}

    def test_memory_stays_flat_while_writing(self, store: BlobStore, uri: Callable[[str], str]) -> None:
        chunk = os.urandom(1024 * 1024)

        def write() -> None:
            with store.open_write(uri("big.bin")) as writer:
                for _ in range(self.memory_test_mib):
                    writer.write(chunk)
                writer.commit(etag="big", attributes={})

        growth = peak_rss_growth_mib(write)
        assert growth < 48, f"RSS grew by {growth:.0f} MiB writing {self.memory_test_mib} MiB"
        assert store.stat(uri("big.bin")).size == self.memory_test_mib * 1024 * 1024

    # --- reading ----------------------------------------------------------------------------------------
    def test_put_objects_have_the_md5_etag(self, store: BlobStore, uri: Callable[[str], str]) -> None:
        payload = os.urandom(300_000)
        store.put(uri("p/put.bin"), payload)
        meta = store.stat(uri("p/put.bin"))
        assert (meta.size, meta.etag, dict(meta.attributes)) == (len(payload), md5(payload), {})
        assert isinstance(meta.last_modified, datetime) and meta.last_modified.utcoffset() is not None
        assert store.stat(uri("p/put.bin")).etag == md5(payload)  # again, from the cache where there is one
        read_meta, data = read_all(store, uri("p/put.bin"))
        assert (read_meta.etag, data) == (md5(payload), payload)

    def test_missing_objects(self, store: BlobStore, uri: Callable[[str], str]) -> None:
        store.put(uri("dir/file"), b"x")
        for key in ["nope", "dir", "dir/fil"]:
            with pytest.raises(BlobNotFound):
                store.stat(uri(key))
            with pytest.raises(BlobNotFound):
                store.open_object(uri(key))
        with pytest.raises(BlobNotFound):
            store.stat("s3://no-such-bucket-mlharbor/k")

    def test_chunks_ranges(self, store: BlobStore, uri: Callable[[str], str]) -> None:
        payload = bytes(range(256)) * 40  # 10240 bytes
        store.put(uri("r"), payload)
        with store.open_object(uri("r")) as reader:

            def read(*args: int) -> bytes:
                return b"".join(reader.chunks(*args))

            assert read() == payload
            assert read(0, len(payload)) == payload
            assert read(5, 5) == b""
            assert read(len(payload), len(payload)) == b""
            assert read(100, 2000) == payload[100:2000]
            assert read(len(payload) - 1) == payload[-1:]
            assert read(len(payload) - 1, len(payload)) == payload[-1:]
            assert read(10, 10**9) == payload[10:]  # an end past the object stops at its end
            pieces = list(reader.chunks(1, 1001, 300))
            assert [len(p) for p in pieces] == [300, 300, 300, 100]
            assert b"".join(pieces) == payload[1:1001]
            for bad in [(-1, None), (20, 10), (len(payload) + 1, None)]:
                with pytest.raises(ValueError):
                    reader.chunks(*bad)
            with pytest.raises(ValueError):
                reader.chunks(0, None, 0)

    def test_empty_object(self, store: BlobStore, uri: Callable[[str], str]) -> None:
        with store.open_write(uri("empty")) as writer:
            meta = writer.commit(etag=md5(b""), attributes={})
        assert meta.size == 0
        with store.open_object(uri("empty")) as reader:
            assert reader.meta.size == 0
            assert list(reader.chunks()) == []

    # --- listing ----------------------------------------------------------------------------------------
    @pytest.fixture
    def tricky(self, store: BlobStore, uri: Callable[[str], str]) -> list[str]:
        for key in TRICKY_KEYS:
            store.put(uri(key), key.encode())
        return TRICKY_KEYS

    def test_list_page_matches_brute_force(self, store: BlobStore, bucket: str, tricky: list[str]) -> None:
        for prefix in PREFIXES:
            for delimiter in DELIMITERS:
                for start_after in self.starts_after:
                    page = store.list_page(
                        bucket, prefix=prefix, start_after=start_after, delimiter=delimiter
                    )
                    expected = brute_force(tricky, prefix, start_after, delimiter)
                    assert shape(page) == expected, (prefix, delimiter, start_after)

    def test_list_page_resumes_exactly(self, store: BlobStore, bucket: str, tricky: list[str]) -> None:
        for prefix in ["", "a", "a/b"]:
            for delimiter in DELIMITERS:
                for limit in self.resume_limits:
                    seen: list[Entry] = []
                    start_after = ""
                    while True:
                        page = store.list_page(
                            bucket, prefix=prefix, start_after=start_after, delimiter=delimiter, limit=limit
                        )
                        assert len(page) <= limit
                        if not page:
                            break
                        seen.extend(shape(page))
                        start_after = page[-1][0]
                    assert seen == brute_force(tricky, prefix, "", delimiter), (prefix, delimiter, limit)

    def test_list_page_meta(self, store: BlobStore, bucket: str, uri: Callable[[str], str]) -> None:
        store.put(uri("m/put"), b"12345")
        with store.open_write(uri("m/written")) as writer:
            writer.write(b"abc")
            writer.commit(etag=md5(b"abc"), attributes={"k": "v"})
        page = dict(store.list_page(bucket, prefix="m/"))
        assert set(page) == {"m/put", "m/written"}
        put_meta, written_meta = page["m/put"], page["m/written"]
        assert put_meta is not None and written_meta is not None
        assert (put_meta.size, put_meta.etag) == (5, md5(b"12345"))
        assert (written_meta.size, written_meta.etag) == (3, md5(b"abc"))
        assert put_meta.last_modified.utcoffset() is not None

    def test_list_page_limits_and_missing_bucket(
        self, store: BlobStore, bucket: str, tricky: list[str]
    ) -> None:
        assert store.list_page(bucket, limit=0) == []
        assert shape(store.list_page(bucket, limit=2)) == brute_force(tricky, limit=2)
        assert store.list_page("no-such-bucket-mlharbor") == []
        assert store.list_page(bucket, prefix="nothing/") == []

    # --- compose and copy -------------------------------------------------------------------------------
    def test_compose(self, store: BlobStore, uri: Callable[[str], str]) -> None:
        parts = [os.urandom(n) for n in (1000, 0, 70_000, 1)]
        for n, part in enumerate(parts):
            store.put(uri(f"parts/{n}"), part)
        meta = store.compose(
            uri("out/whole"),
            [uri(f"parts/{n}") for n in range(len(parts))],
            etag="abc-4",
            attributes={"t": "x"},
        )
        whole = b"".join(parts)
        assert (meta.size, meta.etag, dict(meta.attributes)) == (len(whole), "abc-4", {"t": "x"})
        read_meta, data = read_all(store, uri("out/whole"))
        assert data == whole
        assert (read_meta.etag, dict(read_meta.attributes)) == ("abc-4", {"t": "x"})
        assert store.get(uri("parts/2")) == parts[2]  # the parts stay

    def test_compose_missing_part_writes_nothing(self, store: BlobStore, uri: Callable[[str], str]) -> None:
        store.put(uri("p1"), b"one")
        with pytest.raises(BlobNotFound):
            store.compose(uri("out"), [uri("p1"), uri("p2")], etag="e", attributes={})
        assert not store.exists(uri("out"))

    def test_compose_of_nothing_is_empty(self, store: BlobStore, uri: Callable[[str], str]) -> None:
        meta = store.compose(uri("empty"), [], etag=md5(b""), attributes={})
        assert meta.size == 0
        assert store.get(uri("empty")) == b""

    def test_copy(self, store: BlobStore, uri: Callable[[str], str]) -> None:
        store.put(uri("src"), b"payload")
        meta = store.copy(uri("src"), uri("dst/copy"), etag="c1", attributes={"a": "1"})
        assert (meta.size, meta.etag, dict(meta.attributes)) == (7, "c1", {"a": "1"})
        assert store.get(uri("dst/copy")) == b"payload"
        # Onto itself: same bytes, new etag and attributes (CopyObject with REPLACE).
        store.copy(uri("dst/copy"), uri("dst/copy"), etag="c2", attributes={"b": "2"})
        read_meta, data = read_all(store, uri("dst/copy"))
        assert (data, read_meta.etag, dict(read_meta.attributes)) == (b"payload", "c2", {"b": "2"})
        with pytest.raises(BlobNotFound):
            store.copy(uri("missing"), uri("x"), etag="e", attributes={})

    # --- buckets ----------------------------------------------------------------------------------------
    @pytest.fixture
    def new_bucket(self, store: BlobStore) -> Iterator[str]:
        name = f"new-{uuid.uuid4().hex[:12]}"
        yield name
        store.delete_prefix(f"s3://{name}")
        store.delete_bucket(name)

    def test_create_and_delete_bucket(self, store: BlobStore, new_bucket: str) -> None:
        store.create_bucket(new_bucket)
        store.create_bucket(new_bucket)  # idempotent
        assert store.list_page(new_bucket) == []
        store.put(f"s3://{new_bucket}/d/obj", b"x")
        with pytest.raises(BlobConflict):
            store.delete_bucket(new_bucket)
        assert store.get(f"s3://{new_bucket}/d/obj") == b"x"
        store.delete(f"s3://{new_bucket}/d/obj")
        store.delete_bucket(new_bucket)
        store.delete_bucket(new_bucket)  # already gone: fine
        assert store.list_page(new_bucket) == []
