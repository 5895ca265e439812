"""Read and validate a custom entity recognizer's training and test data.

AWS accepts CreateEntityRecognizer at once and checks the *data* only when training starts; bad data
ends the recognizer IN_ERROR with a Message naming the file, the line and the problem. This module
is that check: :func:`load_dataset` either returns a :class:`Dataset` or raises :class:`DataError`,
whose text is the Message. Malformed input never escapes as any other exception.

Formats, as the Comprehend Developer Guide documents them ("Preparing entity recognizer training data",
https://docs.aws.amazon.com/comprehend/latest/dg/prep-training-data-cer.html); when the data is checked and
what bad data does: docs/COMPATIBILITY.md, decision 23.

* ``COMPREHEND_CSV`` with ``Documents`` and ``Annotations`` (or an ``EntityList``).
* ``AUGMENTED_MANIFEST``: SageMaker Ground Truth named-entity output, JSON Lines, one document a line::

      {"source": "Diego Ramirez is an engineer.",
       "my-job": {"annotations": {"entities": [{"startOffset": 0, "endOffset": 13, "label": "ENGINEER"}],
                                  "labels": [{"label": "ENGINEER"}]}},
       "my-job-metadata": {...}}

  ``my-job`` is one of the manifest's ``AttributeNames``. Only plain text (``source``) is supported.

Line numbers in messages: documents read ONE_DOC_PER_LINE count lines from 0, as Comprehend's
``Line`` column does, so "line 4 of documents.txt" is the row with ``Line`` 4. Every other file
(ONE_DOC_PER_FILE documents, annotation and entity-list CSVs, manifests) is counted from 1, as editors
show it, header included.
Offsets are character (code point) offsets, end exclusive.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from mlharbor.blobs.store import BlobConflict, BlobNotFound, BlobStore, InvalidS3Uri, ObjectInfo, S3Uri
from mlharbor.engines.annotated import Example, Span

# AWS limits for plain-text recognizers (guidelines-and-limits).
MAX_ENTITY_TYPES = 25
MIN_DOCUMENTS = 3
MAX_DOCUMENTS = 200_000
MIN_ANNOTATIONS_PER_TYPE = 25
MIN_ENTITY_LIST_MATCHES = 200
MAX_DOCUMENT_BYTES = 5_000
MAX_CORPUS_BYTES = 200 * 1024 * 1024
MAX_ENTITY_LIST_ENTRIES = 1_000_000
MAX_ENTITY_LIST_ENTRY_CHARS = 5_000

PER_LINE_COLUMNS = ("File", "Line", "Begin Offset", "End Offset", "Type")
PER_FILE_COLUMNS = ("File", "Begin Offset", "End Offset", "Type")
ENTITY_LIST_COLUMNS = ("Text", "Type")

# Universal newlines, as Python's text mode and Java's readLine split lines.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# Strictly ASCII digits: int() would also take "1_000", " 7" or Arabic-Indic digits.
_INTEGER = re.compile(r"-?[0-9]+")
# Every character is one token: a run of word characters, or a single other character.
_TOKEN = re.compile(r"\w+|\W")
_WORD = re.compile(r"\w+")
_BOM = "\ufeff"


class DataError(Exception):
    """Training data AWS would refuse. ``str(exc)`` is the recognizer's user-facing Message."""


@dataclass
class Dataset:
    train: list[Example]  # documents with their gold spans; empty documents left out
    test: list[Example] | None  # from TestS3Uri / TEST manifests, or None: the caller holds some out
    entity_types: list[str]  # the declared EntityTypes, in order
    train_mentions: dict[str, int]  # gold mentions per declared type in ``train``
    warnings: list[str] = field(default_factory=list)  # accepted, but worth telling the user


