"""Shape-driven fuzzing of every implemented operation over real HTTP (issue 12).

Each member of each operation's input shape, as botocore's model describes it, is mutated one at a time
on top of a plausible request: wrong types, nulls (members, list items, map values), lone UTF-16
surrogates, numbers past the 32/64-bit and float ranges, lengths past the model's bounds, values outside
enums and patterns, extra members. The requests go to one dedicated server from a fixed seed, as awsJson
1.1 and, for Comprehend, as rpc-v2-cbor.

Checked for every request: no 5xx other than 501, and an error body in the service's envelope. A mutation
the model forbids must be refused (4xx), and no refused request may change anything: the database's rows
and the data folder are fingerprinted around every refused request (a run of requests that must all be
refused shares one fingerprint pair).

Operations whose success starts background work (training, stream workers, endpoints, jobs, asynchronous
deletes) get only mutations the model forbids, so no valid mutation can start work that outlives its
request and writes while later requests are checked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import botocore.session
import cbor2
import pytest
import regex
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.model import Shape

from mlharbor.api.services import build_services
from tests.conftest import REGION, RunningServer, wait_until
from tests.kvs_producer import encode_mkv, put_media

pytestmark = pytest.mark.storage

# Fixed, so a failure reproduces; MLHARBOR_FUZZ_SEED explores other samples locally.
SEED = int(os.environ.get("MLHARBOR_FUZZ_SEED", "20261206"))
MAX_DEPTH = 6  # nesting levels mutated below an operation's input (the models nest at most 5)
PER_OPERATION = {"json": 110, "cbor": 45}  # requests per operation and wire, sampled from all mutations
# Operations whose success would start work that outlives the request (a training, stream worker,
# endpoint or detection job process; an asynchronous delete): only mutations the model forbids.
REFUSED_ONLY = {
    "rekognition": {"StartStreamProcessor"},
    "kinesisvideo": set(),
    "kinesis-video-media": set(),
    "kinesis-video-archived-media": set(),
    "comprehend": {
        "CreateEntityRecognizer",
        "StartEntitiesDetectionJob",
        "CreateEndpoint",
        "UpdateEndpoint",
        "DeleteEntityRecognizer",
        "DeleteEndpoint",
    },
}
TARGET_PREFIX = {"rekognition": "RekognitionService", "comprehend": "Comprehend_20171127"}
REST_JSON = {"kinesisvideo", "kinesis-video-media", "kinesis-video-archived-media"}
ACCOUNT = "000000000000"
COLLECTION = "fuzz-collection"
PROCESSOR = "fuzz-processor"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/fuzz"
KVS = f"arn:aws:kinesisvideo:{REGION}:{ACCOUNT}:stream/fuzz/1"
KDS = f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/fuzz"
KVS_STREAM = KVS  # rewritten by _setup to the ARN of the Kinesis Video stream it creates
RECOGNIZER = f"arn:aws:comprehend:{REGION}:{ACCOUNT}:entity-recognizer/fuzz"
FACE_ID = "11111111-2222-3333-4444-555555555555"
# Values the plausible request uses for members of these names (when the member's shape accepts them),
# so mutations of the other members reach the handlers' resource lookups and beyond.
HINTS: dict[str, dict[str, Any]] = {
    "rekognition": {
        "CollectionId": COLLECTION,
        "Name": PROCESSOR,
        "ResourceArn": f"arn:aws:rekognition:{REGION}:{ACCOUNT}:streamprocessor/{PROCESSOR}",
        "RoleArn": ROLE,
        "FaceId": FACE_ID,
    },
    "kinesisvideo": {"StreamName": "fuzz", "StreamARN": KVS_STREAM, "ResourceARN": KVS_STREAM},
    "kinesis-video-media": {"StreamName": "fuzz"},
    "kinesis-video-archived-media": {"StreamName": "fuzz"},
    "comprehend": {
        "EntityRecognizerArn": RECOGNIZER,
        "ResourceArn": RECOGNIZER,
        "ModelArn": RECOGNIZER,
        "DataAccessRoleArn": ROLE,
        "LanguageCode": "en",
        "S3Uri": "s3://fuzz-bucket/input",
    },
}
# Tried in order for a string member without a hint; the first its shape accepts is used.
CANDIDATES = (
    "fuzz",
    "a",
    "1",
    FACE_ID,
    "s3://fuzz-bucket/key",
    ROLE,
    KVS,
    KDS,
    RECOGNIZER,
    f"arn:aws:comprehend:{REGION}:{ACCOUNT}:entity-recognizer-endpoint/fuzz",
    f"arn:aws:sns:{REGION}:{ACCOUNT}:fuzz",
    f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{FACE_ID}",
    "sg-12345678",
    "subnet-12345678",
    "Fuzz text.",
)
# Strings a shape may or may not accept (whether it does decides `refused`).
ODD_STRINGS = (
    "",
    "\x00",
    "a b",
    "\U0001f600" * 3,
    "\u202eevil",
    "../../etc/passwd",
    "%s%n' OR 1=1 --",
    "null",
)
WRONG_TYPES: tuple[Any, ...] = ("text", 7, -1, 2.5, True, [], ["x"], {}, {"a": 1})
INT_EDGES = (0, -1, 2**31 - 1, 2**31, -(2**31) - 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30)
FLOAT_EDGES = (0.0, -0.0, 5e-324, 1e39, 1e308, -1e308, 10**400, 1.5)
TIMESTAMP_EDGES = (
    0,
    1.5e9,
    253402300799,
    -62135596800,
    1e20,
    -1e20,
    "2020-01-01T00:00:00Z",
    "yesterday",
    "9999-12-31T23:59:59-23:59",
    "0001-01-01T00:00:00+23:59",
    "2020-01-01",
)
NON_FINITE = (math.nan, math.inf, -math.inf)
UNKNOWN_MEMBER = "FuzzUnknownMember"


@dataclass(frozen=True)
class Variant:
    value: Any
    refused: bool  # the model forbids it: the server must answer 4xx
    where: str  # the member mutated, e.g. Settings.FaceSearch.CollectionId ("" for the whole request)
    what: str  # the mutation, e.g. string:'\\ud800'

    def inside(self, name: str, value: Any) -> Variant:
        """This mutation of a member, as a mutation of the structure, list or map holding it."""
        return Variant(value, self.refused, f"{name}.{self.where}" if self.where else name, self.what)


@dataclass(frozen=True)
class Context:
    hints: dict[str, Any]
    rng: random.Random
    cbor: bool


# --- what the model allows (conservative: True only for certain violations) ------------------------------
def _size_bad(shape: Shape, size: int) -> bool:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    return (low is not None and size < low) or (high is not None and size > high)


def _range_bad(shape: Shape, number: float) -> bool:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    return (low is not None and number < low) or (high is not None and number > high)


def _unstorable(text: str) -> bool:
    """Lone surrogates (not UTF-8) and U+0000 (not in a PostgreSQL text column) are refused everywhere."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return "\x00" in text


