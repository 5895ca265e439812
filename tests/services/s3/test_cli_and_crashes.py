"""The AWS CLI against the S3 API, and what a crash (kill -9) does to uploads in flight."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.conftest import REGION, start_server, stop_server, unique, wait_until

MIB = 1024 * 1024


def completion(*parts: tuple[int, str]) -> dict[str, Any]:
    """CompleteMultipartUpload's document for (part number, ETag) pairs."""
    return {"Parts": [{"PartNumber": number, "ETag": etag} for number, etag in parts]}


def aws(server: Any, *args: str, cwd: Path | None = None) -> str:
    """Run the AWS CLI (the one on PATH, else the venv's) against the server, as a user would."""
    executable = shutil.which("aws") or str(Path(sys.executable).parent / "aws")
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    done = subprocess.run(
        [executable, "--endpoint-url", server.url, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"aws {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_aws_cli_cp_ls_sync_rm(server: Any, s3: Any, tmp_path: Path) -> None:
    bucket = unique("cli").lower()
    aws(server, "s3", "mb", f"s3://{bucket}")
    source = tmp_path / "docs"
    (source / "sub").mkdir(parents=True)
    (source / "a.txt").write_text("alpha\n")
    (source / "sub" / "b.csv").write_text("x,y\n1,2\n")
    big = source / "big.bin"
    big.write_bytes(os.urandom(9 * MIB))  # above the CLI's 8 MiB threshold: a multipart upload
    aws(server, "s3", "cp", str(source / "a.txt"), f"s3://{bucket}/training/a.txt")
    assert s3.get_object(Bucket=bucket, Key="training/a.txt")["ContentType"] == "text/plain"
    aws(server, "s3", "sync", str(source), f"s3://{bucket}/mirror")
    listed = aws(server, "s3", "ls", "--recursive", f"s3://{bucket}/mirror/")
    assert sorted(line.split()[-1] for line in listed.splitlines()) == [
        "mirror/a.txt", "mirror/big.bin", "mirror/sub/b.csv",
    ]  # fmt: skip
    assert "PRE sub/" in aws(server, "s3", "ls", f"s3://{bucket}/mirror/")
    # A second sync has nothing to do; a changed file is copied again.
    assert aws(server, "s3", "sync", str(source), f"s3://{bucket}/mirror") == ""
    (source / "a.txt").write_text("alpha, changed\n")
    assert "upload:" in aws(server, "s3", "sync", str(source), f"s3://{bucket}/mirror")
    back = tmp_path / "back"
    aws(server, "s3", "cp", "--recursive", f"s3://{bucket}/mirror", str(back))
    assert (back / "big.bin").read_bytes() == big.read_bytes()
    assert (back / "a.txt").read_text() == "alpha, changed\n"
    head = aws(server, "s3api", "head-object", "--bucket", bucket, "--key", "mirror/big.bin")
    assert '"ContentLength": 9437184' in head and '-2\\""' in head
    aws(server, "s3", "rm", "--recursive", f"s3://{bucket}/")
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    aws(server, "s3", "rb", f"s3://{bucket}")
    assert bucket not in aws(server, "s3", "ls")


def _start_slow_put(server: Any, bucket: str, key: str, total: int, sent: int) -> http.client.HTTPConnection:
    """A PutObject that has sent ``sent`` of ``total`` bytes and then stalls (UNSIGNED-PAYLOAD)."""
    url = f"{server.url}/{bucket}/{key}"
    request = AWSRequest(method="PUT", url=url, headers={"Content-Length": str(total)})
    request.context["payload_signing_enabled"] = False  # UNSIGNED-PAYLOAD: the body is not hashed first
    S3SigV4Auth(Credentials("test", "test"), "s3", REGION).add_auth(request)
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.putrequest("PUT", f"/{bucket}/{key}", skip_accept_encoding=True, skip_host=True)
    connection.putheader("Host", parts.netloc)
    for name, value in request.prepare().headers.items():
        connection.putheader(name, value)
    connection.endheaders()
    connection.send(b"a" * sent)
    return connection


def test_kill_9_mid_upload_leaves_no_object_and_parts_survive(make_server: Any, tmp_path: Path) -> None:
    running = make_server()
    s3 = running.client("s3")
    bucket = unique("crash").lower()
    s3.create_bucket(Bucket=bucket)
    # A multipart upload with one part stored, and a PutObject half sent when the server dies.
    uid = s3.create_multipart_upload(Bucket=bucket, Key="resumed")["UploadId"]
    first = s3.upload_part(Bucket=bucket, Key="resumed", UploadId=uid, PartNumber=1, Body=b"p" * (5 * MIB))
    connection = _start_slow_put(running, bucket, "half.bin", total=64 * MIB, sent=8 * MIB)
    bucket_dir = running.data_dir / "s3" / bucket
    wait_until(
        lambda: any(p.name.startswith(".mlharbor-tmp-") for p in bucket_dir.iterdir()), what="temp file"
    )
    running.process.send_signal(signal.SIGKILL)
    running.process.wait()
    connection.close()
    temp = next(p for p in bucket_dir.iterdir() if p.name.startswith(".mlharbor-tmp-"))
    # The sweep removes only files untouched for longer than a live upload may pause (1 s here).
    wait_until(lambda: time.time() - temp.stat().st_mtime > 1.5, what="the temp file to age")
    restarted = _restart(running, tmp_path)
    try:
        s3 = restarted.client("s3")
        with pytest.raises(ClientError) as exc:
            s3.head_object(Bucket=bucket, Key="half.bin")
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
        # The crashed writer's temp file is swept soon after the start (a writer idle longer than the body
        # timeout is dead).
        wait_until(
            lambda: not any(p.name.startswith(".mlharbor-tmp-") for p in bucket_dir.iterdir()),
            what="the crashed upload's temp file to be swept",
        )
        # The upload goes on where it was.
        assert [
            p["PartNumber"] for p in s3.list_parts(Bucket=bucket, Key="resumed", UploadId=uid)["Parts"]
        ] == [1]
        second = s3.upload_part(Bucket=bucket, Key="resumed", UploadId=uid, PartNumber=2, Body=b"q")
        s3.complete_multipart_upload(
            Bucket=bucket,
            Key="resumed",
            UploadId=uid,
            MultipartUpload=completion((1, first["ETag"]), (2, second["ETag"])),
        )
        assert s3.head_object(Bucket=bucket, Key="resumed")["ContentLength"] == 5 * MIB + 1
    finally:
        stop_server(restarted)


def _restart(running: Any, tmp_path: Path) -> Any:
    folder = tmp_path / "restarted"
    folder.mkdir()
    return start_server(
        folder,
        running.database_url,
        "--data-dir",
        str(running.data_dir),
        env={"MLHARBOR_REQUEST_BODY_IDLE_SECONDS": "0.5"},
    )


def test_a_client_that_leaves_mid_upload_leaves_nothing(server: Any, s3: Any, bucket: str) -> None:
    connection = _start_slow_put(server, bucket, "left.bin", total=16 * MIB, sent=3 * MIB)
    bucket_dir = server.data_dir / "s3" / bucket
    writing = lambda: any(p.name.startswith(".mlharbor-tmp-") for p in bucket_dir.iterdir())  # noqa: E731
    wait_until(writing, what="temp file")
    connection.close()
    # The writer is aborted: its temp file goes, no object appears, and the server goes on serving.
    wait_until(lambda: not writing(), what="the aborted upload's temp file to be removed")
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="left.bin")
    s3.put_object(Bucket=bucket, Key="after.bin", Body=b"fine")
    assert s3.get_object(Bucket=bucket, Key="after.bin")["Body"].read() == b"fine"
    log = server.log()
    assert "never retrieved" not in log and "unhandled error in s3" not in log
