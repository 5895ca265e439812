"""Every code block in README.md is run here, against a real server.

How each kind of block is run:

* ``python``: all of them, in order, as one script (the README reads as one session: the later blocks use
  the clients the first one made), in a folder where ``.mlharbor`` is the server's data folder, with the
  server's URL in place of ``http://127.0.0.1:4580``. The sh blocks between the first and the last python
  block belong to that session (the reader uploads training data with ``aws s3 cp`` midway) and run in it,
  in order. The files the prose asks the reader to have (training documents and annotations, documents to
  analyse) are written first; what the blocks print is checked against what their comments promise.
* ``sh`` (the others): each command. ``make TARGET`` is checked with ``make -n`` (the target exists; running
  it would install packages or run the whole suite); ``aws ...`` is run against the server with only the
  environment the line sets.
* ``toml``: a credentials file (every table has a ``secret_access_key``) is given to a server with
  ``--credentials`` and used to sign a request; any other TOML is the config file the README server runs
  with (``--config``: a key the server does not know stops it from starting).
* the ``mlharbor serve [...]`` synopsis: it names exactly the options ``mlharbor serve --help`` lists.

A block of any other kind fails ``test_every_block_is_run``: decide how to run it here.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from mlharbor.config import ThrottleSettings
from tests.conftest import RunningServer, _fresh_database, start_server, stop_server

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_URL = "http://127.0.0.1:4580"
FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass(frozen=True)
class Block:
    kind: str  # python, sh, toml-config, toml-credentials, synopsis, or what the fence says
    line: int  # the README line of the first line of code (1-based)
    code: str


def _kind(language: str, code: str) -> str:
    if language == "toml":
        tables = tomllib.loads(code)
        credentials = tables and all(
            isinstance(v, dict) and "secret_access_key" in v for v in tables.values()
        )
        return "toml-credentials" if credentials else "toml-config"
    if language == "" and code.startswith("mlharbor serve"):
        return "synopsis"
    return language or "(no language)"


def readme_blocks() -> list[Block]:
    blocks: list[Block] = []
    lines = README.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        code = "\n".join(lines[index + 1 : end]) + "\n"
        blocks.append(Block(_kind(opening.group(1), code), index + 2, code))
        index = end + 1
    return blocks


BLOCKS = readme_blocks()
RUNNERS = ("python", "sh", "toml-config", "toml-credentials", "synopsis")


def of_kind(kind: str) -> list[Block]:
    return [block for block in BLOCKS if block.kind == kind]


def test_every_block_is_run():
    assert BLOCKS, "no code blocks found in README.md"
    unknown = [f"README.md:{b.line} ({b.kind})" for b in BLOCKS if b.kind not in RUNNERS]
    assert not unknown, f"code blocks this test does not know how to run: {unknown}"
    assert len(of_kind("toml-config")) == 1, "the README server runs with exactly one config block"


# --- The server the README talks to --------------------------------------------------------------------
@pytest.fixture(scope="module")
def readme_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server of its own (the README uses fixed names and counts against per-account quotas), configured
    with the README's config block."""
    tmp = tmp_path_factory.mktemp("readme")
    [config] = of_kind("toml-config")
    (tmp / "mlharbor.toml").write_text(config.code)
    url, drop = _fresh_database(tmp)
    running = start_server(tmp, url, "--config", str(tmp / "mlharbor.toml"))
    yield running
    stop_server(running)
    drop()


def test_config_block_is_the_servers_config(readme_server):
    [config] = of_kind("toml-config")
    health = requests.get(f"{readme_server.url}/health", timeout=10)
    assert health.status_code == 200, health.text
    # The server refuses unknown top-level keys; [throttle] is a plain model that would ignore them.
    unknown = set(tomllib.loads(config.code).get("throttle", {})) - set(ThrottleSettings.model_fields)
    assert not unknown, f"[throttle] keys the server ignores: {unknown}"


# --- python -------------------------------------------------------------------------------------------
PRODUCTS = ("Kalo Series X", "Tarvo Pro", "Velix 9", "Brimo Air", "Sanda Mini", "Oreth S9", "Dulo Max")
TEMPLATES = (
    "I ordered the {}.",
    "The {} arrived today.",
    "Has anyone tried the {}?",
    "My {} stopped working after a week.",
    "We returned the {} last month.",
    "Is the {} worth the price?",
)