def load_dataset(blobs: BlobStore, input_data_config: dict[str, Any], language_code: str) -> Dataset:
    """Read the data an ``InputDataConfig`` names and check it as Comprehend does.

    ``language_code`` is accepted for rules that depend on it; every language recognizers train in
    (en, es, fr, it, de, pt) separates words with spaces, so entity-list matching does not need it yet.
    """
    config = input_data_config if isinstance(input_data_config, dict) else {}
    types = _entity_types(config.get("EntityTypes"))
    data_format = config.get("DataFormat") or "COMPREHEND_CSV"
    loader = _Loader(blobs, types)
    if data_format == "COMPREHEND_CSV":
        train, test = loader.comprehend_csv(config)
    elif data_format == "AUGMENTED_MANIFEST":
        train, test = loader.augmented_manifests(config.get("AugmentedManifests"))
    else:
        raise DataError(
            f"DataFormat {data_format} is not supported: use COMPREHEND_CSV or AUGMENTED_MANIFEST."
        )
    mentions = Counter(span.label for example in train for span in example.spans)
    train_mentions = {name: mentions.get(name, 0) for name in types}
    _check_sizes(
        train, train_mentions, entity_list="EntityList" in config and data_format == "COMPREHEND_CSV"
    )
    if test is not None:
        _check_test(test, types)
    return Dataset(
        train=train, test=test, entity_types=types, train_mentions=train_mentions, warnings=loader.warnings
    )


# --- Configuration ----------------------------------------------------------------------------------
def _entity_types(raw: Any) -> list[str]:
    # The API layer validated these already; the data check still must not trip over a bad spec.
    if not isinstance(raw, list) or not all(
        isinstance(t, dict) and isinstance(t.get("Type"), str) for t in raw
    ):
        raise DataError("EntityTypes must be a list of {Type: name} entries.")
    types = [t["Type"] for t in raw]
    if not 1 <= len(types) <= MAX_ENTITY_TYPES:
        raise DataError(f"A recognizer needs 1 to {MAX_ENTITY_TYPES} entity types; {len(types)} were given.")
    if len(set(types)) != len(types):
        duplicate = next(t for t, n in Counter(types).items() if n > 1)
        raise DataError(f"EntityTypes lists {duplicate} more than once.")
    return types


def _section(config: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = config.get(name)
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("S3Uri"), str):
        raise DataError(f"{name} must have an S3Uri.")
    return value


def _test_uri(section: dict[str, Any] | None) -> str | None:
    value = section.get("TestS3Uri") if section else None
    return value if isinstance(value, str) and value else None


# --- Reading objects --------------------------------------------------------------------------------
@dataclass
class _File:
    uri: str
    name: str  # the base name, as the annotations' File column names it
    text: str


def _base_name(key: str) -> str:
    return key.rsplit("/", 1)[-1]


