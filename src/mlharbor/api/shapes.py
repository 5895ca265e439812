"""Request validation and response serialization driven by botocore's service models.

botocore validates only required/min/types on the client; max, pattern and enum violations reach us,
so everything the model says is checked here. Nothing about a shape is retyped by hand.
"""

from __future__ import annotations

import base64
import binascii
import math
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from enum import Enum
from functools import cache, lru_cache
from typing import Any

import regex
from botocore.model import MapShape, Shape, StructureShape

from mlharbor.errors import ConstraintViolations, SerializationException


class Wire(Enum):
    """How scalars travel: awsJson 1.1 (base64 blobs, epoch-number timestamps), Smithy RPC v2 CBOR, or the
    query protocol (api/query.py reads form fields into typed values: bytes, datetimes; XML answers)."""

    JSON = "json"
    CBOR = "cbor"
    QUERY = "query"


Violation = tuple[str, object, str]

# botocore's 'integer' is a Java int and 'long' a Java long (bits, signed); 'float' and 'double' are IEEE
# single and double precision (their largest finite value). A value past its type is a SerializationException
# even where the model sets no range (docs/COMPATIBILITY.md, decision 26).
INTEGER_BITS = {"integer": 32, "long": 64}
FLOAT_LIMITS = {"float": 3.4028234663852886e38, "double": sys.float_info.max}
NOT_NULL = "Member must not be null"


@lru_cache(maxsize=4096)
def compiled_pattern(pattern: str) -> regex.Pattern[str]:
    # The models use Java regex classes (\p{L}, \p{Z}, ...); the `regex` package understands them.
    # Java's String.matches() anchors at both ends, hence fullmatch at the call site.
    return regex.compile(pattern)


def _camel(name: str) -> str:
    """Coral reports member paths in lowerCamelCase: InputDataConfig -> inputDataConfig."""
    return name[:1].lower() + name[1:]


def _join(path: str, name: str) -> str:
    return f"{path}.{_camel(name)}" if path else _camel(name)


def parse_input(shape: StructureShape | None, body: Any, wire: Wire) -> dict[str, Any]:
    """Check ``body`` against the operation's input shape and return it with scalars decoded.

    Wrong JSON types raise SerializationException (what Coral services send); constraint violations
    are collected and raised together as ConstraintViolations (the dialect picks the AWS code).
    """
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise SerializationException("Request body must be a JSON object")
    if shape is None:
        return {}
    violations: list[Violation] = []
    parsed = _parse_structure(shape, body, "", wire, violations)
    if violations:
        raise ConstraintViolations(violations)
    return parsed


def _type_error(path: str, shape: Shape, value: object) -> SerializationException:
    where = path or "request"
    return SerializationException(
        f"Unexpected value type at '{where}': expected {shape.type_name}, got {type(value).__name__}"
    )


def _out_of_range(path: str, shape: Shape, value: int | float) -> SerializationException:
    # What a Java service's deserializer says when the number does not fit the member's type: no model
    # constraint is involved, so it is not a validation error. Huge integers (CBOR bignums) are shown by
    # size: str() of one with thousands of digits is itself an error in Python.
    shown = value if isinstance(value, float) or abs(value) < 10**40 else f"{value.bit_length()}-bit integer"
    return SerializationException(
        f"Numeric value ({shown}) out of range of {shape.type_name} at '{path or 'request'}'"
    )


def _check_storable(text: str, path: str) -> None:
    """Refuse what no string can carry here: lone UTF-16 surrogates (JSON's \\ud800 escapes) cannot be
    encoded as UTF-8, which the database, pagination tokens and CBOR responses all need; U+0000 cannot be
    stored in, or even compared with, a PostgreSQL text column. One decision for every member, so no
    handler meets either (docs/COMPATIBILITY.md, decision 26)."""
    if "\x00" in text:
        raise SerializationException(f"Invalid string at '{path or 'request'}': U+0000 is not accepted")
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise SerializationException(
            f"Invalid string at '{path or 'request'}': lone UTF-16 surrogates cannot be encoded as UTF-8"
        ) from None