def put_readme_data(folder: Path) -> None:
    """What the README's prose asks for, in the reader's folder: docs.txt + annotations.csv, and week1.txt
    (the README uploads them with the AWS CLI).

    40 documents, one PRODUCT each: above AWS's minimum of 25 annotations per type, small enough to train
    in seconds. The first is the README's example row (``docs.txt,0,14,27,PRODUCT``).
    """
    docs, rows = [], [["File", "Line", "Begin Offset", "End Offset", "Type"]]
    for line in range(40):
        product = PRODUCTS[line % len(PRODUCTS)]
        text = TEMPLATES[(line // len(PRODUCTS)) % len(TEMPLATES)].format(product)
        begin = text.index(product)
        docs.append(text)
        rows.append(["docs.txt", str(line), str(begin), str(begin + len(product)), "PRODUCT"])
    annotations = io.StringIO()
    csv.writer(annotations, lineterminator="\n").writerows(rows)
    (folder / "docs.txt").write_text("\n".join(docs) + "\n")
    (folder / "annotations.csv").write_text(annotations.getvalue())
    (folder / "week1.txt").write_text("I ordered the Kalo Series X.\nShipping was quick.\n")


def session_blocks() -> list[Block]:
    """The user story: every python block, and the sh blocks between the first and the last of them (the
    README's reader runs those in their shell midway, e.g. ``aws s3 cp`` of the training data)."""
    python = [i for i, block in enumerate(BLOCKS) if block.kind == "python"]
    return [b for b in BLOCKS[python[0] : python[-1] + 1] if b.kind in ("python", "sh")]


# Runs the session's shell lines from the script: ``export`` sets variables for later lines, ``aws`` runs
# the CLI with only what the lines exported (no trace of the developer's own AWS configuration). It sits on
# README lines that hold no code (before the first block), so every other line keeps its README number.
SHELL_PRELUDE = """\
import os as _os, shlex as _shlex, subprocess as _subprocess
_exported = {"PATH": _os.environ["PATH"], "HOME": _os.getcwd(), "NO_PROXY": "127.0.0.1",
             "AWS_CONFIG_FILE": "no-aws-config", "AWS_SHARED_CREDENTIALS_FILE": "no-aws-credentials"}
def _sh(argv, line):
    if argv[0] == "export":
        _exported.update(a.split("=", 1) for a in argv[1:]); return
    assert argv[0] == "aws", f"README.md:{line}: no way to run {argv[0]!r} in the session"
    run = _subprocess.run([AWS_CLI, *argv[1:]], env=_exported, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"README.md:{line}: {_shlex.join(argv)}\\n{run.stdout}\\n{run.stderr}"
"""


def python_script() -> str:
    """The session as one script, each line at its README line number (for tracebacks)."""
    lines = [""] * len(README.read_text().splitlines())
    prelude = SHELL_PRELUDE.replace("AWS_CLI", repr(_aws_cli())).splitlines()
    first = session_blocks()[0].line - 1
    assert len(prelude) < first and not any(lines[:first]), "the README needs more lines before its story"
    lines[: len(prelude)] = prelude
    for block in session_blocks():
        if block.kind == "python":
            for offset, line in enumerate(block.code.splitlines()):
                lines[block.line - 1 + offset] = line
        else:
            for line, argv in shell_commands(block):
                lines[line - 1] = f"_sh({argv!r}, {line})"
    return "\n".join(lines) + "\n"


def test_python_blocks_run_as_one_session(readme_server, tmp_path):
    put_readme_data(tmp_path)
    (tmp_path / ".mlharbor").symlink_to(readme_server.data_dir)  # make serve's data folder, relative
    shutil.copy(ROOT / "tests" / "data" / "grace_hopper.jpg", tmp_path)  # "a photo of a face"
    script = tmp_path / "readme.py"
    script.write_text(python_script().replace(README_URL, readme_server.url))
    # In a session of its own: what the README starts (its camera, put-media) must not outlive a failed run
    # and hold the pipes open.
    run = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = run.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 0, f"{stdout}\n{stderr}\n{readme_server.log()[-3000:]}"
    printed = stdout
    assert re.search(r"^grace [0-9]{47}$", printed, re.MULTILINE), printed  # the face found, its fragment
    for promised in (
        "LABEL_DETECTED PERSON",  # the connected home notification, delivered over HTTP by SNS
        "STOPPED",  # the stream processor, stopped
        "['front-door']",  # the list of processors
        "ResourceNotFoundException",  # the missing processor
        "TRAINED",  # the recognizer, trained from data uploaded with the AWS CLI
        "'Type': 'PRODUCT', 'Text': 'Kalo Series X', 'BeginOffset': 14, 'EndOffset': 27",  # DetectEntities
        "COMPLETED",  # the detection job
        "s3://results/000000000000-NER-",  # where its output is
        "{'File': 'week1.txt', 'Line': 0, 'Entities': [{'BeginOffset': 14,",  # the archive, downloaded
    ):
        assert promised in printed, f"README promised {promised!r}; it printed:\n{printed}"


# --- sh -----------------------------------------------------------------------------------------------
def shell_commands(block: Block) -> Iterator[tuple[int, list[str]]]:
    """(README line, argv) per command: continuation lines joined, comments dropped."""
    pending, first = "", 0
    for offset, line in enumerate(block.code.splitlines()):
        if not pending:
            first = block.line + offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        argv = shlex.split(pending + line, comments=True)
        pending = ""
        if argv:
            yield first, argv


def _aws_cli() -> str:
    beside = Path(sys.executable).parent / "aws"
    found = str(beside) if beside.exists() else shutil.which("aws")
    assert found, "the AWS CLI (awscli, a test dependency) is not installed"
    return found


def test_shell_blocks(readme_server, tmp_path):
    """The sh blocks outside the user story (that one runs them in its session)."""
    story = session_blocks()
    commands = [
        (line, argv) for block in of_kind("sh") if block not in story for line, argv in shell_commands(block)
    ]
    assert commands
    for line, argv in commands:
        assignments = {}
        while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):
            name, _, value = argv.pop(0).partition("=")
            assignments[name] = value
        where = f"README.md:{line}: {shlex.join(argv)}"
        if argv[0] == "make":
            assert not assignments, where
            run = subprocess.run(["make", "-n", "-C", str(ROOT), *argv[1:]], capture_output=True, text=True)
            assert run.returncode == 0, f"{where}\n{run.stderr}"
        elif argv[0] == "aws":
            # Only what the line sets: no trace of the developer's own AWS configuration.
            env = {
                "PATH": os.environ.get("PATH", ""),
                "HOME": str(tmp_path),
                "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
                "NO_PROXY": "127.0.0.1",
                **assignments,
            }
            args = [arg.replace(README_URL, readme_server.url) for arg in argv[1:]]
            run = subprocess.run([_aws_cli(), *args], capture_output=True, text=True, env=env, timeout=60)
            assert run.returncode == 0, f"{where}\n{run.stdout}\n{run.stderr}"
            json.loads(run.stdout)
        else:
            pytest.fail(f"{where}: no way to run {argv[0]!r} here yet; add one to tests/test_readme.py")


def inline_make_targets() -> list[str]:
    """``make TARGET`` in the prose (e.g. the benchmarks): the targets must exist too."""
    return re.findall(r"`make ([a-z][a-z0-9-]*)`", README.read_text())


def test_make_targets_in_the_prose_exist():
    targets = inline_make_targets()
    assert targets
    run = subprocess.run(["make", "-n", "-C", str(ROOT), *targets], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


# --- mlharbor serve synopsis ----------------------------------------------------------------------------
def test_serve_synopsis_names_every_option():
    [synopsis] = of_kind("synopsis")
    run = subprocess.run(
        [sys.executable, "-m", "mlharbor", "serve", "--help"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    documented = set(re.findall(r"--[a-z][a-z-]*", synopsis.code))
    offered = set(re.findall(r"--[a-z][a-z-]*", run.stdout)) - {"--help"}
    assert documented == offered


# --- credentials -----------------------------------------------------------------------------------------
def test_credentials_block(tmp_path):
    [block] = of_kind("toml-credentials")
    (tmp_path / "credentials.toml").write_text(block.code)
    url, drop = _fresh_database(tmp_path)
    running = start_server(tmp_path, url, "--credentials", str(tmp_path / "credentials.toml"))
    try:
        for key_id, entry in tomllib.loads(block.code).items():
            client = running.client("rekognition", key_id, entry["secret_access_key"])
            arn = client.create_collection(CollectionId="readme")["CollectionArn"]
            assert arn.split(":")[4] == entry["account_id"]  # the key's account owns what it creates
        # With a credentials file the built-in test/test is gone.
        default = running.client("comprehend")
        with pytest.raises(default.exceptions.ClientError) as refused:
            default.list_entity_recognizers()
        assert refused.value.response["Error"]["Code"] == "UnrecognizedClientException"
    finally:
        stop_server(running)
        drop()
