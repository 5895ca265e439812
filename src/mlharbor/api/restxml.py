"""The AWS rest-xml protocol (S3; any service whose model says ``"protocol": "rest-xml"``), both ways.

A request names its operation by method, path and query (``PUT /{Bucket}/{Key+}?partNumber=1&uploadId=u``);
its input is spread over the URI labels, the query string, headers (``x-amz-meta-*`` maps by prefix) and an
XML (or raw) payload. ``Router`` finds the operation, ``parse_request`` reads the input back into the dict a
boto3 user passed, typed, so the ordinary model validation (``shapes.parse_input(..., Wire.QUERY)``) runs on
it. ``serialize_response`` puts an output on the wire the way botocore's RestXMLParser reads it, and
``error_body`` writes S3's ``<Error>`` document.

Everything is read from the botocore model; nothing here knows S3. Per-operation and per-shape work (route
tables, readers, writers) is built once and cached: this runs on every request.
"""

from __future__ import annotations

import base64
import binascii
import email.errors
import email.header
import email.utils
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any
from urllib.parse import unquote, unquote_to_bytes
from xml.etree.ElementTree import Element, ParseError
from xml.sax.saxutils import escape

import defusedxml.ElementTree as SafeElementTree
from botocore.model import OperationModel, ServiceModel, Shape, StructureShape
from botocore.utils import is_json_value_header
from defusedxml import DefusedXmlException

from mlharbor import errors

XML_CONTENT_TYPE = b"application/xml"
PROLOG = '<?xml version="1.0" encoding="UTF-8"?>\n'

