"""S3 request bodies: botocore's real bodies, AWS's signed-chunk examples, every check and every refusal.

Bodies are fed in awkward pieces (1 byte, splits inside the chunk-size line and across CRLFs) because
that is how they arrive from the network. Pure unit tests: no server.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from botocore.httpchecksum import Crc32Checksum, Sha1Checksum, Sha256Checksum

from mlharbor.api.s3auth import PayloadCheck
from mlharbor.api.s3payload import CHECKSUM_ALGORITHMS, MAX_LINE, Payload, PayloadDecoder, new_checksum
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
from tests.api.test_s3auth import (
    AWS_AUTH,
    AWS_NOW,
    BUCKET,
    Wire,
    aws_chunked_example,
    aws_signing_key,
    aws_trailer_example,
    capture,
    s3_client,
)

UNSIGNED = PayloadCheck("unsigned")
UNSIGNED_CHUNKS = PayloadCheck("unsigned-chunks", trailer=True)
HELLO = b"hello world"
HELLO_CRC32 = "DUoRhQ=="  # what botocore sends for b"hello world" (companions.md 5.2)


# --- helpers --------------------------------------------------------------------------------------------
def pieces(body: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def decode(
    check: PayloadCheck,
    headers: dict[str, list[str]],
    parts: Iterable[bytes],
    *,
    checksum_algorithm: str | None = None,
) -> tuple[bytes, Payload]:
    decoder = PayloadDecoder(check, headers, checksum_algorithm=checksum_algorithm)
    out = bytearray()
    for part in parts:
        out += decoder.feed(part)
    return bytes(out), decoder.finish()


def error_of(check: PayloadCheck, headers: dict[str, list[str]], body: bytes, piece: int = 7) -> AwsError:
    with pytest.raises(AwsError) as info:
        decode(check, headers, pieces(body, piece))
    return info.value


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def crc32_b64(data: bytes) -> str:
    return b64(zlib.crc32(data).to_bytes(4, "big"))


def chunked(data: bytes, chunk: int, trailer: bytes = b"") -> bytes:
    """aws-chunked framing as botocore writes it (no signatures)."""
    body = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in pieces(data, chunk))
    return body + b"0\r\n" + trailer + b"\r\n"


def chunked_headers(
    trailer: str | None = "x-amz-checksum-crc32", length: int | None = None
) -> dict[str, list[str]]:
    headers = {
        "content-encoding": ["aws-chunked"],
        "x-amz-content-sha256": ["STREAMING-UNSIGNED-PAYLOAD-TRAILER"],
    }
    if trailer:
        headers["x-amz-trailer"] = [trailer]
    if length is not None:
        headers["x-amz-decoded-content-length"] = [str(length)]
    return headers


def https_put(data: bytes, **params: Any) -> Wire:
    return capture(s3_client(scheme="https"), "put_object", Bucket=BUCKET, Key="k", Body=data, **params)


def http_put(data: bytes, **params: Any) -> Wire:
    return capture(s3_client(), "put_object", Bucket=BUCKET, Key="k", Body=data, **params)


# --- botocore's own bodies ------------------------------------------------------------------------------
def test_https_put_object_body_is_aws_chunked_with_a_crc32_trailer() -> None:
    wire = https_put(HELLO)
    assert wire.body == b"b\r\nhello world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n"
    assert "content-length" not in wire.headers and wire.headers["x-amz-decoded-content-length"] == ["11"]
    check = wire.verify().payload
    # Every split position, and every small piece size, including 1 byte at a time.
    for cut in range(len(wire.body) + 1):
        data, payload = decode(check, wire.headers, [wire.body[:cut], wire.body[cut:]])
        assert data == HELLO, cut
        assert payload == Payload(11, hashlib.md5(HELLO).hexdigest(), {"CRC32": HELLO_CRC32})
    for size in (1, 2, 3, 5, 13):
        assert decode(check, wire.headers, pieces(wire.body, size))[0] == HELLO


@pytest.mark.parametrize("size", [1, 2, 3, 4097, 65_536, 1 << 20, (1 << 20) + 2, 10 << 20])
def test_https_put_object_multi_chunk(size: int) -> None:
    data = os.urandom(2 * (1 << 20) + 12_345)  # three of botocore's 1 MiB chunks
    wire = https_put(data)
    check = wire.verify().payload
    if size < 100:  # byte-by-byte over megabytes is slow: feed the head in tiny pieces, the rest whole
        head = wire.body[:300]
        parts: Iterable[bytes] = [*pieces(head, size), wire.body[300:]]
    else:
        parts = pieces(wire.body, size)
    decoded, payload = decode(check, wire.headers, parts)
    assert decoded == data
    assert payload.size == len(data) and payload.md5_hex == hashlib.md5(data).hexdigest()
    assert payload.checksums == {"CRC32": crc32_b64(data)}


def test_https_put_object_splits_around_every_chunk_boundary() -> None:
    data = os.urandom(2 * (1 << 20) + 5)
    wire = https_put(data)
    check = wire.verify().payload
    boundaries, start = [], 0
    while True:  # the end of each chunk-size line and of each chunk's data
        line_end = wire.body.index(b"\r\n", start)
        size = int(wire.body[start:line_end], 16)
        boundaries += [line_end, line_end + 2 + size]
        if not size:
            break
        start = line_end + 4 + size
    assert len(boundaries) == 8
    for boundary in boundaries:
        for cut in range(boundary - 3, boundary + 12):  # across the CRLF and inside the next size line
            decoded, _ = decode(check, wire.headers, [wire.body[:cut], wire.body[cut:]])
            assert decoded == data


def test_http_put_object_header_checksum_and_signed_digest() -> None:
    wire = http_put(HELLO)
    assert wire.headers["x-amz-checksum-crc32"] == [HELLO_CRC32]
    check = wire.verify().payload
    assert check == PayloadCheck("sha256", sha256=hashlib.sha256(HELLO).hexdigest())
    for size in (1, 4, 11):
        data, payload = decode(check, wire.headers, pieces(wire.body, size))
        assert data == HELLO and payload.checksums == {"CRC32": HELLO_CRC32}
    error = error_of(check, wire.headers, b"hello World")
    assert isinstance(error, XAmzContentSHA256Mismatch)
    assert error.fields == {
        "ClientComputedContentSHA256": hashlib.sha256(HELLO).hexdigest(),
        "S3ComputedContentSHA256": hashlib.sha256(b"hello World").hexdigest(),
    }


def test_http_put_object_wrong_header_checksum() -> None:
    wire = http_put(HELLO)
    headers = {**wire.headers, "x-amz-checksum-crc32": [crc32_b64(b"other")]}
    error = error_of(wire.verify().payload, headers, wire.body)
    assert isinstance(error, BadDigest)
    assert error.message == "The CRC32 you specified did not match the calculated checksum."


@pytest.mark.parametrize("algorithm", ["SHA1", "SHA256", "CRC32"])
def test_botocore_trailers_for_each_algorithm_it_computes_without_awscrt(algorithm: str) -> None:
    data = os.urandom(5000)
    wire = https_put(data, ChecksumAlgorithm=algorithm)
    assert wire.headers["x-amz-trailer"] == [f"x-amz-checksum-{algorithm.lower()}"]
    decoded, payload = decode(wire.verify().payload, wire.headers, pieces(wire.body, 999))
    assert decoded == data and payload.checksums == {algorithm: b64_of(algorithm, data)}


@pytest.mark.parametrize("algorithm", ["SHA1", "SHA256"])
def test_botocore_header_checksums(algorithm: str) -> None:
    wire = http_put(HELLO, ChecksumAlgorithm=algorithm)
    _, payload = decode(wire.verify().payload, wire.headers, [wire.body])
    assert payload.checksums == {algorithm: b64_of(algorithm, HELLO)}


def test_content_md5_from_botocore() -> None:
    md5 = b64(hashlib.md5(HELLO).digest())
    for wire in (http_put(HELLO, ContentMD5=md5), https_put(HELLO, ContentMD5=md5)):
        check = wire.verify().payload
        assert decode(check, wire.headers, [wire.body])[1].md5_hex == hashlib.md5(HELLO).hexdigest()
        wrong = {**wire.headers, "content-md5": [b64(hashlib.md5(b"x").digest())]}
        error = error_of(UNSIGNED if check.mode == "sha256" else check, wrong, wire.body)
        assert isinstance(error, BadDigest)
        assert error.message == "The Content-MD5 you specified did not match what we received."
        assert error.fields["ExpectedDigest"] == b64(hashlib.md5(b"x").digest())


def b64_of(algorithm: str, data: bytes) -> str:
    checksum = {"CRC32": Crc32Checksum, "SHA1": Sha1Checksum, "SHA256": Sha256Checksum}[algorithm]()
    checksum.update(data)
    return checksum.b64digest()


# --- AWS's signed-chunk examples ------------------------------------------------------------------------
AWS_CHUNK_SIGNATURES = (
    "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
)


def aws_chunked_body(
    signatures: tuple[str, ...] = AWS_CHUNK_SIGNATURES, data: bytes = b"a" * 66_560
) -> bytes:
    """The 66,560-byte PUT of sigv4-streaming, with its published chunk signatures (64 KiB, 1 KiB, 0)."""
    first, second = data[:65_536], data[65_536:]
    return (
        b"10000;chunk-signature=%s\r\n%s\r\n" % (signatures[0].encode(), first)
        + b"400;chunk-signature=%s\r\n%s\r\n" % (signatures[1].encode(), second)
        + b"0;chunk-signature=%s\r\n\r\n" % signatures[2].encode()
    )


def test_aws_signed_chunk_example() -> None:
    wire = aws_chunked_example()
    check = wire.verify(AWS_AUTH, now=AWS_NOW).payload
    body = aws_chunked_body()
    assert len(body) == 66_824  # the example's Content-Length
    for size in (1_000_000, 65_536, 8191, 89, 1):
        if size == 1:  # one byte at a time through the chunk headers, the data in bulk
            parts: list[bytes] = [*pieces(body[:200], 1), body[200:66_000], *pieces(body[66_000:], 1)]
        else:
            parts = list(pieces(body, size))
        data, payload = decode(check, wire.headers, parts)
        assert data == b"a" * 66_560 and payload.size == 66_560 and payload.checksums == {}


def test_aws_signed_chunk_example_tampered() -> None:
    wire = aws_chunked_example()
    check = wire.verify(AWS_AUTH, now=AWS_NOW).payload
    body = aws_chunked_body()
    # A changed byte of data, a changed signature, chunks out of order, a missing signature.
    for bad in (
        aws_chunked_body(data=b"a" * 30_000 + b"b" + b"a" * (66_560 - 30_001)),
        aws_chunked_body(data=b"a" * 66_559 + b"b"),
        body.replace(AWS_CHUNK_SIGNATURES[1].encode(), b"0" * 64),
        body.replace(AWS_CHUNK_SIGNATURES[2].encode(), AWS_CHUNK_SIGNATURES[1].encode()),
        body.replace(b";chunk-signature=" + AWS_CHUNK_SIGNATURES[2].encode(), b""),
    ):
        assert isinstance(error_of(check, wire.headers, bad, 4096), SignatureDoesNotMatch)


def test_aws_signed_chunk_example_fails_fast() -> None:
    # A bad chunk is refused as soon as its data is in, before the rest of the body.
    wire = aws_chunked_example()
    decoder = PayloadDecoder(wire.verify(AWS_AUTH, now=AWS_NOW).payload, wire.headers)
    bad = aws_chunked_body(data=b"b" + b"a" * 66_559)
    decoder.feed(bad[:1000])
    with pytest.raises(SignatureDoesNotMatch):
        decoder.feed(bad[1000:65_700])


def _sign_chain(previous: str, chunk_hashes: list[str]) -> list[str]:
    # The chunk string to sign, as sigv4-streaming spells it (kept apart from the decoder's own code).
    key, signatures = aws_signing_key(), []
    for chunk_hash in chunk_hashes:
        string = "\n".join(
            (
                "AWS4-HMAC-SHA256-PAYLOAD",
                "20130524T000000Z",
                "20130524/us-east-1/s3/aws4_request",
                previous,
                hashlib.sha256(b"").hexdigest(),
                chunk_hash,
            )
        )
        previous = hmac.new(key, string.encode(), hashlib.sha256).hexdigest()
        signatures.append(previous)
    return signatures


AWS_TRAILER_ZERO_CHUNK = "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992"
AWS_TRAILER_SIGNATURE = "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435"


def aws_trailer_body(trailer_signature: str = AWS_TRAILER_SIGNATURE, crc: bytes = b"sOO8/Q==") -> bytes:
    """sigv4-streaming-trailers' example: the same 66,560 bytes, then a signed CRC32C trailer."""
    hashes = [hashlib.sha256(b"a" * n).hexdigest() for n in (65_536, 1024, 0)]
    signatures = _sign_chain("106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e", hashes)
    assert signatures[2] == AWS_TRAILER_ZERO_CHUNK  # the example's published final-chunk signature
    return aws_chunked_body(tuple(signatures))[:-2] + (
        b"x-amz-checksum-crc32c:%s\r\nx-amz-trailer-signature:%s\r\n\r\n" % (crc, trailer_signature.encode())
    )