class _Loader:
    def __init__(self, blobs: BlobStore, types: list[str]) -> None:
        self.blobs = blobs
        self.declared = set(types)
        self.warnings: list[str] = []
        self._ignored: Counter[tuple[str, str, str]] = Counter()  # (file, what, type) -> count

    # Objects ----------------------------------------------------------------------------------------
    def objects(self, uri: str, what: str) -> list[ObjectInfo]:
        """The objects an S3Uri names: the one object with exactly that key, else every object under
        the prefix (sorted by key). Console folder markers ("folder/", empty) are not objects."""
        try:
            parsed = S3Uri.parse(uri)
            infos = self.blobs.list(parsed)
        except InvalidS3Uri as exc:
            raise DataError(f"The {what} S3Uri {uri} is not valid: {exc}.") from None
        except ClientError as exc:
            raise _client_error(uri, exc) from None
        exact = [i for i in infos if i.key == parsed.key and not i.key.endswith("/")]
        infos = exact or [i for i in infos if not i.key.endswith("/")]
        if not infos:
            raise DataError(f"No {what} found at {uri}: there is no object with that key or prefix.")
        total = sum(i.size for i in infos)
        if total > MAX_CORPUS_BYTES:
            raise DataError(
                f"The {what} at {uri} are {total:,} bytes; at most {MAX_CORPUS_BYTES:,} bytes are allowed."
            )
        return infos

    def read(self, info: ObjectInfo, *, numbered_from: int) -> _File:
        """The object decoded as UTF-8 (a leading byte-order mark dropped). An empty object is an error:
        AWS refuses empty input files."""
        uri = str(info.uri)
        try:
            data = self.blobs.get(info.uri)
        except (BlobNotFound, BlobConflict, InvalidS3Uri):
            raise DataError(f"Could not read {uri}: the object does not exist.") from None
        except ClientError as exc:
            raise _client_error(uri, exc) from None
        if len(data) > MAX_CORPUS_BYTES:  # grew since it was listed
            raise DataError(f"{uri} is {len(data):,} bytes; at most {MAX_CORPUS_BYTES:,} bytes are allowed.")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            # Everything before the bad byte decodes, so its line breaks can be counted.
            before = data[: exc.start].decode("utf-8")
            line = len(_LINE_BREAK.findall(before)) + numbered_from
            raise DataError(
                f"{uri} is not valid UTF-8: byte 0x{data[exc.start]:02x} at byte offset {exc.start} "
                f"(line {line}) cannot be decoded. Save the file as UTF-8."
            ) from None
        text = text.removeprefix(_BOM)
        if not text:
            raise DataError(f"{uri} is empty.")
        return _File(uri, _base_name(info.key), text)

    def ignore(self, file: str, what: str, label: str) -> None:
        self._ignored[(file, what, label)] += 1

    def flush_ignored(self) -> None:
        for (file, what, label), count in self._ignored.items():
            self.warnings.append(
                f"{file}: {count} {what}{'s' if count != 1 else ''} of type {label} ignored "
                "because the type is not in EntityTypes"
            )
        self._ignored.clear()

    # COMPREHEND_CSV --------------------------------------------------------------------------------
    def comprehend_csv(self, config: dict[str, Any]) -> tuple[list[Example], list[Example] | None]:
        documents = _section(config, "Documents")
        if documents is None:
            raise DataError("Documents is required when DataFormat is COMPREHEND_CSV.")
        annotations = _section(config, "Annotations")
        entity_list = _section(config, "EntityList")
        if (annotations is None) == (entity_list is None):
            raise DataError("Specify exactly one of Annotations or EntityList.")
        input_format = documents.get("InputFormat") or "ONE_DOC_PER_LINE"
        if input_format not in ("ONE_DOC_PER_LINE", "ONE_DOC_PER_FILE"):
            raise DataError(
                f"Documents.InputFormat {input_format} is not supported: "
                "use ONE_DOC_PER_LINE or ONE_DOC_PER_FILE."
            )
        per_line = input_format == "ONE_DOC_PER_LINE"
        test_documents, test_annotations = _test_uri(documents), _test_uri(annotations)
        if entity_list is not None and test_documents:
            raise DataError("A test set can be given only with Annotations, not with an EntityList.")
        if entity_list is None and bool(test_documents) != bool(test_annotations):
            raise DataError("Documents.TestS3Uri and Annotations.TestS3Uri must be given together.")

        # The annotations' File column holds base names, so they must tell the documents apart.
        unique = annotations is not None
        train_docs = self.documents(documents["S3Uri"], per_line, "training documents", unique)
        if entity_list is not None:
            train = self.match_entity_list(train_docs, entity_list["S3Uri"])
            self.flush_ignored()
            return train, None
        assert annotations is not None
        train = self.annotate(train_docs, annotations["S3Uri"], per_line, documents["S3Uri"])
        test = None
        if test_documents and test_annotations:
            test_docs = self.documents(test_documents, per_line, "test documents", unique)
            test = self.annotate(test_docs, test_annotations, per_line, test_documents)
        self.flush_ignored()
        return train, test

    def documents(self, uri: str, per_line: bool, what: str, unique_names: bool) -> list[_Document]:
        docs: list[_Document] = []
        keys: dict[str, str] = {}  # base name -> key
        for info in self.objects(uri, what):
            name = _base_name(info.key)
            if unique_names and name in keys:
                raise DataError(
                    f"The {what} at {uri} include two objects named {name} ({keys[name]} and {info.key}); "
                    "the annotations' File column cannot tell them apart. Give each document file a "
                    "distinct name."
                )
            keys[name] = info.key
            # Comprehend's Line column counts from 0; a whole-file document is just a file (from 1).
            file = self.read(info, numbered_from=0 if per_line else 1)
            if per_line:
                lines = _LINE_BREAK.split(file.text)
                if lines[-1] == "":  # the file ends with a line break: no line after it
                    lines.pop()
                for number, line in enumerate(lines):
                    docs.append(_Document(file.name, number, line, f"{file.name}:{number}"))
            else:
                docs.append(_Document(file.name, None, file.text, file.name))
            if len(docs) > MAX_DOCUMENTS:
                raise DataError(f"The {what} at {uri} hold more than {MAX_DOCUMENTS:,} documents.")
        for doc in docs:
            size = len(doc.text.encode("utf-8"))
            if size > MAX_DOCUMENT_BYTES or (size == 0 and not per_line):
                raise DataError(
                    f"{doc.where()}: the document is {size:,} bytes; each document must be "
                    f"1 to {MAX_DOCUMENT_BYTES:,} bytes (UTF-8)."
                )
        return docs

    # Annotations CSV ----------------------------------------------------------------------------
    def annotate(self, docs: list[_Document], uri: str, per_line: bool, documents_uri: str) -> list[Example]:
        by_name: dict[str, list[_Document]] = {}
        for doc in docs:
            by_name.setdefault(doc.file, []).append(doc)
        columns = PER_LINE_COLUMNS if per_line else PER_FILE_COLUMNS
        mode = "ONE_DOC_PER_LINE" if per_line else "ONE_DOC_PER_FILE"
        for info in self.objects(uri, "annotations"):
            file = self.read(info, numbered_from=1)
            for line, row in _csv_rows(file, columns, f"{mode} documents"):
                self._annotation(file.name, line, row, by_name, per_line, documents_uri)
        for doc in docs:
            doc.check_overlaps()
        # Blank documents teach nothing and some tokenizers choke on them; their lines keep their numbers.
        return [doc.example() for doc in docs if doc.text.strip() or doc.spans]

    def _annotation(
        self,
        csv_name: str,
        line: int,
        row: dict[str, str],
        by_name: dict[str, list[_Document]],
        per_line: bool,
        documents_uri: str,
    ) -> None:
        where = f"{csv_name}, line {line}"
        name = row["File"]
        candidates = by_name.get(name)
        if candidates is None:
            hint = ""
            if "/" in name and _base_name(name) in by_name:
                hint = f" Use the object's base name, {_base_name(name)}, not its key or URI."
            raise DataError(f"{where}: File {name!r} is not one of the documents at {documents_uri}.{hint}")
        if per_line:
            number = _integer(row["Line"], "Line", where)
            if not 0 <= number < len(candidates):
                raise DataError(
                    f"{where}: line {number} of {name} does not exist; the file has {len(candidates)} "
                    f"line{'s' if len(candidates) != 1 else ''} (numbered from 0)."
                )
            doc = candidates[number]
        else:
            doc = candidates[0]
        begin = _integer(row["Begin Offset"], "Begin Offset", where)
        end = _integer(row["End Offset"], "End Offset", where)
        label = row["Type"]
        _check_offsets(begin, end, doc, where, "Begin Offset", "End Offset")
        if not label:
            raise DataError(f"{where}: Type is empty.")
        if label not in self.declared:
            self.ignore(csv_name, "annotation", label)
            return
        doc.add(Span(begin, end, label), where)

    # Entity list -----------------------------------------------------------------------------------
    def match_entity_list(self, docs: list[_Document], uri: str) -> list[Example]:
        entries: dict[str, tuple[str, str]] = {}  # text -> (type, where it was listed)
        for info in self.objects(uri, "entity list"):
            file = self.read(info, numbered_from=1)
            for line, row in _csv_rows(file, ENTITY_LIST_COLUMNS, "an entity list"):
                where = f"{file.name}, line {line}"
                text, label = row["Text"], row["Type"]
                if not text:
                    raise DataError(f"{where}: Text is empty.")
                if len(text) > MAX_ENTITY_LIST_ENTRY_CHARS:
                    raise DataError(
                        f"{where}: Text is {len(text):,} characters; at most "
                        f"{MAX_ENTITY_LIST_ENTRY_CHARS:,} are allowed."
                    )
                if not label:
                    raise DataError(f"{where}: Type is empty.")
                if label not in self.declared:
                    self.ignore(file.name, "entity list entry", label)
                    continue
                earlier = entries.get(text)
                if earlier is None:
                    entries[text] = (label, where)
                    if len(entries) > MAX_ENTITY_LIST_ENTRIES:
                        raise DataError(
                            f"The entity list at {uri} has more than {MAX_ENTITY_LIST_ENTRIES:,} entries."
                        )
                elif earlier[0] != label:
                    self.warnings.append(
                        f"{where}: {text!r} is listed as {label} but already as {earlier[0]} "
                        f"({earlier[1]}); the first listing is used"
                    )
        if not entries and not self._ignored:
            raise DataError(f"The entity list at {uri} has no entries; it needs at least 1.")
        matcher = _EntityMatcher({text: label for text, (label, _) in entries.items()})
        return [
            Example(doc.text, matcher.find(doc.text), source=doc.source) for doc in docs if doc.text.strip()
        ]

    # AUGMENTED_MANIFEST ----------------------------------------------------------------------------
    def augmented_manifests(self, manifests: Any) -> tuple[list[Example], list[Example] | None]:
        if not isinstance(manifests, list) or not manifests:
            raise DataError("AugmentedManifests is required when DataFormat is AUGMENTED_MANIFEST.")
        train: list[Example] = []
        test: list[Example] | None = None
        for item in manifests:
            if not isinstance(item, dict) or not isinstance(item.get("S3Uri"), str):
                raise DataError("Every AugmentedManifests entry needs an S3Uri.")
            uri = item["S3Uri"]
            if (item.get("DocumentType") or "PLAIN_TEXT_DOCUMENT") != "PLAIN_TEXT_DOCUMENT":
                raise DataError(
                    f"{uri}: semi-structured documents (PDF, Word, images) are not supported; "
                    "only PLAIN_TEXT_DOCUMENT manifests can be used."
                )
            attributes = item.get("AttributeNames")
            if (
                not isinstance(attributes, list)
                or not attributes
                or not all(isinstance(a, str) and a for a in attributes)
            ):
                raise DataError(f"{uri}: AttributeNames must list at least one attribute name.")
            split = item.get("Split") or "TRAIN"
            if split not in ("TRAIN", "TEST"):
                raise DataError(f"{uri}: Split {split} is not supported: use TRAIN or TEST.")
            examples = self._manifest(uri, attributes)
            if split == "TRAIN":
                train.extend(examples)
            else:
                test = (test or []) + examples
        self.flush_ignored()
        return train, test

    def _manifest(self, uri: str, attributes: list[str]) -> list[Example]:
        examples: list[Example] = []
        for info in self.objects(uri, "augmented manifest"):
            file = self.read(info, numbered_from=1)
            for index, raw in enumerate(_LINE_BREAK.split(file.text)):
                if raw.strip():
                    examples.append(self._manifest_line(file.name, index + 1, raw, attributes))
        return examples

    def _manifest_line(self, name: str, line: int, raw: str, attributes: list[str]) -> Example:
        where = f"{name}, line {line}"
        try:
            record = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
            raise DataError(f"{where}: not valid JSON ({exc}).") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: each line must be a JSON object.")
        text = record.get("source")
        if text is None and "source-ref" in record:
            raise DataError(
                f"{where}: the document is given by 'source-ref' (a semi-structured document such as a "
                "PDF); semi-structured documents are not supported. Put the plain text in 'source'."
            )
        if not isinstance(text, str):
            raise DataError(f"{where}: 'source' must be the document's text (a JSON string).")
        doc = _Document(name, None, text, f"{name}:{line}", where=where)
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:  # JSON can spell lone surrogates ("\ud800"), which are no text
            raise DataError(f"{where}: 'source' contains an unpaired surrogate (\\ud800-\\udfff).") from None
        if not 1 <= size <= MAX_DOCUMENT_BYTES:
            raise DataError(
                f"{where}: the document is {size:,} bytes; each document must be "
                f"1 to {MAX_DOCUMENT_BYTES:,} bytes (UTF-8)."
            )
        seen: set[Span] = set()
        for attribute in attributes:
            for number, entity in enumerate(_manifest_entities(record, attribute, where)):
                at = f"{where}, {attribute} entity {number}"
                begin, end, label = entity["startOffset"], entity["endOffset"], entity["label"]
                _check_offsets(begin, end, doc, at, "startOffset", "endOffset")
                if label not in self.declared:
                    self.ignore(name, "annotation", label)
                    continue
                span = Span(begin, end, label)
                # Chained labeling jobs repeat the annotations they carried over: count them once.
                if span not in seen:
                    seen.add(span)
                    doc.add(span, at)
        doc.check_overlaps()
        return doc.example()