def _parse(shape: Shape, value: Any, path: str, wire: Wire, out: list[Violation]) -> Any:
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            raise _type_error(path, shape, value)
        return _parse_structure(shape, value, path, wire, out)  # type: ignore[arg-type]
    if kind == "list":
        if not isinstance(value, list):
            raise _type_error(path, shape, value)
        _check_size(shape, len(value), value, path, out)
        member = shape.member  # type: ignore[attr-defined]
        items = []
        # Coral numbers list items from 1: tags.1.member.key
        for i, item in enumerate(value, start=1):
            where = f"{path}.{i}.member"
            if item is None:
                # Unlike a structure member, a list item has no "absent": handlers must never see null.
                out.append((where, None, NOT_NULL))
                continue
            items.append(_parse(member, item, where, wire, out))
        return items
    if kind == "map":
        return _parse_map(shape, value, path, wire, out)  # type: ignore[arg-type]
    if kind == "string":
        if not isinstance(value, str):
            raise _type_error(path, shape, value)
        _check_storable(value, path)
        _check_string(shape, value, path, out)
        return value
    if kind in INTEGER_BITS:
        # A whole float (10.0, 1e2) is read as the integer, as AWS's Java deserializers do; 10.5 is not one.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(path, shape, value)
        bound = 1 << (INTEGER_BITS[kind] - 1)
        if not -bound <= value < bound:
            raise _out_of_range(path, shape, value)
        _check_range(shape, value, path, out)
        return value
    if kind in FLOAT_LIMITS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _type_error(path, shape, value)
        try:
            number = float(value)  # an integer beyond a double's range raises here
        except OverflowError:
            raise _out_of_range(path, shape, value) from None
        if not math.isfinite(number):
            raise _type_error(path, shape, value)
        reported = len(out)
        _check_range(shape, number, path, out)
        # Java reads a float past its type as infinity, so a member with a range reports the range; one
        # without must still never reach a handler.
        if abs(number) > FLOAT_LIMITS[kind] and len(out) == reported:
            raise _out_of_range(path, shape, value)
        return number
    if kind == "boolean":
        if not isinstance(value, bool):
            raise _type_error(path, shape, value)
        return value
    if kind == "blob":
        data = _decode_blob(value, path, shape, wire)
        _check_size(shape, len(data), f"<{len(data)} bytes>", path, out)
        return data
    if kind == "timestamp":
        return _decode_timestamp(value, path, shape)
    raise SerializationException(f"Unsupported member type {kind} at '{path}'")


def _parse_structure(
    shape: StructureShape, value: dict[str, Any], path: str, wire: Wire, out: list[Violation]
) -> dict[str, Any]:
    members = shape.members
    parsed: dict[str, Any] = {}
    for name in shape.required_members:
        if value.get(name) is None:
            out.append((_join(path, name), None, NOT_NULL))
    for name, item in value.items():
        member = members.get(name)
        if member is None or item is None:
            continue  # Coral ignores members it does not know, and null means absent.
        parsed[name] = _parse(member, item, _join(path, name), wire, out)
    return parsed