def _string_bad(shape: Shape, value: Any) -> bool:
    if not isinstance(value, str) or _unstorable(value) or _size_bad(shape, len(value)):
        return True
    if shape.enum and value not in shape.enum:  # type: ignore[attr-defined]
        return True
    pattern = shape.metadata.get("pattern")
    return pattern is not None and regex.fullmatch(pattern, value) is None


def _number_bad(shape: Shape, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return True
    if shape.type_name in ("integer", "long"):
        bits = 32 if shape.type_name == "integer" else 64
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # read as the integer, as AWS's deserializers do
        return (
            not isinstance(value, int)
            or not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1)
            or _range_bad(shape, value)
        )
    limit = 3.4028234663852886e38 if shape.type_name == "float" else 1.7976931348623157e308
    try:
        number = float(value)
    except OverflowError:
        return True
    return not math.isfinite(number) or abs(number) > limit or _range_bad(shape, number)


def _blob_bad(shape: Shape, value: Any) -> bool:
    if isinstance(value, bytes | bytearray):
        return _size_bad(shape, len(value))
    if not isinstance(value, str):
        return True
    try:
        return _size_bad(shape, len(base64.b64decode(value, validate=True)))
    except ValueError:
        return True


def _timestamp_bad(value: Any) -> bool:
    if isinstance(value, datetime):
        return False
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return True
        return False
    if isinstance(value, bool) or not isinstance(value, int | float):
        return True
    try:
        datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return True
    return False


