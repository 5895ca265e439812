"""The `mlharbor` command: settings precedence and safe defaults."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import requests

from mlharbor.config import load_settings
from tests.conftest import start_server, stop_server


def test_cli_beats_env_beats_config_file(tmp_path, monkeypatch):
    config = tmp_path / "mlharbor.toml"
    config.write_text(
        'host = "127.0.0.2"\nport = 1111\nlog_format = "json"\nvideo_stream = ["cam=file:///a.mp4"]\n'
        '[video_streams]\nlobby = "rtsp://lobby/1"\n'
    )
    monkeypatch.setenv("MLHARBOR_PORT", "2222")
    settings = load_settings(config)
    assert (settings.host, settings.port, settings.log_format) == ("127.0.0.2", 2222, "json")
    assert settings.video_streams == {"lobby": "rtsp://lobby/1", "cam": "file:///a.mp4"}
    settings = load_settings(config, port=3333, video_stream=["a=rtsp://h/1", "b=file:///b.mp4"])
    assert settings.port == 3333
    assert settings.video_streams == {"lobby": "rtsp://lobby/1", "a": "rtsp://h/1", "b": "file:///b.mp4"}


def test_env_video_streams_and_database_default(tmp_path, monkeypatch):
    monkeypatch.setenv("MLHARBOR_VIDEO_STREAM", "front=rtsp://cam/1 back=file:///x.mp4")
    monkeypatch.setenv("MLHARBOR_DATA_DIR", str(tmp_path))
    settings = load_settings()
    assert settings.video_streams == {"front": "rtsp://cam/1", "back": "file:///x.mp4"}
    assert settings.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'mlharbor.db'}"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlharbor", *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


def test_refuses_open_bind_with_the_default_credential(tmp_path):
    result = _run("serve", "--host", "0.0.0.0", "--port", "0", "--data-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert "--insecure-open-bind" in result.stderr
    assert not (tmp_path / "mlharbor.db").exists()


def test_bad_video_stream_option_is_a_clear_error(tmp_path):
    result = _run("serve", "--video-stream", "no-equals-sign", "--data-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert "NAME=URL" in result.stderr


def test_insecure_open_bind_allows_it(make_server):
    server = make_server("--host", "0.0.0.0", "--insecure-open-bind")
    port = server.url.rsplit(":", 1)[1]
    assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200


def test_json_log_format(make_server):
    server = make_server("--log-format", "json")
    lines = [line for line in server.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]
    assert any(e["message"].startswith("MLHarbor ") and e["level"] == "INFO" for e in entries)


def test_a_second_server_on_one_sqlite_database_refuses_to_start(tmp_path):
    database = tmp_path / "first" / "mlharbor.db"
    database.parent.mkdir()
    url = f"sqlite:///{database}"
    first = start_server(database.parent, url)
    try:
        started = time.monotonic()
        result = _run(
            "serve", "--port", "0", "--data-dir", str(tmp_path / "other"), "--database-url", url, cwd=tmp_path
        )  # fmt: skip
        assert result.returncode == 1 and time.monotonic() - started < 30
        assert str(database) in result.stderr
        assert "one server" in result.stderr and "PostgreSQL" in result.stderr
        assert "MLHarbor listening" not in result.stdout
        assert not (tmp_path / "other").exists()  # refused before anything else
        assert requests.get(f"{first.url}/health", timeout=5).status_code == 200
    finally:
        first.process.kill()  # kill -9: no clean shutdown, yet the database is free again
        first.process.wait()
    (tmp_path / "again").mkdir()
    again = start_server(tmp_path / "again", url)
    try:
        assert requests.get(f"{again.url}/health", timeout=5).status_code == 200
    finally:
        stop_server(again)
