"""Reading and validating an ingest request body (no database work here).

Every problem a client can cause becomes an `IngestError` carrying the HTTP status and
a message that names the offending field, so the view never answers 500 for input.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Any

import orjson

SESSION_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_SAFE_INT = 2**53 - 1  # recorders are JavaScript: larger ids/timestamps lose precision
GZIP_WBITS = 16 + zlib.MAX_WBITS


class IngestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class IngestPayload:
    payload_id: int
    events: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    final: bool
    raw_bytes: int  # size after decompression


def check_session_id(session_id: str) -> None:
    # fullmatch: with match(), "$" also matches before a trailing newline ("abc\n").
    if not SESSION_ID_RE.fullmatch(session_id):
        raise IngestError(400, "session_id must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'")


def check_content_type(content_type: str) -> None:
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise IngestError(415, "Content-Type must be application/json")


def decode_body(body: bytes, *, content_encoding: str, max_bytes: int) -> bytes:
    """Undo Content-Encoding, refusing anything that inflates past max_bytes (gzip bombs)."""
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding != "gzip":
        raise IngestError(415, "Content-Encoding must be gzip or absent")
    inflater = zlib.decompressobj(GZIP_WBITS)
    try:
        raw = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise IngestError(400, f"body is not valid gzip: {exc}") from None
    if len(raw) > max_bytes or inflater.unconsumed_tail:
        raise IngestError(413, f"body exceeds {max_bytes} bytes after decompression")
    if not inflater.eof:
        raise IngestError(400, "body is not valid gzip: truncated stream")
    if inflater.unused_data:
        raise IngestError(400, "body is not valid gzip: data after the end of the stream")
    return raw


def parse_payload(raw: bytes) -> IngestPayload:
    try:
        doc = orjson.loads(raw)  # rejects NaN/Infinity, invalid UTF-8 and deep nesting
    except orjson.JSONDecodeError as exc:
        raise IngestError(400, f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise IngestError(400, "body must be a JSON object")
    payload_id = _check_int(doc.get("payload_id"), "payload_id", required=True)
    events = _check_list(doc.get("events"), "events", required=True)
    for index, event in enumerate(events):
        _check_event(event, f"events[{index}]")
    errors = _check_list(doc.get("errors"), "errors", required=False)
    for index, error in enumerate(errors):
        _check_error(error, f"errors[{index}]")
    final = doc.get("final", False)
    if not isinstance(final, bool):
        raise IngestError(400, "final must be a boolean")
    return IngestPayload(payload_id, events, errors, final, raw_bytes=len(raw))


def _check_int(value: Any, field: str, *, required: bool) -> int:
    if value is None and not required:
        return 0
    # bool is an int subclass in Python; true is not a payload id.
    if isinstance(value, bool) or not isinstance(value, int):
        raise IngestError(400, f"{field} must be an integer")
    if not 0 <= value <= MAX_SAFE_INT:
        raise IngestError(400, f"{field} must be between 0 and {MAX_SAFE_INT}")
    return value


def _check_number(value: Any, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise IngestError(400, f"{field} must be a number (milliseconds since the epoch)")
    if not 0 <= value <= MAX_SAFE_INT:
        raise IngestError(400, f"{field} must be between 0 and {MAX_SAFE_INT}")


def _check_list(value: Any, field: str, *, required: bool) -> list:
    if value is None:
        if required:
            raise IngestError(400, f"{field} is required")
        return []
    if not isinstance(value, list):
        raise IngestError(400, f"{field} must be an array")
    return value


def _check_event(event: Any, field: str) -> None:
    if not isinstance(event, dict):
        raise IngestError(400, f"{field} must be an object")
    event_type = event.get("type")
    if isinstance(event_type, bool) or not isinstance(event_type, int):
        raise IngestError(400, f"{field}.type must be an integer")
    if not 0 <= event_type <= 255:
        raise IngestError(400, f"{field}.type must be between 0 and 255")
    if "timestamp" not in event:
        raise IngestError(400, f"{field}.timestamp is required")
    _check_number(event["timestamp"], f"{field}.timestamp")
    if not isinstance(event.get("data"), dict):
        raise IngestError(400, f"{field}.data must be an object")


def _check_error(error: Any, field: str) -> None:
    if not isinstance(error, dict):
        raise IngestError(400, f"{field} must be an object")
    if not isinstance(error.get("message"), str):
        raise IngestError(400, f"{field}.message must be a string")
    if "timestamp" in error:
        _check_number(error["timestamp"], f"{field}.timestamp")


def compress_body(raw: bytes) -> bytes:
    # Level 1: payloads are stored once and read once; speed beats a few % of size.
    return zlib.compress(raw, 1)


def decompress_body(blob: bytes) -> dict[str, Any]:
    return orjson.loads(zlib.decompress(blob))