def _manifest_entities(record: dict[str, Any], attribute: str, where: str) -> Iterator[dict[str, Any]]:
    if attribute not in record:
        raise DataError(f"{where}: attribute {attribute!r} (one of the AttributeNames) is missing.")
    value = record[attribute]
    annotations = value.get("annotations") if isinstance(value, dict) else None
    entities = annotations.get("entities") if isinstance(annotations, dict) else None
    if not isinstance(entities, list):
        raise DataError(f'{where}: {attribute} must hold {{"annotations": {{"entities": [...]}}}}.')
    for number, entity in enumerate(entities):
        at = f"{where}, {attribute} entity {number}"
        if not isinstance(entity, dict):
            raise DataError(f"{at} must be a JSON object.")
        for key in ("startOffset", "endOffset"):
            value = entity.get(key)
            # bool is an int in Python, but true is no offset.
            if not isinstance(value, int) or isinstance(value, bool):
                raise DataError(f"{at}: {key} must be an integer, not {json.dumps(value)}.")
        label = entity.get("label")
        if not isinstance(label, str) or not label.strip():
            raise DataError(f"{at}: label must be a non-empty string.")
        yield {**entity, "label": label.strip()}


# --- Documents and their spans -------------------------------------------------------------------
class _Document:
    def __init__(self, file: str, line: int | None, text: str, source: str, where: str | None = None) -> None:
        self.file = file
        self.line = line
        self.text = text
        self.source = source
        self._where = where
        self.spans: list[tuple[Span, str]] = []  # with where each was given, for overlap messages

    def where(self) -> str:
        if self._where is not None:
            return self._where
        return self.file if self.line is None else f"{self.file}, line {self.line}"

    def describe(self) -> str:
        """The document as a phrase: "line 4 of documents.txt", "doc1.txt" or "the document"."""
        if self._where is not None:
            return "the document"
        return self.file if self.line is None else f"line {self.line} of {self.file}"

    def add(self, span: Span, where: str) -> None:
        self.spans.append((span, where))

    def check_overlaps(self) -> None:
        """AWS rejects overlapping entities; the first overlap found is named with both of its sources."""
        ordered = sorted(self.spans, key=lambda item: (item[0].start, item[0].end))
        widest: tuple[Span, str] | None = None  # of the spans so far, the one reaching furthest right
        for span, where in ordered:
            if widest is not None and span.start < widest[0].end:
                other, other_where = widest
                if (other.start, other.end, other.label) == (span.start, span.end, span.label):
                    problem = f"annotation {_show(span)} is given twice (also at {other_where})"
                else:
                    problem = (
                        f"annotation {_show(span)} overlaps annotation {_show(other)} from {other_where}"
                    )
                raise DataError(
                    f"{where}: in {self.describe()}, {problem}; overlapping entities are not supported."
                )
            if widest is None or span.end > widest[0].end:
                widest = (span, where)

    def example(self) -> Example:
        spans = tuple(sorted((span for span, _ in self.spans), key=lambda s: (s.start, s.end)))
        return Example(self.text, spans, source=self.source)