def forbidden(shape: Shape, value: Any) -> bool:
    """Whether the model certainly forbids ``value`` for ``shape`` (null included: callers say where null
    means absent)."""
    kind = shape.type_name
    if value is None:
        return True
    if kind == "structure":
        if not isinstance(value, dict):
            return True
        members = shape.members  # type: ignore[attr-defined]
        if any(value.get(name) is None for name in shape.required_members):  # type: ignore[attr-defined]
            return True
        return any(forbidden(members[k], v) for k, v in value.items() if k in members and v is not None)
    if kind == "list":
        if not isinstance(value, list) or _size_bad(shape, len(value)):
            return True
        return any(forbidden(shape.member, item) for item in value)  # type: ignore[attr-defined]
    if kind == "map":
        if not isinstance(value, dict) or _size_bad(shape, len(value)):
            return True
        key, inner = shape.key, shape.value  # type: ignore[attr-defined]
        return any(_string_bad(key, k) or forbidden(inner, v) for k, v in value.items())
    if kind == "string":
        return _string_bad(shape, value)
    if kind in ("integer", "long", "float", "double"):
        return _number_bad(shape, value)
    if kind == "boolean":
        return not isinstance(value, bool)
    if kind == "blob":
        return _blob_bad(shape, value)
    if kind == "timestamp":
        return _timestamp_bad(value)
    return False


# --- plausible values ------------------------------------------------------------------------------------
def plausible(shape: Shape, name: str, hints: dict[str, Any]) -> Any:
    """A value the shape accepts where the candidates allow it (a base for mutating one member)."""
    if name in hints and not forbidden(shape, hints[name]):
        return hints[name]
    kind = shape.type_name
    if kind == "structure":
        members = shape.members  # type: ignore[attr-defined]
        return {m: plausible(members[m], m, hints) for m in shape.required_members}  # type: ignore[attr-defined]
    if kind == "list":
        count = max(1, shape.metadata.get("min", 1))
        return [plausible(shape.member, name, hints) for _ in range(count)]  # type: ignore[attr-defined]
    if kind == "map":
        key = plausible(shape.key, "", hints)  # type: ignore[attr-defined]
        return {key: plausible(shape.value, "", hints)}  # type: ignore[attr-defined]
    if kind == "string":
        if shape.enum:  # type: ignore[attr-defined]
            return shape.enum[0]  # type: ignore[attr-defined]
        fits = [c for c in CANDIDATES if not _string_bad(shape, c)]
        return fits[0] if fits else "a" * max(1, shape.metadata.get("min", 1))
    if kind in ("integer", "long"):
        return max(1, shape.metadata.get("min", 1))
    if kind in ("float", "double"):
        return float(shape.metadata.get("min", 0.5))
    if kind == "boolean":
        return False
    if kind == "blob":
        return base64.b64encode(b"fuzz").decode()  # never a decodable image: no model ever runs
    if kind == "timestamp":
        return 1_700_000_000
    raise AssertionError(f"unknown shape type {kind}")


# --- mutations -------------------------------------------------------------------------------------------
def _checked(shape: Shape, values: tuple[Any, ...], tag: str) -> list[Variant]:
    return [Variant(v, forbidden(shape, v), "", f"{tag}:{_short(v)}") for v in values]


def _short(value: Any) -> str:
    text = ascii(value)
    return text if len(text) <= 40 else f"{text[:37]}...({len(text)} chars)"


def _string_variants(shape: Shape, current: str, ctx: Context) -> list[Variant]:
    values: list[Any] = [*ODD_STRINGS, "\ud800", current + "\udfff", "\udc00" + current, "NOT_IN_ENUM_VALUE"]
    high, low = shape.metadata.get("max"), shape.metadata.get("min")
    if high is not None and high < 100_000:
        values += ["a" * high, "a" * (high + 1), "\U0001f600" * high]
    if low:
        values.append("a" * (low - 1))
    if ctx.cbor:
        values += [current.encode(), cbor2.CBORTag(99, current), cbor2.undefined]
    return _checked(shape, tuple(values), "string")


