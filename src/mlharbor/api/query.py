"""The AWS query protocol (SNS; any service whose model says ``"protocol": "query"``), both ways.

Requests are HTML forms (``Action=Publish&Version=...&TopicArn=...``) whose field names spell the path of a
value through the operation's input shape: ``Tags.member.1.Key``, ``Attributes.entry.1.key``,
``MessageAttributes.entry.1.Value.DataType`` (the map's key and value take their model ``locationName``).
``to_params`` reads them back into the dict botocore was given, scalars typed by their shapes, so the
ordinary model validation (``shapes.parse_input``) runs on it. Answers are XML: the output shape inside its
``resultWrapper`` and ``ResponseMetadata``; errors an ``ErrorResponse`` whose code and status the error
shape's metadata gives (shape ``NotFoundException`` is wire code ``NotFound``, 404), the rest in the query
protocol's common codes.

Everything is read from the botocore model; nothing here knows SNS.
"""

from __future__ import annotations

import base64
import binascii
import math
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

import regex
from botocore.model import ListShape, MapShape, OperationModel, ServiceModel, Shape, StructureShape

from mlharbor import errors

CONTENT_TYPE = b"text/xml"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

# The query protocol's common errors (AWS "Common Errors"), for conditions the gateway raises for every
# protocol under the awsJson names. AWS documents MalformedQueryString as 404; a form it cannot read is the
# client's mistake like any other, so it is answered 400 here (docs/COMPATIBILITY.md).
COMMON_CODES: dict[str, tuple[str, int]] = {
    "UnknownOperationException": ("InvalidAction", 400),
    "MissingAuthenticationTokenException": ("MissingAuthenticationToken", 403),
    "UnrecognizedClientException": ("InvalidClientTokenId", 403),
    "InvalidSignatureException": ("SignatureDoesNotMatch", 403),
    "IncompleteSignatureException": ("IncompleteSignature", 400),
    "SerializationException": ("InvalidParameterValue", 400),
    "ThrottlingException": ("Throttling", 400),
    "InternalServerException": ("InternalFailure", 500),
}

_INTEGER = regex.compile(r"[+-]?[0-9]+")
# What XML 1.0 can carry: a string with anything else could never be sent back in a response.
_NOT_XML = regex.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


# --- Requests -----------------------------------------------------------------------------------------
def action_of(body: bytes) -> str | None:
    """The form's Action, read leniently (the operation must be known before the signature is checked;
    a malformed form is reported once the request is authenticated)."""
    try:
        for name, value in parse_qsl(body.decode("utf-8"), keep_blank_values=True):
            if name == "Action":
                return value
    except (UnicodeDecodeError, ValueError):
        return None
    return None


def decode_form(body: bytes) -> dict[str, str]:
    """Form fields, percent-decoded as UTF-8. A field given twice keeps its last value."""
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise errors.MalformedQueryString(
            "The request body is not a UTF-8 form (x-www-form-urlencoded)"
        ) from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        bad = _NOT_XML.search(value) or _NOT_XML.search(name)
        if bad is not None:
            raise errors.InvalidParameterValue(
                f"Parameter {name!r} contains the character U+{ord(bad.group()):04X}, which is not allowed"
            )
        fields[name] = value
    return fields


class _Node:
    """One dotted name segment: ``Tags.member.1.Key`` is Tags → member → 1 → Key."""

    __slots__ = ("children", "value")

    def __init__(self) -> None:
        self.value: str | None = None
        self.children: dict[str, _Node] = {}


def _tree(fields: dict[str, str]) -> _Node:
    root = _Node()
    for name, value in fields.items():
        node = root
        for part in name.split("."):
            child = node.children.get(part)
            if child is None:
                child = node.children[part] = _Node()
            node = child
        node.value = value
    return root


def to_params(shape: StructureShape | None, fields: dict[str, str]) -> dict[str, Any]:
    """The operation's parameters from its form fields, in the shape botocore's serializer was given.

    Fields the shape does not name are ignored (as AWS ignores unknown members). A scalar that cannot be
    read as its type is a constraint violation; the service's dialect names it.
    """
    if shape is None:
        return {}
    violations: list[tuple[str, object, str]] = []
    params = _structure(shape, _tree(fields), "", violations)
    if violations:
        raise errors.ConstraintViolations(violations)
    return params


def _member_name(name: str, shape: Shape) -> str:
    # A flattened list with a named member is spelled with the member's name (botocore replaces the last
    # segment of the prefix with it).
    if shape.type_name == "list" and shape.serialization.get("flattened"):
        named = shape.member.serialization.get("name")  # type: ignore[attr-defined]
        if named:
            return named
    return shape.serialization.get("name", name)


