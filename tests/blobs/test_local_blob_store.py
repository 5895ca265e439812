"""The local object store, URI parsing, and the behaviour every BlobStore back end shares.

``BlobStoreContract`` holds the shared tests; test_s3_blob_store.py runs them against moto.
"""

from __future__ import annotations

import os
import threading
from datetime import datetime
from pathlib import Path

import pytest

from mlharbor.blobs import (
    BlobConflict,
    BlobNotFound,
    BlobStore,
    InvalidS3Uri,
    LocalBlobStore,
    S3BlobStore,
    S3Uri,
    open_blob_store,
)


class BlobStoreContract:
    """Behaviour both back ends must share. Subclasses provide the ``store`` and ``bucket`` fixtures."""

    def test_put_get_round_trip(self, store: BlobStore, bucket: str) -> None:
        uri = f"s3://{bucket}/data/blob.bin"
        payload = bytes(range(256)) * 3
        assert not store.exists(uri)
        store.put(uri, payload)
        assert store.exists(uri)
        assert store.get(uri) == payload
        store.put(S3Uri.parse(uri), b"replaced")  # S3Uri objects work as well as strings
        assert store.get(uri) == b"replaced"

    def test_empty_object(self, store: BlobStore, bucket: str) -> None:
        store.put(f"s3://{bucket}/empty", b"")
        assert store.get(f"s3://{bucket}/empty") == b""
        assert [info.size for info in store.list(f"s3://{bucket}/empty")] == [0]

    def test_unusual_keys_are_kept_literally(self, store: BlobStore, bucket: str) -> None:
        # No percent-decoding: "%2e%2e" is a name, not "..".
        keys = ["%2e%2e/x", "dir with space/ü €.txt", "a+b=c&d.json"]
        for key in keys:
            store.put(f"s3://{bucket}/{key}", key.encode())
        for key in keys:
            assert store.get(f"s3://{bucket}/{key}") == key.encode()
        assert [info.key for info in store.list(f"s3://{bucket}")] == sorted(keys)

    def test_missing_object(self, store: BlobStore, bucket: str) -> None:
        with pytest.raises(BlobNotFound) as excinfo:
            store.get(f"s3://{bucket}/nope")
        assert isinstance(excinfo.value, KeyError)
        assert f"s3://{bucket}/nope" in str(excinfo.value)
        with pytest.raises(BlobNotFound):
            store.open_read(f"s3://{bucket}/nope")
        with pytest.raises(BlobNotFound):
            store.get("s3://no-such-bucket-mlharbor/key")
        assert not store.exists("s3://no-such-bucket-mlharbor/key")

    def test_prefix_directory_is_not_an_object(self, store: BlobStore, bucket: str) -> None:
        store.put(f"s3://{bucket}/dir/file", b"x")
        assert not store.exists(f"s3://{bucket}/dir")
        with pytest.raises(BlobNotFound):
            store.get(f"s3://{bucket}/dir")
        with pytest.raises(BlobNotFound):
            store.get(f"s3://{bucket}/dir/")
        assert not store.exists(f"s3://{bucket}/dir/")

    def test_bucket_uri_is_not_an_object(self, store: BlobStore, bucket: str) -> None:
        with pytest.raises(InvalidS3Uri):
            store.get(f"s3://{bucket}")
        with pytest.raises(InvalidS3Uri):
            store.put(f"s3://{bucket}/", b"x")

    def test_list_by_prefix(self, store: BlobStore, bucket: str) -> None:
        keys = ["data/train/a.csv", "data/train/b.csv", "data/training.txt", "data/test/c.csv", "other.txt"]
        for key in keys:
            store.put(f"s3://{bucket}/{key}", key.encode())

        def listed(prefix: str) -> list[str]:
            return [info.key for info in store.list(f"s3://{bucket}/{prefix}")]

        # A "folder" prefix ...
        assert listed("data/train/") == ["data/train/a.csv", "data/train/b.csv"]
        # ... versus plain string prefixes, which are not folder boundaries.
        assert listed("data/train") == ["data/train/a.csv", "data/train/b.csv", "data/training.txt"]
        assert listed("data/tr") == ["data/train/a.csv", "data/train/b.csv", "data/training.txt"]
        assert listed("data/train/a") == ["data/train/a.csv"]
        assert listed("data/train/a.csv") == ["data/train/a.csv"]
        assert listed("d") == sorted(keys[:4])
        assert listed("") == sorted(keys)
        assert [i.key for i in store.list(f"s3://{bucket}")] == sorted(keys)
        assert listed("data/nothing/") == []
        assert listed("zzz") == []

    def test_list_object_info(self, store: BlobStore, bucket: str) -> None:
        store.put(f"s3://{bucket}/p/one", b"12345")
        (info,) = store.list(f"s3://{bucket}/p/")
        assert info.key == "p/one"
        assert info.uri == S3Uri(bucket, "p/one")
        assert str(info.uri) == f"s3://{bucket}/p/one"
        assert info.size == 5
        assert isinstance(info.last_modified, datetime)
        assert info.last_modified.utcoffset() is not None

    def test_list_is_sorted_by_key(self, store: BlobStore, bucket: str) -> None:
        # Code point order, as S3 returns: '-' < '/' < '0' < 'b'.
        keys = ["b", "a0", "a/z", "a-b", "a/b/c"]
        for key in keys:
            store.put(f"s3://{bucket}/{key}", b"")
        assert [info.key for info in store.list(f"s3://{bucket}")] == ["a-b", "a/b/c", "a/z", "a0", "b"]

    def test_list_missing_bucket_is_empty(self, store: BlobStore) -> None:
        assert store.list("s3://no-such-bucket-mlharbor/") == []

    def test_delete(self, store: BlobStore, bucket: str) -> None:
        store.put(f"s3://{bucket}/a/b/c", b"1")
        store.put(f"s3://{bucket}/a/keep", b"2")
        store.delete(f"s3://{bucket}/a/b/c")
        assert not store.exists(f"s3://{bucket}/a/b/c")
        assert [info.key for info in store.list(f"s3://{bucket}")] == ["a/keep"]
        store.delete(f"s3://{bucket}/a/b/c")  # already gone: no error
        store.delete("s3://no-such-bucket-mlharbor/x")
        # The emptied "folder" a/b does not block an object named a/b.
        store.put(f"s3://{bucket}/a/b", b"3")
        assert store.get(f"s3://{bucket}/a/b") == b"3"

    def test_delete_prefix(self, store: BlobStore, bucket: str) -> None:
        for key in ["out/1", "out/2", "out/sub/3", "outside", "keep/4"]:
            store.put(f"s3://{bucket}/{key}", b"x")
        assert store.delete_prefix(f"s3://{bucket}/out/") == 3
        assert [info.key for info in store.list(f"s3://{bucket}")] == ["keep/4", "outside"]
        assert store.delete_prefix(f"s3://{bucket}/out") == 1  # plain prefix: "outside"
        assert store.delete_prefix(f"s3://{bucket}/out") == 0
        assert store.delete_prefix("s3://no-such-bucket-mlharbor/") == 0
        assert store.delete_prefix(f"s3://{bucket}") == 1
        assert store.list(f"s3://{bucket}") == []

    def test_open_read_streams(self, store: BlobStore, bucket: str) -> None:
        payload = os.urandom(3 * 1024 * 1024 + 17)
        store.put(f"s3://{bucket}/big.bin", payload)
        chunks = []
        with store.open_read(f"s3://{bucket}/big.bin") as stream:
            while chunk := stream.read(64 * 1024):
                assert len(chunk) <= 64 * 1024
                chunks.append(chunk)
        assert b"".join(chunks) == payload
        assert stream.closed

    def test_open_read_is_a_binary_file(self, store: BlobStore, bucket: str) -> None:
        store.put(f"s3://{bucket}/lines.txt", b"one\ntwo\nthree")
        with store.open_read(f"s3://{bucket}/lines.txt") as stream:
            assert stream.readline() == b"one\n"
            assert list(stream) == [b"two\n", b"three"]

    def test_put_file(self, store: BlobStore, bucket: str, tmp_path: Path) -> None:
        source = tmp_path / "upload.bin"
        payload = os.urandom(1024 * 1024 + 3)
        source.write_bytes(payload)
        store.put_file(f"s3://{bucket}/up/load.bin", source)
        assert store.get(f"s3://{bucket}/up/load.bin") == payload
        store.put_file(f"s3://{bucket}/up/str-path.bin", str(source))
        assert store.exists(f"s3://{bucket}/up/str-path.bin")