def _number_variants(shape: Shape, ctx: Context) -> list[Variant]:
    values: list[Any] = list(INT_EDGES if shape.type_name in ("integer", "long") else FLOAT_EDGES)
    values += [1.0, 1e308, *NON_FINITE, "1"]
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    values += [b + step for b, step in ((low, -1), (high, 1), (low, 0), (high, 0)) if b is not None]
    if ctx.cbor:
        values += [2**200, -(2**200), cbor2.CBORTag(4, [-1, 15])]  # bignums, a decimal fraction
    return _checked(shape, tuple(values), "number")


def _blob_variants(shape: Shape, ctx: Context) -> list[Variant]:
    values: list[Any] = ["", "not base64!", "QQ", "AAAA", 5]
    high = shape.metadata.get("max")
    if high is not None and high <= 6 * 1024 * 1024 and not ctx.cbor:  # the 5 MB image limit, once
        values.append(base64.b64encode(bytes(high + 1)).decode())
    if ctx.cbor:
        values += [b"", b"\xff\xd8\xff", bytearray(b"x")]
    return _checked(shape, tuple(values), "blob")


def _scalar_variants(shape: Shape, current: Any, ctx: Context) -> list[Variant]:
    kind = shape.type_name
    if kind == "string":
        return _string_variants(shape, current if isinstance(current, str) else "", ctx)
    if kind in ("integer", "long", "float", "double"):
        return _number_variants(shape, ctx)
    if kind == "boolean":
        return _checked(shape, ("true", 1, 0), "boolean")
    if kind == "blob":
        return _blob_variants(shape, ctx)
    if kind == "timestamp":
        extra = (datetime(2020, 1, 1, tzinfo=UTC), cbor2.CBORTag(1, "x")) if ctx.cbor else ()
        return _checked(shape, (*TIMESTAMP_EDGES, math.nan, math.inf, *extra), "timestamp")
    return []


def _structure_variants(shape: Shape, current: dict[str, Any], ctx: Context, depth: int) -> list[Variant]:
    # A null member means an absent one; refused exactly when the structure then lacks a required member.
    whole = [{**current, UNKNOWN_MEMBER: "\ud800"}, {}]
    out = _checked(shape, tuple(whole), "structure")
    for name, member in shape.members.items():  # type: ignore[attr-defined]
        nulled = {**current, name: None}
        out.append(Variant(nulled, forbidden(shape, nulled), name, "null"))
        child = current[name] if current.get(name) is not None else plausible(member, name, ctx.hints)
        out += [v.inside(name, {**current, name: v.value}) for v in variants(member, child, ctx, depth + 1)]
    return out


def _list_variants(shape: Shape, current: list[Any], ctx: Context, depth: int) -> list[Variant]:
    member = shape.member  # type: ignore[attr-defined]
    item = current[0] if current else plausible(member, "", ctx.hints)
    values: list[Any] = [[None], [item, None], [], [item, item]]
    high = shape.metadata.get("max")
    if high is not None and high <= 1000:
        values.append([item] * (high + 1))
    out = _checked(shape, tuple(values), "list")
    inner = variants(member, item, ctx, depth + 1)
    return out + [v.inside("1", [v.value, *current[1:]]) for v in inner]


def _map_variants(shape: Shape, current: dict[str, Any], ctx: Context, depth: int) -> list[Variant]:
    key_shape, value_shape = shape.key, shape.value  # type: ignore[attr-defined]
    key = next(iter(current), None) or plausible(key_shape, "", ctx.hints)
    item = current[key] if current.get(key) is not None else plausible(value_shape, "", ctx.hints)
    values: list[Any] = [{key: None}, {}, {"\ud800": item}, {key: item, "": item}]
    high = shape.metadata.get("max")
    if high is not None and high <= 1000:
        values.append({f"k{i}": item for i in range(high + 1)})
    out = _checked(shape, tuple(values), "map")
    for k in _string_variants(key_shape, key, ctx):
        if isinstance(k.value, str):  # JSON object keys are strings
            out.append(Variant({k.value: item}, forbidden(shape, {k.value: item}), "key", k.what))
    out += [v.inside("value", {key: v.value}) for v in variants(value_shape, item, ctx, depth + 1)]
    return out