def test_aws_signed_trailer_example() -> None:
    wire = aws_trailer_example()
    check = wire.verify(AWS_AUTH, now=AWS_NOW).payload
    assert check.trailer
    body = aws_trailer_body()
    for size in (1 << 20, 4096, 97, 5):
        data, payload = decode(check, wire.headers, pieces(body, size))
        assert data == b"a" * 66_560 and payload.checksums == {"CRC32C": "sOO8/Q=="}
    # Tolerated: the final empty line missing.
    assert decode(check, wire.headers, [body[:-2]])[1].checksums == {"CRC32C": "sOO8/Q=="}


def test_aws_signed_trailer_example_tampered() -> None:
    wire = aws_trailer_example()
    check = wire.verify(AWS_AUTH, now=AWS_NOW).payload
    for bad in (aws_trailer_body(trailer_signature="0" * 64), aws_trailer_body(crc=b"AAAAAA==")):
        error = error_of(check, wire.headers, bad, 4096)
        assert isinstance(error, SignatureDoesNotMatch)
        assert error.message.startswith("The trailer signature we calculated")
    non_ascii = aws_trailer_body(trailer_signature="é" * 64)
    assert isinstance(error_of(check, wire.headers, non_ascii, 4096), SignatureDoesNotMatch)
    missing = aws_trailer_body().replace(
        b"x-amz-trailer-signature:" + AWS_TRAILER_SIGNATURE.encode() + b"\r\n", b""
    )
    assert isinstance(error_of(check, wire.headers, missing, 4096), SignatureDoesNotMatch)