# --- the local back end ----------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "objects"


@pytest.fixture
def local(root: Path) -> LocalBlobStore:
    return LocalBlobStore(root)


class TestLocalContract(BlobStoreContract):
    @pytest.fixture
    def store(self, local: LocalBlobStore) -> BlobStore:
        return local

    @pytest.fixture
    def bucket(self) -> str:
        return "bucket"


def test_layout_on_disk(local: LocalBlobStore, root: Path) -> None:
    local.put("s3://my-bucket/a/b.txt", b"hi")
    assert (root / "my-bucket" / "a" / "b.txt").read_bytes() == b"hi"
    # Files placed there by hand are objects too.
    (root / "my-bucket" / "a" / "hand.txt").write_bytes(b"by hand")
    assert local.get("s3://my-bucket/a/hand.txt") == b"by hand"


@pytest.mark.parametrize(
    "uri",
    [
        "s3://b/../x",
        "s3://b/a/../../x",
        "s3://b/a/..",
        "s3://b/./x",
        "s3://b//etc/passwd",
        "s3://b/a//c",
        "s3://b/..\\x",
        "s3://b/a\\..\\..\\x",
        "s3://b/a\0b",
        "s3://b/.mlharbor-tmp-x",
        "s3://b/" + "n" * 256,
    ],
)
def test_hostile_keys_are_rejected(local: LocalBlobStore, root: Path, uri: str) -> None:
    with pytest.raises(InvalidS3Uri):
        local.put(uri, b"pwned")
    with pytest.raises(InvalidS3Uri):
        local.get(uri)
    with pytest.raises(InvalidS3Uri):
        local.exists(uri)
    with pytest.raises(InvalidS3Uri):
        local.delete(uri)
    # Nothing was written anywhere: not in the store, not next to it.
    assert sorted(p.name for p in root.parent.iterdir()) == []