def variants(shape: Shape, current: Any, ctx: Context, depth: int = 0) -> list[Variant]:
    """Mutations of one member's value (``current``) and, recursively, of the members inside it."""
    wrong = [v for v in WRONG_TYPES if forbidden(shape, v)]
    out = [Variant(v, True, "", f"type:{_short(v)}") for v in ctx.rng.sample(wrong, min(2, len(wrong)))]
    if depth > MAX_DEPTH:
        return out
    kind = shape.type_name
    if kind == "structure":
        return out + _structure_variants(shape, current, ctx, depth)
    if kind == "list":
        return out + _list_variants(shape, current, ctx, depth)
    if kind == "map":
        return out + _map_variants(shape, current, ctx, depth)
    return out + _scalar_variants(shape, current, ctx)


def sample(found: list[Variant], budget: int, rng: random.Random) -> list[Variant]:
    """At least one mutation of every member, then random others up to ``budget``."""
    by_member: dict[str, list[Variant]] = {}
    for v in found:
        by_member.setdefault(v.where, []).append(v)
    chosen = [rng.choice(group) for group in by_member.values()]
    rest = [v for v in found if v not in chosen]
    chosen += rng.sample(rest, max(0, min(len(rest), budget - len(chosen))))
    return chosen


# --- the wire --------------------------------------------------------------------------------------------
# Bodies no encoder writes, and whether they are refused whatever the operation (the decoders' failures).
RAW_JSON = (
    (b"not json", True),
    (b"[]", True),
    (b'"x"', True),
    (b"[" * 50_000, True),
    (b'{"a":' * 20_000, True),
    (b"\xff\xfe{}", True),
    (b"{}{}", True),
    (b"null", False),
    (b'{"NextToken": NaN}', False),
    (b'{"NextToken": "\\ud800"}', False),
    (b'{"NextToken": "\xed\xa0\x80"}', False),  # a surrogate's UTF-8 bytes, not an escape
    (b'{"MaxResults": 1e999}', False),
)
RAW_CBOR = (
    (b"\xff", True),
    (b"\x9f", True),
    (b"\x81" * 1000, True),
    (b"\xa1\x63\xed\xa0\x80\x01", True),  # a text string that is not UTF-8
    (b"\x5b\x0f\xff\xff\xff\xff\xff\xff\xff", True),  # a byte string claiming 2^60 bytes
    (cbor2.dumps([]), True),
    (cbor2.dumps({"MaxResults": cbor2.CBORTag(2, b"\xff" * 2000)}), True),  # past Python's int parsing
    (cbor2.dumps(None), False),
)
_PLACEHOLDER = "\ue000"  # 3 UTF-8 bytes, like a surrogate; swapped for one after encoding


def _cbor_body(value: Any) -> bytes:
    """CBOR cannot carry a lone surrogate as text, but a client can send its 3 bytes (invalid UTF-8)."""

    def swap(item: Any) -> Any:
        if isinstance(item, str):
            return "".join(_PLACEHOLDER if "\ud800" <= ch <= "\udfff" else ch for ch in item)
        if isinstance(item, dict):
            return {swap(k): swap(v) for k, v in item.items()}
        if isinstance(item, list):
            return [swap(v) for v in item]
        return item

    return cbor2.dumps(swap(value)).replace(_PLACEHOLDER.encode(), b"\xed\xa0\x80")


