"""A chunked request body (no Content-Length) through real gunicorn is read, not lost."""

from __future__ import annotations

import gzip
import http.client
import json

import pytest

from onboarding.services import customer_create
from pool.models import Payload, Session
from tests.conftest import payload_body

pytestmark = [pytest.mark.integration]


def post_chunked(port: int, key: str, session_id: str, chunks: list[bytes], **headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(
        "POST",
        f"/api/v1/sessions/{session_id}/payloads",
        body=iter(chunks),  # an iterable without a length: http.client sends it chunked
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", **headers},
        encode_chunked=True,
    )
    reply = conn.getresponse()
    return reply.status, json.loads(reply.read() or b"{}")


def test_a_chunked_body_is_stored(gunicorn):
    _, key = customer_create(name="Acme Corp")
    raw = json.dumps(payload_body(0, final=True)).encode()

    status, reply = post_chunked(gunicorn.port, key, "chunked-1", [raw[:50], raw[50:]])

    assert status == 202, reply
    session = Session.objects.get(external_id="chunked-1")
    assert Payload.objects.get(session=session).event_count == len(payload_body(0)["events"])


def test_a_chunked_gzip_body_is_stored(gunicorn):
    _, key = customer_create(name="Acme Corp")
    packed = gzip.compress(json.dumps(payload_body(0)).encode())
    chunks = [packed[i : i + 100] for i in range(0, len(packed), 100)]

    status, reply = post_chunked(
        gunicorn.port, key, "chunked-gz", chunks, **{"Content-Encoding": "gzip"}
    )

    assert status == 202, reply
    assert Session.objects.filter(external_id="chunked-gz").exists()
