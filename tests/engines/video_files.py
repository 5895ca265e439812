"""Small real video files for tests: write frames to an H.264 MP4, and frames with a real face in them.

``write_video(path, frames, fps=10)`` encodes RGB frames (H x W x 3 uint8, all the same even size) into an
H.264 MP4 (yuv420p, constant frame rate ``fps``: frame i has pts i / fps) with PyAV, so tests need no
FFmpeg binary. ``portrait_frames(count, size=(640, 480))`` makes frames with the repository's test photo
``tests/data/grace_hopper.jpg`` (one frontal face) on a uniform grey background, moving slowly from left
to right and back, e.g. ``write_video(tmp_path / "face.mp4", portrait_frames(20))`` is a 2 s clip of one
face. The grey is ``BACKGROUND`` and survives H.264 compression within a few levels, so tests can check
pixel values in the corners; the photo never covers the 16-pixel border. ``walker_frames(count)`` draws
standing people (a dark figure: head, torso, arms, legs, ``FIGURE_HEIGHT`` px tall) walking on a light,
slightly noisy ground, like a camera's view of a driveway; ``WALKERS`` says where they start.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from functools import cache
from pathlib import Path

import av
import numpy
from PIL import Image, ImageDraw

DATA = Path(__file__).parent.parent / "data"
PORTRAIT = DATA / "grace_hopper.jpg"
BACKGROUND = (128, 128, 128)
BORDER = 16  # pixels along each edge that the photo never covers
PORTRAIT_FACE_SHARE = 216 / 600  # the face's width (dlib's HOG box) over the photo's height


def write_video(path: Path, frames: Sequence[numpy.ndarray], fps: int = 10, codec: str = "libx264") -> Path:
    """Encode ``frames`` (RGB uint8, H x W x 3, same even size) at ``fps`` into ``path``; returns ``path``.

    The container follows the file name (``.mp4`` for the H.264 MP4 most tests want). Frame i is shown at
    i / fps seconds, so the clip lasts ``len(frames) / fps`` seconds.
    """
    if not frames:
        raise ValueError("write_video needs at least one frame")
    height, width = frames[0].shape[:2]
    if width % 2 or height % 2:
        raise ValueError(f"yuv420p needs an even width and height, not {width}x{height}")
    path = Path(path)
    time_base = Fraction(1, fps)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.time_base = time_base
        for i, pixels in enumerate(frames):
            if pixels.shape != (height, width, 3) or pixels.dtype != numpy.uint8:
                raise ValueError(
                    f"frame {i} is {pixels.shape} {pixels.dtype}, not ({height}, {width}, 3) uint8"
                )
            frame = av.VideoFrame.from_ndarray(numpy.ascontiguousarray(pixels), format="rgb24")
            frame.pts, frame.time_base = i, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@cache
def _portrait(height: int) -> Image.Image:
    photo = Image.open(PORTRAIT).convert("RGB")
    width = round(photo.width * height / photo.height)
    return photo.resize((width, height), Image.Resampling.LANCZOS)


def portrait_frames(
    count: int, size: tuple[int, int] = (640, 480), face_px: int | None = None
) -> list[numpy.ndarray]:
    """``count`` RGB frames of ``size`` (width, height): the test portrait on a grey background.

    The photo is scaled to 70% of the frame height (a face large enough for detectors at 640x480 and at
    half that size), or so that the face is ``face_px`` wide (dlib's HOG box: eyebrows to chin, ear to
    ear), and moves a few pixels per frame, left to right and back, inside the border.
    """
    width, height = size
    photo = _portrait(max(1, round(height * 0.7 if face_px is None else face_px / PORTRAIT_FACE_SHARE)))
    room = max(0, width - 2 * BORDER - photo.width)  # horizontal travel
    top = max(BORDER, (height - photo.height) // 2)
    frames = []
    for i in range(count):
        step = (4 * i) % (2 * room) if room else 0
        left = BORDER + (step if step <= room else 2 * room - step)
        canvas = Image.new("RGB", (width, height), BACKGROUND)
        canvas.paste(photo, (left, top))
        frames.append(numpy.asarray(canvas))
    return frames


FIGURE_HEIGHT = 200
WALKERS = ((120, 60), (400, 100))  # (left, top) of each figure's box (width FIGURE_HEIGHT // 3) in frame 0


def walker_frames(
    count: int, size: tuple[int, int] = (640, 480), walkers: Sequence[tuple[int, int]] = WALKERS
) -> list[numpy.ndarray]:
    """``count`` frames of figures (one per ``walkers`` entry) walking right by 2 px a frame, on ground
    with some noise: real cameras are never flat, and a flat image starves gradient-based detectors."""
    width, height = size
    noise = numpy.random.default_rng(7).normal(0.0, 6.0, (height, width, 3))
    frames = []
    for i in range(count):
        canvas = Image.new("RGB", (width, height), (200, 200, 200))
        draw = ImageDraw.Draw(canvas)
        for k, (left, top) in enumerate(walkers):
            _figure(draw, left + 2 * i, top, FIGURE_HEIGHT - 20 * k, (40, 40, 40) if k == 0 else (90, 60, 50))
        frames.append(numpy.clip(numpy.asarray(canvas) + noise, 0, 255).astype(numpy.uint8))
    return frames


def _figure(draw: ImageDraw.ImageDraw, left: float, top: float, tall: float, colour: tuple[int, ...]) -> None:
    """A standing person's silhouette in a box ``tall / 3`` wide (8 head-heights tall, arms at the sides)."""
    u, x = tall / 8.0, left + tall / 6.0  # head unit, centre line

    def poly(*points: tuple[float, float]) -> None:
        draw.polygon([(x + dx * u, top + dy * u) for dx, dy in points], fill=colour)

    draw.ellipse([x - 0.45 * u, top - 0.05 * u, x + 0.45 * u, top + 1.15 * u], fill=colour)  # head
    poly((-0.25, 1.0), (0.25, 1.0), (0.25, 1.3), (-0.25, 1.3))  # neck
    poly((-1.0, 1.3), (1.0, 1.3), (0.8, 4.2), (-0.8, 4.2))  # torso
    for side in (-1, 1):
        poly((side * 1.0, 1.3), (side * 1.35, 1.5), (side * 1.3, 4.3), (side * 1.0, 4.3))  # arm
        poly((side * 0.05, 4.1), (side * 0.8, 4.1), (side * 0.75, 7.7), (side * 0.15, 7.7))  # leg
        foot = x + side * 0.5 * u
        draw.ellipse([foot - 0.4 * u, top + 7.65 * u, foot + 0.4 * u, top + 7.95 * u], fill=colour)
