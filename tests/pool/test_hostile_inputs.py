"""A corpus of hostile requests: each gets a 4xx with a JSON error, never a 5xx, and
nothing is stored.

One row of CORPUS per input, so the test report lists every case; the session ends
with a one-line count ("hostile inputs tried: N, 5xx seen: 0").
"""

from __future__ import annotations

import gzip
import json
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import pytest

from pool.models import Payload, Session
from tests.conftest import payload_body

TALLY = {"tried": 0, "5xx": 0}

VALID_KEY = "<the customer's valid key>"  # stands for the real key, known only at run time
PAYLOADS_URL = "/api/v1/sessions/s-1/payloads"
SESSION_URL = "/api/v1/sessions/s-1"
EVENT = {"type": 3, "data": {"source": 1}, "timestamp": 1_700_000_000_000}
MIB = 1024 * 1024


@pytest.fixture(scope="session", autouse=True)
def hostile_summary(request):
    yield
    line = f"hostile inputs tried: {TALLY['tried']}, 5xx seen: {TALLY['5xx']}"
    # Teardown output is captured like a test's; print past the capture, as capsys.disabled().
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n{line}")


@dataclass(frozen=True)
class Hostile:
    id: str
    status: int
    body: bytes | Callable[[], bytes] = b""
    method: str = "POST"
    path: str = PAYLOADS_URL
    content_type: str = "application/json"
    auth: str | None = f"Bearer {VALID_KEY}"  # the Authorization header; None sends none
    headers: dict[str, str] = field(default_factory=dict)
    max_bytes: int | None = None  # INGEST_MAX_BYTES for this case, if not the default

    def request_body(self) -> bytes:
        return self.body() if callable(self.body) else self.body


# --- body builders -----------------------------------------------------------------


def dumps(doc) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


def valid() -> bytes:
    return dumps(payload_body(0))


def field_set(**changes) -> bytes:
    return dumps({"payload_id": 0, "events": [EVENT], **changes})


def event_set(**changes) -> bytes:
    return dumps({"payload_id": 0, "events": [{**EVENT, **changes}]})


def event_without(*keys: str) -> bytes:
    return dumps({"payload_id": 0, "events": [{k: v for k, v in EVENT.items() if k not in keys}]})


def error_set(error) -> bytes:
    return dumps({"payload_id": 0, "events": [], "errors": [error]})


def in_data(fragment: bytes) -> bytes:
    return b'{"payload_id":0,"events":[{"type":3,"timestamp":1,"data":{"x":' + fragment + b"}}]}"