# --- what finish() checks -------------------------------------------------------------------------------
def test_truncated_chunked_body() -> None:
    data = os.urandom(3000)
    body = chunked(data, 1000, b"x-amz-checksum-crc32:%s\r\n" % crc32_b64(data).encode())
    headers = chunked_headers(length=3000)
    final = body.index(b"0\r\nx-amz")
    for cut in list(range(0, final + 2, 97)) + [final, final + 1, final + 2]:
        error = error_of(UNSIGNED_CHUNKS, headers, body[:cut])
        assert isinstance(error, IncompleteBody), cut


def test_decoded_length_mismatch() -> None:
    body = chunked(HELLO, 4, b"x-amz-checksum-crc32:%s\r\n" % HELLO_CRC32.encode())
    assert decode(UNSIGNED_CHUNKS, chunked_headers(length=11), [body])[0] == HELLO
    for length in (12, 10, 0):
        error = error_of(UNSIGNED_CHUNKS, chunked_headers(length=length), body)
        assert isinstance(error, IncompleteBody) and "x-amz-decoded-content-length" in error.message
    bad = {**chunked_headers(), "x-amz-decoded-content-length": ["eleven"]}
    assert isinstance(error_of(UNSIGNED_CHUNKS, bad, body), InvalidArgument)


def test_too_much_data_is_refused_before_it_arrives() -> None:
    decoder = PayloadDecoder(UNSIGNED_CHUNKS, chunked_headers(length=10))
    with pytest.raises(IncompleteBody):
        decoder.feed(b"100000\r\n")  # a 1 MiB chunk announced for a 10-byte object