# botocore's 'integer' is a Java int and 'long' a Java long: a value past them is refused here, naming the
# parameter, instead of surfacing later as a generic serialization error.
_INTEGER_BITS = {"integer": 32, "long": 64}
_INTEGER = re.compile(r"[+-]?[0-9]{1,20}")  # longer is out of any range (and int() of 5,000 digits raises)
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# What XML 1.0 can carry: a string with anything else could never be sent back in a response.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# A header value that can go out as it is: latin-1 octets, no control characters, no whitespace at either end
# (h11 refuses to send anything else, and a CR/LF would split the header).
_FIELD_VALUE = re.compile(r"(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_ENCODED_WORDS = re.compile(r"=\?[^?\s]+\?[BbQq]\?[^?\s]*\?=(?:\s+=\?[^?\s]+\?[BbQq]\?[^?\s]*\?=)*")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class XmlCharacterError(ValueError):
    """A response string holds a character XML 1.0 cannot carry (U+0000, most C0 controls, lone
    surrogates, U+FFFE/U+FFFF). The caller decides what to do (e.g. S3 lists need ``EncodingType=url``)."""


# --- Routing ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Route:
    operation: OperationModel
    first_key: str | None  # the first literal query key of requestUri ('uploads' in '?uploads')
    keys: frozenset[str]  # query keys that must be there: literal ones without a value, required members
    pairs: frozenset[tuple[str, str]]  # literal query keys with their value: ('list-type', '2')
    headers: frozenset[str]  # required header members, lower-case
    specific: int  # how many of those: the more, the more specific the route
    optional_query: frozenset[str]
    optional_headers: frozenset[str]
    rank: tuple[int, int]  # (not deprecated, earlier in the model): ties between identical requests

    def accepts(self, keys: set[str], pairs: set[tuple[str, str]], headers: Mapping[str, object]) -> bool:
        return self.keys <= keys and self.pairs <= pairs and self.headers <= headers.keys()


@dataclass(frozen=True, slots=True)
class _Path:
    """One requestUri path: segments before the greedy label (all of them if none), and after it. A segment
    is a literal or None (a label, named in ``labels`` in segment order)."""

    head: tuple[str | None, ...]
    tail: tuple[str | None, ...]
    labels: tuple[str, ...]
    greedy: bool
    literals: int
    # Routes without literal query keys, and the others under their first key: a request is only checked
    # against routes whose first key it has (GET /{Bucket} alone has ~50 routes).
    plain: list[_Route]
    keyed: dict[str, list[_Route]]

    def add(self, route: _Route) -> None:
        if route.first_key is None:
            self.plain.append(route)
        else:
            self.keyed.setdefault(route.first_key, []).append(route)

    def candidates(self, keys: set[str]) -> list[_Route]:
        found = list(self.plain)
        for key in keys:
            found.extend(self.keyed.get(key, ()))
        return found

    def bind(self, segments: list[str]) -> list[str] | None:
        """The raw (still percent-encoded) label values, or None when the path does not fit."""
        head, tail = self.head, self.tail
        if self.greedy:
            cut = len(segments) - len(tail)
            middle = "/".join(segments[len(head) : cut])
            if cut < len(head) or not middle:
                return None
        elif len(segments) != len(head):
            return None
        values: list[str] = []
        for literal, segment in zip(head, segments, strict=False):
            if not _segment_fits(literal, segment, values):
                return None
        if self.greedy:
            values.append(middle)
            for literal, segment in zip(tail, segments[cut:], strict=True):
                if not _segment_fits(literal, segment, values):
                    return None
        return values


def _segment_fits(literal: str | None, segment: str, values: list[str]) -> bool:
    if literal is None:
        if not segment:
            return False  # a label is never empty: '//k' has no bucket
        values.append(segment)
        return True
    return segment == literal or ("%" in segment and unquote(segment) == literal)


class Router:
    """Finds the operation a rest-xml request calls, from each operation's http trait (method, requestUri with
    {Label} / {Label+} and literal query keys like '/{Bucket}?uploads' or '?list-type=2')."""

    def __init__(self, model: ServiceModel) -> None:
        paths: dict[tuple[str, str], _Path] = {}
        for order, name in enumerate(model.operation_names):
            op = model.operation_model(name)
            path_part, _, query_part = op.http.get("requestUri", "/").partition("?")
            # A botocore S3 client rewrites its model's requestUri in place on first use ('/{Bucket}/{Key+}'
            # becomes '/{Key+}': its endpoint rules add the bucket), keeping the path as authPath. No model
            # file has authPath, so where it is, it is the path clients really send (less the '/' botocore
            # appends when nothing was left of the path).
            auth_path = op.http.get("authPath")
            if auth_path is not None:
                path_part = auth_path[:-1] if auth_path.endswith("/") and not path_part else auth_path
            key = (op.http.get("method", "POST"), path_part)
            if key not in paths:
                paths[key] = _parse_template(path_part)
            paths[key].add(_route(op, query_part, order))
        # Candidate paths per method and segment count; counts past ``cap`` only fit greedy paths, so
        # they share the last slot and a lookup is one index.
        self._tables: dict[str, list[list[_Path]]] = {}
        by_method: dict[str, list[_Path]] = {}
        for (method, _), path in paths.items():
            by_method.setdefault(method, []).append(path)
        for method, method_paths in by_method.items():
            cap = 1 + max(len(p.head) + len(p.tail) + p.greedy for p in method_paths)
            self._tables[method] = [
                [p for p in method_paths if _fits_count(p, count)] for count in range(cap + 1)
            ]

    def match(
        self, method: str, raw_path: str, query: list[tuple[str, str]], headers: dict[str, list[str]]
    ) -> tuple[OperationModel, dict[str, str]] | None:
        """raw_path is the request path still percent-encoded (ASGI raw_path decoded as latin-1, no query);
        query is the decoded (name, value) pairs (parse_qsl with keep_blank_values=True); headers maps
        lower-case names to all values. Returns the operation and its uri labels percent-decoded ({"Bucket":
        "b", "Key": "a b/c"}), or None when no operation fits.

        Octets left unescaped in the path are read as UTF-8 like the escapes; labels that are not UTF-8 raise
        errors.InvalidArgument (the request is addressed to something, but nothing can be named so)."""
        table = self._tables.get(method)
        if table is None or not raw_path.startswith("/"):
            return None
        segments = raw_path[1:].split("/") if len(raw_path) > 1 else []
        keys = {name for name, _ in query}
        pairs = set(query)
        found = _best(table, segments, keys, pairs, headers)
        if found is None and segments and segments[-1] == "":
            # '/b/' is the bucket (curl users add the slash; botocore never sends an empty key).
            found = _best(table, segments[:-1], keys, pairs, headers)
        if found is None:
            return None
        path, route, values = found
        try:
            labels = {name: _decode_label(value) for name, value in zip(path.labels, values, strict=True)}
        except UnicodeDecodeError:
            raise errors.InvalidArgument("Couldn't parse the specified URI.") from None
        return route.operation, labels


def _decode_label(raw: str) -> str:
    # A path decoded as latin-1 (ASGI raw_path bytes) may hold octets a client did not percent-encode (curl
    # sends UTF-8 as it is): they are UTF-8 like the escapes. A str already past latin-1 is decoded as text.
    try:
        octets = raw.encode("latin-1")
    except UnicodeEncodeError:
        return unquote(raw, errors="strict")
    return unquote_to_bytes(octets).decode("utf-8")


def _parse_template(path: str) -> _Path:
    head: list[str | None] = []
    tail: list[str | None] = []
    labels: list[str] = []
    greedy = False
    for segment in path[1:].split("/") if len(path) > 1 else []:
        if segment.startswith("{") and segment.endswith("}"):
            label = segment[1:-1]
            if label.endswith("+"):
                labels.append(label[:-1])
                greedy = True
                continue
            labels.append(label)
            (tail if greedy else head).append(None)
        else:
            (tail if greedy else head).append(segment)
    literals = sum(s is not None for s in head) + sum(s is not None for s in tail)
    return _Path(tuple(head), tuple(tail), tuple(labels), greedy, literals, [], {})


def _fits_count(path: _Path, count: int) -> bool:
    fixed = len(path.head) + len(path.tail)
    return count > fixed if path.greedy else count == fixed


def _route(op: OperationModel, query_part: str, order: int) -> _Route:
    keys: set[str] = set()
    pairs: set[tuple[str, str]] = set()
    first_key = None
    for item in query_part.split("&") if query_part else []:
        name, eq, value = item.partition("=")
        first_key = first_key or name
        if eq:
            pairs.add((name, value))
        else:
            keys.add(name)
    literal_keys = keys | {name for name, _ in pairs}
    shape = op.input_shape
    headers: set[str] = set()
    optional_query: set[str] = set()
    optional_headers: set[str] = set()
    for name, member in shape.members.items() if shape is not None else ():
        location = member.serialization.get("location")
        wire = member.serialization.get("name", name)
        required = name in shape.required_members  # type: ignore[union-attr]
        if location == "querystring" and member.type_name != "map" and wire not in literal_keys:
            (keys if required else optional_query).add(wire)
        elif location == "header":
            (headers if required else optional_headers).add(wire.lower())
    return _Route(
        op,
        first_key,
        frozenset(keys),
        frozenset(pairs),
        frozenset(headers),
        len(keys) + len(pairs) + len(headers),
        frozenset(optional_query),
        frozenset(optional_headers),
        (0 if op.deprecated else 1, -order),
    )


def _best(
    table: list[list[_Path]],
    segments: list[str],
    keys: set[str],
    pairs: set[tuple[str, str]],
    headers: Mapping[str, object],
) -> tuple[_Path, _Route, list[str]] | None:
    """The most specific fit: literal path segments, then literal query keys and required query/header
    members (all present), then not deprecated, then optional members present, then model order."""
    best: tuple[_Path, _Route, list[str]] | None = None
    best_score: tuple[int, ...] = ()
    for path in table[min(len(segments), len(table) - 1)]:
        values = path.bind(segments)
        if values is None:
            continue
        for route in path.candidates(keys):
            if not route.accepts(keys, pairs, headers):
                continue
            optional = len(route.optional_query.intersection(keys)) + len(
                route.optional_headers.intersection(headers)
            )
            score = (path.literals, route.specific, route.rank[0], optional, route.rank[1])
            if score > best_score:
                best, best_score = (path, route, values), score
    return best


# --- Requests -----------------------------------------------------------------------------------------
# A text reader turns one header/query/label value into the member's type; ``name`` is the wire name, for
# the error message.
TextReader = Callable[[str, str], Any]


def _invalid(name: str, text: str, what: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"Provided {name} {what}", ArgumentName=name, ArgumentValue=text)


def _parse_timestamp(text: str, fmt: str) -> datetime | None:
    """The declared format first, then the others (clients differ; all three are unambiguous)."""
    for kind in (fmt, "rfc822", "iso8601", "unixtimestamp"):
        try:
            if kind == "unixtimestamp":
                if re.fullmatch(r"[+-]?[0-9]+(?:\.[0-9]+)?", text):
                    return datetime.fromtimestamp(float(text), tz=UTC)
            elif kind == "rfc822":
                parsed = email.utils.parsedate_to_datetime(text)
                return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
            else:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
                return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        except (ValueError, TypeError, OverflowError, OSError, IndexError):
            continue
    return None


def _scalar_reader(shape: Shape, default_format: str) -> TextReader:
    kind = shape.type_name
    if kind in _INTEGER_BITS:
        bound = 1 << (_INTEGER_BITS[kind] - 1)

        def read_integer(text: str, name: str) -> int:
            stripped = text.strip()
            if _INTEGER.fullmatch(stripped) is None or not -bound <= int(stripped) < bound:
                raise _invalid(name, text, "not an integer or within integer range")
            return int(stripped)

        return read_integer
    if kind == "boolean":

        def read_boolean(text: str, name: str) -> bool:
            lowered = text.strip().lower()
            if lowered not in ("true", "false"):
                raise _invalid(name, text, "not a boolean (true or false)")
            return lowered == "true"

        return read_boolean
    if kind in ("float", "double"):

        def read_number(text: str, name: str) -> float:
            stripped = text.strip()
            number = float(stripped) if _FLOAT.fullmatch(stripped) else math.nan
            if not math.isfinite(number):
                raise _invalid(name, text, "not a finite number")
            return number

        return read_number
    if kind == "timestamp":
        fmt = shape.serialization.get("timestampFormat", default_format).lower()

        def read_timestamp(text: str, name: str) -> datetime:
            parsed = _parse_timestamp(text.strip(), fmt)
            if parsed is None:
                raise _invalid(name, text, f"not a valid date ({fmt})")
            return parsed

        return read_timestamp
    if kind == "blob":

        def read_blob(text: str, name: str) -> bytes:
            try:
                return base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise _invalid(name, text, "not valid base64") from None

        return read_blob
    return lambda text, name: text


def _json_header(text: str, name: str) -> str:
    # A jsonvalue header is base64 of a JSON document; the member is a string, so the handler gets the JSON
    # text (checked here), which parse_input accepts as the string it is.
    try:
        document = base64.b64decode(text, validate=True).decode("utf-8")
        json.loads(document)
    except (binascii.Error, ValueError):
        raise _invalid(name, text, "not base64-encoded JSON") from None
    return document


def _from_rfc2047(text: str) -> str:
    """S3 decodes RFC 2047 encoded words in header values (and sends values latin-1 cannot carry so, see
    serialize_response): a value read back from a response and sent again stays the same value."""
    if "=?" not in text or _ENCODED_WORDS.fullmatch(text) is None:
        return text
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except (email.errors.HeaderParseError, LookupError, UnicodeError, ValueError):
        return text


def _header_reader(shape: Shape) -> TextReader:
    if is_json_value_header(shape):
        return _json_header
    if shape.type_name == "list":
        item = _header_reader(shape.member)  # type: ignore[attr-defined]
        return lambda text, name: [item(part, name) for part in _split_header_list(text)]
    if shape.type_name == "string":
        return lambda text, name: _from_rfc2047(text)
    return _scalar_reader(shape, "rfc822")


def _split_header_list(text: str) -> list[str]:
    """Comma-separated items; botocore quotes an item holding ',' or '"' (backslash-escaping '"')."""
    items = []
    for match in re.finditer(r'\s*("(?:[^"\\]|\\.)*"|[^,]*?)\s*(?:,|$)', text):
        item = match.group(1)
        if item.startswith('"') and item.endswith('"') and len(item) >= 2:
            item = re.sub(r"\\(.)", r"\1", item[1:-1])
        items.append(item)
        if match.end() >= len(text):
            break
    return [item for item in items if item] if text.strip() else []


@dataclass(frozen=True, slots=True)
class _Payload:
    member: str | None  # None: the input's body members, not one payload member
    kind: str  # "xml", "blob" or "string"
    root: str
    reader: Callable[[Element], Any] | None
    required: bool


@dataclass(frozen=True, slots=True)
class _InputPlan:
    labels: tuple[tuple[str, str, TextReader], ...]  # (label, member, reader)
    query: tuple[tuple[str, str, TextReader, bool], ...]  # (key, member, reader of one value, list member)
    query_map: tuple[str, bool, frozenset[str]] | None  # (member, values are lists, keys claimed elsewhere)
    headers: tuple[tuple[str, str, TextReader, str], ...]  # (lower-case name, member, reader, model name)
    prefixed: tuple[tuple[str, str], ...]  # (lower-case prefix, member): 'headers' maps
    payload: _Payload | None


@cache
def _input_plan(op: OperationModel) -> _InputPlan:
    shape = op.input_shape
    labels, query, headers, prefixed = [], [], [], []
    query_map = None
    payload = None
    if shape is not None:
        literal_keys = {
            item.partition("=")[0] for item in op.http.get("requestUri", "").partition("?")[2].split("&")
        }
        body_members = False
        for name, member in shape.members.items():
            location = member.serialization.get("location")
            wire = member.serialization.get("name", name)
            if location == "uri":
                labels.append((wire, name, _scalar_reader(member, "iso8601")))
            elif location == "querystring" and member.type_name == "map":
                claimed = frozenset(
                    literal_keys | {m.serialization.get("name", n) for n, m in shape.members.items()}
                )
                query_map = (name, member.value.type_name == "list", claimed)  # type: ignore[attr-defined]
            elif location == "querystring":
                is_list = member.type_name == "list"
                item = member.member if is_list else member  # type: ignore[attr-defined]
                query.append((wire, name, _scalar_reader(item, "iso8601"), is_list))
            elif location == "header":
                headers.append((wire.lower(), name, _header_reader(member), wire))
            elif location == "headers":
                prefixed.append((wire.lower(), name))
            elif location is None:
                body_members = True
        payload = _payload_plan(shape, body_members)
    return _InputPlan(tuple(labels), tuple(query), query_map, tuple(headers), tuple(prefixed), payload)


def _payload_plan(shape: StructureShape, body_members: bool) -> _Payload | None:
    name = shape.serialization.get("payload")
    if name is not None:
        member = shape.members[name]
        required = name in shape.required_members
        if member.type_name in ("blob", "string"):
            return _Payload(name, member.type_name, "", None, required)
        root = member.serialization.get("name", name)
        return _Payload(name, "xml", root, _xml_reader(member), required)
    if body_members:
        # No payload trait: the body members travel in one document named after the input shape.
        return _Payload(None, "xml", shape.serialization.get("name", shape.name), _xml_reader(shape), False)
    return None


def parse_request(
    op: OperationModel,
    labels: dict[str, str],
    query: list[tuple[str, str]],
    headers: dict[str, list[str]],
    body: bytes | None,
) -> dict[str, Any]:
    """The operation's input as the dict a boto3 user passed, accepted by
    ``shapes.parse_input(op.input_shape, result, Wire.QUERY)``.

    Read from: uri labels; querystring members (typed; lists from repeated keys; a key given twice otherwise
    keeps its last value); header members (integer/long, boolean "true"/"false", timestamps in the member's
    timestampFormat, default RFC 1123 for headers and ISO 8601 for the query, but any of RFC 1123, ISO 8601
    and epoch seconds is read; list headers comma-separated; a header given twice is its values joined by
    ','); ``headers``-location maps by prefix (x-amz-meta-* -> Metadata, prefix stripped, keys lower-case as
    HTTP names are); and the payload: a structure payload from the XML body (nested structures, wrapped and
    flattened lists and maps, locationName, xmlAttribute; namespaces ignored), a blob payload as bytes, a
    string payload decoded as UTF-8.

    body is None when the caller streams the payload itself (PutObject's Body): the payload member is then
    absent. An empty body leaves an XML or string payload absent (MalformedXML when the model requires it);
    a blob payload is then b"". String headers that are RFC 2047 encoded words are decoded (S3 does; see
    header_value). A jsonvalue header (base64 JSON) gives the JSON text, the member being a string.

    Unparseable header/query/label values -> errors.InvalidArgument naming the parameter (ArgumentName,
    ArgumentValue); malformed XML, a DTD (so any entity expansion), the wrong root or a value of the wrong
    type in the XML -> errors.MalformedXML.
    """
    plan = _input_plan(op)
    params: dict[str, Any] = {}
    for label, member, reader in plan.labels:
        if label in labels:
            params[member] = reader(labels[label], label)
    if plan.query or plan.query_map:
        values: dict[str, list[str]] = {}
        for key, value in query:
            values.setdefault(key, []).append(value)
        for key, member, reader, is_list in plan.query:
            given = values.get(key)
            if given is not None:
                params[member] = [reader(v, key) for v in given] if is_list else reader(given[-1], key)
        if plan.query_map is not None:
            member, lists, claimed = plan.query_map
            extra = {k: (v if lists else v[-1]) for k, v in values.items() if k not in claimed}
            if extra:
                params[member] = extra
    for name, member, reader, spelled in plan.headers:
        given = headers.get(name)
        if given is not None:
            params[member] = reader(",".join(given), spelled)
    for prefix, member in plan.prefixed:
        found = {
            name[len(prefix) :]: _from_rfc2047(",".join(given))
            for name, given in headers.items()
            if name.startswith(prefix) and len(name) > len(prefix)
        }
        if found:
            params[member] = found
    if plan.payload is not None and body is not None:
        _read_payload(plan.payload, body, params)
    return params


def _read_payload(payload: _Payload, body: bytes, params: dict[str, Any]) -> None:
    if payload.kind == "blob":
        params[payload.member] = bytes(body)  # type: ignore[index]
        return
    if not body.strip():
        if payload.required and payload.kind == "xml":
            raise errors.MalformedXML()
        return
    if payload.kind == "string":
        try:
            params[payload.member] = bytes(body).decode("utf-8")  # type: ignore[index]
        except UnicodeDecodeError:
            raise errors.InvalidArgument("The request body is not UTF-8 text") from None
        return
    try:
        # defusedxml: no DTDs at all, so no entity expansion (billion laughs) and no external entities.
        root = SafeElementTree.fromstring(body, forbid_dtd=True)
    except (ParseError, DefusedXmlException, ValueError):
        raise errors.MalformedXML() from None
    if _local(root.tag) != payload.root:
        raise errors.MalformedXML()
    try:
        value = payload.reader(root)  # type: ignore[misc]
    except (RecursionError, _BadXmlValue):
        raise errors.MalformedXML() from None
    if payload.member is None:
        params.update(value)
    else:
        params[payload.member] = value


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]  # namespaces are ignored on input: '{uri}Delete' is Delete