def _show(span: Span) -> str:
    return f"{span.start}-{span.end} ({span.label})"


def _check_offsets(begin: int, end: int, doc: _Document, where: str, begin_name: str, end_name: str) -> None:
    if begin < 0:
        raise DataError(f"{where}: {begin_name} {begin} is negative.")
    if end <= begin:
        raise DataError(f"{where}: {end_name} {end} must be greater than {begin_name} {begin}.")
    if end > len(doc.text):
        raise DataError(
            f"{where}: {end_name} {end} is beyond the end of {doc.describe()} (length {len(doc.text)})."
        )


def _integer(value: str, column: str, where: str) -> int:
    if not _INTEGER.fullmatch(value):
        raise DataError(f"{where}: {column} {value!r} is not an integer.")
    return int(value)


# --- CSV ------------------------------------------------------------------------------------------
def _normalize(name: str) -> str:
    return " ".join(name.split()).casefold()


def _csv_rows(file: _File, columns: tuple[str, ...], purpose: str) -> Iterator[tuple[int, dict[str, str]]]:
    """The data rows of a CSV with a required header naming ``columns`` (any order, any case, spaces
    around values allowed, as AWS's own examples write ", "). Yields (line number, {column: value})."""
    # skipinitialspace: AWS's ", " style must not hide a quote ('a, "b, c"'); strict: an unclosed quote
    # is an error rather than silently swallowing the rest of the file.
    reader = csv.reader(io.StringIO(file.text, newline=""), skipinitialspace=True, strict=True)
    expected = ", ".join(columns)
    index: dict[str, int] | None = None
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue  # blank lines, including a trailing one
            cells = [cell.strip() for cell in row]
            if index is None:
                found = [_normalize(c) for c in cells]
                wanted = {_normalize(c): c for c in columns}
                if sorted(found) != sorted(wanted):
                    raise DataError(
                        f"{file.name}, line {line}: the first row must be the header '{expected}' "
                        f"for {purpose}; found '{', '.join(cells)}'."
                    )
                index = {wanted[name]: position for position, name in enumerate(found)}
                continue
            if len(cells) != len(columns):
                raise DataError(
                    f"{file.name}, line {line}: expected {len(columns)} columns ({expected}), "
                    f"found {len(cells)}."
                )
            yield line, {column: cells[position] for column, position in index.items()}
    except csv.Error as exc:
        raise DataError(f"{file.name}, line {reader.line_num}: malformed CSV ({exc}).") from None
    if index is None:
        raise DataError(f"{file.uri} has no header row; the first row must be '{expected}'.")