def test_wrong_trailer_checksum() -> None:
    body = chunked(HELLO, 1 << 20, b"x-amz-checksum-crc32:%s\r\n" % crc32_b64(b"nope").encode())
    error = error_of(UNSIGNED_CHUNKS, chunked_headers(), body)
    assert isinstance(error, BadDigest)
    assert error.message == "The CRC32 you specified did not match the calculated checksum."


def test_declared_trailer_never_sent() -> None:
    error = error_of(UNSIGNED_CHUNKS, chunked_headers(), chunked(HELLO, 100))
    assert isinstance(error, IncompleteBody) and "x-amz-checksum-crc32" in error.message


def test_final_crlf_may_be_missing() -> None:
    trailer = b"x-amz-checksum-crc32:" + HELLO_CRC32.encode()
    body = b"b\r\nhello world\r\n0\r\n" + trailer
    for end in (b"", b"\r", b"\r\n"):
        for size in (1, 3, 100):
            _, payload = decode(UNSIGNED_CHUNKS, chunked_headers(), pieces(body + end, size))
            assert payload.checksums == {"CRC32": HELLO_CRC32}
    # No trailer at all, and no final CRLF: "0\r\n" ends the body.
    assert decode(PayloadCheck("unsigned"), {"content-encoding": ["aws-chunked"]}, [b"0\r\n"])[1].size == 0


