"""S3 request bodies: aws-chunked decoding and every integrity check a request can ask for.

A body arrives in pieces; ``PayloadDecoder.feed`` turns each into the object's bytes (dropping aws-chunked
framing, checking chunk signatures) and ``finish`` checks what the request claimed about the whole: the
x-amz-content-sha256 digest, x-amz-decoded-content-length, Content-MD5 and the flexible checksum
(x-amz-checksum-<alg> header or trailer). The MD5 is always computed: it is a single-part object's ETag.

Bytes returned by ``feed`` are not verified until ``finish`` returns: the caller stages them and commits the
object only then. Everything works on whole buffers (slices, ``find``), never per byte, and hashes are fed
large slices (hashlib and crc32c release the GIL on them).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Protocol

import anycrc
import crc32c

from mlharbor.api.s3auth import PayloadCheck
from mlharbor.errors import (
    AwsError,
    BadDigest,
    IncompleteBody,
    InvalidArgument,
    InvalidDigest,
    InvalidRequest,
    SignatureDoesNotMatch,
    XAmzContentSHA256Mismatch,
)

CHECKSUM_ALGORITHMS: tuple[str, ...] = ("CRC32", "CRC32C", "SHA1", "SHA256", "CRC64NVME")
_DIGEST_SIZES = {"CRC32": 4, "CRC32C": 4, "SHA1": 20, "SHA256": 32, "CRC64NVME": 8}
# Algorithms in S3's model that this server does not compute. A request naming one is refused rather than
# stored unchecked: the client asked for an integrity check it would silently not get.
_UNSUPPORTED_ALGORITHMS = frozenset({"SHA512", "MD5", "XXHASH64", "XXHASH3", "XXHASH128"})
# x-amz-checksum-* headers that carry no checksum value.
_CHECKSUM_HEADERS_NOT_VALUES = frozenset(
    {"x-amz-checksum-type", "x-amz-checksum-algorithm", "x-amz-checksum-mode"}
)
_CHECKSUM_PREFIX = "x-amz-checksum-"
_TRAILER_SIGNATURE = b"x-amz-trailer-signature"
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

# Framing limits: a chunk-size line is "<hex>;chunk-signature=<64 hex>" (~90 bytes) and a trailer line a
# header and a base64 digest; anything longer is an error, not a buffer that grows with the attacker's input.
MAX_LINE = 4096
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}").fullmatch
_SIGNATURE = re.compile(rb"[0-9a-f]{64}").fullmatch

# Decoder states (chunked framing).
_SIZE_LINE, _DATA, _DATA_CRLF, _TRAILER, _DONE = range(5)


class Checksum(Protocol):
    def update(self, data: bytes | bytearray | memoryview) -> None: ...

    def digest(self) -> bytes: ...

    def b64(self) -> str: ...


# anycrc's carry-less-multiply C code: ~8 GB/s for CRC-32 here against zlib's ~3.3. CRC32 is what every boto3
# upload carries: 64 MB of aws-chunked with a CRC32 trailer decoded at ~510 MB/s with zlib, ~610 with this
# (MD5, always needed for the ETag, is the rest). calc(data, previous) continues a running CRC as
# zlib.crc32 does. It keeps the GIL, for microseconds per buffer.
_CRC32 = anycrc.Model("CRC32")
# CRC-64/NVME: poly 0xad93d23594c93659, reflected, init and xorout all ones.
_CRC64_NVME = anycrc.Model("CRC64-NVME")


class _Crc32:
    __slots__ = ("_value",)
    _model = _CRC32
    _size = 4

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if len(data):  # anycrc indexes the first byte
            self._value = self._model.calc(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(self._size, "big")

    def b64(self) -> str:
        return base64.b64encode(self.digest()).decode("ascii")


class _Crc64Nvme(_Crc32):
    __slots__ = ()
    _model = _CRC64_NVME
    _size = 8


class _Crc32c(_Crc32):
    __slots__ = ()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        # The crc32c package: SSE4.2/ARMv8 instructions, ~16 GB/s, releases the GIL on large buffers.
        self._value = crc32c.crc32c(data, self._value)


class _Hash:
    __slots__ = ("_hash",)

    def __init__(self, name: str) -> None:
        self._hash = hashlib.new(name)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)

    def digest(self) -> bytes:
        return self._hash.digest()

    def b64(self) -> str:
        return base64.b64encode(self._hash.digest()).decode("ascii")


def new_checksum(algorithm: str) -> Checksum:
    """A running checksum; ``b64()`` is the base64 of the big-endian digest, as S3 sends it."""
    if algorithm == "CRC32":
        return _Crc32()
    if algorithm == "CRC32C":
        return _Crc32c()
    if algorithm == "CRC64NVME":
        return _Crc64Nvme()
    if algorithm in ("SHA1", "SHA256"):
        return _Hash(algorithm.lower())
    raise _unsupported_algorithm(algorithm)


@dataclass(frozen=True, slots=True)
class Payload:
    size: int  # decoded bytes
    md5_hex: str  # always computed: the S3 ETag of a single-part object
    checksums: dict[
        str, str
    ]  # algorithm -> base64 value: the one the client sent (header or trailer), verified


class PayloadDecoder:
    """Turns a request body as it arrives into the object's bytes, checking what the request claims."""

    __slots__ = (
        "_check",
        "_chunked",
        "_signed",
        "_content_length",
        "_decoded_length",
        "_content_md5",
        "_sha256",
        "_md5",
        "_checksums",
        "_running",
        "_expected_algorithm",
        "_expected_value",
        "_trailer_name",
        "_received",
        "_size",
        "_state",
        "_remaining",
        "_crlf_seen",
        "_line",
        "_chunk_hash",
        "_chunk_signature",
        "_previous_signature",
        "_trailer_lines",
        "_trailer_signature",
    )

    def __init__(
        self, check: PayloadCheck, headers: dict[str, list[str]], *, checksum_algorithm: str | None = None
    ) -> None:
        self._check = check
        encodings = {
            token.strip().lower()
            for value in headers.get("content-encoding", ())
            for token in value.split(",")
        }
        # The STREAMING-* payload hashes imply aws-chunked framing even where Content-Encoding omits it.
        self._chunked = check.mode in ("signed-chunks", "unsigned-chunks") or "aws-chunked" in encodings
        self._signed = check.mode == "signed-chunks"
        self._content_length = _content_length(headers)
        self._decoded_length = _decoded_length(headers) if self._chunked else None
        self._content_md5 = _content_md5(headers)
        # Hashes cost time on every byte: only those something will be checked against, plus the ETag's MD5.
        self._sha256 = hashlib.sha256() if check.mode == "sha256" else None
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._trailer_name, self._expected_algorithm, self._expected_value = _claimed_checksum(
            headers, self._chunked
        )
        self._checksums = _running_checksums(self._expected_algorithm, checksum_algorithm)
        self._running = tuple(self._checksums.values())
        self._received = 0
        self._size = 0
        self._state = _SIZE_LINE
        self._remaining = 0
        self._crlf_seen = 0
        self._line = bytearray()
        self._chunk_hash: hashlib._Hash | None = None
        self._chunk_signature = b""
        self._previous_signature = check.seed_signature
        self._trailer_lines: list[bytes] = []
        self._trailer_signature: str | None = None

    # --- feeding -------------------------------------------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        """The decoded payload bytes available so far (maybe b""); raises as soon as the body is known bad."""
        if not data:
            return b""
        self._received += len(data)
        if self._sha256 is not None:
            # x-amz-content-sha256 covers the body as sent, framing included.
            self._sha256.update(data)
        if not self._chunked:
            self._consume(data)
            return data
        return self._decode(data)

    def _consume(self, piece: bytes | memoryview) -> None:
        self._md5.update(piece)
        for checksum in self._running:
            checksum.update(piece)
        self._size += len(piece)

    def _decode(self, data: bytes) -> bytes:
        view = memoryview(data)
        end = len(data)
        pieces: list[memoryview] = []
        pos = 0
        while pos < end:
            state = self._state
            if state == _DATA:
                take = min(self._remaining, end - pos)
                piece = view[pos : pos + take]
                self._consume(piece)
                if self._chunk_hash is not None:
                    self._chunk_hash.update(piece)
                pieces.append(piece)
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._end_of_chunk_data()
            elif state == _DATA_CRLF:
                pos = self._data_crlf(data, pos, end)
            elif state == _DONE:
                raise InvalidRequest("The aws-chunked body continues after its final chunk and trailers.")
            else:
                pos = self._line_bytes(data, view, pos, end)
        if not pieces:
            return b""
        if len(pieces) == 1:
            only = pieces[0]
            return data if len(only) == end else only.tobytes()
        return b"".join(pieces)

    def _data_crlf(self, data: bytes, pos: int, end: int) -> int:
        # The CRLF that closes a chunk's data, possibly split across two pieces of the body.
        expected = b"\r\n"[self._crlf_seen :]
        take = min(len(expected), end - pos)
        if data[pos : pos + take] != expected[:take]:
            raise IncompleteBody("The aws-chunked body has a chunk whose data does not end with CRLF.")
        self._crlf_seen += take
        if self._crlf_seen == 2:
            self._state = _SIZE_LINE
        return pos + take

    def _line_bytes(self, data: bytes, view: memoryview, pos: int, end: int) -> int:
        """Collect a chunk-size or trailer line; returns where the next unread byte is."""
        room = MAX_LINE + 1 - len(self._line)
        newline = data.find(b"\n", pos, min(end, pos + room))
        if newline < 0:
            if end - pos >= room:
                raise InvalidRequest(
                    "The aws-chunked body has a chunk header or trailer line that is too long."
                )
            self._line += view[pos:end]
            return end
        if self._line:
            self._line += view[pos:newline]
            line = bytes(self._line)
            self._line.clear()
        else:
            line = data[pos:newline]
        # Lines end with CRLF; a bare LF is tolerated.
        self._handle_line(line[:-1] if line.endswith(b"\r") else line)
        return newline + 1

    def _handle_line(self, line: bytes) -> None:
        if self._state == _SIZE_LINE:
            self._chunk_header(line)
        elif not line:
            self._state = _DONE  # the empty line that ends the trailers
        else:
            self._trailer_line(line)

    def _chunk_header(self, line: bytes) -> None:
        size_text, _, extensions = line.partition(b";")
        size_text = size_text.strip(b" \t")
        if not _CHUNK_SIZE(size_text):
            raise InvalidRequest("The aws-chunked body has a chunk size that is not a hexadecimal number.")
        size = int(size_text, 16)
        if self._decoded_length is not None and self._size + size > self._decoded_length:
            raise IncompleteBody(
                "The aws-chunked body carries more data than x-amz-decoded-content-length "
                f"({self._decoded_length}) announced."
            )
        if self._signed:
            self._chunk_signature = _chunk_signature(extensions)
            self._chunk_hash = hashlib.sha256() if size else None
        if size:
            self._state = _DATA
            self._remaining = size
        else:
            if self._signed:
                self._verify_chunk(_EMPTY_SHA256)
            self._state = _TRAILER

    def _end_of_chunk_data(self) -> None:
        if self._chunk_hash is not None:
            self._verify_chunk(self._chunk_hash.hexdigest())
            self._chunk_hash = None
        self._state = _DATA_CRLF
        self._crlf_seen = 0

    def _verify_chunk(self, data_sha256: str) -> None:
        check = self._check
        string_to_sign = (
            f"AWS4-HMAC-SHA256-PAYLOAD\n{check.amz_date}\n{check.scope}\n{self._previous_signature}\n"
            f"{_EMPTY_SHA256}\n{data_sha256}"
        )
        expected = hmac.new(check.signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()
        provided = self._chunk_signature.decode("ascii")
        if not hmac.compare_digest(expected, provided):
            raise SignatureDoesNotMatch(
                "The chunk signature we calculated does not match the signature you provided.",
                StringToSign=string_to_sign,
                SignatureProvided=provided,
            )
        self._previous_signature = expected

    def _trailer_line(self, line: bytes) -> None:
        # Each accepted trailer may come once (the declared checksum, the signature): the section stays small.
        name, sep, value = line.partition(b":")
        name = name.strip().lower()
        if not sep:
            raise InvalidRequest("The aws-chunked body has a malformed trailing header.")
        if name == _TRAILER_SIGNATURE:
            if self._trailer_signature is not None:
                raise InvalidRequest("The trailing header x-amz-trailer-signature was sent twice.")
            self._trailer_signature = value.strip().decode("latin-1")
            return
        text = name.decode("latin-1")
        if text != self._trailer_name:
            raise InvalidRequest(f"The trailing header {text} was not declared in x-amz-trailer.")
        if self._expected_value is not None:
            raise InvalidRequest(f"The trailing header {text} was sent twice.")
        self._expected_value = _checksum_value(
            self._expected_algorithm or "", value.strip().decode("latin-1"), "trailing header"
        )
        self._trailer_lines.append(line)

    # --- the end -------------------------------------------------------------------------------------------
    def finish(self) -> Payload:
        """Check the whole body against the request's claims; the decoded size, ETag and checksums."""
        if self._chunked:
            self._finish_framing()
        if self._content_length is not None and self._received != self._content_length:
            raise IncompleteBody()
        if self._decoded_length is not None and self._size != self._decoded_length:
            raise IncompleteBody(
                f"The aws-chunked body carries {self._size} bytes, x-amz-decoded-content-length says "
                f"{self._decoded_length}."
            )
        if self._sha256 is not None:
            computed = self._sha256.hexdigest()
            if computed != self._check.sha256:
                raise XAmzContentSHA256Mismatch(
                    ClientComputedContentSHA256=self._check.sha256 or "", S3ComputedContentSHA256=computed
                )
        if self._signed and self._check.trailer:
            self._verify_trailer()
        checksums = self._verified_checksums()
        md5 = self._md5.digest()
        if self._content_md5 is not None and md5 != self._content_md5:
            raise BadDigest(
                "The Content-MD5 you specified did not match what we received.",
                ExpectedDigest=base64.b64encode(self._content_md5).decode("ascii"),
                CalculatedDigest=base64.b64encode(md5).decode("ascii"),
            )
        return Payload(size=self._size, md5_hex=md5.hex(), checksums=checksums)

    def _finish_framing(self) -> None:
        if self._state == _TRAILER and self._line:
            # The client ended the body without the final CRLF(s); take what it sent as the last line.
            line = bytes(self._line)
            self._line.clear()
            self._handle_line(line[:-1] if line.endswith(b"\r") else line)
        # The trailer section may end without its closing empty line (moto accepts that too).
        if self._state not in (_TRAILER, _DONE):
            raise IncompleteBody("The aws-chunked body ended before its final chunk.")

    def _verify_trailer(self) -> None:
        if self._trailer_signature is None:
            raise SignatureDoesNotMatch("The aws-chunked body has no x-amz-trailer-signature.")
        # The trailer chunk is signed as its header lines, each ending in a bare LF.
        trailer = b"".join(line + b"\n" for line in self._trailer_lines)
        check = self._check
        string_to_sign = (
            f"AWS4-HMAC-SHA256-TRAILER\n{check.amz_date}\n{check.scope}\n{self._previous_signature}\n"
            f"{hashlib.sha256(trailer).hexdigest()}"
        )
        expected = hmac.new(check.signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected.encode(), self._trailer_signature.encode("latin-1")):
            raise SignatureDoesNotMatch(
                "The trailer signature we calculated does not match the signature you provided.",
                StringToSign=string_to_sign,
                SignatureProvided=self._trailer_signature,
            )

    def _verified_checksums(self) -> dict[str, str]:
        algorithm = self._expected_algorithm
        if algorithm is not None:
            expected = self._expected_value
            if expected is None:
                raise IncompleteBody(f"The body ended without the {self._trailer_name} trailer it announced.")
            if self._checksums[algorithm].digest() != expected:
                raise BadDigest(f"The {algorithm} you specified did not match the calculated checksum.")
        return {name: checksum.b64() for name, checksum in self._checksums.items()}


# --- header parsing ----------------------------------------------------------------------------------------
def _claimed_checksum(
    headers: dict[str, list[str]], chunked: bool
) -> tuple[str | None, str | None, bytes | None]:
    """(declared trailer name, algorithm of the checksum to verify, its value if sent as a header)."""
    header_algorithm, header_value = _header_checksum(headers)
    trailer_name = _declared_trailer(headers, chunked, header_algorithm)
    trailer_algorithm = trailer_name[len(_CHECKSUM_PREFIX) :].upper() if trailer_name else None
    algorithm = header_algorithm or trailer_algorithm
    _check_sdk_algorithm(headers, algorithm)
    return trailer_name, algorithm, header_value  # a trailer's value arrives with the trailer


def _running_checksums(expected: str | None, requested: str | None) -> dict[str, Checksum]:
    """The checksums to compute: the one to verify, and the one the operation asks to be computed."""
    wanted = {expected} if expected else set()
    if requested:
        _supported(requested.upper())
        wanted.add(requested.upper())
    return {algorithm: new_checksum(algorithm) for algorithm in sorted(wanted)}


def _header_checksum(headers: dict[str, list[str]]) -> tuple[str | None, bytes | None]:
    """The one x-amz-checksum-<alg> header with a value, if any: (algorithm, digest)."""
    found: list[tuple[str, str]] = []
    for name, values in headers.items():
        if not name.startswith(_CHECKSUM_PREFIX) or name in _CHECKSUM_HEADERS_NOT_VALUES:
            continue
        algorithm = name[len(_CHECKSUM_PREFIX) :].upper()
        _supported(algorithm)
        found.extend((algorithm, value.strip()) for value in values)
    if not found:
        return None, None
    if len(set(found)) > 1:
        raise InvalidRequest(
            "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed."
        )
    algorithm, value = found[0]
    return algorithm, _checksum_value(algorithm, value, "header")


def _declared_trailer(
    headers: dict[str, list[str]], chunked: bool, header_algorithm: str | None
) -> str | None:
    names = [
        token.strip().lower() for value in headers.get("x-amz-trailer", ()) for token in value.split(",")
    ]
    names = [name for name in names if name]
    if not names:
        return None
    if len(names) > 1 or not names[0].startswith(_CHECKSUM_PREFIX):
        raise InvalidRequest("The value specified in the x-amz-trailer header is not supported")
    _supported(names[0][len(_CHECKSUM_PREFIX) :].upper())
    if not chunked:
        raise InvalidRequest(
            "x-amz-trailer requires an aws-chunked request body (Content-Encoding: aws-chunked)."
        )
    if header_algorithm is not None:
        raise InvalidRequest(
            "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed."
        )
    return names[0]


def _check_sdk_algorithm(headers: dict[str, list[str]], expected_algorithm: str | None) -> None:
    # x-amz-sdk-checksum-algorithm names the checksum the SDK computed: it must be the one sent.
    values = headers.get("x-amz-sdk-checksum-algorithm")
    if not values:
        return
    algorithm = values[0].strip().upper()
    _supported(algorithm)
    if algorithm != expected_algorithm:
        raise InvalidRequest(
            "x-amz-sdk-checksum-algorithm specified, but no corresponding x-amz-checksum-* or x-amz-trailer "
            "headers were found."
        )


def _checksum_value(algorithm: str, value: str, where: str) -> bytes:
    try:
        digest = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != _DIGEST_SIZES.get(algorithm, -1):
        raise InvalidRequest(f"Value for x-amz-checksum-{algorithm.lower()} {where} is invalid.")
    return digest


def _content_md5(headers: dict[str, list[str]]) -> bytes | None:
    values = headers.get("content-md5")
    if not values:
        return None
    try:
        digest = base64.b64decode(values[0].strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 16:
        raise InvalidDigest()
    return digest


def _content_length(headers: dict[str, list[str]]) -> int | None:
    # A malformed Content-Length is the HTTP layer's to refuse; here it only bounds the body if it is sane.
    values = headers.get("content-length")
    return int(values[0]) if values and values[0].strip().isdigit() else None


def _decoded_length(headers: dict[str, list[str]]) -> int | None:
    values = headers.get("x-amz-decoded-content-length")
    if not values:
        return None
    value = values[0].strip()
    if not value.isdigit():
        raise InvalidArgument(
            "x-amz-decoded-content-length must be a non-negative integer",
            ArgumentName="x-amz-decoded-content-length",
            ArgumentValue=value,
        )
    return int(value)


def _chunk_signature(extensions: bytes) -> bytes:
    for extension in extensions.split(b";"):
        name, _, value = extension.partition(b"=")
        if name.strip() == b"chunk-signature":
            value = value.strip()
            if _SIGNATURE(value):
                return value
            break
    raise SignatureDoesNotMatch("The aws-chunked body has a chunk without a valid chunk-signature.")


def _supported(algorithm: str) -> None:
    if algorithm not in _DIGEST_SIZES:
        raise _unsupported_algorithm(algorithm)


def _unsupported_algorithm(algorithm: str) -> AwsError:
    supported = ", ".join(CHECKSUM_ALGORITHMS)
    if algorithm in _UNSUPPORTED_ALGORITHMS:
        return InvalidRequest(
            f"The {algorithm} checksum algorithm is not supported by this server; use one of {supported}."
        )
    return InvalidRequest(
        "Checksum algorithm provided is unsupported. Please try again with any of the valid types: "
        f"[{supported}]"
    )