class _BadXmlValue(Exception):
    pass


def _xml_key(name: str, member: Shape) -> str:
    # A flattened list whose member has a locationName is spelled with that name (as botocore does).
    if member.type_name == "list" and member.serialization.get("flattened"):
        named = member.member.serialization.get("name")  # type: ignore[attr-defined]
        if named:
            return named
    return member.serialization.get("name", name)


@cache
def _xml_reader(shape: Shape) -> Callable[[Element], Any]:
    kind = shape.type_name
    if kind == "structure":
        return lambda element: _read_structure(shape, element)  # type: ignore[arg-type]
    if kind == "list":
        item_tag = shape.member.serialization.get("name", "member")  # type: ignore[attr-defined]
        item = _xml_reader(shape.member)  # type: ignore[attr-defined]
        return lambda element: [item(child) for child in element if _local(child.tag) == item_tag]
    if kind == "map":
        return lambda element: _read_entries(shape, [c for c in element if _local(c.tag) == "entry"])
    scalar = _scalar_reader(shape, "iso8601")
    strip = kind != "string"

    def read_scalar(element: Element) -> Any:
        text = element.text or ""
        try:
            return scalar(text.strip() if strip else text, _local(element.tag))
        except errors.InvalidArgument:
            raise _BadXmlValue from None

    return read_scalar