@pytest.mark.parametrize("prefix", ["s3://b/../", "s3://b/a/../../", "s3://b//etc/", "s3://b/a\\..\\x/"])
def test_hostile_prefixes_are_rejected(local: LocalBlobStore, prefix: str) -> None:
    with pytest.raises(InvalidS3Uri):
        local.list(prefix)
    with pytest.raises(InvalidS3Uri):
        local.delete_prefix(prefix)


def test_percent_encoding_is_not_decoded(local: LocalBlobStore, root: Path) -> None:
    local.put("s3://b/%2e%2e/x", b"literal")
    assert (root / "b" / "%2e%2e" / "x").read_bytes() == b"literal"
    assert not (root / "x").exists()


def test_symlinked_folder_leading_outside_is_refused(
    local: LocalBlobStore, root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (root / "b").mkdir(parents=True)
    (root / "b" / "inner").write_bytes(b"ok")
    (root / "b" / "link").symlink_to(outside, target_is_directory=True)

    with pytest.raises(InvalidS3Uri):
        local.get("s3://b/link/secret")
    with pytest.raises(InvalidS3Uri):
        local.put("s3://b/link/new", b"pwned")
    with pytest.raises(InvalidS3Uri):
        local.delete("s3://b/link/secret")
    with pytest.raises(InvalidS3Uri):
        local.list("s3://b/link/")
    assert [info.key for info in local.list("s3://b")] == ["inner"]
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


def test_symlinked_file_leading_outside_is_refused(local: LocalBlobStore, root: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret")
    (root / "b").mkdir(parents=True)
    (root / "b" / "link").symlink_to(secret)
    with pytest.raises(InvalidS3Uri):
        local.get("s3://b/link")
    assert local.list("s3://b") == []
    # Deleting or overwriting the key acts on the link itself, never on the file outside.
    local.put("s3://b/link", b"new")
    assert secret.read_bytes() == b"secret"
    assert local.get("s3://b/link") == b"new"
    local.delete("s3://b/link")
    assert secret.read_bytes() == b"secret"


def test_symlinked_bucket_leading_outside_is_refused(
    local: LocalBlobStore, root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root.mkdir()
    (root / "b").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InvalidS3Uri):
        local.put("s3://b/x", b"pwned")
    with pytest.raises(InvalidS3Uri):
        local.list("s3://b")
    assert list(outside.iterdir()) == []


def test_symlink_inside_the_bucket_is_followed(local: LocalBlobStore, root: Path) -> None:
    local.put("s3://b/real", b"data")
    (root / "b" / "alias").symlink_to(root / "b" / "real")
    assert local.get("s3://b/alias") == b"data"
    assert [info.key for info in local.list("s3://b")] == ["alias", "real"]
    # Symlinked folders are not listed, but their files can be read if they stay inside.
    local.put("s3://b/sub/file", b"sub")
    (root / "b" / "dirlink").symlink_to(root / "b" / "sub", target_is_directory=True)
    assert [info.key for info in local.list("s3://b")] == ["alias", "real", "sub/file"]
    assert local.list("s3://b/dirlink/") == []
    assert local.get("s3://b/dirlink/file") == b"sub"
    local.delete("s3://b/alias")  # removes the link, not its target
    assert local.get("s3://b/real") == b"data"


def test_folder_markers(local: LocalBlobStore) -> None:
    with pytest.raises(InvalidS3Uri, match="folder-marker"):
        local.put("s3://b/folder/", b"")
    local.delete("s3://b/folder/")  # nothing to delete
    assert not local.exists("s3://b/folder/")


def test_file_and_folder_with_one_name_conflict(local: LocalBlobStore) -> None:
    local.put("s3://b/a/b", b"file")
    with pytest.raises(BlobConflict):
        local.put("s3://b/a/b/c", b"x")
    local.put("s3://b/x/y/z", b"deep")
    with pytest.raises(BlobConflict):
        local.put("s3://b/x/y", b"x")
    local.delete("s3://b/x/y")  # a folder, not an object: no error, nothing removed
    assert local.get("s3://b/x/y/z") == b"deep"


def test_failed_write_leaves_no_trace(local: LocalBlobStore, root: Path) -> None:
    local.put("s3://b/obj", b"old")
    with pytest.raises(TypeError):
        local.put("s3://b/obj", "not bytes")  # type: ignore[arg-type]
    assert local.get("s3://b/obj") == b"old"
    assert sorted(p.name for p in (root / "b").iterdir()) == ["obj"]


def test_concurrent_put_and_delete_in_shared_folders(local: LocalBlobStore, root: Path) -> None:
    # delete() prunes emptied folders while put() creates them; neither may trip over the other.
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for n in range(200):
                uri = f"s3://b/d{n % 2}/e/k{worker % 2}"
                if (n + worker) % 3:
                    local.put(uri, b"x" * n)
                else:
                    local.delete(uri)
                local.list("s3://b/d")
        except BaseException as exc:  # collected and reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert not [p for p in root.rglob("*") if p.name.startswith(".mlharbor-tmp-")]


def test_list_skips_temp_and_unaddressable_files(local: LocalBlobStore, root: Path) -> None:
    local.put("s3://b/ok", b"x")
    (root / "b" / ".mlharbor-tmp-abc").write_bytes(b"half written")
    (root / "b" / "back\\slash").write_bytes(b"x")
    assert [info.key for info in local.list("s3://b")] == ["ok"]


def test_missing_root_is_fine(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "not" / "yet")
    assert store.list("s3://b") == []
    assert not store.exists("s3://b/k")
    store.put("s3://b/k", b"v")
    assert store.get("s3://b/k") == b"v"


# --- URIs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "bucket", "key"),
    [
        ("s3://bucket/key", "bucket", "key"),
        ("s3://bucket/a/b/c.txt", "bucket", "a/b/c.txt"),
        ("s3://bucket", "bucket", ""),
        ("s3://bucket/", "bucket", ""),
        ("s3://bucket/dir/", "bucket", "dir/"),
        ("s3://b//x", "b", "/x"),  # S3 keys may start with "/"; only the local store refuses them
        ("s3://My_Legacy.Bucket-1/k", "My_Legacy.Bucket-1", "k"),
        ("s3://b/%2e%2e/k?x=1#f", "b", "%2e%2e/k?x=1#f"),
    ],
)
def test_parse(uri: str, bucket: str, key: str) -> None:
    parsed = S3Uri.parse(uri)
    assert (parsed.bucket, parsed.key) == (bucket, key)
    assert S3Uri.parse(str(parsed)) == parsed


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "bucket/key",
        "/bucket/key",
        "http://bucket/key",
        "S3://bucket/key",
        "s3:/bucket/key",
        " s3://bucket/key",
        "s3://",
        "s3:///key",
        "s3://../key",
        "s3://./key",
        "s3://-bucket/key",
        "s3://bucket-/key",
        "s3://bu cket/key",
        "s3://bucket:80/key",
        "s3://" + "b" * 256,
        "s3://bucket/" + "k" * 1025,
    ],
)
def test_parse_rejects(uri: str) -> None:
    with pytest.raises(InvalidS3Uri):
        S3Uri.parse(uri)


def test_invalid_uri_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not an S3 URI"):
        S3Uri.parse("https://example.com/x")
    with pytest.raises(InvalidS3Uri):
        S3Uri.parse(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidS3Uri):
        S3Uri("..", "x")


def test_str_and_join() -> None:
    assert str(S3Uri.parse("s3://b/k/x")) == "s3://b/k/x"
    assert str(S3Uri.parse("s3://b")) == "s3://b/"
    assert S3Uri.parse("s3://b").join("out", "x.json") == S3Uri("b", "out/x.json")
    assert S3Uri.parse("s3://b/out").join("x.json") == S3Uri("b", "out/x.json")
    assert S3Uri.parse("s3://b/out/").join("x.json") == S3Uri("b", "out/x.json")


def test_open_blob_store(tmp_path: Path) -> None:
    local = open_blob_store("local", tmp_path)
    assert isinstance(local, LocalBlobStore)
    assert local.root == (tmp_path / "s3").resolve()
    assert isinstance(open_blob_store("s3", tmp_path), S3BlobStore)
    with pytest.raises(ValueError, match="unknown object store"):
        open_blob_store("gcs", tmp_path)