def test_chunked_without_trailer_and_bare_lf() -> None:
    headers = {"content-encoding": ["gzip, aws-chunked"]}
    assert decode(UNSIGNED, headers, [b"5\r\nhello\r\n0\r\n\r\n"])[0] == b"hello"
    assert decode(UNSIGNED, headers, [b"5\nhello\r\n0\n\n"])[0] == b"hello"
    # Chunk extensions other than signatures are ignored in unsigned framing.
    assert decode(UNSIGNED, headers, [b"5;foo=bar\r\nhello\r\n0\r\n\r\n"])[0] == b"hello"


def test_chunked_sha256_mode_hashes_the_body_as_sent() -> None:
    body = b"5\r\nhello\r\n0\r\n\r\n"
    check = PayloadCheck("sha256", sha256=hashlib.sha256(body).hexdigest())
    assert decode(check, {"content-encoding": ["aws-chunked"]}, pieces(body, 3))[0] == b"hello"


def test_content_length_short() -> None:
    headers = {"content-length": ["12"]}
    assert isinstance(error_of(UNSIGNED, headers, HELLO), IncompleteBody)
    assert decode(UNSIGNED, {"content-length": ["11"]}, [HELLO])[1].size == 11


def test_plain_body_is_passed_through_without_copies() -> None:
    decoder = PayloadDecoder(UNSIGNED, {})
    data = os.urandom(1 << 16)
    assert decoder.feed(data) is data
    assert decoder.feed(b"") == b""
    assert decoder.finish() == Payload(1 << 16, hashlib.md5(data).hexdigest(), {})


def test_requested_checksum_is_computed_without_a_value() -> None:
    _, payload = decode(UNSIGNED, {}, [HELLO], checksum_algorithm="CRC32C")
    assert payload.checksums == {"CRC32C": b64((0xC99465AA).to_bytes(4, "big"))}
    # A requested algorithm other than the one sent: both are computed, the sent one verified.
    _, payload = decode(UNSIGNED, {"x-amz-checksum-crc32": [HELLO_CRC32]}, [HELLO], checksum_algorithm="sha1")
    assert payload.checksums == {"CRC32": HELLO_CRC32, "SHA1": b64(hashlib.sha1(HELLO).digest())}
    with pytest.raises(InvalidRequest):
        PayloadDecoder(UNSIGNED, {}, checksum_algorithm="MD4")