# --- Entity list matching -----------------------------------------------------------------------------
class _EntityMatcher:
    """Finds every whole-word, case-sensitive occurrence of the listed texts; where matches overlap the
    longer one wins (then the one further left).

    Entries are indexed by their first token (a run of word characters, or one other character). A
    match can start only where the document has that same token, which is what makes "Ann" miss
    "Annual" at the start; the end is checked the same way. One pass over the document's tokens
    instead of one search per entry keeps large lists fast.
    """

    def __init__(self, entries: dict[str, str]) -> None:
        self._by_token: dict[str, list[tuple[str, str]]] = {}
        for text, label in entries.items():
            self._by_token.setdefault(_first_token(text), []).append((text, label))

    def find(self, doc: str) -> tuple[Span, ...]:
        candidates: list[tuple[int, int, str]] = []
        for token in _TOKEN.finditer(doc):
            start = token.start()
            for text, label in self._by_token.get(token.group(), ()):
                end = start + len(text)
                if not doc.startswith(text, start):
                    continue
                if _is_word(text[-1]) and end < len(doc) and _is_word(doc[end]):
                    continue  # ends inside a word
                candidates.append((start, end, label))
        candidates.sort(key=lambda c: (c[0] - c[1], c[0]))
        taken = bytearray(len(doc))
        chosen: list[Span] = []
        for start, end, label in candidates:
            if taken.find(1, start, end) == -1:
                taken[start:end] = b"\x01" * (end - start)
                chosen.append(Span(start, end, label))
        return tuple(sorted(chosen, key=lambda s: s.start))


