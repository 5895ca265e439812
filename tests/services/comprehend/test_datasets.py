"""Training-data reading and validation for custom entity recognizers, against a real local object store."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from mlharbor.blobs.local import LocalBlobStore
from mlharbor.engines.annotated import Example, Span
from mlharbor.services.comprehend.datasets import DataError, Dataset, load_dataset

HEADER = "File, Line, Begin Offset, End Offset, Type"
FILE_HEADER = "File, Begin Offset, End Offset, Type"
TYPES = [{"Type": "PERSON"}, {"Type": "CITY"}]


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path)


def put(blobs: LocalBlobStore, key: str, data: str | bytes) -> str:
    uri = f"s3://data/{key}"
    blobs.put(uri, data.encode() if isinstance(data, str) else data)
    return uri


def sentence(i: int) -> str:
    # PERSON at 0-9, CITY at 18-23.
    return f"Anna Berg visited Paris on day {i}."


def rows(file: str, lines: Sequence[int], sep: str = ", ") -> list[str]:
    out = []
    for line in lines:
        out.append(sep.join([file, str(line), "0", "9", "PERSON"]))
        out.append(sep.join([file, str(line), "18", "23", "CITY"]))
    return out


def csv_text(header: str, body: Sequence[str]) -> str:
    return "\n".join([header, *body]) + "\n"


def per_line(
    blobs: LocalBlobStore, docs: int = 30, extra: Sequence[str] = (), **config: Any
) -> dict[str, Any]:
    """``docs`` annotated lines in documents.txt; ``extra`` rows are appended to annotations.csv."""
    documents = put(blobs, "train/documents.txt", "\n".join(sentence(i) for i in range(docs)) + "\n")
    annotations = put(
        blobs, "ann/annotations.csv", csv_text(HEADER, [*rows("documents.txt", range(docs)), *extra])
    )
    return {
        "EntityTypes": TYPES,
        "Documents": {"S3Uri": documents},
        "Annotations": {"S3Uri": annotations},
        **config,
    }


def load(blobs: LocalBlobStore, config: dict[str, Any]) -> Dataset:
    return load_dataset(blobs, config, "en")


def error(blobs: LocalBlobStore, config: dict[str, Any]) -> str:
    with pytest.raises(DataError) as info:
        load(blobs, config)
    return str(info.value)


# --- COMPREHEND_CSV, ONE_DOC_PER_LINE ---------------------------------------------------------------
def test_one_doc_per_line(blobs):
    dataset = load(blobs, per_line(blobs))
    assert len(dataset.train) == 30
    assert dataset.train[4] == Example(sentence(4), (Span(0, 9, "PERSON"), Span(18, 23, "CITY")))
    assert dataset.train[4].source == "documents.txt:4"
    assert dataset.test is None
    assert dataset.entity_types == ["PERSON", "CITY"]
    assert dataset.train_mentions == {"PERSON": 30, "CITY": 30}
    assert dataset.warnings == []


@pytest.mark.parametrize("sep", [",", ", ", " ,\t", "  ,  "])
def test_values_may_have_spaces_around_them(blobs, sep):
    docs = put(blobs, "d.txt", "\n".join(sentence(i) for i in range(30)))  # no final line break
    header = sep.join(["File", "Line", "Begin Offset", "End Offset", "Type"])
    ann = put(blobs, "a.csv", csv_text(f"  {header}  ", [f" {r} " for r in rows("d.txt", range(30), sep)]))
    dataset = load(blobs, {"EntityTypes": TYPES, "Documents": {"S3Uri": docs}, "Annotations": {"S3Uri": ann}})
    assert dataset.train_mentions == {"PERSON": 30, "CITY": 30}
    assert dataset.train[29].spans == (Span(0, 9, "PERSON"), Span(18, 23, "CITY"))


def test_header_is_matched_in_any_case_and_order_and_a_bom_is_dropped(blobs):
    docs = put(blobs, "d.txt", "\n".join(sentence(i) for i in range(30)))
    body = [f"PERSON,0,9,d.txt,{i}" for i in range(30)] + [f"CITY,18,23,d.txt,{i}" for i in range(30)]
    ann = put(blobs, "a.csv", "\ufeff" + csv_text("type,begin offset,END OFFSET,file,line", body))
    dataset = load(blobs, {"EntityTypes": TYPES, "Documents": {"S3Uri": docs}, "Annotations": {"S3Uri": ann}})
    assert dataset.train_mentions == {"PERSON": 30, "CITY": 30}


def test_blank_lines_keep_their_numbers_but_are_not_trained_on(blobs):
    lines = [sentence(i) if i % 3 else "" for i in range(45)]
    lines[3] = "   "  # whitespace only: as empty
    docs = put(blobs, "d.txt", "\n".join(lines) + "\n")
    used = [i for i in range(45) if i % 3]
    ann = put(blobs, "a.csv", csv_text(HEADER, rows("d.txt", used)))
    dataset = load(blobs, {"EntityTypes": TYPES, "Documents": {"S3Uri": docs}, "Annotations": {"S3Uri": ann}})
    assert [e.source for e in dataset.train] == [f"d.txt:{i}" for i in used]
    assert all(e.text and len(e.spans) == 2 for e in dataset.train)


def test_crlf_line_breaks_are_not_part_of_the_line(blobs):
    docs = put(blobs, "d.txt", "\r\n".join(sentence(i) for i in range(30)) + "\r\n")
    ann = put(blobs, "a.csv", csv_text(HEADER, rows("d.txt", range(30))).replace("\n", "\r\n"))
    dataset = load(blobs, {"EntityTypes": TYPES, "Documents": {"S3Uri": docs}, "Annotations": {"S3Uri": ann}})
    assert len(dataset.train) == 30
    assert all("\r" not in e.text for e in dataset.train)


def test_a_prefix_reads_every_object_under_it_in_key_order(blobs):
    put(blobs, "docs/b.txt", "\n".join(sentence(i) for i in range(20)))
    put(blobs, "docs/a.txt", "\n".join(sentence(i) for i in range(10)))
    put(blobs, "docs/sub/c.txt", sentence(0) + "\n")
    put(blobs, "other/d.txt", "not included\n")
    ann = put(
        blobs,
        "a.csv",
        csv_text(HEADER, rows("a.txt", range(10)) + rows("b.txt", range(20)) + rows("c.txt", [0])),
    )
    config = {"EntityTypes": TYPES, "Documents": {"S3Uri": "s3://data/docs/"}, "Annotations": {"S3Uri": ann}}
    dataset = load(blobs, config)
    sources = [e.source for e in dataset.train]
    assert sources == [f"a.txt:{i}" for i in range(10)] + [f"b.txt:{i}" for i in range(20)] + ["c.txt:0"]
    assert dataset.train_mentions == {"PERSON": 31, "CITY": 31}


def test_a_key_naming_an_object_reads_only_that_object(blobs):
    config = per_line(blobs)
    put(blobs, "train/documents.txt.bak", "old stuff\n" * 50)
    assert len(load(blobs, config).train) == 30


def test_file_column_is_the_base_name_not_the_key(blobs):
    config = per_line(blobs, extra=["train/documents.txt, 0, 0, 4, PERSON"])
    message = error(blobs, config)
    assert "annotations.csv, line 62: File 'train/documents.txt' is not one of the documents" in message
    assert "Use the object's base name, documents.txt" in message


def test_two_documents_with_one_base_name_are_refused(blobs):
    put(blobs, "docs/x/d.txt", sentence(0))
    put(blobs, "docs/y/d.txt", sentence(1))
    ann = put(blobs, "a.csv", csv_text(HEADER, rows("d.txt", [0])))
    message = error(
        blobs,
        {"EntityTypes": TYPES, "Documents": {"S3Uri": "s3://data/docs/"}, "Annotations": {"S3Uri": ann}},
    )
    assert "two objects named d.txt (docs/x/d.txt and docs/y/d.txt)" in message


# --- ONE_DOC_PER_FILE ------------------------------------------------------------------------------
def test_one_doc_per_file(blobs):
    body = []
    for i in range(30):
        put(blobs, f"files/doc{i:02}.txt", f"Report {i}.\n{sentence(i)}\n")
        start = len(f"Report {i}.\n")
        body += [
            f"doc{i:02}.txt, {start}, {start + 9}, PERSON",
            f"doc{i:02}.txt, {start + 18}, {start + 23}, CITY",
        ]
    ann = put(blobs, "a.csv", csv_text(FILE_HEADER, body))
    config = {
        "EntityTypes": TYPES,
        "Documents": {"S3Uri": "s3://data/files/", "InputFormat": "ONE_DOC_PER_FILE"},
        "Annotations": {"S3Uri": ann},
    }
    dataset = load(blobs, config)
    assert len(dataset.train) == 30
    first = dataset.train[0]
    assert first.source == "doc00.txt"
    assert first.text == f"Report 0.\n{sentence(0)}\n"
    assert [first.text[s.start : s.end] for s in first.spans] == ["Anna Berg", "Paris"]


def test_per_file_offsets_beyond_the_document(blobs):
    for i in range(3):
        put(blobs, f"files/doc{i}.txt", "short")
    ann = put(blobs, "a.csv", csv_text(FILE_HEADER, ["doc1.txt, 0, 9, PERSON"]))
    config = {
        "EntityTypes": TYPES,
        "Documents": {"S3Uri": "s3://data/files/", "InputFormat": "ONE_DOC_PER_FILE"},
        "Annotations": {"S3Uri": ann},
    }
    assert error(blobs, config) == "a.csv, line 2: End Offset 9 is beyond the end of doc1.txt (length 5)."


def test_a_per_line_header_with_per_file_documents_is_refused(blobs):
    config = per_line(blobs)
    config["Documents"]["InputFormat"] = "ONE_DOC_PER_FILE"
    assert error(blobs, config) == (
        "annotations.csv, line 1: the first row must be the header 'File, Begin Offset, End Offset, Type' "
        f"for ONE_DOC_PER_FILE documents; found '{HEADER}'."
    )


def test_an_empty_document_file_is_refused(blobs):
    put(blobs, "files/a.txt", sentence(0))
    put(blobs, "files/b.txt", "")
    ann = put(blobs, "a.csv", csv_text(FILE_HEADER, []))
    config = {
        "EntityTypes": TYPES,
        "Documents": {"S3Uri": "s3://data/files/", "InputFormat": "ONE_DOC_PER_FILE"},
        "Annotations": {"S3Uri": ann},
    }
    assert error(blobs, config) == "s3://data/files/b.txt is empty."


# --- Annotation errors --------------------------------------------------------------------------------
def test_the_message_names_the_csv_line_the_document_line_and_its_length(blobs):
    lines = [sentence(i) for i in range(30)]
    lines[4] = "x" * 61
    docs = put(blobs, "d.txt", "\n".join(lines))
    body = rows("d.txt", [i for i in range(30) if i != 4])[:10] + ["d.txt, 4, 80, 88, PERSON"]
    ann = put(blobs, "annotations.csv", csv_text(HEADER, body))
    config = {"EntityTypes": TYPES, "Documents": {"S3Uri": docs}, "Annotations": {"S3Uri": ann}}
    assert error(blobs, config) == (
        "annotations.csv, line 12: End Offset 88 is beyond the end of line 4 of d.txt (length 61)."
    )


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("documents.txt, 3, 0, x9, PERSON", "annotations.csv, line 62: End Offset 'x9' is not an integer."),
        (
            "documents.txt, 3, 1.5, 9, PERSON",
            "annotations.csv, line 62: Begin Offset '1.5' is not an integer.",
        ),
        ("documents.txt, , 0, 9, PERSON", "annotations.csv, line 62: Line '' is not an integer."),
        ("documents.txt, 3, -1, 9, PERSON", "annotations.csv, line 62: Begin Offset -1 is negative."),
        (
            "documents.txt, 3, 9, 9, PERSON",
            "annotations.csv, line 62: End Offset 9 must be greater than Begin Offset 9.",
        ),
        (
            "documents.txt, 3, 9, 2, PERSON",
            "annotations.csv, line 62: End Offset 2 must be greater than Begin Offset 9.",
        ),
        (
            "documents.txt, 30, 0, 9, PERSON",
            "annotations.csv, line 62: line 30 of documents.txt does not exist; "
            "the file has 30 lines (numbered from 0).",
        ),
        (
            "nosuch.txt, 3, 0, 9, PERSON",
            "annotations.csv, line 62: File 'nosuch.txt' is not one of the documents at "
            "s3://data/train/documents.txt.",
        ),
        (
            "documents.txt, 3, 0, 9",
            "annotations.csv, line 62: expected 5 columns "
            "(File, Line, Begin Offset, End Offset, Type), found 4.",
        ),
        (
            "documents.txt, 3, 0, 9, PERSON, x",
            "annotations.csv, line 62: expected 5 columns "
            "(File, Line, Begin Offset, End Offset, Type), found 6.",
        ),
        ("documents.txt, 3, 0, 9, ", "annotations.csv, line 62: Type is empty."),
        (
            'documents.txt, 3, 0, 9, "PERSON',
            "annotations.csv, line 62: malformed CSV (unexpected end of data).",
        ),
        (
            "documents.txt, 3, 2, 12, CITY",
            "annotations.csv, line 62: in line 3 of documents.txt, annotation 2-12 (CITY) overlaps "
            "annotation 0-9 (PERSON) from annotations.csv, line 8; overlapping entities are not supported.",
        ),
        (
            "documents.txt, 3, 18, 23, CITY",
            "annotations.csv, line 62: in line 3 of documents.txt, annotation 18-23 (CITY) is given twice "
            "(also at annotations.csv, line 9); overlapping entities are not supported.",
        ),
    ],
)
def test_bad_annotation_rows(blobs, row, message):
    assert error(blobs, per_line(blobs, extra=[row])) == message


def test_overlap_is_found_whatever_the_order(blobs):
    # The wide span comes last in the file but first by offset; the short ones inside it still clash.
    message = error(blobs, per_line(blobs, extra=["documents.txt, 7, 0, 30, CITY"]))
    assert message.startswith("annotations.csv, line 62: in line 7 of documents.txt")
    assert "overlaps annotation 0-9 (PERSON) from annotations.csv, line 16" in message


def test_annotations_need_a_header_row(blobs):
    docs = put(blobs, "d.txt", "\n".join(sentence(i) for i in range(30)))
    ann = put(blobs, "a.csv", csv_text("d.txt, 0, 0, 9, PERSON", rows("d.txt", range(30))))
    message = error(
        blobs, {"EntityTypes": TYPES, "Documents": {"S3Uri": docs}, "Annotations": {"S3Uri": ann}}
    )
    assert message.startswith(
        "a.csv, line 1: the first row must be the header 'File, Line, Begin Offset, End Offset, Type' "
        "for ONE_DOC_PER_LINE documents; found 'd.txt, 0, 0, 9, PERSON'."
    )


def test_a_csv_with_only_blank_lines_has_no_header(blobs):
    config = per_line(blobs)
    put(blobs, "ann/annotations.csv", "\n \n")
    assert error(blobs, config) == (
        "s3://data/ann/annotations.csv has no header row; "
        "the first row must be 'File, Line, Begin Offset, End Offset, Type'."
    )


def test_types_not_in_entity_types_are_ignored_with_a_warning(blobs):
    extra = [
        "documents.txt, 0, 27, 30, DAY",
        "documents.txt, 1, 27, 30, DAY",
        "documents.txt, 2, 10, 17, VERB",
    ]
    dataset = load(blobs, per_line(blobs, extra=extra))
    assert dataset.train_mentions == {"PERSON": 30, "CITY": 30}
    assert all(s.label in {"PERSON", "CITY"} for e in dataset.train for s in e.spans)
    assert dataset.warnings == [
        "annotations.csv: 2 annotations of type DAY ignored because the type is not in EntityTypes",
        "annotations.csv: 1 annotation of type VERB ignored because the type is not in EntityTypes",
    ]


def test_an_ignored_type_may_overlap_a_declared_one(blobs):
    dataset = load(blobs, per_line(blobs, extra=["documents.txt, 0, 0, 4, FIRST_NAME"]))
    assert dataset.train[0].spans == (Span(0, 9, "PERSON"), Span(18, 23, "CITY"))


# --- Test data ------------------------------------------------------------------------------------
def test_test_documents_and_annotations(blobs):
    test_docs = put(blobs, "test/documents.txt", "\n".join(sentence(i) for i in range(5)))
    test_ann = put(blobs, "test/annotations.csv", csv_text(HEADER, rows("documents.txt", range(5))))
    config = per_line(blobs)
    config["Documents"]["TestS3Uri"] = test_docs
    config["Annotations"]["TestS3Uri"] = test_ann
    dataset = load(blobs, config)
    assert dataset.test is not None and len(dataset.test) == 5
    assert dataset.test[2].spans == (Span(0, 9, "PERSON"), Span(18, 23, "CITY"))
    assert dataset.train_mentions == {"PERSON": 30, "CITY": 30}


def test_test_documents_need_test_annotations(blobs):
    config = per_line(blobs)
    config["Documents"]["TestS3Uri"] = put(blobs, "test/documents.txt", sentence(0))
    assert error(blobs, config) == "Documents.TestS3Uri and Annotations.TestS3Uri must be given together."
    del config["Documents"]["TestS3Uri"]
    config["Annotations"]["TestS3Uri"] = put(blobs, "test/annotations.csv", HEADER)
    assert error(blobs, config) == "Documents.TestS3Uri and Annotations.TestS3Uri must be given together."


def test_test_data_needs_every_type(blobs):
    config = per_line(blobs)
    config["Documents"]["TestS3Uri"] = put(blobs, "test/documents.txt", sentence(0))
    config["Annotations"]["TestS3Uri"] = put(
        blobs, "test/a.csv", csv_text(HEADER, ["documents.txt, 0, 0, 9, PERSON"])
    )
    assert error(blobs, config) == (
        "The test data has no annotations of type CITY; it must include at least one annotation of each "
        "entity type."
    )


def test_test_annotations_are_checked_against_the_test_documents(blobs):
    config = per_line(blobs)
    config["Documents"]["TestS3Uri"] = put(blobs, "test/t.txt", sentence(0))
    config["Annotations"]["TestS3Uri"] = put(blobs, "test/a.csv", csv_text(HEADER, rows("t.txt", [1])))
    assert error(blobs, config) == (
        "a.csv, line 2: line 1 of t.txt does not exist; the file has 1 line (numbered from 0)."
    )


# --- Entity lists ---------------------------------------------------------------------------------
ENTITY_LINE = "Ann, Ann and Ann met Anna in New York City, then York and new york; Annual report."


def entity_config(blobs: LocalBlobStore, entries: str, docs: int = 100) -> dict[str, Any]:
    documents = put(blobs, "el/documents.txt", "\n".join([ENTITY_LINE] * docs))
    entity_list = put(blobs, "el/list.csv", entries)
    return {"EntityTypes": TYPES, "Documents": {"S3Uri": documents}, "EntityList": {"S3Uri": entity_list}}


def test_entity_list_matches_whole_words_case_sensitively_longest_first(blobs):
    entries = "Text, Type\nAnn, PERSON\nNew York, CITY\nNew York City,  CITY\n York , CITY\n"
    dataset = load(blobs, entity_config(blobs, entries))
    assert len(dataset.train) == 100
    first = dataset.train[0]
    found = [(first.text[s.start : s.end], s.label) for s in first.spans]
    # Not "Anna", "Annual" or "new york"; "New York City" beats "New York" and the "York" inside it.
    assert found == [("Ann", "PERSON")] * 3 + [("New York City", "CITY"), ("York", "CITY")]
    assert dataset.train_mentions == {"PERSON": 300, "CITY": 200}
    assert dataset.test is None


def test_entity_list_shorter_entries_fill_in_around_longer_ones(blobs):
    # "York City Hall" is longest; "New York" then overlaps it, but "New" alone still fits.
    documents = put(blobs, "el/d.txt", "\n".join(["New York City Hall"] * 200))
    entity_list = put(blobs, "el/list.csv", "Text,Type\nNew York,CITY\nYork City Hall,CITY\nNew,PERSON\n")
    config = {"EntityTypes": TYPES, "Documents": {"S3Uri": documents}, "EntityList": {"S3Uri": entity_list}}
    dataset = load(blobs, config)
    assert dataset.train[0].spans == (Span(0, 3, "PERSON"), Span(4, 18, "CITY"))


def test_entity_list_entries_with_punctuation(blobs):
    line = "AT&T and C++ beat AT&Tx; #1 Berlin."
    documents = put(blobs, "el/d.txt", "\n".join([line] * 200))
    entity_list = put(blobs, "el/list.csv", 'Text,Type\nAT&T,PERSON\nC++,PERSON\n"#1 Berlin",CITY\n')
    config = {"EntityTypes": TYPES, "Documents": {"S3Uri": documents}, "EntityList": {"S3Uri": entity_list}}
    first = load(blobs, config).train[0]
    assert [first.text[s.start : s.end] for s in first.spans] == ["AT&T", "C++", "#1 Berlin"]


def test_entity_list_needs_200_matches_per_type(blobs):
    message = error(blobs, entity_config(blobs, "Text, Type\nAnn, PERSON\nYork, CITY\n", docs=50))
    assert message == (
        "Too few entity list matches in the training documents: PERSON has 150, CITY has 100; "
        "each entity type needs at least 200 matches."
    )


def test_entity_list_needs_an_entry(blobs):
    assert error(blobs, entity_config(blobs, "Text, Type\n")) == (
        "The entity list at s3://data/el/list.csv has no entries; it needs at least 1."
    )


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ("Type, Text\nPERSON, \n", "list.csv, line 2: Text is empty."),
        ("Text, Type\nAnn\n", "list.csv, line 2: expected 2 columns (Text, Type), found 1."),
        (
            "Name, Type\nAnn, PERSON\n",
            "list.csv, line 1: the first row must be the header 'Text, Type' for an "
            "entity list; found 'Name, Type'.",
        ),
        ("Text, Type\nAnn, \n", "list.csv, line 2: Type is empty."),
    ],
)
def test_bad_entity_lists(blobs, entries, message):
    assert error(blobs, entity_config(blobs, entries)) == message


def test_entity_list_warnings(blobs):
    entries = (
        "Text, Type\nAnn, PERSON\nNew York City, CITY\nYork, CITY\nAnn, CITY\nAnn, PERSON\nAnnual, REPORT\n"
    )
    dataset = load(blobs, entity_config(blobs, entries))
    assert dataset.warnings == [
        "list.csv, line 5: 'Ann' is listed as CITY but already as PERSON (list.csv, line 2); "
        "the first listing is used",
        "list.csv: 1 entity list entry of type REPORT ignored because the type is not in EntityTypes",
    ]
    assert dataset.train_mentions == {"PERSON": 300, "CITY": 200}


def test_entity_list_refuses_a_test_set(blobs):
    config = entity_config(blobs, "Text, Type\nAnn, PERSON\n")
    config["Documents"]["TestS3Uri"] = "s3://data/el/documents.txt"
    assert error(blobs, config) == "A test set can be given only with Annotations, not with an EntityList."


# --- AUGMENTED_MANIFEST --------------------------------------------------------------------------
def manifest_line(text: str, entities: list[tuple[int, int, str]], attribute: str = "ner") -> str:
    return json.dumps(
        {
            "source": text,
            attribute: {
                "annotations": {
                    "entities": [{"startOffset": s, "endOffset": e, "label": lab} for s, e, lab in entities],
                    "labels": [{"label": "PERSON"}, {"label": "CITY"}],
                }
            },
            f"{attribute}-metadata": {"type": "groundtruth/text-span", "human-annotated": "yes"},
        }
    )


GOLD = [(0, 9, "PERSON"), (18, 23, "CITY")]


def manifest_config(*manifests: dict[str, Any]) -> dict[str, Any]:
    return {"DataFormat": "AUGMENTED_MANIFEST", "EntityTypes": TYPES, "AugmentedManifests": list(manifests)}


def test_augmented_manifests_train_and_test(blobs):
    train = put(
        blobs, "gt/train.manifest", "\n".join(manifest_line(sentence(i), GOLD) for i in range(30)) + "\n\n"
    )
    test = put(blobs, "gt/test.manifest", "\n".join(manifest_line(sentence(i), GOLD) for i in range(4)))
    config = manifest_config(
        {"S3Uri": train, "AttributeNames": ["ner"]},
        {"S3Uri": test, "AttributeNames": ["ner"], "Split": "TEST"},
    )
    dataset = load(blobs, config)
    assert len(dataset.train) == 30 and dataset.test is not None and len(dataset.test) == 4
    assert dataset.train[2] == Example(sentence(2), (Span(0, 9, "PERSON"), Span(18, 23, "CITY")))
    assert dataset.train[2].source == "train.manifest:3"
    assert dataset.train_mentions == {"PERSON": 30, "CITY": 30}


def test_augmented_manifest_chained_attributes_are_merged(blobs):
    lines = []
    for i in range(30):
        record = json.loads(manifest_line(sentence(i), GOLD[:1], "first"))
        record.update(json.loads(manifest_line(sentence(i), GOLD, "second")))  # repeats the PERSON span
        lines.append(json.dumps(record))
    uri = put(blobs, "gt/train.manifest", "\n".join(lines))
    dataset = load(blobs, manifest_config({"S3Uri": uri, "AttributeNames": ["first", "second"]}))
    assert dataset.train_mentions == {"PERSON": 30, "CITY": 30}


def bad_manifest(blobs: LocalBlobStore, line: str, **item: Any) -> str:
    good = [manifest_line(sentence(i), GOLD) for i in range(30)]
    uri = put(blobs, "gt/train.manifest", "\n".join([good[0], line, *good[1:]]))
    return error(blobs, manifest_config({"S3Uri": uri, "AttributeNames": ["ner"], **item}))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "{not json",
            "train.manifest, line 2: not valid JSON (Expecting property name enclosed in double "
            "quotes: line 1 column 2 (char 1)).",
        ),
        ("[1, 2]", "train.manifest, line 2: each line must be a JSON object."),
        (
            json.dumps({"source-ref": "s3://data/doc.pdf", "ner": {}}),
            "train.manifest, line 2: the document is given by 'source-ref' (a semi-structured document "
            "such as a PDF); semi-structured documents are not supported. Put the plain text in 'source'.",
        ),
        (
            json.dumps({"source": 5}),
            "train.manifest, line 2: 'source' must be the document's text (a JSON string).",
        ),
        (
            json.dumps({"source": "x"}),
            "train.manifest, line 2: attribute 'ner' (one of the AttributeNames) is missing.",
        ),
        (
            json.dumps({"source": "x", "ner": {"entities": []}}),
            'train.manifest, line 2: ner must hold {"annotations": {"entities": [...]}}.',
        ),
        (
            manifest_line("short", [(0, 9, "PERSON")]),
            "train.manifest, line 2, ner entity 0: endOffset 9 is beyond the end of the document (length 5).",
        ),
        (
            manifest_line("short text", [(3, 1, "PERSON")]),
            "train.manifest, line 2, ner entity 0: endOffset 1 must be greater than startOffset 3.",
        ),
        (
            manifest_line("short text", [(0, 3, "PERSON"), (2, 5, "CITY")]),
            "train.manifest, line 2, ner entity 1: in the document, annotation 2-5 (CITY) overlaps "
            "annotation 0-3 (PERSON) from train.manifest, line 2, ner entity 0; overlapping entities are not "
            "supported.",
        ),
        (
            manifest_line("short text", [(0, True, "PERSON")]),  # type: ignore[list-item]
            "train.manifest, line 2, ner entity 0: endOffset must be an integer, not true.",
        ),
        (
            manifest_line("short text", [(0, 2, "")]),
            "train.manifest, line 2, ner entity 0: label must be a non-empty string.",
        ),
        (
            manifest_line("", []),
            "train.manifest, line 2: the document is 0 bytes; each document must be 1 to "
            "5,000 bytes (UTF-8).",
        ),
        (
            manifest_line("é" * 2501, []),
            "train.manifest, line 2: the document is 5,002 bytes; each document must "
            "be 1 to 5,000 bytes (UTF-8).",
        ),
        (
            '{"source": "bad \\ud800", "ner": {}}',
            "train.manifest, line 2: 'source' contains an unpaired surrogate",
        ),
    ],
)
def test_bad_manifest_lines(blobs, line, message):
    assert bad_manifest(blobs, line).startswith(message)


def test_semi_structured_manifests_are_refused(blobs):
    message = bad_manifest(blobs, manifest_line("ok", []), DocumentType="SEMI_STRUCTURED_DOCUMENT")
    assert message == (
        "s3://data/gt/train.manifest: semi-structured documents (PDF, Word, images) are not supported; "
        "only PLAIN_TEXT_DOCUMENT manifests can be used."
    )


def test_manifest_types_not_declared_are_ignored(blobs):
    lines = [manifest_line(sentence(i), [*GOLD, (27, 30, "DAY")]) for i in range(30)]
    uri = put(blobs, "gt/train.manifest", "\n".join(lines))
    dataset = load(blobs, manifest_config({"S3Uri": uri, "AttributeNames": ["ner"]}))
    assert dataset.warnings == [
        "train.manifest: 30 annotations of type DAY ignored because the type is not in EntityTypes"
    ]


def test_manifest_test_split_needs_every_type(blobs):
    train = put(blobs, "gt/train.manifest", "\n".join(manifest_line(sentence(i), GOLD) for i in range(30)))
    test = put(blobs, "gt/test.manifest", manifest_line(sentence(0), GOLD[:1]))
    config = manifest_config(
        {"S3Uri": train, "AttributeNames": ["ner"]},
        {"S3Uri": test, "AttributeNames": ["ner"], "Split": "TEST"},
    )
    assert error(blobs, config).startswith("The test data has no annotations of type CITY;")


# --- AWS limits ----------------------------------------------------------------------------------
def test_at_least_three_documents(blobs):
    config = per_line(blobs, docs=2)
    assert error(blobs, config) == "The training data has 2 non-empty documents; at least 3 are required."


def test_at_least_25_annotations_per_type(blobs):
    config = per_line(blobs, docs=30)
    body = rows("documents.txt", range(30))
    put(blobs, "ann/annotations.csv", csv_text(HEADER, body[0::2] + body[1::2][:18]))
    assert error(blobs, config) == (
        "Too few annotations in the training data: CITY has 18; each entity type needs at least 25."
    )


@pytest.mark.parametrize("count", [0, 26])
def test_one_to_25_entity_types(blobs, count):
    config = per_line(blobs)
    config["EntityTypes"] = [{"Type": f"T{i}"} for i in range(count)]
    assert error(blobs, config) == f"A recognizer needs 1 to 25 entity types; {count} were given."


def test_duplicate_entity_types(blobs):
    config = per_line(blobs)
    config["EntityTypes"] = [{"Type": "PERSON"}, {"Type": "PERSON"}]
    assert error(blobs, config) == "EntityTypes lists PERSON more than once."


def test_documents_are_at_most_5000_bytes(blobs):
    config = per_line(blobs)
    lines = [sentence(i) for i in range(30)]
    lines[2] = "ü" * 2600  # 2,600 characters, 5,200 bytes
    put(blobs, "train/documents.txt", "\n".join(lines))
    assert error(blobs, config) == (
        "documents.txt, line 2: the document is 5,200 bytes; each document must be 1 to 5,000 bytes (UTF-8)."
    )


def test_documents_must_be_utf8(blobs):
    config = per_line(blobs)
    data = ("\n".join(sentence(i) for i in range(30))).encode()
    cut = data.index(b"day 3.")
    put(blobs, "train/documents.txt", data[:cut] + "día".encode("latin-1") + data[cut + 3 :])
    message = error(blobs, config)
    assert message == (
        f"s3://data/train/documents.txt is not valid UTF-8: byte 0xed at byte offset {cut + 1} (line 3) "
        "cannot be decoded. Save the file as UTF-8."
    )


def test_whole_file_documents_must_be_utf8(blobs):
    put(blobs, "files/a.txt", sentence(0))
    put(blobs, "files/b.txt", b"first line\nsecond \x80 line\n")
    config = {
        "EntityTypes": TYPES,
        "Documents": {"S3Uri": "s3://data/files/", "InputFormat": "ONE_DOC_PER_FILE"},
        "Annotations": {"S3Uri": put(blobs, "a.csv", FILE_HEADER)},
    }
    assert error(blobs, config).startswith(
        "s3://data/files/b.txt is not valid UTF-8: byte 0x80 at byte offset 18 (line 2) cannot be decoded."
    )


@pytest.mark.parametrize("key", ["el/bad.csv", "gt/train.manifest"])
def test_entity_lists_and_manifests_must_be_utf8(blobs, key):
    uri = put(blobs, key, b"Text, Type\nCaf\xe9, PERSON\n")
    if key.endswith(".manifest"):
        config = manifest_config({"S3Uri": uri, "AttributeNames": ["ner"]})
    else:
        config = entity_config(blobs, "")
        config["EntityList"]["S3Uri"] = uri
    assert error(blobs, config) == (
        f"{uri} is not valid UTF-8: byte 0xe9 at byte offset 14 (line 2) cannot be decoded. "
        "Save the file as UTF-8."
    )


def test_annotations_must_be_utf8(blobs):
    config = per_line(blobs)
    put(blobs, "ann/annotations.csv", (HEADER + "\n").encode() + b"documents.txt, 0, 0, 9, PERS\xd6N\n")
    message = error(blobs, config)
    assert message.startswith("s3://data/ann/annotations.csv is not valid UTF-8: byte 0xd6 at byte offset")
    assert "(line 2)" in message


def test_missing_objects_and_prefixes_name_the_uri(blobs):
    config = per_line(blobs)
    config["Documents"]["S3Uri"] = "s3://data/nothing/here/"
    assert error(blobs, config) == (
        "No training documents found at s3://data/nothing/here/: there is no object with that key or prefix."
    )
    config = per_line(blobs)
    config["Annotations"]["S3Uri"] = "s3://nobucket/annotations.csv"
    assert error(blobs, config) == (
        "No annotations found at s3://nobucket/annotations.csv: there is no object with that key or prefix."
    )


def test_empty_files_name_the_uri(blobs):
    config = per_line(blobs)
    put(blobs, "ann/annotations.csv", b"")
    assert error(blobs, config) == "s3://data/ann/annotations.csv is empty."


def test_invalid_s3_uris(blobs):
    config = per_line(blobs)
    config["Documents"]["S3Uri"] = "https://example.com/docs"
    assert error(blobs, config).startswith(
        "The training documents S3Uri https://example.com/docs is not valid:"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"DataFormat": "XML"}, "DataFormat XML is not supported"),
        ({"Annotations": None}, "Specify exactly one of Annotations or EntityList."),
        ({"Documents": None}, "Documents is required when DataFormat is COMPREHEND_CSV."),
        ({"EntityTypes": "PERSON"}, "EntityTypes must be a list"),
        ({"DataFormat": "AUGMENTED_MANIFEST"}, "AugmentedManifests is required"),
    ],
)
def test_malformed_configs_are_data_errors(blobs, change, message):
    config = {k: v for k, v in {**per_line(blobs), **change}.items() if v is not None}
    assert error(blobs, config).startswith(message)


def test_garbage_input_only_ever_raises_data_error(blobs):
    """Whatever the bytes, the loader returns a Dataset or raises DataError, never anything else."""
    rng = random.Random(7)
    alphabet = [
        b",",
        b" ",
        b"\n",
        b"\r",
        b'"',
        b"0",
        b"1",
        b"9",
        b"-",
        b"x",
        b"\xc3",
        b"\xa9",
        b"{",
        b"}",
        b":",
    ]
    good_csv = csv_text(HEADER, rows("documents.txt", range(30))).encode()
    good_manifest = "\n".join(manifest_line(sentence(i), GOLD) for i in range(30)).encode()
    for _ in range(300):
        config = per_line(blobs)
        target = rng.choice(["train/documents.txt", "ann/annotations.csv", "gt/m.manifest"])
        if rng.random() < 0.5:
            data = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 200)))
        else:  # small damage to a good file finds the subtler paths
            base = bytearray(good_manifest if target == "gt/m.manifest" else good_csv)
            for _ in range(rng.randrange(1, 4)):
                base[rng.randrange(len(base))] = rng.choice(alphabet)[0]
            data = bytes(base)
        uri = put(blobs, target, data)
        if target == "gt/m.manifest":
            config = manifest_config({"S3Uri": uri, "AttributeNames": ["ner"]})
        try:
            load(blobs, config)
        except DataError as exc:
            assert str(exc)