# --- framing errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"zz\r\nhello\r\n0\r\n\r\n", InvalidRequest),  # size not hex
        (b"0x5\r\nhello\r\n0\r\n\r\n", InvalidRequest),
        (b"+5\r\nhello\r\n0\r\n\r\n", InvalidRequest),
        (b"\r\nhello\r\n0\r\n\r\n", InvalidRequest),  # no size at all
        (b"5\r\nhelloXX0\r\n\r\n", IncompleteBody),  # data not followed by CRLF
        (b"5\r\nhello\r\n0\r\n\r\nmore", InvalidRequest),  # data after the end
        (b"5\r\nhello\r\n0\r\nx-amz-meta-a:b\r\n\r\n", InvalidRequest),  # undeclared trailer
        (b"5\r\nhello\r\n0\r\nno colon\r\n\r\n", InvalidRequest),
        (b"5\r\nhel", IncompleteBody),
        (b"5\r\nhello\r\n", IncompleteBody),
    ],
)
def test_bad_framing(body: bytes, error: type[AwsError]) -> None:
    headers = {"content-encoding": ["aws-chunked"]}
    for size in (1, 2, len(body)):
        assert isinstance(error_of(UNSIGNED, headers, body, size), error)


def test_long_lines_are_refused_not_buffered() -> None:
    for prefix in (b"", b"5\r\nhello\r\n0\r\n"):  # a chunk-size line, then a trailer line
        decoder = PayloadDecoder(UNSIGNED_CHUNKS, chunked_headers())
        decoder.feed(prefix)
        with pytest.raises(InvalidRequest):
            for _ in range(10):
                decoder.feed(b"1" * 1000)
        with pytest.raises(InvalidRequest):
            PayloadDecoder(UNSIGNED_CHUNKS, chunked_headers()).feed(prefix + b"a" * (MAX_LINE + 1) + b"\r\n")


def test_repeated_trailers_are_refused() -> None:
    for line in (b"x-amz-trailer-signature:x\r\n", b"x-amz-checksum-crc32:%s\r\n" % HELLO_CRC32.encode()):
        body = b"b\r\nhello world\r\n0\r\n" + line * 20 + b"\r\n"
        assert isinstance(error_of(UNSIGNED_CHUNKS, chunked_headers(), body), InvalidRequest)


# --- header errors (raised before any body is read) ------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "error", "message"),
    [
        (
            {"x-amz-checksum-crc32": [HELLO_CRC32], "x-amz-checksum-sha1": ["qvTGHdzF6KLavt4PO0gs2a6pQ00="]},
            InvalidRequest,
            "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.",
        ),
        (
            {"x-amz-checksum-crc32": [HELLO_CRC32, "AAAAAA=="]},
            InvalidRequest,
            "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.",
        ),
        (
            {"x-amz-checksum-crc32": ["not base64!"]},
            InvalidRequest,
            "Value for x-amz-checksum-crc32 header is invalid.",
        ),
        (
            {"x-amz-checksum-crc32": ["AAAAAAAA"]},
            InvalidRequest,
            "Value for x-amz-checksum-crc32 header is invalid.",
        ),
        ({"x-amz-checksum-sha512": ["AAAA"]}, InvalidRequest, None),
        ({"x-amz-checksum-foo": ["AAAA"]}, InvalidRequest, None),
        (
            {"x-amz-sdk-checksum-algorithm": ["FOO"], "x-amz-checksum-crc32": [HELLO_CRC32]},
            InvalidRequest,
            None,
        ),
        (
            {"x-amz-sdk-checksum-algorithm": ["CRC32"]},
            InvalidRequest,
            "x-amz-sdk-checksum-algorithm specified, but no corresponding x-amz-checksum-* or x-amz-trailer "
            "headers were found.",
        ),
        (
            {"x-amz-sdk-checksum-algorithm": ["SHA1"], "x-amz-checksum-crc32": [HELLO_CRC32]},
            InvalidRequest,
            None,
        ),
        ({"content-md5": ["nope"]}, InvalidDigest, None),
        ({"content-md5": [b64(b"short")]}, InvalidDigest, None),
        ({"x-amz-trailer": ["x-amz-checksum-crc32"]}, InvalidRequest, None),  # not chunked
    ],
)
def test_bad_headers(headers: dict[str, list[str]], error: type[AwsError], message: str | None) -> None:
    with pytest.raises(error) as info:
        PayloadDecoder(UNSIGNED, headers)
    if message is not None:
        assert info.value.message == message


