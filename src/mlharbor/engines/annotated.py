"""Annotated text, the unit both the dataset readers and the NER engine speak."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Span:
    """A typed character span of a text: ``text[start:end]`` (end exclusive, as Comprehend's offsets)."""

    start: int
    end: int
    label: str
    score: float | None = None  # set by predictions when the model can say how sure it is


@dataclass(frozen=True, slots=True)
class Example:
    """One document with its gold spans. ``source`` says where it came from, for error messages."""

    text: str
    spans: tuple[Span, ...] = ()
    source: str = field(default="", compare=False)