# (member, key in the XML, how: "element", "list", "map" (flattened) or "attribute", reader)
_Field = tuple[str, str, str, Callable[[Element], Any] | None]


@cache
def _structure_fields(shape: StructureShape) -> tuple[_Field, ...]:
    fields = []
    for name, member in shape.members.items():
        if member.serialization.get("location"):
            continue  # headers, query and labels are not in the body
        if member.serialization.get("xmlAttribute"):
            fields.append((name, member.serialization.get("name", name), "attribute", None))
        elif member.type_name in ("list", "map") and member.serialization.get("flattened"):
            how = member.type_name
            reader = _xml_reader(member.member) if how == "list" else None  # type: ignore[attr-defined]
            fields.append((name, _xml_key(name, member), how, reader))
        else:
            fields.append((name, _xml_key(name, member), "element", _xml_reader(member)))
    return tuple(fields)


def _read_structure(shape: StructureShape, element: Element) -> dict[str, Any]:
    children: dict[str, list[Element]] = {}
    for child in element:
        children.setdefault(_local(child.tag), []).append(child)
    value: dict[str, Any] = {}
    for name, key, how, reader in _structure_fields(shape):
        if how == "attribute":
            local = key.rpartition(":")[2]  # 'xsi:type' is '{http://www.w3.org/...}type' once parsed
            for attribute, text in element.attrib.items():
                if _local(attribute) == local:
                    value[name] = text
            continue
        found = children.get(key)
        if not found:
            continue
        try:
            if how == "element":
                value[name] = reader(found[0])  # type: ignore[misc]
            elif how == "list":
                value[name] = [reader(item) for item in found]  # type: ignore[misc]
            else:
                value[name] = _read_entries(shape.members[name], found)
        except _BadXmlValue:
            raise errors.MalformedXML() from None
    return value


