"""Deterministic synthetic NER corpora for tests and benchmarks.

``make_corpus(n_docs, seed, types=..., value_split="train"|"test")`` fills sentence templates with
PERSON, PRODUCT, CITY and COMPANY values and returns ``Example``s with exact character spans.

Held-out honesty: every entity value is built from *words* drawn from one of two disjoint pools, fixed
once for all seeds. ``value_split="test"`` only uses the test pool, so no distinctive word of a test
entity ("Velorn", "Brikaus", ...) ever occurs in any "train" corpus, whatever seeds are used. Only
structural words are shared (``Series``, ``Pro``, ``San``, ``Labs``, model codes such as ``X`` or
``S9``), as in real data. Scores on a "test" corpus therefore measure generalisation to unseen values.

Shape of the data, on purpose:
- multi-token entities ("Kalo Series X", "San Mireva", "Dorvik & Lune");
- punctuation right after entities ("... the Tarvo Series X.", "(Dorvik Labs)", "Zentra's") where
  spaCy's default tokenizer keeps ``X.`` as one token;
- about 15% of the words carry diacritics (``Zörvan``, ``Šelik``), so offsets are tested as ``str``
  indices rather than bytes;
- a few documents with several entities (and several lines), and some with none.

To use other label names (e.g. ``DRUG-NAME``), rename the labels of the returned spans.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from functools import cache

from mlharbor.engines.annotated import Example, Span

TYPES = ("PERSON", "PRODUCT", "CITY", "COMPANY")

# Each slot is filled independently, so a template can name two different people.
TEMPLATES = (
    "{PERSON} bought a {PRODUCT} in {CITY}.",
    "{PERSON} works for {COMPANY}.",
    "Yesterday {PERSON} flew from {CITY} to {CITY}.",
    "The {PRODUCT} is made by {COMPANY}.",
    "{COMPANY} opened a new office in {CITY}, according to {PERSON}.",
    "Did {PERSON} really return the {PRODUCT}?",
    "I ordered the {PRODUCT}. It arrived late.",
    "Our team met {PERSON} and {PERSON} at the {COMPANY} booth.",
    "{CITY} is where {COMPANY} was founded.",
    "Shipping to {CITY} takes three days.",
    "Please contact {PERSON} ({COMPANY}) about the order.",
    "{PERSON}'s review of the {PRODUCT} was positive.",
    "Has anyone tried the {PRODUCT}?",
    "We compared the {PRODUCT} with the {PRODUCT} last week.",
    "The conference in {CITY} was organised by {COMPANY}.",
    "Thanks, {PERSON}!",
    "{COMPANY} announced the {PRODUCT} today; {PERSON}, its CEO, presented it in {CITY}.",
    "My flight to {CITY} was cancelled.",
    "Nothing interesting happened today.",
    "The meeting is scheduled for Monday morning.",
    '"{PRODUCT}" is the best seller at {COMPANY}.',
    "{PERSON} moved to {CITY}; {PERSON} stayed in {CITY}.",
    "Is the {PRODUCT} available in {CITY}?",
    "Customer: {PERSON}. Product: {PRODUCT}. City: {CITY}.",
    "I sent the invoice to {COMPANY} this morning.",
    "The weather in {CITY} was lovely, said {PERSON}.",
)
# Long multi-entity documents, drawn about one time in twelve.
LONG_TEMPLATES = (
    "Dear {PERSON},\nthank you for choosing {COMPANY}. Your {PRODUCT} will ship from {CITY} on Friday.\n"
    "{PERSON} from our {CITY} office will call you about the {PRODUCT}.",
    "Minutes: {PERSON} (chair), {PERSON} and {PERSON} met in {CITY}. {COMPANY} and {COMPANY} presented "
    "the {PRODUCT} and the {PRODUCT}. Next meeting: {CITY}.",
)

_SLOT = re.compile(r"\{(PERSON|PRODUCT|CITY|COMPANY)\}")

_ONSETS = (
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "kr",
    "st",
    "tr",
    "sh",
    "ch",
    "j",
    "h",
    "w",
    "dr",
    "gr",
    "pl",
)
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ei", "ia")
_ACCENTED_VOWELS = ("ö", "ü", "é", "å", "ï", "ø")
_ACCENTED_ONSETS = ("š", "ž", "ñ", "č")
_CODAS = ("", "", "", "n", "r", "l", "s", "m", "k", "th")

_PRODUCT_LINES = ("Series", "Pro", "Air", "Max", "Ultra", "Mini", "Plus")
_COMPANY_SUFFIXES = ("Labs", "Systems", "Group", "Corp", "Industries", "Foods", "Motors")
_CITY_PREFIXES = ("San", "New", "Port", "Saint")
_CITY_SUFFIXES = ("burg", "ville", "ton", "stad", "polis")


def _word(rng: random.Random) -> str:
    syllables = []
    for _ in range(rng.choice((2, 2, 3))):
        onset = rng.choice(_ACCENTED_ONSETS) if rng.random() < 0.05 else rng.choice(_ONSETS)
        vowel = rng.choice(_ACCENTED_VOWELS) if rng.random() < 0.06 else rng.choice(_VOWELS)
        syllables.append(onset + vowel + rng.choice(_CODAS))
    return "".join(syllables).capitalize()


@cache
def _pools() -> dict[str, tuple[str, ...]]:
    """Disjoint word pools, identical for every call (their RNG seed is a constant, not the caller's)."""
    rng = random.Random(20240611)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < 2400:
        w = _word(rng)
        if w not in seen and 4 <= len(w) <= 11:
            seen.add(w)
            words.append(w)
    # One word in four is held out; a word is in exactly one pool, so no test word can leak into train.
    return {
        "train": tuple(w for i, w in enumerate(words) if i % 4 != 3),
        "test": tuple(w for i, w in enumerate(words) if i % 4 == 3),
    }


def _code(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.4:
        return rng.choice("XSZQ")
    if kind < 0.7:
        return f"{rng.choice('SZXKM')}{rng.randint(2, 12)}"
    return str(rng.choice((3, 5, 7, 9, 300, 500, 2000)))


def _value(kind: str, words: Sequence[str], rng: random.Random) -> str:
    w = rng.choice
    if kind == "PERSON":
        return f"{w(words)} {w(words)}" if rng.random() < 0.8 else w(words)
    if kind == "PRODUCT":
        r = rng.random()
        if r < 0.45:
            return f"{w(words)} {w(_PRODUCT_LINES)} {_code(rng)}"  # "Xbox Series X" shape
        if r < 0.75:
            return f"{w(words)} {_code(rng)}"
        return w(words)
    if kind == "CITY":
        r = rng.random()
        if r < 0.55:
            return w(words)
        if r < 0.8:
            return f"{w(_CITY_PREFIXES)} {w(words)}"
        return w(words) + w(_CITY_SUFFIXES)
    if kind == "COMPANY":
        r = rng.random()
        if r < 0.6:
            return f"{w(words)} {w(_COMPANY_SUFFIXES)}"
        if r < 0.8:
            return f"{w(words)} & {w(words)}"
        return w(words)
    raise ValueError(f"unknown entity type {kind!r}")


def make_corpus(
    n_docs: int,
    seed: int,
    types: Sequence[str] = TYPES,
    value_split: str = "train",
) -> list[Example]:
    """``n_docs`` synthetic documents, identical for identical arguments.

    types: entity types to produce, a subset of ``TYPES``; templates needing other types are skipped.
    value_split: "train" or "test": which disjoint word pool entity values come from (see module doc).
    Spans are sorted by start and never overlap; ``source`` is ``synthetic-<split>-<seed>-<index>``.
    """
    if value_split not in ("train", "test"):
        raise ValueError("value_split must be 'train' or 'test'")
    unknown = set(types) - set(TYPES)
    if unknown:
        raise ValueError(f"unknown entity types {sorted(unknown)}; choose from {TYPES}")
    wanted = set(types)
    short = [t for t in TEMPLATES if set(_SLOT.findall(t)) <= wanted]
    long = [t for t in LONG_TEMPLATES if set(_SLOT.findall(t)) <= wanted]
    words = _pools()[value_split]
    rng = random.Random(f"{seed}-{value_split}")
    corpus: list[Example] = []
    for index in range(n_docs):
        template = rng.choice(long) if long and rng.random() < 1 / 12 else rng.choice(short)
        text, spans, cursor = [], [], 0
        pos = 0
        for match in _SLOT.finditer(template):
            literal = template[pos : match.start()]
            text.append(literal)
            cursor += len(literal)
            value = _value(match.group(1), words, rng)
            text.append(value)
            spans.append(Span(cursor, cursor + len(value), match.group(1)))
            cursor += len(value)
            pos = match.end()
        text.append(template[pos:])
        corpus.append(Example("".join(text), tuple(spans), source=f"synthetic-{value_split}-{seed}-{index}"))
    return corpus