def _structure(shape: StructureShape, node: _Node, path: str, out: list[tuple[str, object, str]]) -> dict:
    params: dict[str, Any] = {}
    for name, member in shape.members.items():
        child = node.children.get(_member_name(name, member))
        if child is not None:
            value = _value(member, child, _join(path, name), out)
            if value is not None:
                params[name] = value
    return params


def _value(shape: Shape, node: _Node, path: str, out: list[tuple[str, object, str]]) -> Any:
    kind = shape.type_name
    if kind == "structure":
        return _structure(shape, node, path, out)  # type: ignore[arg-type]
    if kind == "list":
        return _list(shape, node, path, out)  # type: ignore[arg-type]
    if kind == "map":
        return _map(shape, node, path, out)  # type: ignore[arg-type]
    if node.value is None:
        return None  # only deeper fields (Name.x=1 for a scalar Name): not this member
    return _scalar(shape, node.value, path, out)


def _indexed(node: _Node | None) -> list[_Node]:
    """The numbered items under ``node`` (1-based), in number order; other segments are not items."""
    if node is None:
        return []
    numbered = [(int(k), child) for k, child in node.children.items() if k.isdigit() and k.isascii()]
    return [child for number, child in sorted(numbered, key=lambda item: item[0]) if number >= 1]


def _list(shape: ListShape, node: _Node, path: str, out: list[tuple[str, object, str]]) -> list[Any]:
    # An empty list travels as "Name=" (botocore sends it so), items as Name.member.N (flattened: Name.N).
    if shape.serialization.get("flattened"):
        items = _indexed(node)
    else:
        items = _indexed(node.children.get(shape.member.serialization.get("name", "member")))
    values = []
    for i, item in enumerate(items, start=1):
        value = _value(shape.member, item, f"{path}.{i}.member", out)
        values.append(value)  # None stays: validation reports a null item instead of dropping it
    return values


def _map(shape: MapShape, node: _Node, path: str, out: list[tuple[str, object, str]]) -> dict[str, Any]:
    entries = _indexed(node if shape.serialization.get("flattened") else node.children.get("entry"))
    key_name = shape.key.serialization.get("name", "key")
    value_name = shape.value.serialization.get("name", "value")
    values: dict[str, Any] = {}
    for entry in entries:
        key_node = entry.children.get(key_name)
        if key_node is None or key_node.value is None:
            out.append((path, None, "Map keys must not be null"))
            continue
        value_node = entry.children.get(value_name)
        value = None if value_node is None else _value(shape.value, value_node, path, out)
        values[key_node.value] = value  # None: parse_input reports the null value
    return values


def _scalar(shape: Shape, text: str, path: str, out: list[tuple[str, object, str]]) -> Any:
    kind = shape.type_name
    if kind in ("string", "character"):
        return text
    if kind in ("integer", "long"):
        if _INTEGER.fullmatch(text) is None:
            out.append((path, text, "Member must be an integer"))
            return None
        return int(text)
    if kind in ("float", "double"):
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            out.append((path, text, "Member must be a finite number"))
            return None
        return number
    if kind == "boolean":
        lowered = text.lower()
        if lowered not in ("true", "false"):
            out.append((path, text, "Member must be true or false"))
            return None
        return lowered == "true"
    if kind == "blob":
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            out.append((path, "<blob>", "Member must be base64"))
            return None
    if kind == "timestamp":
        return _timestamp(text, path, out)
    out.append((path, text, f"Unsupported member type {kind}"))
    return None


def _timestamp(text: str, path: str, out: list[tuple[str, object, str]]) -> datetime | None:
    # botocore sends ISO-8601 unless the model says otherwise; epoch seconds are read too (timestampFormat
    # unixTimestamp), as AWS's query services do.
    try:
        if regex.fullmatch(r"[+-]?[0-9]+(\.[0-9]+)?", text):
            return datetime.fromtimestamp(float(text), tz=UTC)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        out.append((path, text, "Member must be an ISO-8601 timestamp"))
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _join(path: str, name: str) -> str:
    camel = name[:1].lower() + name[1:]  # Coral reports member paths in lowerCamelCase
    return f"{path}.{camel}" if path else camel