def _read_entries(shape: Any, entries: list[Element]) -> dict[str, Any]:
    key_tag = shape.key.serialization.get("name", "key")
    value_tag = shape.value.serialization.get("name", "value")
    key_reader, value_reader = _xml_reader(shape.key), _xml_reader(shape.value)
    result: dict[str, Any] = {}
    for entry in entries:
        key = next((c for c in entry if _local(c.tag) == key_tag), None)
        item = next((c for c in entry if _local(c.tag) == value_tag), None)
        if key is None:
            raise _BadXmlValue
        result[key_reader(key)] = None if item is None else value_reader(item)
    return result


# --- Responses ----------------------------------------------------------------------------------------
def _utc(value: Any) -> datetime:
    if not isinstance(value, datetime):
        return datetime.fromtimestamp(float(value), tz=UTC)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def format_timestamp(value: Any, fmt: str) -> str:
    """``rfc822``: ``Sun, 06 Dec 2026 11:00:00 GMT`` (English names whatever the locale); ``iso8601``:
    ``2026-12-01T22:05:46.000Z``; ``unixTimestamp``: epoch seconds."""
    when = _utc(value)
    fmt = fmt.lower()
    if fmt == "rfc822":
        return (
            f"{_DAYS[when.weekday()]}, {when.day:02d} {_MONTHS[when.month - 1]} {when.year:04d} "
            f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} GMT"
        )
    if fmt == "unixtimestamp":
        seconds = when.timestamp()
        return str(int(seconds)) if seconds.is_integer() else repr(round(seconds, 3))
    return (
        f"{when.year:04d}-{when.month:02d}-{when.day:02d}T{when.hour:02d}:{when.minute:02d}:"
        f"{when.second:02d}.{when.microsecond // 1000:03d}Z"
    )