@pytest.mark.parametrize(
    "trailer", ["x-amz-meta-foo", "x-amz-checksum-sha512", "x-amz-checksum-crc32, x-amz-checksum-sha1"]
)
def test_bad_trailer_declarations(trailer: str) -> None:
    with pytest.raises(InvalidRequest):
        PayloadDecoder(UNSIGNED_CHUNKS, chunked_headers(trailer))


def test_header_checksum_and_trailer_together() -> None:
    headers = {**chunked_headers(), "x-amz-checksum-crc32": [HELLO_CRC32]}
    with pytest.raises(InvalidRequest):
        PayloadDecoder(UNSIGNED_CHUNKS, headers)


def test_checksum_headers_without_values_are_ignored() -> None:
    headers = {"x-amz-checksum-type": ["FULL_OBJECT"], "x-amz-checksum-mode": ["ENABLED"]}
    assert decode(UNSIGNED, headers, [HELLO])[1].checksums == {}


def test_bad_trailer_value() -> None:
    body = chunked(HELLO, 100, b"x-amz-checksum-crc32:!!\r\n")
    error = error_of(UNSIGNED_CHUNKS, chunked_headers(), body)
    assert isinstance(error, InvalidRequest)
    assert error.message == "Value for x-amz-checksum-crc32 trailing header is invalid."


# --- checksums ------------------------------------------------------------------------------------------
# Check values of the CRC catalogue (input "123456789") and digests of the hash standards.
CHECK_VALUES = {
    "CRC32": (0xCBF43926).to_bytes(4, "big"),
    "CRC32C": (0xE3069283).to_bytes(4, "big"),
    "CRC64NVME": (0xAE8B14860A799888).to_bytes(8, "big"),
    "SHA1": bytes.fromhex("f7c3bc1d808e04732adf679965ccc34ca7ae3441"),
    "SHA256": bytes.fromhex("15e2b0d3c33891ebb0f1ef609ec419420c20e320ce94c65fbc8c3312448eb225"),
}


@pytest.mark.parametrize("algorithm", CHECKSUM_ALGORITHMS)
def test_checksum_check_values(algorithm: str) -> None:
    whole = new_checksum(algorithm)
    whole.update(b"123456789")
    assert whole.digest() == CHECK_VALUES[algorithm]
    assert whole.b64() == b64(CHECK_VALUES[algorithm])
    split = new_checksum(algorithm)
    for part in (b"1", memoryview(b"xx234")[2:], bytearray(b""), b"56789"):
        split.update(part)
    assert split.b64() == whole.b64()


@pytest.mark.parametrize("algorithm", ["CRC32", "SHA1", "SHA256"])
def test_checksums_agree_with_botocore(algorithm: str) -> None:
    data = os.urandom(100_000)
    ours = new_checksum(algorithm)
    ours.update(data)
    assert ours.b64() == b64_of(algorithm, data)


def test_aws_crc_examples() -> None:
    # Documented values: the CRC32C of S3's 66,560-byte example, botocore's CRC32 of "hello world".
    crc32c = new_checksum("CRC32C")
    crc32c.update(b"a" * 66_560)
    assert crc32c.b64() == "sOO8/Q=="
    crc32 = new_checksum("CRC32")
    crc32.update(HELLO)
    assert crc32.b64() == HELLO_CRC32


def test_crc64nvme_and_crc32c_bodies() -> None:
    # botocore needs awscrt for these two: build the bodies it would send.
    data = os.urandom(70_000)
    for algorithm in ("CRC32C", "CRC64NVME"):
        checksum = new_checksum(algorithm)
        checksum.update(data)
        name = f"x-amz-checksum-{algorithm.lower()}"
        body = chunked(data, 1 << 16, f"{name}:{checksum.b64()}\r\n".encode())
        headers = {**chunked_headers(name, 70_000), "x-amz-sdk-checksum-algorithm": [algorithm]}
        _, payload = decode(UNSIGNED_CHUNKS, headers, pieces(body, 3333))
        assert payload.checksums == {algorithm: checksum.b64()}
        _, payload = decode(UNSIGNED, {name: [checksum.b64()]}, [data])
        assert payload.checksums == {algorithm: checksum.b64()}


def test_unsupported_algorithm_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        new_checksum("XXHASH64")