def nested(depth: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * depth + closer * depth


@cache
def gzip_bomb(prefix: bytes, fill: bytes, mib: int) -> bytes:
    """`prefix` then `mib` MiB of `fill`, as one gzip member of roughly mib KiB.

    Deflating 1 GiB takes seconds, so one MiB is deflated once and the block repeated:
    after Z_FULL_FLUSH a block is byte-aligned and refers to nothing before it. Only
    the CRC walks the whole gigabyte (~0.3 s), one MiB at a time.
    """
    chunk = fill * MIB
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = deflate.compress(prefix) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(prefix)
    for _ in range(mib):
        crc = zlib.crc32(chunk, crc)
    size = len(prefix) + mib * MIB
    final_empty_block = b"\x03\x00"
    return b"".join(
        [
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff",  # gzip header, no name, no mtime
            head,
            block * mib,
            final_empty_block,
            struct.pack("<II", crc, size & 0xFFFFFFFF),
        ]
    )


def whitespace_bomb() -> bytes:
    # Valid JSON if fully inflated: a parser that trusted the inflated size would take it.
    return gzip_bomb(b'{"payload_id":0,"events":[]}', b" ", 1024)


def zeros_bomb() -> bytes:
    return gzip_bomb(b"", b"\0", 1024)


@cache
def huge_events_last_bad() -> bytes:
    events = [EVENT] * 50_000 + [{"type": 3, "data": {}, "timestamp": "late"}]
    return dumps({"payload_id": 0, "events": events})


def with_gzip_trailer_crc(crc: int) -> bytes:
    good = gzip.compress(valid())
    return good[:-8] + struct.pack("<I", crc) + good[-4:]


GZ = {"HTTP_CONTENT_ENCODING": "gzip"}
LONG_KEY = "A" * 100_000


CORPUS = [
    # --- nesting and size of JSON ---
    Hostile("nesting-100k-arrays-in-data", 400, lambda: in_data(nested(100_000))),
    Hostile("nesting-100k-objects-in-data", 400, lambda: in_data(nested(100_000, b'{"a":', b"}"))),
    Hostile("nesting-100k-arrays-top-level", 400, lambda: nested(100_000)),
    Hostile("nesting-100k-arrays-unclosed", 400, lambda: b"[" * 100_000),
    Hostile("nesting-1100-arrays-past-parser-limit", 400, lambda: in_data(nested(1100))),
    Hostile(
        "nesting-100k-arrays-as-events",
        400,
        lambda: b'{"payload_id":0,"events":' + nested(100_000) + b"}",
    ),
    Hostile(
        "huge-array-1M-ints-as-events",
        400,
        lambda: dumps({"payload_id": 0, "events": [0] * 1_000_000}),
    ),
    Hostile("huge-array-50k-events-last-one-bad", 400, huge_events_last_bad),
    Hostile(
        "huge-array-500k-strings-as-errors",
        400,
        lambda: dumps({"payload_id": 0, "events": [], "errors": ["e"] * 500_000}),
    ),
    Hostile(
        "huge-array-200k-empty-events",
        400,
        lambda: dumps({"payload_id": 0, "events": [{}] * 200_000}),
    ),
    # --- numbers JSON does not have ---
    Hostile("nan-timestamp", 400, lambda: event_set(timestamp=float("nan"))),
    Hostile("infinity-timestamp", 400, lambda: event_set(timestamp=float("inf"))),
    Hostile("minus-infinity-timestamp", 400, lambda: event_set(timestamp=float("-inf"))),
    Hostile("nan-payload-id", 400, lambda: field_set(payload_id=float("nan"))),
    Hostile("infinity-payload-id", 400, lambda: field_set(payload_id=float("inf"))),
    Hostile(
        "overflowing-1e400-timestamp",
        400,
        lambda: in_data(b"0").replace(b'"timestamp":1', b'"timestamp":1e400'),
    ),
    Hostile(
        "integer-beyond-64-bits-payload-id", 400, b'{"payload_id":' + b"9" * 40 + b',"events":[]}'
    ),
    # --- bytes that are not UTF-8 JSON ---
    Hostile("invalid-utf8-leading-ff-fe", 400, lambda: b"\xff\xfe" + valid()),
    Hostile("latin1-byte-in-string", 400, b'{"payload_id":0,"events":[],"x":"caf\xe9"}'),
    Hostile("utf16-with-bom", 400, lambda: json.dumps(payload_body(0)).encode("utf-16")),
    Hostile("utf8-bom-before-json", 400, lambda: b"\xef\xbb\xbf" + valid()),
    Hostile("overlong-utf8-slash", 400, b'{"payload_id":0,"events":[],"x":"\xc0\xaf"}'),
    Hostile("cesu8-surrogate-bytes", 400, b'{"payload_id":0,"events":[],"x":"\xed\xa0\x80"}'),
    Hostile("lone-surrogate-escape", 400, b'{"payload_id":0,"events":[],"x":"\\ud800"}'),
    Hostile("nul-byte-after-document", 400, lambda: valid() + b"\0"),
    Hostile("second-document-after-first", 400, lambda: valid() + valid()),
    # --- gzip ---
    Hostile(
        "gzip-bomb-1GiB-whitespace-limit-2MiB", 413, whitespace_bomb, headers=GZ, max_bytes=2 * MIB
    ),
    Hostile("gzip-bomb-1GiB-zeros-default-limit", 413, zeros_bomb, headers=GZ),
    Hostile("gzip-truncated", 400, lambda: gzip.compress(valid())[:-12], headers=GZ),
    Hostile("gzip-header-only", 400, lambda: gzip.compress(valid())[:10], headers=GZ),
    Hostile("gzip-trailing-garbage", 400, lambda: gzip.compress(valid()) + b"garbage", headers=GZ),
    Hostile("gzip-two-members", 400, lambda: gzip.compress(valid()) * 2, headers=GZ),
    Hostile("gzip-wrong-crc", 400, lambda: with_gzip_trailer_crc(0xDEADBEEF), headers=GZ),
    Hostile(
        "gzip-garbage-deflate-stream",
        400,
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + b"\xff" * 64,
        headers=GZ,
    ),
    Hostile("gzip-declared-but-plain-json", 400, valid, headers=GZ),
    Hostile("gzip-declared-but-zlib-stream", 400, lambda: zlib.compress(valid()), headers=GZ),
    Hostile("gzip-declared-empty-body", 400, b"", headers=GZ),
    Hostile("gzip-of-gzip", 400, lambda: gzip.compress(gzip.compress(valid())), headers=GZ),
    Hostile("encoding-br", 415, valid, headers={"HTTP_CONTENT_ENCODING": "br"}),
    Hostile("encoding-deflate", 415, valid, headers={"HTTP_CONTENT_ENCODING": "deflate"}),
    Hostile("encoding-gzip-twice", 415, valid, headers={"HTTP_CONTENT_ENCODING": "gzip, gzip"}),
    Hostile("encoding-garbage", 415, valid, headers={"HTTP_CONTENT_ENCODING": "\u00ff" * 1000}),
    # --- wrong types, field by field ---
    Hostile("payload_id-string", 400, lambda: field_set(payload_id="0")),
    Hostile("payload_id-negative", 400, lambda: field_set(payload_id=-1)),
    Hostile("payload_id-bool", 400, lambda: field_set(payload_id=True)),
    Hostile("payload_id-float", 400, lambda: field_set(payload_id=0.5)),
    Hostile("payload_id-null", 400, lambda: field_set(payload_id=None)),
    Hostile("payload_id-object", 400, lambda: field_set(payload_id={"$gt": 0})),
    Hostile("payload_id-array", 400, lambda: field_set(payload_id=[0])),
    Hostile("payload_id-2^63", 400, lambda: field_set(payload_id=2**63)),
    Hostile("payload_id-missing", 400, lambda: dumps({"events": []})),
    Hostile("events-string", 400, lambda: field_set(events="[]")),
    Hostile("events-object", 400, lambda: field_set(events={"0": EVENT})),
    Hostile("events-null", 400, lambda: field_set(events=None)),
    Hostile("events-number", 400, lambda: field_set(events=3)),
    Hostile("events-missing", 400, lambda: dumps({"payload_id": 0})),
    Hostile("event-string", 400, lambda: field_set(events=["{}"])),
    Hostile("event-null", 400, lambda: field_set(events=[None])),
    Hostile("event-array", 400, lambda: field_set(events=[[3, {}, 1]])),
    Hostile("event-type-string", 400, lambda: event_set(type="3")),
    Hostile("event-type-bool", 400, lambda: event_set(type=False)),
    Hostile("event-type-null", 400, lambda: event_set(type=None)),
    Hostile("event-type-float", 400, lambda: event_set(type=3.0)),
    Hostile("event-type-negative", 400, lambda: event_set(type=-3)),
    Hostile("event-type-huge", 400, lambda: event_set(type=2**62)),
    Hostile("timestamp-string", 400, lambda: event_set(timestamp="1700000000000")),
    Hostile("timestamp-bool", 400, lambda: event_set(timestamp=True)),
    Hostile("timestamp-null", 400, lambda: event_set(timestamp=None)),
    Hostile("timestamp-object", 400, lambda: event_set(timestamp={"ms": 1})),
    Hostile("data-null", 400, lambda: event_set(data=None)),
    Hostile("data-array", 400, lambda: event_set(data=[])),
    Hostile("data-string", 400, lambda: event_set(data="{}")),
    Hostile("data-number", 400, lambda: event_set(data=0)),
    Hostile("errors-object", 400, lambda: field_set(errors={"message": "x"})),
    Hostile("errors-string", 400, lambda: field_set(errors="x")),
    Hostile("errors-number", 400, lambda: field_set(errors=1)),
    Hostile("error-string", 400, lambda: error_set("TypeError")),
    Hostile("error-null", 400, lambda: error_set(None)),
    Hostile("error-message-missing", 400, lambda: error_set({"timestamp": 1})),
    Hostile("error-message-number", 400, lambda: error_set({"message": 1})),
    Hostile("error-message-null", 400, lambda: error_set({"message": None})),
    Hostile("error-message-array", 400, lambda: error_set({"message": ["x"]})),
    Hostile("error-timestamp-string", 400, lambda: error_set({"message": "x", "timestamp": "1"})),
    Hostile("error-timestamp-negative", 400, lambda: error_set({"message": "x", "timestamp": -5})),
    Hostile("final-string", 400, lambda: field_set(final="false")),
    Hostile("final-int", 400, lambda: field_set(final=0)),
    Hostile("final-null", 400, lambda: field_set(final=None)),
    Hostile("final-array", 400, lambda: field_set(final=[True])),
    # --- events missing fields ---
    Hostile("event-empty-object", 400, lambda: field_set(events=[{}])),
    Hostile("event-without-type", 400, lambda: event_without("type")),
    Hostile("event-without-timestamp", 400, lambda: event_without("timestamp")),
    Hostile("event-without-data", 400, lambda: event_without("data")),
    Hostile("event-type-only", 400, lambda: event_without("timestamp", "data")),
    # --- timestamps out of range ---
    Hostile("timestamp-negative", 400, lambda: event_set(timestamp=-1)),
    Hostile("timestamp-slightly-negative", 400, lambda: event_set(timestamp=-0.001)),
    Hostile("timestamp-2^53", 400, lambda: event_set(timestamp=2**53)),
    Hostile("timestamp-2^64", 400, lambda: event_set(timestamp=2**64)),
    Hostile("timestamp-1e308", 400, lambda: event_set(timestamp=1e308)),
    # --- bodies over the limit ---
    Hostile("body-10MiB-plus-one", 413, lambda: valid() + b" " * (10 * MIB + 1 - len(valid()))),
    Hostile("body-2001-bytes-limit-2000", 413, lambda: valid() + b" " * 2001, max_bytes=2000),
    Hostile("content-length-declared-1TB", 413, valid, headers={"CONTENT_LENGTH": str(10**12)}),
    Hostile("content-length-shorter-than-body", 400, valid, headers={"CONTENT_LENGTH": "10"}),
    Hostile("content-length-negative", 400, valid, headers={"CONTENT_LENGTH": "-1"}),
    Hostile("content-length-not-a-number", 400, valid, headers={"CONTENT_LENGTH": "lots"}),
    # --- wrong content types ---
    Hostile("type-text-plain", 415, valid, content_type="text/plain"),
    Hostile(
        "type-form", 415, b"payload_id=0&events=", content_type="application/x-www-form-urlencoded"
    ),
    Hostile("type-multipart", 415, valid, content_type="multipart/form-data; boundary=xyz"),
    Hostile("type-missing", 415, valid, content_type=""),
    Hostile("type-xml", 415, b"<payload/>", content_type="application/xml"),
    Hostile("type-json-lookalike", 415, valid, content_type="application/jsonp"),
    Hostile("type-json-patch", 415, valid, content_type="application/json-patch+json"),
    Hostile("type-text-json", 415, valid, content_type="text/json"),
    # --- wrong methods ---
    Hostile("get-on-payloads", 405, method="GET"),
    Hostile("put-on-payloads", 405, valid, method="PUT"),
    Hostile("patch-on-payloads", 405, valid, method="PATCH"),
    Hostile("delete-on-payloads", 405, method="DELETE"),
    Hostile("options-on-payloads", 405, method="OPTIONS"),
    Hostile("made-up-method-on-payloads", 405, valid, method="BREW"),
    Hostile("post-on-session", 405, valid, path=SESSION_URL),
    Hostile("put-on-session", 405, valid, method="PUT", path=SESSION_URL),
    Hostile("delete-on-session", 405, method="DELETE", path=SESSION_URL),
    # --- bodies that are not objects ---
    Hostile("empty-body", 400, b""),
    Hostile("whitespace-body", 400, b" \r\n\t "),
    Hostile("json-null", 400, b"null"),
    Hostile("json-true", 400, b"true"),
    Hostile("json-number", 400, b"0"),
    Hostile("json-string", 400, b'"payload"'),
    Hostile("json-array-of-payloads", 400, lambda: dumps([payload_body(0), payload_body(1)])),
    # --- Authorization ---
    Hostile("auth-missing", 401, valid, auth=None),
    Hostile("auth-100k-bearer-key", 401, valid, auth="Bearer " + LONG_KEY),
    Hostile("auth-100k-without-scheme", 401, valid, auth=LONG_KEY),
    Hostile("auth-basic", 401, valid, auth="Basic b25yXzpvbnJf"),
    Hostile("auth-bearer-blank", 401, valid, auth="Bearer    "),
    Hostile("auth-sql-injection", 401, valid, auth="Bearer ' OR '1'='1"),
    Hostile("auth-nul-key", 401, valid, auth="Bearer \0"),
    Hostile("auth-latin1-key", 401, valid, auth="Bearer cl\u00e9"),
    Hostile("auth-key-prefix-only", 401, valid, auth="Bearer onr_"),
    Hostile("auth-missing-on-get", 401, method="GET", path=SESSION_URL, auth=None),
    Hostile("auth-long-key-on-get", 401, method="GET", path=SESSION_URL, auth="Bearer " + LONG_KEY),
    # --- session ids ---
    Hostile("session-id-unicode", 400, valid, path="/api/v1/sessions/s%C3%A9ance/payloads"),
    Hostile("session-id-emoji", 400, valid, path="/api/v1/sessions/%F0%9F%8E%A5/payloads"),
    Hostile(
        "session-id-fullwidth-digits",
        400,
        valid,
        path="/api/v1/sessions/%EF%BC%91%EF%BC%92/payloads",
    ),
    Hostile(
        "session-id-rtl-override", 400, valid, path="/api/v1/sessions/abc%E2%80%AEdef/payloads"
    ),
    Hostile("session-id-invalid-utf8", 400, valid, path="/api/v1/sessions/%FF%FE/payloads"),
    Hostile("session-id-dot-dot", 400, valid, path="/api/v1/sessions/../payloads"),
    Hostile("session-id-encoded-dot-dot", 400, valid, path="/api/v1/sessions/%2e%2e/payloads"),
    Hostile(
        "session-id-backslash-traversal",
        400,
        valid,
        path="/api/v1/sessions/..%5C..%5Cwin.ini/payloads",
    ),
    Hostile("session-id-nul", 400, valid, path="/api/v1/sessions/abc%00/payloads"),
    Hostile("session-id-trailing-newline", 400, valid, path="/api/v1/sessions/abc%0A/payloads"),
    Hostile(
        "session-id-64-chars-and-newline",
        400,
        valid,
        path=f"/api/v1/sessions/{'a' * 64}%0A/payloads",
    ),
    Hostile(
        "session-id-crlf-header-injection",
        400,
        valid,
        path="/api/v1/sessions/a%0D%0ASet-Cookie:x/payloads",
    ),
    Hostile("session-id-65-chars", 400, valid, path=f"/api/v1/sessions/{'a' * 65}/payloads"),
    Hostile("session-id-10k-chars", 400, valid, path=f"/api/v1/sessions/{'a' * 10_000}/payloads"),
    Hostile("session-id-percent", 400, valid, path="/api/v1/sessions/%25/payloads"),
    Hostile("session-id-space", 400, valid, path="/api/v1/sessions/a%20b/payloads"),
    Hostile("session-id-markup", 400, valid, path="/api/v1/sessions/%3Cscript%3E/payloads"),
    Hostile("session-id-sql", 400, valid, path="/api/v1/sessions/x'%3B--/payloads"),
    Hostile("session-id-unicode-on-get", 400, method="GET", path="/api/v1/sessions/s%C3%A9ance"),
    Hostile("session-id-newline-on-get", 400, method="GET", path="/api/v1/sessions/abc%0A"),
]


def send(client, case: Hostile, key: str):
    extra = {"CONTENT_TYPE": case.content_type, **case.headers}
    if case.auth is not None:
        extra["HTTP_AUTHORIZATION"] = case.auth.replace(VALID_KEY, key)
    return client.generic(case.method, case.path, case.request_body(), **extra)


@pytest.mark.parametrize("case", CORPUS, ids=[case.id for case in CORPUS])
def test_a_hostile_request_gets_a_json_4xx_and_stores_nothing(
    client, customer_and_key, settings, case
):
    _, key = customer_and_key
    if case.max_bytes is not None:
        settings.INGEST_MAX_BYTES = case.max_bytes

    TALLY["tried"] += 1
    response = send(client, case, key)
    TALLY["5xx"] += response.status_code >= 500

    assert response.status_code == case.status
    assert response["Content-Type"] == "application/json"
    message = response.json()["error"]
    assert isinstance(message, str) and message
    assert Session.objects.count() == 0
    assert Payload.objects.count() == 0


def test_the_corpus_has_no_duplicate_cases():
    assert len({case.id for case in CORPUS}) == len(CORPUS)


def test_a_gzip_bomb_is_refused_quickly_without_inflating_it(client, customer_and_key, settings):
    settings.INGEST_MAX_BYTES = 2 * MIB
    _, key = customer_and_key
    bomb = whitespace_bomb()
    assert len(bomb) < 2 * MIB  # the compressed body passes the raw-size check

    TALLY["tried"] += 1
    tracemalloc.start()
    started = time.perf_counter()
    response = client.post(
        PAYLOADS_URL, bomb, "application/json", **GZ, HTTP_AUTHORIZATION=f"Bearer {key}"
    )
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    TALLY["5xx"] += response.status_code >= 500

    assert response.status_code == 413
    assert "after decompression" in response.json()["error"]
    # Inflating the whole gigabyte would need a gigabyte; stopping at the limit needs ~2 MiB.
    assert peak < 32 * MIB
    assert elapsed < 2.0
    assert Payload.objects.count() == 0


@pytest.mark.parametrize(
    "path",
    ["/api/v1/sessions/..%2F..%2Fetc%2Fpasswd/payloads", "/api/v1/sessions/a%2Fb/payloads"],
    ids=["encoded-slash-traversal", "encoded-slash"],
)
def test_a_session_id_with_an_encoded_slash_never_reaches_the_api(client, customer_and_key, path):
    _, key = customer_and_key

    TALLY["tried"] += 1
    response = client.post(path, valid(), "application/json", HTTP_AUTHORIZATION=f"Bearer {key}")
    TALLY["5xx"] += response.status_code >= 500

    # The server decodes %2F before routing, so no API URL matches: Django's plain 404.
    assert response.status_code == 404
    assert Session.objects.count() == 0