def _number(value: Any) -> str:
    number = float(value)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    return repr(number)


TextWriter = Callable[[Any], str]


def _text_writer(shape: Shape, default_format: str) -> TextWriter:
    kind = shape.type_name
    if kind == "boolean":
        return lambda value: "true" if value else "false"
    if kind in _INTEGER_BITS:
        return lambda value: str(int(value))
    if kind in ("float", "double"):
        return _number
    if kind == "timestamp":
        fmt = shape.serialization.get("timestampFormat", default_format)
        return lambda value: format_timestamp(value, fmt)
    if kind == "blob":
        return lambda value: base64.b64encode(bytes(value)).decode("ascii")
    return str


def _header_writer(shape: Shape) -> TextWriter:
    if is_json_value_header(shape):
        return lambda value: base64.b64encode(json.dumps(value, separators=(",", ":")).encode()).decode()
    if shape.type_name == "list":
        item = _header_writer(shape.member)  # type: ignore[attr-defined]
        return lambda value: ",".join(_quote_list_item(item(v)) for v in value if v is not None)
    return _text_writer(shape, "rfc822")


def _quote_list_item(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"' if '"' in text or "," in text else text


def header_value(text: str) -> bytes:
    """A header value as bytes: as it is when latin-1 can carry it as an HTTP field value, else (characters
    past U+00FF, control characters such as CR/LF, whitespace at either end) as one RFC 2047 encoded word of
    its UTF-8, ``=?UTF-8?B?...?=`` — what S3 does for such metadata, which clients can decode
    (``email.header.decode_header``), and parse_request decodes back."""
    if _FIELD_VALUE.fullmatch(text):
        return text.encode("latin-1")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"Header value {text!r} cannot be encoded as UTF-8") from None
    return b"=?UTF-8?B?" + base64.b64encode(data) + b"?="


@dataclass(frozen=True, slots=True)
class _OutputPlan:
    members: frozenset[str]
    status: str | None  # the member located in statusCode
    headers: tuple[tuple[str, bytes, TextWriter], ...]  # (member, lower-case name, writer)
    prefixed: tuple[tuple[str, str], ...]  # (member, lower-case prefix)
    payload: str | None  # member sent as the body
    raw_payload: bool  # the payload is a blob/string/event stream, passed through
    body: bool  # without a payload, whether the shape has members for an XML body


@cache
def _output_plan(shape: StructureShape) -> _OutputPlan:
    status = None
    headers, prefixed = [], []
    body = False
    for name, member in shape.members.items():
        location = member.serialization.get("location")
        wire = member.serialization.get("name", name)
        if location == "statusCode":
            status = name
        elif location == "header":
            headers.append((name, wire.lower().encode("latin-1"), _header_writer(member)))
        elif location == "headers":
            prefixed.append((name, wire.lower()))
        elif location is None:
            body = True
    payload = shape.serialization.get("payload")
    raw = payload is not None and (
        shape.members[payload].type_name in ("blob", "string")
        or bool(shape.members[payload].serialization.get("eventstream"))
    )
    return _OutputPlan(frozenset(shape.members), status, tuple(headers), tuple(prefixed), payload, raw, body)


