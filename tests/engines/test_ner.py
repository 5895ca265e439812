"""The NER engine trains real spaCy models: these tests train small ones (a few seconds each)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import spacy

from mlharbor.engines.annotated import Example, Span
from mlharbor.engines.ner import (
    SUPPORTED_LANGUAGES,
    EpochReport,
    NerModel,
    TrainResult,
    align,
    blank_pipeline,
    evaluate,
    train,
)
from tests.engines.ner_data import TYPES, _pools, make_corpus


@dataclass
class Trained:
    result: TrainResult
    model: NerModel
    reports: list[EpochReport]


@pytest.fixture(scope="module")
def trained() -> Trained:
    reports: list[EpochReport] = []
    result = train(
        make_corpus(300, seed=1),
        make_corpus(60, seed=2),
        language="en",
        labels=TYPES,
        max_epochs=5,  # unseen F1 is ~0.97 by epoch 4 on this data; keeps the suite fast
        on_epoch=reports.append,
    )
    assert result.model is not None
    return Trained(result, result.model, reports)


def _spans_of(text: str, *pairs: tuple[str, str]) -> list[Span]:
    """Expected spans, located by substring so the test cannot get offsets wrong by hand."""
    return [Span(text.index(value), text.index(value) + len(value), label) for value, label in pairs]


# --- the data generator -----------------------------------------------------------------------------


def test_generator_is_deterministic_and_holds_out_test_values() -> None:
    assert make_corpus(30, seed=5) == make_corpus(30, seed=5)
    pools = _pools()
    assert not set(pools["train"]) & set(pools["test"])
    train_values = {e.text[s.start : s.end] for e in make_corpus(500, seed=1) for s in e.spans}
    test_docs = make_corpus(500, seed=1, value_split="test")
    test_values = {e.text[s.start : s.end] for e in test_docs for s in e.spans}
    assert not train_values & test_values
    assert any(len(e.spans) >= 4 for e in test_docs)
    cities_only = [s.label for e in make_corpus(20, seed=1, types=("CITY",)) for s in e.spans]
    assert cities_only and set(cities_only) == {"CITY"}


# --- training and evaluation ------------------------------------------------------------------------


def test_reaches_high_f1_on_unseen_entity_values(trained: Trained) -> None:
    held_out = make_corpus(300, seed=3, value_split="test")
    scores = evaluate(trained.model, held_out)
    assert scores.documents == 300
    assert scores.overall.f1 >= 0.8, scores
    assert set(scores.per_type) == set(TYPES)
    for label in TYPES:
        assert scores.per_type[label].f1 >= 0.7, (label, scores.per_type[label])
        assert scores.gold_counts[label] == sum(s.label == label for e in held_out for s in e.spans)


def test_epoch_reports_track_the_best_checkpoint(trained: Trained) -> None:
    reports, result = trained.reports, trained.result
    assert [r.epoch for r in reports] == list(range(1, result.epochs_run + 1))
    assert not result.stopped
    assert all(r.batches > 0 and r.loss > 0 and r.seconds > 0 for r in reports)
    assert [r.best_f1 for r in reports] == sorted(r.best_f1 for r in reports)
    assert result.best_dev_f1 == reports[-1].best_f1 == max(r.dev_f1 for r in reports)
    assert result.best_epoch == reports[-1].best_epoch
    assert result.batches == sum(r.batches for r in reports)
    assert result.alignment.kept > 0 and result.alignment.adjusted == 0
    assert set(result.alignment.mentions) == set(TYPES)


def test_predict_gives_character_offsets_in_new_text(trained: Trained) -> None:
    # Non-ASCII names, and an emoji (one str index, two UTF-16 units) before the second sentence.
    text = "Zoë Müller bought a Škoda Pro 5 in Zürich. 🙂 Thanks, Jörg Åberg!"
    plain = "Did Nadia Okafor really return the Vantro X?"
    got = trained.model.predict([text, plain, ""])
    expected = _spans_of(
        text,
        ("Zoë Müller", "PERSON"),
        ("Škoda Pro 5", "PRODUCT"),
        ("Zürich", "CITY"),
        ("Jörg Åberg", "PERSON"),
    ) + _spans_of(plain, ("Nadia Okafor", "PERSON"), ("Vantro X", "PRODUCT"))
    predicted = got[0] + got[1]
    # Offsets are what this test is about: every entity is found with exact str boundaries...
    assert [(s.start, s.end) for s in predicted] == [(s.start, s.end) for s in expected]
    # ...and a five-epoch model on synthetic data gets nearly all the types right too.
    assert sum(p.label == e.label for p, e in zip(predicted, expected, strict=True)) >= len(expected) - 1
    assert got[2] == []


def test_scores_come_with_exactly_the_entities_spacy_finds(trained: Trained) -> None:
    texts = [e.text for e in make_corpus(80, seed=5, value_split="test")] + [
        "  Zoë  Müller \n\n flew to   Zürich .  ",  # runs of whitespace are tokens of their own
        "🙂 Nadia Okafor",
        "x",
        " ",
        "",
    ]
    predicted = trained.model.predict(texts, batch_size=16)
    # The entities are spaCy's own greedy output, untouched by the scoring.
    public = dict(zip([f"E{i}" for i in range(len(TYPES))], TYPES, strict=True))
    spacy_ents = [
        [(e.start_char, e.end_char, public[e.label_]) for e in doc.ents]
        for doc in trained.model.nlp.pipe(texts)
    ]
    assert [[(s.start, s.end, s.label) for s in doc] for doc in predicted] == spacy_ents
    scores = [s.score for doc in predicted for s in doc]
    assert scores and all(isinstance(x, float) and 0.0 < x <= 1.0 for x in scores)
    # On data like its training data the model is sure of nearly everything it finds.
    assert sorted(scores)[len(scores) // 2] > 0.9
    # The scores are those of the decisions spaCy took: re-scored, every step's best valid action is the
    # one the greedy parser chose (a wrong reconstruction of the parser state would break this).
    probs, taken = trained.model._scorer.decisions([trained.model.nlp.make_doc(t) for t in texts])
    assert (probs.argmax(axis=1) == taken).all()
    # A batch gives each document the score it gets alone.
    alone = [trained.model.predict([text])[0] for text in texts[:10]]
    for together, single in zip(predicted[:10], alone, strict=True):
        assert [s.score for s in together] == pytest.approx([s.score for s in single], rel=1e-4)


def test_entities_in_unusual_text_score_lower(trained: Trained) -> None:
    [[clear]] = trained.model.predict(["Please contact Nadia Okafor about the order."])
    assert clear.label == "PERSON" and clear.score is not None and clear.score > 0.9
    # Lower-cased text hides the shape cues the model learnt: what it still finds, it is less sure of.
    texts = [e.text for e in make_corpus(200, seed=6, value_split="test")]
    normal = [s.score for doc in trained.model.predict(texts) for s in doc]
    lowered = [s.score for doc in trained.model.predict([t.lower() for t in texts]) for s in doc]
    assert normal and lowered
    assert sum(lowered) / len(lowered) < sum(normal) / len(normal)


def test_save_and_load_give_identical_predictions(trained: Trained, tmp_path: Path) -> None:
    texts = [e.text for e in make_corpus(50, seed=4, value_split="test")]
    expected = trained.model.predict(texts)
    trained.model.save(tmp_path / "model")
    loaded = NerModel.load(tmp_path / "model")
    assert loaded.labels == TYPES and loaded.language == "en"
    assert loaded.predict(texts) == expected
    assert [t.text for t in loaded.nlp.make_doc("the Xbox Series X.")][-2:] == ["X", "."]  # tokenizer kept
    # And in another process, as the inference worker will do.
    script = (
        "import json, sys; from pathlib import Path; from mlharbor.engines.ner import NerModel; "
        "m = NerModel.load(Path(sys.argv[1])); texts = json.load(sys.stdin); "
        "print(json.dumps([[[s.start, s.end, s.label] for s in d] for d in m.predict(texts)]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "model")],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(out.stdout) == [[[s.start, s.end, s.label] for s in d] for d in expected]


def test_load_rejects_a_directory_that_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a saved NER model"):
        NerModel.load(tmp_path)


def test_training_is_reproducible_and_handles_odd_labels() -> None:
    # User label names with dashes, spaces and a leading "!" (which spaCy's own NER rejects), one
    # label without any training mention, a span with an unknown label and one off token boundaries.
    rename = {"PERSON": "PERSON", "PRODUCT": "PRODUCT-CODE", "CITY": "MY CITY", "COMPANY": "!ORG"}
    labels = (*rename.values(), "DRUG-NAME")
    docs = [
        Example(e.text, tuple(Span(s.start, s.end, rename[s.label]) for s in e.spans))
        for e in make_corpus(120, seed=7)
    ]
    docs.append(Example("Ask Zoë Müller about it.", (Span(4, 9, "PERSON"), Span(0, 3, "VERB"))))
    runs = []
    for _ in range(2):
        reports: list[EpochReport] = []
        result = train(docs, docs[:20], language="en", labels=labels, max_epochs=2, on_epoch=reports.append)
        assert result.model is not None
        predictions = result.model.predict([e.text for e in docs[:40]])
        runs.append(([r.loss for r in reports], [r.dev_f1 for r in reports], predictions))
    assert runs[0] == runs[1]
    assert result.alignment.adjusted == 1 and result.alignment.ignored == 1 and result.alignment.dropped == 0
    assert result.alignment.mentions.get("DRUG-NAME", 0) == 0
    assert result.model.labels == labels
    predicted_labels = {s.label for doc in runs[0][2] for s in doc}
    assert predicted_labels and predicted_labels <= set(labels)


def test_without_dev_set_training_loss_selects_the_epoch() -> None:
    reports: list[EpochReport] = []
    result = train(
        make_corpus(60, seed=1), [], language="en", labels=TYPES, max_epochs=2, on_epoch=reports.append
    )
    assert result.model is not None and result.epochs_run == 2
    assert all(r.dev_f1 == 0.0 for r in reports)
    assert result.best_epoch == min(reports, key=lambda r: r.loss).epoch


@pytest.mark.parametrize(
    "kwargs", [{"language": "xx"}, {"labels": ()}, {"labels": ("A,B",)}, {"labels": ("A", "A")}]
)
def test_train_rejects_bad_arguments(kwargs: dict) -> None:
    arguments = {"language": "en", "labels": TYPES} | kwargs
    with pytest.raises(ValueError):
        train(make_corpus(5, seed=1), [], **arguments)
    with pytest.raises(ValueError):
        train([], [], language="en", labels=TYPES)


# --- stopping ---------------------------------------------------------------------------------------


def test_stop_is_seen_within_one_batch() -> None:
    calls = 0

    def should_stop() -> bool:
        nonlocal calls
        calls += 1
        # Polled once before training starts, then before each batch: 7 batches run, the 8th is refused.
        return calls > 8

    result = train(
        make_corpus(200, seed=1),
        make_corpus(20, seed=2),
        language="en",
        labels=TYPES,
        should_stop=should_stop,
    )
    assert result.stopped
    assert result.batches in (7, 8)
    assert result.model is None and result.epochs_run == 0 and result.best_epoch == 0


def test_stop_after_an_epoch_returns_the_checkpoint() -> None:
    reports: list[EpochReport] = []
    result = train(
        make_corpus(100, seed=1),
        make_corpus(20, seed=2),
        language="en",
        labels=TYPES,
        should_stop=lambda: bool(reports),
        on_epoch=reports.append,
    )
    assert result.stopped and result.epochs_run == 1 and result.best_epoch == 1
    assert result.batches == reports[0].batches
    assert result.model is not None
    assert len(result.model.predict(["Nadia Okafor flew to Lisbon."])) == 1


def test_stop_from_another_thread_is_prompt() -> None:
    stop = threading.Event()
    polls = threading.Semaphore(0)
    outcome: list[TrainResult] = []

    def should_stop() -> bool:
        polls.release()
        return stop.is_set()

    worker = threading.Thread(
        target=lambda: outcome.append(
            train(
                make_corpus(300, seed=1),
                make_corpus(300, seed=2),
                language="en",
                labels=TYPES,
                should_stop=should_stop,
            )
        )
    )
    worker.start()
    for _ in range(30):  # let training get going (30 polls), without any fixed sleep
        assert polls.acquire(timeout=30)
    stop.set()
    asked = time.perf_counter()
    worker.join(timeout=30)
    latency = time.perf_counter() - asked
    assert not worker.is_alive()
    assert outcome[0].stopped
    assert latency < 1.0, latency  # one batch is ~10-50 ms; 1 s leaves room for a loaded machine


# --- alignment --------------------------------------------------------------------------------------


def test_misaligned_offsets_are_expanded_and_counted_not_dropped() -> None:
    nlp = blank_pipeline("en")
    text = "Ask Zoë Müller in  Zürich today"
    assert text[4:9] == "Zoë M" and text[18:25] == " Zürich" and text[17:19] == "  "
    spans = (
        Span(4, 9, "PERSON"),  # ends inside a token: expanded to "Zoë Müller"
        Span(18, 25, "CITY"),  # a leading space: trimmed to "Zürich"
        Span(26, 40, "X"),  # past the end of the text
        Span(17, 19, "X"),  # whitespace only
    )
    doc, report = align(nlp, Example(text, spans))
    assert [(e.text, e.label_) for e in doc.ents] == [("Zoë Müller", "PERSON"), ("Zürich", "CITY")]
    assert (report.adjusted, report.dropped, report.overlapping, report.kept) == (2, 2, 0, 2)
    assert report.mentions == {"PERSON": 1, "CITY": 1}


def test_trailing_period_no_longer_breaks_spans() -> None:
    text = "I bought the Xbox Series X. Acme Inc. agreed."
    spans = tuple(_spans_of(text, ("Xbox Series X", "PRODUCT"), ("Acme Inc", "COMPANY")))
    # spaCy's stock tokenizer keeps "X." and "Inc." whole: the spans can only be placed with the period.
    stock_doc, stock = align(spacy.blank("en"), Example(text, spans))
    assert stock.adjusted == 2 and [e.text for e in stock_doc.ents] == ["Xbox Series X.", "Acme Inc."]
    doc, report = align(blank_pipeline("en"), Example(text, spans))
    assert report.adjusted == 0 and [e.text for e in doc.ents] == ["Xbox Series X", "Acme Inc"]


def test_overlapping_spans_keep_the_longest_and_are_counted() -> None:
    text = "The New York Times reported it."
    spans = (
        *_spans_of(
            text, ("New York", "CITY"), ("New York Times", "COMPANY"), ("York", "CITY"), ("Times", "X")
        ),
        Span(4, 18, "COMPANY"),  # exact duplicate: merged silently
        Span(4, 18, "OTHER"),  # same tokens, other label: one of them must go
    )
    doc, report = align(blank_pipeline("en"), Example(text, spans))
    assert [(e.text, e.label_) for e in doc.ents] == [("New York Times", "COMPANY")]
    assert report.overlapping == 4 and report.kept == 1


@pytest.mark.parametrize("language", SUPPORTED_LANGUAGES)
def test_every_supported_language_builds_offline(language: str) -> None:
    nlp = blank_pipeline(language)
    assert [t.text for t in nlp.make_doc("Modell X. Fin")] == ["Modell", "X", ".", "Fin"]
    assert nlp.pipe_names == ["ner"]


# --- evaluation arithmetic --------------------------------------------------------------------------


class _FixedModel(NerModel):
    """A model that 'predicts' given spans, to check evaluate's arithmetic in isolation."""

    def __init__(self, labels: tuple[str, ...], predictions: list[list[Span]]) -> None:
        self.labels, self.language, self._predictions = labels, "en", predictions

    def predict(self, texts, batch_size=64):  # type: ignore[no-untyped-def]
        return self._predictions[: len(texts)]


def test_evaluate_counts_exact_matches() -> None:
    gold = [
        Example("a b c d", (Span(0, 1, "A"), Span(2, 3, "B"), Span(4, 5, "IGNORED"))),
        Example("nothing here", ()),
    ]
    predicted = [
        [Span(0, 1, "A"), Span(2, 5, "B")],  # one exact hit, one wrong extent
        [Span(0, 7, "A")],  # false positive
    ]
    scores = evaluate(_FixedModel(("A", "B", "C"), predicted), gold)
    assert scores.overall.precision == pytest.approx(1 / 3)
    assert scores.overall.recall == pytest.approx(1 / 2)
    assert scores.overall.f1 == pytest.approx(0.4)
    assert scores.per_type["A"].precision == pytest.approx(1 / 2) and scores.per_type["A"].recall == 1.0
    assert scores.per_type["B"].f1 == 0.0
    assert scores.per_type["C"] == scores.per_type["B"]  # a type never seen: zeros, not an error
    assert scores.gold_counts == {"A": 1, "B": 1, "C": 0}
    assert scores.documents == 2