class Wire:
    """Signed raw requests on one keep-alive connection (far cheaper than a connection per request)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False  # never a proxy from the environment
        self.credentials = Credentials("test", "test")

    def send(self, service: str, operation: str, body: bytes, cbor: bool) -> requests.Response:
        if cbor:
            path = f"/service/{TARGET_PREFIX[service]}/operation/{operation}"
            headers = {"Content-Type": "application/cbor", "smithy-protocol": "rpc-v2-cbor"}
        elif service in REST_JSON:  # rest-json: the operation is the model's path
            model = botocore.session.get_session().get_service_model(service)
            path = model.operation_model(operation).http["requestUri"]
            headers = {"Content-Type": "application/json"}
            signing = model.metadata.get("signingName", model.metadata["endpointPrefix"])
        else:
            path = "/"
            headers = {
                "Content-Type": "application/x-amz-json-1.1",
                "X-Amz-Target": f"{TARGET_PREFIX[service]}.{operation}",
            }
        request = AWSRequest(method="POST", url=self.url + path, data=body, headers=headers)
        SigV4Auth(self.credentials, signing if service in REST_JSON else service, REGION).add_auth(request)
        return self.session.post(self.url + path, data=body, headers=dict(request.headers), timeout=30)


def envelope_problem(response: requests.Response, cbor: bool) -> str | None:
    """What is wrong with an error response's body, if anything."""
    if response.status_code < 400:
        return None
    try:
        body = cbor2.loads(response.content) if cbor else response.json()
    except ValueError:
        return f"error body is not {'CBOR' if cbor else 'JSON'}: {response.content[:80]!r}"
    if not isinstance(body, dict) or not body.get("__type"):
        return f"error body without __type: {body!r:.80}"
    return None


# --- nothing changed -------------------------------------------------------------------------------------
class Fingerprint:
    """A digest of every table's rows and of the data folder's files (names, sizes, modification times)."""

    def __init__(self, server: RunningServer) -> None:
        self.data_dir = server.data_dir
        url = server.database_url
        if url.startswith("sqlite:///"):
            self.conn: Any = sqlite3.connect(f"file:{url.removeprefix('sqlite:///')}?mode=ro", uri=True)
            self.conn.isolation_level = None  # every read sees the latest commit
            query = "SELECT name FROM sqlite_master WHERE type = 'table'"
        else:
            import psycopg

            self.conn = psycopg.connect(
                url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
            )
            query = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        # Leases are renewed all the time and say which server runs work, which no user observes.
        self.tables = sorted(row[0] for row in self.conn.execute(query).fetchall() if row[0] != "work_leases")

    def take(self) -> str:
        """Only what users can observe: an expired Kinesis Video fragment (a deleted stream's, or one past
        its retention) is gone for every reader at once, and the retention pass removes its row and object
        later, in the background; that removal changes nothing a user can see."""
        digest = hashlib.sha256()
        now = time.time()
        live_objects: set[Path] = set()
        for table in self.tables:
            if table == "video_fragments":
                rows = self.conn.execute(f"SELECT * FROM video_fragments WHERE expires_at > {now}").fetchall()
                blob = [i for i, c in enumerate(self._columns(table)) if c == "blob_uri"][0]
                live_objects |= {self.data_dir / "s3" / r[blob].removeprefix("s3://") for r in rows}
            else:
                rows = self.conn.execute(f'SELECT * FROM "{table}"').fetchall()
            digest.update(f"{table}:{sorted(map(repr, rows))}".encode())
        video = self.data_dir / "s3" / "mlharbor-video"
        for path in sorted(self.data_dir.rglob("*")):
            if path.is_file() and (path in live_objects or not path.is_relative_to(video)):
                stat = path.stat()
                digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return digest.hexdigest()

    def _columns(self, table: str) -> list[str]:
        return [d[0] for d in self.conn.execute(f'SELECT * FROM "{table}" LIMIT 0').description]

    def close(self) -> None:
        self.conn.close()


@dataclass
class Request:
    service: str
    operation: str
    body: bytes
    cbor: bool
    refused: bool  # must be answered 4xx
    label: str


