"""Custom named-entity recognition: train, evaluate, save, load and run a real spaCy model.

Pure compute: text and ``Example``s in, models and scores out. No pretrained weights are used or
downloaded; every pipeline starts from ``spacy.blank(language)`` plus one ``ner`` component.

Training (``train``):
- one plain ``nlp.update`` loop over shuffled minibatches whose size compounds from 4 to 32 across the
  whole run (small batches learn fast in the first epoch, bigger ones are cheaper later);
- ``should_stop()`` is polled before every batch and between evaluation chunks, so a stop request is
  seen within one batch (~10-50 ms on one core);
- after every epoch the model is scored on ``dev`` by exact span F1 and the best epoch is kept in memory
  as ``nlp.to_bytes()``. Ties go to the later epoch (it fits the training data better and is as good on
  dev). Training ends when dev F1 has not strictly improved for ``patience`` epochs (counted only
  once dev F1 is above zero: a small corpus can need a few epochs to find its first entity), when dev
  F1 was perfect (1.0) in two consecutive epochs (nothing left to select on), or at ``max_epochs``;
- with an empty ``dev`` the epoch's training loss is the signal instead (an improvement is a drop of
  more than 1%); ``dev_f1``/``best_f1`` are then reported as 0.0;
- seeds are fixed (``spacy.util.fix_random_seed`` plus a seeded shuffle) so a run is reproducible.

Tokenization: the pipeline's tokenizer splits a trailing "." off every token ("X." -> "X" "."), and
drops the language's abbreviation exceptions ending in "." ("Inc.", "U.S.", "F."). Comprehend offsets
come from people, and "... the Xbox Series X." would otherwise put the product's last character and the
sentence's full stop in one token, so the gold span could only be learnt (and predicted) with the
period. Finer tokens mean fewer adjusted spans; both "Acme Inc" and "Acme Inc." remain learnable.

Labels: entity type names are user strings (``DRUG-NAME``, ``MY TYPE``, even ``!X``). spaCy's NER
parses its move names ("B-<label>") and rejects labels starting with "!", so the spaCy model uses
internal labels ``E0``, ``E1``, ... and ``NerModel`` maps them back; the mapping is saved with the model.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy
import spacy
from spacy.attrs import IS_SPACE
from spacy.language import Language
from spacy.tokens import Doc
from spacy.tokens import Span as SpacySpan
from spacy.training import Example as SpacyExample
from spacy.util import compile_suffix_regex, minibatch
from thinc.api import require_cpu

from mlharbor.engines.annotated import Example, Span

SUPPORTED_LANGUAGES = ("en", "es", "fr", "de", "it", "pt")
METADATA_FILE = "mlharbor-ner.json"
FORMAT_VERSION = 1
FORBIDDEN_LABEL_CHARS = (",", "\n", "\r", "\t")

# Documents parsed together at most (nlp.pipe uses batch_size // 4 = 64 for its default of 256).
_PARSE_CHUNK = 64
# Polling granularity for dev evaluation, so a stop request is not stuck behind a whole dev pass.
_EVAL_CHUNK = 64


@dataclass(frozen=True)
class Scores:
    """Precision, recall and F1 in 0..1; each is 0.0 where undefined (no predictions / no gold)."""

    precision: float
    recall: float
    f1: float

    @classmethod
    def from_counts(cls, true_positives: int, predicted: int, gold: int) -> Scores:
        precision = true_positives / predicted if predicted else 0.0
        recall = true_positives / gold if gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return cls(precision, recall, f1)


@dataclass(frozen=True)
class Evaluation:
    """Exact-match scores: a prediction counts only if (start, end, label) equals a gold span."""

    overall: Scores  # micro-averaged over all types
    per_type: dict[str, Scores]  # every model label, plus any label seen in gold or predictions
    gold_counts: dict[str, int]  # gold mentions per type in the evaluated documents
    documents: int


@dataclass(frozen=True)
class EpochReport:
    epoch: int  # 1-based
    batches: int  # batches in this epoch
    loss: float  # summed NER loss over the epoch's batches
    dev_f1: float  # 0.0 when there is no dev set
    best_f1: float
    best_epoch: int
    seconds: float  # this epoch, evaluation included


@dataclass
class AlignmentReport:
    """What happened to the gold spans when they were laid on spaCy tokens."""

    adjusted: int = 0  # moved: whitespace trimmed off the edges, or expanded to token boundaries
    dropped: int = 0  # impossible to place: out of range, empty, or only whitespace
    overlapping: int = 0  # removed because a longer (or equally long, earlier) span overlapped them
    ignored: int = 0  # label not among the recognizer's entity types (Comprehend ignores those)
    kept: int = 0  # spans that became entities
    mentions: dict[str, int] = field(default_factory=dict)  # kept spans per label

    def add(self, other: AlignmentReport) -> None:
        self.adjusted += other.adjusted
        self.dropped += other.dropped
        self.overlapping += other.overlapping
        self.ignored += other.ignored
        self.kept += other.kept
        for label, count in other.mentions.items():
            self.mentions[label] = self.mentions.get(label, 0) + count


@dataclass
class TrainResult:
    model: NerModel | None  # the best checkpoint; None if stopped before the first epoch was scored
    best_epoch: int  # 0 when no epoch completed
    epochs_run: int  # completed (trained and scored) epochs
    stopped: bool  # should_stop() ended the run
    alignment: AlignmentReport  # for the training documents
    best_dev_f1: float
    seconds: float
    batches: int = 0  # nlp.update calls in total


def _check_labels(labels: Sequence[str]) -> tuple[str, ...]:
    result = tuple(labels)
    if not result:
        raise ValueError("at least one entity type is required")
    if len(set(result)) != len(result):
        raise ValueError("entity types must be unique")
    for label in result:
        if not label or any(c in label for c in FORBIDDEN_LABEL_CHARS):
            raise ValueError(f"invalid entity type {label!r}: empty, or contains a comma, tab or newline")
    return result


def _internal_labels(labels: Sequence[str]) -> tuple[str, ...]:
    return tuple(f"E{i}" for i in range(len(labels)))


# The network `spacy init config --pipeline ner --optimize efficiency` gives (tok2vec inlined into the NER
# model): larger hash-embedding tables than the `ner` factory's default, which noticeably helps on real,
# noisy text with many rare words.
_NER_MODEL = {
    "@architectures": "spacy.TransitionBasedParser.v2",
    "state_type": "ner",
    "extra_state_tokens": False,
    "hidden_width": 64,
    "maxout_pieces": 2,
    "use_upper": True,
    "nO": None,
    "tok2vec": {
        "@architectures": "spacy.Tok2Vec.v2",
        "embed": {
            "@architectures": "spacy.MultiHashEmbed.v2",
            "width": 96,
            "attrs": ["NORM", "PREFIX", "SUFFIX", "SHAPE"],
            "rows": [5000, 1000, 2500, 2500],
            "include_static_vectors": False,
        },
        "encode": {
            "@architectures": "spacy.MaxoutWindowEncoder.v2",
            "width": 96,
            "depth": 4,
            "window_size": 1,
            "maxout_pieces": 3,
        },
    },
}


def blank_pipeline(language: str, internal_labels: Sequence[str] = ()) -> Language:
    """A blank pipeline with this module's tokenizer tweaks and an ``ner`` component."""
    if language not in SUPPORTED_LANGUAGES:
        raise ValueError(f"unsupported language {language!r}; supported: {', '.join(SUPPORTED_LANGUAGES)}")
    nlp = spacy.blank(language)
    tokenizer = nlp.tokenizer
    # Split trailing periods everywhere (see module doc). The suffix regex and the special cases are
    # serialized with the tokenizer, so a loaded model tokenizes exactly like the trained one.
    tokenizer.rules = {
        text: tokens
        for text, tokens in (tokenizer.rules or {}).items()
        if not (len(text) > 1 and text.endswith("."))
    }
    tokenizer.suffix_search = compile_suffix_regex([*nlp.Defaults.suffixes, r"\."]).search
    ner = nlp.add_pipe("ner", config={"model": _NER_MODEL})
    for label in internal_labels:
        ner.add_label(label)
    return nlp