# --- Responses ----------------------------------------------------------------------------------------
def encode_result(operation: OperationModel, payload: dict[str, Any], request_id: str) -> bytes:
    """``<{Op}Response xmlns=...><{resultWrapper}>...</...><ResponseMetadata>...`` from the serialized
    output (``shapes.serialize_output(..., Wire.QUERY)``: unset members gone, timestamps still datetimes)."""
    name = operation.name
    parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<{name}Response xmlns="{_namespace(operation)}">']
    output = operation.output_shape
    if output is not None:
        wrapper = output.serialization.get("resultWrapper", f"{name}Result")
        parts.append(f"<{wrapper}>")
        _write_members(output, payload, parts)  # type: ignore[arg-type]
        parts.append(f"</{wrapper}>")
    parts.append(f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></{name}Response>")
    return "".join(parts).encode("utf-8")


def _namespace(operation: OperationModel) -> str:
    return escape(operation.metadata.get("xmlNamespace", ""), {'"': "&quot;"})


def _write_members(shape: StructureShape, value: dict[str, Any], parts: list[str]) -> None:
    members = shape.members
    for name, item in value.items():
        member = members[name]
        kind = member.type_name
        if kind == "list" and member.serialization.get("flattened"):
            tag = _member_name(name, member)
            for element in item:
                _write(member.member, element, tag, parts)  # type: ignore[attr-defined]
        elif kind == "map" and member.serialization.get("flattened"):
            tag = member.serialization.get("name", name)
            for key, element in item.items():
                parts.append(f"<{tag}>")
                _write_entry(member, key, element, parts)  # type: ignore[arg-type]
                parts.append(f"</{tag}>")
        else:
            _write(member, item, member.serialization.get("name", name), parts)


def _write(shape: Shape, value: Any, tag: str, parts: list[str]) -> None:
    kind = shape.type_name
    parts.append(f"<{tag}>")
    if kind == "structure":
        _write_members(shape, value, parts)  # type: ignore[arg-type]
    elif kind == "list":
        item_tag = shape.member.serialization.get("name", "member")  # type: ignore[attr-defined]
        for element in value:
            _write(shape.member, element, item_tag, parts)  # type: ignore[attr-defined]
    elif kind == "map":
        for key, element in value.items():
            parts.append("<entry>")
            _write_entry(shape, key, element, parts)  # type: ignore[arg-type]
            parts.append("</entry>")
    else:
        parts.append(_text(kind, value))
    parts.append(f"</{tag}>")


def _write_entry(shape: MapShape, key: str, value: Any, parts: list[str]) -> None:
    _write(shape.key, key, shape.key.serialization.get("name", "key"), parts)
    _write(shape.value, value, shape.value.serialization.get("name", "value"), parts)


def _text(kind: str, value: Any) -> str:
    if kind == "boolean":
        return "true" if value else "false"
    if kind == "timestamp":
        if not isinstance(value, datetime):
            value = datetime.fromtimestamp(float(value), tz=UTC)
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{aware.microsecond // 1000:03d}Z"
    if kind == "blob":
        return base64.b64encode(bytes(value)).decode("ascii")
    if kind in ("float", "double"):
        return repr(float(value))
    # \r would reach the reader as \n (XML normalises line ends): send it as a character reference.
    return escape(str(value)).replace("\r", "&#13;")


# --- Errors -------------------------------------------------------------------------------------------
@lru_cache(maxsize=16)
def _error_codes(model: ServiceModel) -> dict[str, tuple[str, int, bool]]:
    """Shape name -> (wire code, HTTP status, sender's fault) for every error the service models."""
    table: dict[str, tuple[str, int, bool]] = {}
    for shape_name in model.shape_names:
        shape = model.shape_for(shape_name)
        error = shape.metadata.get("error") if shape.metadata.get("exception") else None
        if error is not None:
            table[shape_name] = (
                error.get("code", shape_name),
                error.get("httpStatusCode", 400),
                bool(error.get("senderFault")),
            )
    return table


def wire_error(exc: errors.AwsError, model: ServiceModel | None) -> tuple[str, int, bool]:
    """(code, status, sender's fault) of an error on this service's wire."""
    name = exc.code
    if model is not None:
        modelled = _error_codes(model).get(name)
        if modelled is not None:
            return modelled
    code, status = COMMON_CODES.get(name, (name, exc.status))
    return code, status, status < 500


def encode_error(exc: errors.AwsError, model: ServiceModel | None, request_id: str) -> tuple[int, bytes]:
    code, status, sender = wire_error(exc, model)
    namespace = escape(model.metadata.get("xmlNamespace", ""), {'"': "&quot;"}) if model is not None else ""
    extra = "".join(
        f"<{name}>{escape(str(value))}</{name}>" for name, value in exc.fields.items() if value is not None
    )
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<ErrorResponse xmlns="{namespace}"><Error>'
        f"<Type>{'Sender' if sender else 'Receiver'}</Type><Code>{escape(code)}</Code>"
        f"<Message>{_text('string', exc.message)}</Message>{extra}</Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    )
    return status, body.encode("utf-8")
