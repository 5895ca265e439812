"""Put generated training data where a recognizer reads it: the server's local object store."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from mlharbor.engines.annotated import Example
from tests.engines.ner_data import make_corpus

TYPES = ("PERSON", "PRODUCT", "CITY")
# New text for a recognizer trained on this corpus: names, products and cities it never saw, with non-ASCII
# letters and an emoji (one code point, two UTF-16 units, four UTF-8 bytes) before the entities, and the
# entities it should find there.
UNSEEN_TEXT = "🙂 Zoë Müller bought a Škoda Pro 5 in Zürich. Did Nadia Okafor really return the Vantro X?"
UNSEEN_ENTITIES = {
    ("Zoë Müller", "PERSON"),
    ("Škoda Pro 5", "PRODUCT"),
    ("Zürich", "CITY"),
    ("Nadia Okafor", "PERSON"),
}


def put_object(data_dir: Path, bucket: str, key: str, data: bytes) -> str:
    path = data_dir / "s3" / bucket / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f"s3://{bucket}/{key}"


def annotations_csv(examples: Sequence[Example], file_name: str) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["File", "Line", "Begin Offset", "End Offset", "Type"])
    for line, example in enumerate(examples):
        for span in example.spans:
            writer.writerow([file_name, line, span.start, span.end, span.label])
    return out.getvalue().encode()


def upload(
    data_dir: Path, bucket: str, prefix: str, docs: int, seed: int = 1, types: Sequence[str] = TYPES
) -> dict:
    """Write ``docs`` generated documents (one per line) and their annotations; return an InputDataConfig."""
    # One document per line: the few multi-line documents become one line (same length, same offsets).
    examples = [
        Example(e.text.replace("\n", " "), e.spans, e.source)
        for e in make_corpus(docs, seed=seed, types=tuple(types), value_split="train")
    ]
    documents = put_object(
        data_dir, bucket, f"{prefix}/documents.txt", "\n".join(e.text for e in examples).encode() + b"\n"
    )
    annotations = put_object(
        data_dir, bucket, f"{prefix}/annotations.csv", annotations_csv(examples, "documents.txt")
    )
    return {
        "EntityTypes": [{"Type": t} for t in types],
        "Documents": {"S3Uri": documents},
        "Annotations": {"S3Uri": annotations},
    }