class NerModel:
    """A trained recognizer: a spaCy pipeline plus the mapping to the user's entity type names."""

    def __init__(self, nlp: Language, labels: Sequence[str], language: str) -> None:
        self.nlp = nlp
        self.labels: tuple[str, ...] = tuple(labels)
        self.language = language
        self._public = dict(zip(_internal_labels(self.labels), self.labels, strict=True))
        self._scorer = _ScoredNer(nlp.get_pipe("ner"))

    def predict_iter(self, texts: Sequence[str], batch_size: int = 64) -> Iterator[list[Span]]:
        """Entities per text, in order, each with a confidence ``score`` (see ``_ScoredNer``).

        Like ``nlp.pipe``, each batch is parsed in length-sorted chunks of at most ``_PARSE_CHUNK``
        documents: a parse steps until its longest document is done, and the parser's precomputed
        features for a few thousand tokens stay in the CPU cache (a 256-document chunk was 20-30% slower).
        """
        for offset in range(0, len(texts), batch_size):
            docs = [self.nlp.make_doc(text) for text in texts[offset : offset + batch_size]]
            by_length = sorted(range(len(docs)), key=lambda i: len(docs[i]), reverse=True)
            scores: list[list[float]] = [[] for _ in docs]
            for start in range(0, len(by_length), _PARSE_CHUNK):
                chunk = by_length[start : start + _PARSE_CHUNK]
                for i, doc_scores in zip(chunk, self._scorer.parse([docs[i] for i in chunk]), strict=True):
                    scores[i] = doc_scores
            for doc, doc_scores in zip(docs, scores, strict=True):
                # Offsets are Python str indices (code points), the same unit as Example offsets.
                yield [
                    Span(ent.start_char, ent.end_char, self._public.get(ent.label_, ent.label_), score)
                    for ent, score in zip(doc.ents, doc_scores, strict=True)
                ]

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> list[list[Span]]:
        """Entities per text, exactly those spaCy's greedy NER finds, each with a confidence score."""
        return list(self.predict_iter(texts, batch_size))

    def save(self, directory: Path) -> None:
        """Write the spaCy pipeline, then the metadata file last: its presence marks a complete save."""
        directory = Path(directory)
        self.nlp.to_disk(directory)
        metadata = {
            "format": FORMAT_VERSION,
            "language": self.language,
            "labels": list(self.labels),
            "internal_labels": list(_internal_labels(self.labels)),
            "spacy_version": spacy.__version__,
        }
        (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> NerModel:
        directory = Path(directory)
        meta_path = directory / METADATA_FILE
        if not meta_path.is_file():
            raise ValueError(f"{directory} is not a saved NER model (no {METADATA_FILE})")
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
        if metadata.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported NER model format {metadata.get('format')!r}")
        require_cpu()
        # spacy.load of a directory rebuilds the blank language from config.cfg: no download involved.
        nlp = spacy.load(directory)
        return cls(nlp, metadata["labels"], metadata["language"])


# Rows of _ScoredNer.table for steps outside an entity: anywhere, on the last token, on a whitespace token.
_OUTSIDE, _OUTSIDE_LAST, _OUTSIDE_SPACE = 0, 1, 2


class _ScoredNer:
    """spaCy's greedy NER, plus a confidence for every entity it finds.

    spaCy's greedy parser keeps no scores, and its beam search costs a Python loop per token. Instead the
    greedy parse runs unchanged (its C loop, so the entities are exactly ``nlp.pipe``'s), and the step
    model it built is kept: for NER the parser state before each token is fully known from the result
    (the token, and the open entity's first token), so every decision is re-scored afterwards in one
    batched matrix product. An entity's score is the product of the probabilities, each a softmax over
    the actions valid at that step, of the actions that made it (B, I..., L or U): the probability of that
    exact span and type given the text before it. This costs about 2% over the bare parse.

    Valid actions follow spaCy's BILUO rules for a document without preset entities or sentence
    boundaries (ours never have either): outside an entity O, U-x and B-x (not on the last token; neither
    on a whitespace token); inside an entity of type x, I-x (not on the last token) and L-x.
    """

    def __init__(self, ner: Any) -> None:
        self.ner = ner
        moves = ner.moves
        # move_names hides spaCy's internal blocking action "U-", but score columns include it.
        self.names = [moves.get_class_name(i) for i in range(moves.n_moves)]
        index = {name: i for i, name in enumerate(self.names)}
        self.index = index
        labels = sorted({name[2:] for name in self.names if name[:2] in ("B-", "U-") and len(name) > 2})
        # The valid actions of every kind of step, one row each; a step picks its row by code.
        n = len(self.names)
        table = numpy.zeros((3 + 2 * len(labels), n), dtype=bool)
        table[(_OUTSIDE, _OUTSIDE_LAST, _OUTSIDE_SPACE), index["O"]] = True
        self.codes: dict[str, tuple[int, int]] = {}  # label -> (inside code, inside-on-last-token code)
        for i, label in enumerate(labels):
            table[_OUTSIDE, [index[f"U-{label}"], index[f"B-{label}"]]] = True
            table[_OUTSIDE_LAST, index[f"U-{label}"]] = True
            inside, inside_last = 3 + 2 * i, 4 + 2 * i
            table[inside, [index[f"I-{label}"], index[f"L-{label}"]]] = True
            table[inside_last, index[f"L-{label}"]] = True
            self.codes[label] = (inside, inside_last)
        self.table = table
        self._captured: list[tuple[Any, Any, Any]] = []
        model = ner.model
        forward = model._func

        def capturing(model: Any, docs: Any, is_train: bool) -> Any:
            step, finish = forward(model, docs, is_train)
            if not is_train:
                # greedy_parse frees these right after parsing; holding references keeps them for scoring.
                self._captured.append((step.state2vec, step.vec2scores, step._class_mask))
            return step, finish

        model._func = capturing

    def parse(self, docs: list[Doc]) -> list[list[float]]:
        """Set ``doc.ents`` on every doc; return each entity's score, in ``doc.ents`` order."""
        decisions = self.decisions(docs)
        if decisions is None:  # nothing to parse (all documents empty)
            return [[] for _ in docs]
        probs, taken = decisions
        chosen = probs[numpy.arange(len(taken)), taken]
        result: list[list[float]] = []
        offset = 0
        for doc in docs:
            result.append([float(numpy.prod(chosen[offset + e.start : offset + e.end])) for e in doc.ents])
            offset += len(doc)
        return result

    def decisions(self, docs: list[Doc]) -> tuple[numpy.ndarray, numpy.ndarray] | None:
        """Parse ``docs`` (setting ``doc.ents``) and return, for every step of every document in order,
        the probabilities of all actions (zero for invalid ones) and the action the parser took."""
        self._captured.clear()
        self.ner.set_annotations(docs, self.ner.predict(docs))
        if not self._captured:
            return None
        state2vec, vec2scores, class_mask = self._captured.pop()
        token_ids, masks, taken = self._steps(docs)
        scores = vec2scores.predict(state2vec.predict(token_ids))[:, : len(self.names)]
        scores[:, class_mask[: len(self.names)] == 0] = numpy.nanmin(scores)  # as spaCy does for unseen
        scores = numpy.where(masks, scores, -numpy.inf)
        scores -= scores.max(axis=1, keepdims=True)
        probs = numpy.exp(scores)
        probs /= probs.sum(axis=1, keepdims=True)
        return probs, taken

    def _steps(self, docs: list[Doc]) -> tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
        """Per step (= per token): the feature token ids spaCy's NER state gives (this token; the open
        entity's first token and the previous token, or -1), its valid actions, and the action taken.
        Vectorised per document; Python only loops over entities."""
        id_parts, code_parts, action_parts = [], [], []
        index = self.index
        offset = 0
        for doc in docs:
            n = len(doc)
            ids = numpy.full((n, 3), -1, dtype="i")
            ids[:, 0] = numpy.arange(offset, offset + n)
            codes = numpy.full(n, _OUTSIDE, dtype="i")
            if n:
                codes[n - 1] = _OUTSIDE_LAST
            codes[doc.to_array(IS_SPACE).astype(bool)] = _OUTSIDE_SPACE
            actions = numpy.full(n, index["O"], dtype="i")
            for ent in doc.ents:
                start, end, label = ent.start, ent.end, ent.label_
                if end - start == 1:
                    actions[start] = index[f"U-{label}"]
                    continue
                actions[start] = index[f"B-{label}"]
                actions[start + 1 : end] = index[f"I-{label}"]
                actions[end - 1] = index[f"L-{label}"]
                ids[start + 1 : end, 1] = offset + start
                ids[start + 1 : end, 2] = numpy.arange(offset + start, offset + end - 1)
                inside, inside_last = self.codes[label]
                codes[start + 1 : end] = inside
                if end == n:
                    codes[n - 1] = inside_last
            id_parts.append(ids)
            code_parts.append(codes)
            action_parts.append(actions)
            offset += n
        token_ids = numpy.ascontiguousarray(numpy.concatenate(id_parts))
        return token_ids, self.table[numpy.concatenate(code_parts)], numpy.concatenate(action_parts)


def align(nlp: Language, example: Example) -> tuple[Doc, AlignmentReport]:
    """Tokenize ``example.text`` and set ``doc.ents`` from its spans, reporting every change.

    Span labels are used as given. spaCy would silently drop spans whose offsets miss token boundaries
    (warning W030); here such spans are trimmed of edge whitespace and expanded to the covering tokens
    (counted ``adjusted``). Spans that cannot be placed at all are counted ``dropped``. spaCy entities
    cannot overlap: the longest span wins (the first on ties) and the losers are counted ``overlapping``.
    Exact duplicates (same offsets and label) are merged without being counted.
    """
    text = example.text
    report = AlignmentReport()
    doc = nlp.make_doc(text)
    placed: list[SpacySpan] = []
    for start, end, label in sorted({(s.start, s.end, s.label) for s in example.spans}):
        if not 0 <= start < end <= len(text):
            report.dropped += 1
            continue
        # Annotators often include a neighbouring space; no token can start or end with whitespace.
        trimmed_start, trimmed_end = start, end
        while trimmed_start < trimmed_end and text[trimmed_start].isspace():
            trimmed_start += 1
        while trimmed_end > trimmed_start and text[trimmed_end - 1].isspace():
            trimmed_end -= 1
        if trimmed_start == trimmed_end:
            report.dropped += 1
            continue
        span = doc.char_span(trimmed_start, trimmed_end, label=label)
        if span is None:
            span = doc.char_span(trimmed_start, trimmed_end, label=label, alignment_mode="expand")
            if span is None or len(span) == 0:
                report.dropped += 1
                continue
        if (span.start_char, span.end_char) != (start, end):
            report.adjusted += 1
        placed.append(span)
    # Longest first (in characters), earliest first on ties; a span survives if it touches no survivor.
    placed.sort(key=lambda s: (-(s.end_char - s.start_char), s.start_char))
    taken: set[int] = set()
    kept: list[SpacySpan] = []
    for span in placed:
        tokens = set(range(span.start, span.end))
        if tokens & taken:
            # Two labels on the very same tokens also land here: one of them has to go.
            report.overlapping += 1
            continue
        taken |= tokens
        kept.append(span)
    kept.sort(key=lambda s: s.start)
    doc.set_ents(kept, default="outside")  # complete annotation: every other token is "not an entity"
    report.kept = len(kept)
    report.mentions = dict(Counter(span.label_ for span in kept))
    return doc, report


def _count(
    gold: Sequence[Sequence[Span]], predicted: Sequence[Sequence[Span]], labels: Sequence[str]
) -> Evaluation:
    allowed = set(labels)
    tp: Counter[str] = Counter()
    n_gold: Counter[str] = Counter()
    n_pred: Counter[str] = Counter()
    for gold_spans, pred_spans in zip(gold, predicted, strict=True):
        g = {(s.start, s.end, s.label) for s in gold_spans if s.label in allowed}
        p = {(s.start, s.end, s.label) for s in pred_spans}
        n_gold.update(label for _, _, label in g)
        n_pred.update(label for _, _, label in p)
        tp.update(label for _, _, label in g & p)
    types = list(labels) + sorted((set(n_gold) | set(n_pred)) - allowed)
    per_type = {t: Scores.from_counts(tp[t], n_pred[t], n_gold[t]) for t in types}
    overall = Scores.from_counts(sum(tp.values()), sum(n_pred.values()), sum(n_gold.values()))
    return Evaluation(overall, per_type, {t: n_gold[t] for t in types}, len(gold))


def evaluate(model: NerModel, examples: Sequence[Example]) -> Evaluation:
    """Exact span match against the gold spans as given (no alignment), micro-averaged overall.

    Gold spans whose label is not one of the model's entity types are ignored, as in training. A gold
    span that does not sit on token boundaries can never be matched, and counts as a miss: these scores
    are what a user comparing our output with their own annotations would measure.
    """
    predicted = model.predict([e.text for e in examples])
    return _count([e.spans for e in examples], predicted, model.labels)


def _evaluate_interruptible(
    model: NerModel, examples: Sequence[Example], should_stop: Callable[[], bool]
) -> Evaluation | None:
    """``evaluate``, polling ``should_stop`` between chunks; None when a stop was requested."""
    predicted: list[list[Span]] = []
    for offset in range(0, len(examples), _EVAL_CHUNK):
        if should_stop():
            return None
        chunk = examples[offset : offset + _EVAL_CHUNK]
        predicted.extend(model.predict([e.text for e in chunk], batch_size=_EVAL_CHUNK))
    return _count([e.spans for e in examples], predicted, model.labels)


def _compounding(start: float, stop: float, factor: float) -> Iterator[int]:
    size = start
    while True:
        yield int(size)
        size = min(size * factor, stop)


def train(
    train: Sequence[Example],
    dev: Sequence[Example],
    *,
    language: str,
    labels: Sequence[str],
    max_epochs: int = 30,
    patience: int = 4,
    seed: int = 0,
    dropout: float = 0.2,
    should_stop: Callable[[], bool] = lambda: False,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> TrainResult:
    """Train a recognizer for ``labels`` on ``train``, selecting the best epoch on ``dev``.

    See the module docstring for the loop, early stopping and the no-dev fallback. Spans with labels
    outside ``labels`` are ignored (counted in ``alignment.ignored``); labels without any training
    mention are allowed (the model just never predicts them). On a stop request the function returns
    within about one batch, with ``stopped=True`` and the best checkpoint so far (None if no epoch was
    completed).
    """
    public = _check_labels(labels)
    if not train:
        raise ValueError("no training documents")
    if max_epochs < 1 or patience < 1:
        raise ValueError("max_epochs and patience must be at least 1")
    began = time.perf_counter()
    require_cpu()
    spacy.util.fix_random_seed(seed)
    internal = _internal_labels(public)
    to_internal = dict(zip(public, internal, strict=True))
    nlp = blank_pipeline(language, internal)

    alignment = AlignmentReport()
    examples: list[SpacyExample] = []
    for example in train:
        known = tuple(
            Span(s.start, s.end, to_internal[s.label]) for s in example.spans if s.label in to_internal
        )
        doc, report = align(nlp, Example(example.text, known))
        report.ignored = len(example.spans) - len(known)
        report.mentions = {public[int(k[1:])]: v for k, v in report.mentions.items()}
        alignment.add(report)
        examples.append(SpacyExample(nlp.make_doc(example.text), doc))

    if should_stop():  # preparing a large corpus takes a while: honour a stop before training starts
        return TrainResult(None, 0, 0, True, alignment, 0.0, time.perf_counter() - began)
    optimizer = nlp.initialize(lambda: examples)
    model = NerModel(nlp, public, language)
    rng = random.Random(seed)
    sizes = _compounding(4.0, 32.0, 1.001)
    order = list(examples)

    best_bytes: bytes | None = None
    best_epoch, best_f1, best_loss = 0, 0.0, float("inf")
    stale, perfect_streak, epochs_run, batches_total = 0, 0, 0, 0
    stopped = False

    for epoch in range(1, max_epochs + 1):
        epoch_began = time.perf_counter()
        rng.shuffle(order)
        losses: dict[str, float] = {}
        batches = 0
        for batch in minibatch(order, size=sizes):
            if should_stop():
                stopped = True
                break
            nlp.update(batch, drop=dropout, sgd=optimizer, losses=losses)
            batches += 1
        batches_total += batches
        if stopped:
            break
        loss = float(losses.get("ner", 0.0))

        if dev:
            scored = _evaluate_interruptible(model, dev, should_stop)
            if scored is None:
                stopped = True
                break
            dev_f1 = scored.overall.f1
            improved = dev_f1 > best_f1
            better_or_equal = dev_f1 >= best_f1
            perfect_streak = perfect_streak + 1 if dev_f1 == 1.0 else 0
        else:
            dev_f1 = 0.0
            improved = loss < best_loss * 0.99
            better_or_equal = loss <= best_loss
            perfect_streak = 0
        epochs_run = epoch
        if better_or_equal or best_bytes is None:
            best_bytes, best_epoch = nlp.to_bytes(), epoch
            best_f1, best_loss = max(best_f1, dev_f1), min(best_loss, loss)
        # A small corpus can score 0 on dev for several epochs before the first entity is found; those
        # epochs are not "no improvement" yet, so patience only starts once dev F1 is above zero.
        if improved or (dev and best_f1 == 0.0):
            stale = 0
        else:
            stale += 1
        if on_epoch is not None:
            on_epoch(
                EpochReport(
                    epoch=epoch,
                    batches=batches,
                    loss=loss,
                    dev_f1=dev_f1,
                    best_f1=best_f1,
                    best_epoch=best_epoch,
                    seconds=time.perf_counter() - epoch_began,
                )
            )
        if stale >= patience or perfect_streak >= 2:
            break

    result_model: NerModel | None = None
    if best_bytes is not None:
        nlp.from_bytes(best_bytes)
        result_model = model
    return TrainResult(
        model=result_model,
        best_epoch=best_epoch,
        epochs_run=epochs_run,
        stopped=stopped,
        alignment=alignment,
        best_dev_f1=best_f1,
        seconds=time.perf_counter() - began,
        batches=batches_total,
    )