def _first_token(text: str) -> str:
    match = _WORD.match(text)
    return match.group() if match else text[0]


def _is_word(char: str) -> bool:
    return _WORD.match(char) is not None


# --- Counts and limits --------------------------------------------------------------------------------
def _check_sizes(train: list[Example], mentions: dict[str, int], *, entity_list: bool) -> None:
    if len(train) < MIN_DOCUMENTS:
        raise DataError(
            f"The training data has {len(train)} non-empty document{'s' if len(train) != 1 else ''}; "
            f"at least {MIN_DOCUMENTS} are required."
        )
    minimum = MIN_ENTITY_LIST_MATCHES if entity_list else MIN_ANNOTATIONS_PER_TYPE
    short = [(name, count) for name, count in mentions.items() if count < minimum]
    if short:
        listed = ", ".join(f"{name} has {count}" for name, count in short)
        if entity_list:
            raise DataError(
                f"Too few entity list matches in the training documents: {listed}; each entity type "
                f"needs at least {minimum} matches."
            )
        raise DataError(
            f"Too few annotations in the training data: {listed}; each entity type needs at least {minimum}."
        )


def _check_test(test: Iterable[Example], types: list[str]) -> None:
    present = {span.label for example in test for span in example.spans}
    missing = [name for name in types if name not in present]
    if missing:
        raise DataError(
            f"The test data has no annotations of type {', '.join(missing)}; it must include at least "
            "one annotation of each entity type."
        )


def _client_error(uri: str, exc: ClientError) -> DataError | ClientError:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    if 400 <= int(status) < 500:  # the data's fault (no access, no bucket); 5xx is ours to retry
        return DataError(f"Could not read {uri}: {error.get('Code', status)} ({error.get('Message', '')}).")
    return exc