class Fuzzer:
    def __init__(self, wire: Wire, fingerprint: Fingerprint) -> None:
        self.wire = wire
        self.fingerprint = fingerprint
        self.problems: list[str] = []
        self.sent = 0
        self.statuses: dict[int, int] = {}
        self.baseline = fingerprint.take()

    def _send(self, request: Request) -> int:
        response = self.wire.send(request.service, request.operation, request.body, request.cbor)
        self.sent += 1
        status = response.status_code
        self.statuses[status] = self.statuses.get(status, 0) + 1
        where = (
            f"{request.service}.{request.operation} [{'cbor' if request.cbor else 'json'}] {request.label}"
        )
        if status >= 500 and status != 501:
            self.problems.append(f"{status} from {where}: {response.content[:200]!r}")
        elif request.refused and status < 400:
            self.problems.append(f"{status} (accepted) for a forbidden request {where}")
        elif problem := envelope_problem(response, request.cbor):
            self.problems.append(f"{problem} from {where}")
        return status

    def run(self, requests_: list[Request]) -> None:
        """Refused requests first, in one run between two fingerprints; then the others one at a time."""
        refused = [r for r in requests_ if r.refused]
        for request in refused:
            self._send(request)
        self._check_unchanged(refused)
        for request in (r for r in requests_ if not r.refused):
            if self._send(request) >= 400:
                self._check_unchanged([request])
            else:
                self.baseline = self.fingerprint.take()

    def _check_unchanged(self, batch: list[Request]) -> None:
        now = self.fingerprint.take()
        if batch and now != self.baseline:
            labels = ", ".join(f"{r.operation} {r.label}" for r in batch[:5])
            self.problems.append(f"a refused request changed state (one of {len(batch)}: {labels}, ...)")
        self.baseline = now


# --- the operations --------------------------------------------------------------------------------------
# Fuller starting points than the required members alone, so mutations get past the cross-member rules.
BASES: dict[tuple[str, str], dict[str, Any]] = {
    ("rekognition", "CreateStreamProcessor"): {
        "Name": PROCESSOR,
        "Input": {"KinesisVideoStream": {"Arn": KVS}},
        "Output": {"KinesisDataStream": {"Arn": KDS}},
        "Settings": {"FaceSearch": {"CollectionId": COLLECTION, "FaceMatchThreshold": 85.0}},
        "RoleArn": ROLE,
    },
}
# Deletes last (in this order), so the resources the other operations refer to exist while they run.
LAST = ("DeleteFaces", "DeleteCollection", "DeleteStreamProcessor", "DeleteEntityRecognizer", "DeleteStream")


def operations(service: str) -> list[str]:
    """The operations MLHarbor implements (its handler table), in the order the fuzz sends them."""
    handlers = next(s.handlers for s in build_services().values() if s.name == service)
    order = {name: i for i, name in enumerate(LAST)}
    return sorted(handlers, key=lambda op: (order.get(op, -1), op))


def requests_for(service: str, operation: str, cbor: bool, rng: random.Random) -> list[Request]:
    shape = botocore.session.get_session().get_service_model(service).operation_model(operation).input_shape
    ctx = Context(HINTS[service], rng, cbor)
    base = BASES.get((service, operation)) or plausible(shape, "", ctx.hints)
    refused_only = operation in REFUSED_ONLY[service]
    found = [v for v in variants(shape, base, ctx) if v.refused or not refused_only]
    chosen = sample(found, PER_OPERATION["cbor" if cbor else "json"], rng)
    encode: Callable[[Any], bytes] = _cbor_body if cbor else (lambda v: json.dumps(v).encode())
    out = [
        Request(service, operation, encode(v.value), cbor, v.refused, f"{v.where} {v.what}") for v in chosen
    ]
    raw = rng.sample(RAW_CBOR if cbor else RAW_JSON, 3)
    return out + [
        Request(service, operation, body, cbor, refused, f"raw {body[:30]!r}")
        for body, refused in raw
        if refused or not refused_only
    ]


def _setup(server: RunningServer) -> None:
    """The resources the plausible requests name. The recognizer's training is stopped at once and the
    fuzz waits until it has stopped, so no worker writes while fingerprints are compared."""
    rekognition, comprehend = server.client("rekognition"), server.client("comprehend")
    HINTS["kinesisvideo"]["StreamARN"] = HINTS["kinesisvideo"]["ResourceARN"] = server.client(
        "kinesisvideo"
    ).create_stream(StreamName="fuzz", DataRetentionInHours=1)["StreamARN"]
    # Two archived fragments, so the media operations' mutations reach real fragments.
    status, _ = put_media(server.url, encode_mkv(seconds=2, fragment_seconds=1), stream_name="fuzz")
    assert status == 200
    rekognition.create_collection(CollectionId=COLLECTION)
    rekognition.create_stream_processor(**BASES[("rekognition", "CreateStreamProcessor")])
    arn = comprehend.create_entity_recognizer(
        RecognizerName="fuzz",
        LanguageCode="en",
        DataAccessRoleArn=ROLE,
        InputDataConfig={
            "EntityTypes": [{"Type": "PERSON"}],
            "Documents": {"S3Uri": "s3://fuzz-bucket/docs"},
            "EntityList": {"S3Uri": "s3://fuzz-bucket/entities"},
        },
    )["EntityRecognizerArn"]
    assert arn == RECOGNIZER
    comprehend.stop_training_entity_recognizer(EntityRecognizerArn=arn)

    def settled() -> bool:
        status = comprehend.describe_entity_recognizer(EntityRecognizerArn=arn)["EntityRecognizerProperties"]
        return status["Status"] in {"STOPPED", "IN_ERROR"}

    wait_until(settled, timeout=60, what="the fuzz recognizer to stop")