def serialize_response(
    op: OperationModel, result: dict[str, Any], *, root: str | None = None
) -> tuple[int, list[tuple[bytes, bytes]], Any]:
    """(status, headers, body) for a handler's result (unset members None or absent).

    status: the op's http responseCode (default 200), or the member located in statusCode.

    Headers: lower-case names, latin-1 bytes; timestamps RFC 1123 (``Sun, 06 Dec 2026 11:00:00 GMT``) unless
    the member's timestampFormat says otherwise; booleans 'true'/'false'; ``headers`` maps with their
    prefix, names lower-cased (a key that is not an HTTP token: ValueError). A value latin-1 cannot carry as
    an HTTP field value (characters past U+00FF, control characters such as CR/LF, whitespace at either end)
    goes out as one RFC 2047 encoded word of its UTF-8, ``=?UTF-8?B?...?=``, as S3 does for metadata: see
    header_value.

    Body: a blob/string/event-stream payload is the value as given (bytes, or any iterator/async iterator
    the caller streams, untouched; a str is encoded UTF-8; b"" if absent). A structure payload is its XML
    document, rooted at the member's locationName, else its name. Without a payload, the body members form
    one document rooted at ``root`` if given, else the output shape's locationName, else the shape name
    (botocore's JSON models have lost Smithy's xmlName on most outputs: S3's ListObjectsV2Output says
    nothing of ``ListBucketResult``, so such a service passes ``root``); an output shape without body members
    gives b"". The root's xmlns: the shape's xmlNamespace, else the service's (service_namespace). An XML
    body comes with ``content-type: application/xml``.

    A key the output shape does not have is a handler bug: ValueError. A string XML 1.0 cannot carry:
    XmlCharacterError (a ValueError); the caller decides.
    """
    shape = op.output_shape
    status = int(op.http.get("responseCode", 200))
    result = result or {}
    if shape is None:
        if result:
            raise ValueError(f"{op.name} has no output, got {sorted(result)}")
        return status, [], b""
    plan = _output_plan(shape)
    unknown = result.keys() - plan.members
    if unknown:
        raise ValueError(f"{shape.name} has no member {sorted(unknown)[0]!r}")
    headers: list[tuple[bytes, bytes]] = []
    if plan.status is not None and result.get(plan.status) is not None:
        status = int(result[plan.status])
    for member, name, writer in plan.headers:
        value = result.get(member)
        if value is not None:
            headers.append((name, header_value(writer(value))))
    for member, prefix in plan.prefixed:
        for key, value in (result.get(member) or {}).items():
            if not _TOKEN.fullmatch(key):
                raise ValueError(f"{member} key {key!r} is not an HTTP header name")
            if value is not None:
                headers.append(((prefix + key).lower().encode("ascii"), header_value(str(value))))
    namespace = service_namespace(op.service_model)
    if plan.payload is not None:
        value = result.get(plan.payload)
        if plan.raw_payload:
            return status, headers, value.encode("utf-8") if isinstance(value, str) else (value or b"")
        if value is None:
            return status, headers, b""
        member = shape.members[plan.payload]
        document = _document(member, value, member.serialization.get("name", plan.payload), namespace)
    elif plan.body:
        tag = root or shape.serialization.get("name", shape.name)
        document = _document(
            shape, {k: v for k, v in result.items() if k not in _located(shape)}, tag, namespace
        )
    else:
        return status, headers, b""
    headers.append((b"content-type", XML_CONTENT_TYPE))
    return status, headers, document


@cache
def _located(shape: StructureShape) -> frozenset[str]:
    return frozenset(n for n, m in shape.members.items() if m.serialization.get("location"))


@cache
def service_namespace(model: ServiceModel) -> str | None:
    """The service's XML namespace: its metadata's xmlNamespace, else the one namespace (no prefix) its
    shapes declare. botocore's JSON keeps Smithy's service-level @xmlNamespace only on input payloads (S3:
    http://s3.amazonaws.com/doc/2006-03-01/), yet the service answers with it on every document."""
    declared = model.metadata.get("xmlNamespace")
    if declared:
        return declared if isinstance(declared, str) else declared.get("uri")
    found: set[str] = set()
    for name in model.operation_names:
        op = model.operation_model(name)
        for shape in (op.input_shape, op.output_shape):
            for candidate in [shape, *shape.members.values()] if shape is not None else []:
                ns = candidate.serialization.get("xmlNamespace")
                if isinstance(ns, dict) and not ns.get("prefix"):
                    found.add(ns["uri"])
                elif isinstance(ns, str):
                    found.add(ns)
    return found.pop() if len(found) == 1 else None


def _document(shape: Shape, value: Any, tag: str, namespace: str | None) -> bytes:
    parts = [PROLOG]
    ns = _namespace_attribute(shape) or (f' xmlns="{_attribute(namespace)}"' if namespace else "")
    if shape.type_name == "structure":
        _write_structure(shape, value, tag, parts, ns)  # type: ignore[arg-type]
    else:
        _xml_writer(shape)(value, tag, parts)
    return "".join(parts).encode("utf-8")


def _namespace_attribute(shape: Shape) -> str:
    ns = shape.serialization.get("xmlNamespace")
    if isinstance(ns, str):
        return f' xmlns="{_attribute(ns)}"'
    if isinstance(ns, dict):
        name = f"xmlns:{ns['prefix']}" if ns.get("prefix") else "xmlns"
        return f' {name}="{_attribute(ns["uri"])}"'
    return ""