def _parse_map(shape: MapShape, value: Any, path: str, wire: Wire, out: list[Violation]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _type_error(path, shape, value)
    _check_size(shape, len(value), value, path, out)
    key_problems: list[str] = []
    value_problems: list[str] = []
    parsed: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise _type_error(path, shape.key, key)
        _check_storable(key, path)
        local: list[Violation] = []
        _check_string(shape.key, key, path, local)
        key_problems.extend(c for _, _, c in local if c not in key_problems)
        if item is None:
            # A null value would reach handlers as a missing key (a silently dropped tag).
            if NOT_NULL not in value_problems:
                value_problems.append(NOT_NULL)
            continue
        local = []
        parsed[key] = _parse(shape.value, item, path, wire, local)
        value_problems.extend(c for _, _, c in local if c not in value_problems)
    if key_problems:
        out.append((path, value, "Map keys must satisfy constraint: [" + ", ".join(key_problems) + "]"))
    if value_problems:
        out.append((path, value, "Map value must satisfy constraint: [" + ", ".join(value_problems) + "]"))
    return parsed


def _check_string(shape: Shape, value: str, path: str, out: list[Violation]) -> None:
    meta = shape.metadata
    enum = shape.enum  # type: ignore[attr-defined]
    if enum and value not in enum:
        out.append((path, value, f"Member must satisfy enum value set: [{', '.join(enum)}]"))
    _check_size(shape, len(value), value, path, out)
    pattern = meta.get("pattern")
    if pattern is not None and compiled_pattern(pattern).fullmatch(value) is None:
        out.append((path, value, f"Member must satisfy regular expression pattern: {pattern}"))


def _check_size(shape: Shape, size: int, shown: object, path: str, out: list[Violation]) -> None:
    meta = shape.metadata
    low, high = meta.get("min"), meta.get("max")
    if low is not None and size < low:
        out.append((path, shown, f"Member must have length greater than or equal to {low}"))
    if high is not None and size > high:
        out.append((path, shown, f"Member must have length less than or equal to {high}"))


def _check_range(shape: Shape, number: float, path: str, out: list[Violation]) -> None:
    meta = shape.metadata
    low, high = meta.get("min"), meta.get("max")
    if low is not None and number < low:
        out.append((path, number, f"Member must have value greater than or equal to {low}"))
    if high is not None and number > high:
        out.append((path, number, f"Member must have value less than or equal to {high}"))


def _decode_blob(value: Any, path: str, shape: Shape, wire: Wire) -> bytes:
    if isinstance(value, bytes | bytearray) and wire is not Wire.JSON:
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise SerializationException(f"Value at '{path}' is not valid base64") from None
    raise _type_error(path, shape, value)


def _decode_timestamp(value: Any, path: str, shape: Shape) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise SerializationException(f"Timestamp out of range at '{path}'") from None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise _type_error(path, shape, value) from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise _type_error(path, shape, value)


# --- Output -------------------------------------------------------------------------------------------
def serialize_output(
    shape: StructureShape | None, result: dict[str, Any] | None, wire: Wire
) -> dict[str, Any]:
    """Shape a handler's result for the wire: unset members omitted, timestamps and blobs encoded.

    A key the output shape does not know is a bug in the handler, so it raises instead of leaking.
    """
    if shape is None or not result:
        return {}
    return _out_structure(shape, result, wire)


def _out_structure(shape: StructureShape, value: dict[str, Any], wire: Wire) -> dict[str, Any]:
    converters = _member_converters(shape, wire)
    out: dict[str, Any] = {}
    for name, item in value.items():
        if item is None:
            continue
        try:
            convert = converters[name]
        except KeyError:
            raise ValueError(f"{shape.name} has no member {name!r}") from None
        out[name] = item if convert is None else convert(item)
    return out


# Outputs are shaped by converters built once per (shape, wire) from the model: a GetRecords of 1,000 records
# walks the same Record shape 1,000 times, and looking its members' types up each time cost more than the
# conversions. A converter of None means the value goes out as it is (strings, integers, booleans).
Converter = Callable[[Any], Any] | None


@cache
def _member_converters(shape: StructureShape, wire: Wire) -> dict[str, Converter]:
    return {name: _converter(member, wire) for name, member in shape.members.items()}


@cache
def _converter(shape: Shape, wire: Wire) -> Converter:
    kind = shape.type_name
    if kind == "structure":
        # Members are looked up on first use, not here: recursive shapes would never finish building.
        return lambda value: _out_structure(shape, value, wire)  # type: ignore[arg-type]
    if kind == "list":
        inner = _converter(shape.member, wire)  # type: ignore[attr-defined]
        if inner is None:
            return list
        return lambda value: [inner(item) for item in value]
    if kind == "map":
        inner = _converter(shape.value, wire)  # type: ignore[attr-defined]
        if inner is None:
            return dict
        return lambda value: {k: inner(v) for k, v in value.items()}
    if kind == "timestamp":
        return lambda value: _out_timestamp(value, wire)
    if kind == "blob":
        if wire is Wire.JSON:
            return lambda value: base64.b64encode(bytes(value)).decode("ascii")
        return bytes
    if kind in ("float", "double"):
        return float
    return None


def _out_timestamp(value: Any, wire: Wire) -> Any:
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware if wire is not Wire.JSON else round(aware.timestamp(), 3)
    return float(value)


def _out(shape: Shape, value: Any, wire: Wire) -> Any:
    convert = _converter(shape, wire)
    return value if convert is None else convert(value)