def test_fuzzed_requests_never_fail_the_server_nor_change_state(make_server):
    # A caught-up GetMedia answers to the end at once: the fuzz waits for every answer.
    server = make_server(env={"MLHARBOR_VIDEO_GET_MEDIA_IDLE_SECONDS": "0.05"})
    _setup(server)
    rng = random.Random(SEED)
    fingerprint = Fingerprint(server)
    fuzzer = Fuzzer(Wire(server.url), fingerprint)
    started = time.monotonic()
    try:
        # The media services before kinesisvideo, whose last operations may delete the stream they read.
        for service in ("rekognition", "kinesis-video-media", "kinesis-video-archived-media", "kinesisvideo",
                        "comprehend"):  # fmt: skip
            for operation in operations(service):
                for cbor in (False, True) if service == "comprehend" else (False,):
                    fuzzer.run(requests_for(service, operation, cbor, rng))
    finally:
        fingerprint.close()
    elapsed = time.monotonic() - started
    print(f"fuzz: {fuzzer.sent} requests in {elapsed:.1f}s, statuses {sorted(fuzzer.statuses.items())}")
    assert fuzzer.sent >= 3000
    assert not fuzzer.problems, f"{len(fuzzer.problems)} problems:\n" + "\n".join(fuzzer.problems[:30])
    assert "Traceback" not in server.log(), server.log()[-3000:]


class _Answer:
    def __init__(self, status: int) -> None:
        self.status_code = status
        self.content = b'{"__type":"InvalidParameterException"}' if status >= 400 else b"{}"

    def json(self) -> Any:
        return json.loads(self.content)


class _Script:
    """A wire answering from a list of statuses and a database whose fingerprint changes when told."""

    def __init__(self, statuses: list[int], changes_after: set[int]) -> None:
        self.statuses, self.changes_after, self.sent, self.state = statuses, changes_after, 0, 0

    def send(self, service: str, operation: str, body: bytes, cbor: bool) -> _Answer:
        if self.sent in self.changes_after:
            self.state += 1
        self.sent += 1
        return _Answer(self.statuses[self.sent - 1])

    def take(self) -> str:
        return str(self.state)


def _requests(*refused: bool) -> list[Request]:
    return [Request("rekognition", "TagResource", b"{}", False, r, f"r{i}") for i, r in enumerate(refused)]


@pytest.mark.parametrize(
    ("statuses", "refused", "changes_after", "expected"),
    [
        ([400, 400, 200, 400], (True, True, False, False), set(), []),
        ([400, 400], (True, True), {1}, ["a refused request changed state"]),  # within the refused run
        ([200, 400], (False, False), {1}, ["a refused request changed state"]),  # after an accepted one
        ([200, 200], (False, False), {0, 1}, []),  # accepted requests may change state
        ([200], (True,), set(), ["(accepted) for a forbidden request"]),
        ([500, 501], (False, False), set(), ["500 from"]),  # 501 (not implemented) is an answer
    ],
)
def test_the_fuzzer_reports_what_it_must(statuses, refused, changes_after, expected):
    script = _Script(statuses, changes_after)
    fuzzer = Fuzzer(script, script)  # type: ignore[arg-type]
    fuzzer.run(_requests(*refused))
    assert len(fuzzer.problems) == len(expected), fuzzer.problems
    assert all(e in p for e, p in zip(expected, fuzzer.problems, strict=True)), fuzzer.problems