def _xml_text(text: str) -> str:
    bad = _NOT_XML.search(text)
    if bad is not None:
        raise XmlCharacterError(f"U+{ord(bad.group()):04X} cannot be sent in XML 1.0 (in {text[:80]!r})")
    # \r would reach the reader as \n (XML normalises line ends): send it as a character reference.
    return escape(text).replace("\r", "&#13;")


def _attribute(text: str) -> str:
    return _xml_text(text).replace('"', "&quot;").replace("\n", "&#10;").replace("\t", "&#9;")


Writer = Callable[[Any, str, list[str]], None]


@cache
def _xml_writer(shape: Shape) -> Writer:
    kind = shape.type_name
    ns = _namespace_attribute(shape)
    if kind == "structure":
        return lambda value, tag, parts: _write_structure(shape, value, tag, parts, ns)  # type: ignore[arg-type]
    if kind == "list":
        item_tag = shape.member.serialization.get("name", "member")  # type: ignore[attr-defined]

        def write_list(value: Any, tag: str, parts: list[str]) -> None:
            item = _xml_writer(shape.member)  # type: ignore[attr-defined]
            parts.append(f"<{tag}{ns}>")
            for element in value:
                item(element, item_tag, parts)
            parts.append(f"</{tag}>")

        return write_list
    if kind == "map":

        def write_map(value: Any, tag: str, parts: list[str]) -> None:
            parts.append(f"<{tag}{ns}>")
            for key, element in value.items():
                parts.append("<entry>")
                _write_entry(shape, key, element, parts)
                parts.append("</entry>")
            parts.append(f"</{tag}>")

        return write_map
    text = _text_writer(shape, "iso8601")
    if kind in ("string", "character"):
        return lambda value, tag, parts: parts.append(f"<{tag}{ns}>{_xml_text(str(value))}</{tag}>")
    return lambda value, tag, parts: parts.append(f"<{tag}{ns}>{text(value)}</{tag}>")


def _write_entry(shape: Any, key: Any, value: Any, parts: list[str]) -> None:
    _xml_writer(shape.key)(key, shape.key.serialization.get("name", "key"), parts)
    if value is not None:
        _xml_writer(shape.value)(value, shape.value.serialization.get("name", "value"), parts)


@dataclass(frozen=True, slots=True)
class _StructureWriter:
    names: frozenset[str]  # the members that may be in the body
    attributes: tuple[tuple[str, str], ...]  # (member, attribute name)
    children: tuple[tuple[str, str, str, Shape], ...]  # (member, tag, how, shape written per element)


@cache
def _structure_writer(shape: StructureShape) -> _StructureWriter:
    attributes, children = [], []
    for name, key, how, _ in _structure_fields(shape):
        member = shape.members[name]
        if how == "attribute":
            attributes.append((name, key))
        else:
            # a flattened list repeats its item's element; a flattened map its entries, under the member's tag
            children.append((name, key, how, member.member if how == "list" else member))  # type: ignore[attr-defined]
    names = frozenset(name for name, *_ in _structure_fields(shape))
    return _StructureWriter(names, tuple(attributes), tuple(children))


def _write_structure(
    shape: StructureShape, value: dict[str, Any], tag: str, parts: list[str], ns: str
) -> None:
    plan = _structure_writer(shape)
    if not value.keys() <= plan.names:
        raise ValueError(f"{shape.name} has no member {sorted(value.keys() - plan.names)[0]!r}")
    attributes = "".join(
        f' {key}="{_attribute(str(value[name]))}"'
        for name, key in plan.attributes
        if value.get(name) is not None
    )
    parts.append(f"<{tag}{ns}{attributes}>")
    for name, key, how, member in plan.children:
        item = value.get(name)
        if item is None:
            continue
        if how == "list":
            write = _xml_writer(member)
            for element in item:
                write(element, key, parts)
        elif how == "map":
            for entry_key, element in item.items():
                parts.append(f"<{key}>")
                _write_entry(member, entry_key, element, parts)
                parts.append(f"</{key}>")
        else:
            _xml_writer(member)(item, key, parts)
    parts.append(f"</{tag}>")


# --- Errors -------------------------------------------------------------------------------------------
def _error_text(value: object) -> str:
    # An error body must always go out: characters XML cannot carry become U+FFFD instead of failing.
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, datetime):
        text = format_timestamp(value, "iso8601")
    else:
        text = str(value)
    return escape(_NOT_XML.sub("\ufffd", text)).replace("\r", "&#13;")


def error_body(
    code: str, message: str, request_id: str, fields: Mapping[str, object] | None = None, *, host_id: str = ""
) -> bytes:
    """S3's error document: <?xml ...?><Error><Code/><Message/>{one element per field, e.g. BucketName, Key,
    Region, Condition, ArgumentName}<RequestId/><HostId/></Error>. Fields whose value is None are left out;
    field names must be XML names (they come from code, not from clients)."""
    extra = "".join(
        f"<{name}>{_error_text(value)}</{name}>"
        for name, value in (fields or {}).items()
        if value is not None
    )
    return (
        f"{PROLOG}<Error><Code>{_error_text(code)}</Code><Message>{_error_text(message)}</Message>{extra}"
        f"<RequestId>{_error_text(request_id)}</RequestId><HostId>{_error_text(host_id)}</HostId></Error>"
    ).encode()
