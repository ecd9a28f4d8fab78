"""The ingest API's contract (design.md "Ingest API (v1)"), one reply code at a time."""

from __future__ import annotations

import gzip
import io
import json
from copy import deepcopy

import pytest
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from onboarding.models import IngestKey, hash_ingest_key
from pool.models import Payload, Session, State
from pool.worker import session_process
from tests.conftest import payload_body, post_payload

pytestmark = pytest.mark.django_db


def get_session(client, key: str | None, session_id: str, **headers):
    if key is not None:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return client.get(f"/api/v1/sessions/{session_id}", **headers)


def error_of(response) -> str:
    assert response["Content-Type"] == "application/json"
    message = response.json()["error"]
    assert isinstance(message, str) and message
    return message


def assert_nothing_stored() -> None:
    assert Session.objects.count() == 0
    assert Payload.objects.count() == 0


def process(session: Session) -> str:
    Session.objects.filter(pk=session.pk).update(state=State.QUEUED)
    return session_process(session_id=session.pk, host="test")


# --- 202 / 200 ------------------------------------------------------------------


def test_a_first_payload_is_accepted_and_opens_its_session(client, customer_and_key):
    customer, key = customer_and_key

    response = post_payload(client, key, "s-1", payload_body(0))

    assert response.status_code == 202
    assert response.json() == {
        "session_id": "s-1",
        "payload_id": 0,
        "status": "accepted",
        "state": "open",
    }
    session = Session.objects.get(customer=customer, external_id="s-1")
    assert session.state == State.OPEN
    assert session.ready_at is None
    assert session.payload_count == 1
    payload = Payload.objects.get(session=session)
    assert (payload.payload_id, payload.event_count, payload.final) == (0, 3, False)


def test_a_final_payload_makes_the_session_ready_with_ready_at_set(client, customer_and_key):
    customer, key = customer_and_key

    response = post_payload(client, key, "s-1", payload_body(0, final=True))

    assert response.status_code == 202
    assert response.json()["state"] == "ready"
    session = Session.objects.get(customer=customer, external_id="s-1")
    assert session.state == State.READY
    assert session.ready_at is not None


def test_a_duplicate_payload_id_answers_200_and_duplicates_nothing(client, customer_and_key):
    customer, key = customer_and_key
    post_payload(client, key, "s-1", payload_body(0))
    before = Session.objects.get(customer=customer, external_id="s-1")

    response = post_payload(client, key, "s-1", payload_body(0))

    assert response.status_code == 200
    assert response.json()["status"] == "duplicate"
    assert Payload.objects.count() == 1
    after = Session.objects.get(pk=before.pk)
    assert after.payload_count == 1
    assert after.bytes_received == before.bytes_received


def test_a_duplicate_keeps_the_first_body_even_if_the_second_differs(client, customer_and_key):
    _, key = customer_and_key
    post_payload(client, key, "s-1", payload_body(0, events=[]))

    response = post_payload(client, key, "s-1", payload_body(0))

    assert response.status_code == 200
    assert Payload.objects.get().event_count == 0


def test_a_new_payload_id_is_stored_next_to_the_first(client, customer_and_key):
    customer, key = customer_and_key
    post_payload(client, key, "s-1", payload_body(0))

    response = post_payload(client, key, "s-1", payload_body(1))

    assert response.status_code == 202
    session = Session.objects.get(customer=customer, external_id="s-1")
    assert session.payload_count == 2
    assert sorted(session.payloads.values_list("payload_id", flat=True)) == [0, 1]


def test_gzip_bodies_are_accepted_and_sized_after_decompression(client, customer_and_key):
    _, key = customer_and_key
    body = payload_body(0)
    raw = json.dumps(body).encode()

    response = post_payload(client, key, "s-1", body, gzip_it=True)

    assert response.status_code == 202
    assert Payload.objects.get().raw_bytes == len(raw)


def test_optional_errors_are_accepted(client, customer_and_key):
    _, key = customer_and_key
    body = payload_body(0, errors=[{"message": "TypeError: x", "timestamp": 1_700_000_000_100}])

    response = post_payload(client, key, "s-1", body)

    assert response.status_code == 202


# --- 413 ------------------------------------------------------------------------


def padded_body(size: int) -> bytes:
    """A valid payload of exactly `size` bytes (JSON allows trailing whitespace)."""
    raw = json.dumps(payload_body(0)).encode()
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))


def test_a_body_exactly_at_the_limit_is_accepted(client, customer_and_key, settings):
    settings.INGEST_MAX_BYTES = 2000
    _, key = customer_and_key

    response = post_payload(client, key, "s-1", padded_body(2000))

    assert response.status_code == 202


def test_a_raw_body_over_the_limit_is_refused_with_413(client, customer_and_key, settings):
    settings.INGEST_MAX_BYTES = 2000
    _, key = customer_and_key

    response = post_payload(client, key, "s-1", padded_body(2001))

    assert response.status_code == 413
    assert "2000" in error_of(response)
    assert_nothing_stored()


def test_a_gzip_body_that_inflates_past_the_limit_is_refused_with_413(
    client, customer_and_key, settings
):
    settings.INGEST_MAX_BYTES = 2000
    _, key = customer_and_key
    raw = padded_body(2001)
    compressed = gzip.compress(raw)
    assert len(compressed) < 2000  # the compressed body alone would pass

    response = post_payload(client, key, "s-1", compressed, HTTP_CONTENT_ENCODING="gzip")

    assert response.status_code == 413
    assert "after decompression" in error_of(response)
    assert_nothing_stored()


def test_a_gzip_body_that_inflates_to_exactly_the_limit_is_accepted(
    client, customer_and_key, settings
):
    settings.INGEST_MAX_BYTES = 2000
    _, key = customer_and_key

    response = post_payload(client, key, "s-1", padded_body(2000), gzip_it=True)

    assert response.status_code == 202


def test_a_declared_content_length_over_the_limit_is_refused_before_reading(
    client, customer_and_key, settings
):
    settings.INGEST_MAX_BYTES = 2000
    _, key = customer_and_key

    response = post_payload(client, key, "s-1", payload_body(0), CONTENT_LENGTH="999999999999")

    assert response.status_code == 413
    assert_nothing_stored()


# --- 400 ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"{", b'{"payload_id": 0,}', b"", b"   ", b"{'payload_id': 0}", b'{"payload_id": NaN}'],
    ids=["unclosed", "trailing-comma", "empty", "blank", "single-quotes", "nan"],
)
def test_malformed_json_is_refused_with_400(client, customer_and_key, raw):
    _, key = customer_and_key

    # The test client drops Content-Type for an empty body unless it is given explicitly.
    response = post_payload(client, key, "s-1", raw, CONTENT_TYPE="application/json")

    assert response.status_code == 400
    assert error_of(response).startswith("malformed JSON")
    assert_nothing_stored()


@pytest.mark.parametrize("raw", [b"[]", b"null", b"0", b'"payload"', b"true", b"[{}]"])
def test_a_body_that_is_not_a_json_object_is_refused_with_400(client, customer_and_key, raw):
    _, key = customer_and_key

    response = post_payload(client, key, "s-1", raw)

    assert response.status_code == 400
    assert error_of(response) == "body must be a JSON object"
    assert_nothing_stored()


GOOD_EVENT = {"type": 3, "data": {"source": 1}, "timestamp": 1_700_000_000_000}


def with_event(**changes) -> dict:
    event = {**GOOD_EVENT, **changes}
    return {"payload_id": 0, "events": [GOOD_EVENT, event]}


def without_event_key(key: str) -> dict:
    event = {k: v for k, v in GOOD_EVENT.items() if k != key}
    return {"payload_id": 0, "events": [event]}


WRONG_FIELDS = [
    # (case id, body, the field the message must name)
    ("payload_id-string", {"payload_id": "0", "events": []}, "payload_id"),
    ("payload_id-negative", {"payload_id": -1, "events": []}, "payload_id"),
    ("payload_id-bool", {"payload_id": True, "events": []}, "payload_id"),
    ("payload_id-float", {"payload_id": 1.5, "events": []}, "payload_id"),
    ("payload_id-whole-float", {"payload_id": 1.0, "events": []}, "payload_id"),
    ("payload_id-over-2^53", {"payload_id": 2**53, "events": []}, "payload_id"),
    ("payload_id-null", {"payload_id": None, "events": []}, "payload_id"),
    ("payload_id-missing", {"events": []}, "payload_id"),
    ("events-missing", {"payload_id": 0}, "events"),
    ("events-object", {"payload_id": 0, "events": {}}, "events"),
    ("events-string", {"payload_id": 0, "events": "[]"}, "events"),
    ("event-not-object", {"payload_id": 0, "events": [GOOD_EVENT, 4]}, "events[1]"),
    ("event-list", {"payload_id": 0, "events": [[]]}, "events[0]"),
    ("event-type-missing", without_event_key("type"), "events[0].type"),
    ("event-type-string", with_event(type="3"), "events[1].type"),
    ("event-type-bool", with_event(type=True), "events[1].type"),
    ("event-type-float", with_event(type=3.5), "events[1].type"),
    ("event-type-negative", with_event(type=-1), "events[1].type"),
    ("event-type-256", with_event(type=256), "events[1].type"),
    ("timestamp-missing", without_event_key("timestamp"), "events[0].timestamp"),
    ("timestamp-string", with_event(timestamp="1700000000000"), "events[1].timestamp"),
    ("timestamp-bool", with_event(timestamp=False), "events[1].timestamp"),
    ("timestamp-null", with_event(timestamp=None), "events[1].timestamp"),
    ("timestamp-negative", with_event(timestamp=-1), "events[1].timestamp"),
    ("timestamp-huge", with_event(timestamp=2**53), "events[1].timestamp"),
    ("timestamp-huge-float", with_event(timestamp=1e300), "events[1].timestamp"),
    ("data-missing", without_event_key("data"), "events[0].data"),
    ("data-list", with_event(data=[]), "events[1].data"),
    ("data-string", with_event(data="{}"), "events[1].data"),
    ("errors-object", {"payload_id": 0, "events": [], "errors": {}}, "errors"),
    ("errors-string", {"payload_id": 0, "events": [], "errors": "oops"}, "errors"),
    ("error-not-object", {"payload_id": 0, "events": [], "errors": ["oops"]}, "errors[0]"),
    ("error-message-missing", {"payload_id": 0, "events": [], "errors": [{}]}, "errors[0].message"),
    (
        "error-message-number",
        {"payload_id": 0, "events": [], "errors": [{"message": 42}]},
        "errors[0].message",
    ),
    (
        "error-timestamp-string",
        {"payload_id": 0, "events": [], "errors": [{"message": "x", "timestamp": "now"}]},
        "errors[0].timestamp",
    ),
    ("final-string", {"payload_id": 0, "events": [], "final": "true"}, "final"),
    ("final-int", {"payload_id": 0, "events": [], "final": 1}, "final"),
    ("final-null", {"payload_id": 0, "events": [], "final": None}, "final"),
]


@pytest.mark.parametrize(
    ("body", "field"), [c[1:] for c in WRONG_FIELDS], ids=[c[0] for c in WRONG_FIELDS]
)
def test_a_wrong_field_is_refused_with_400_naming_the_field(client, customer_and_key, body, field):
    _, key = customer_and_key

    response = post_payload(client, key, "s-1", deepcopy(body))

    assert response.status_code == 400
    # Messages read "<field> must be …" / "<field> is required".
    assert error_of(response).split(" ", 1)[0] == field
    assert_nothing_stored()


@pytest.mark.parametrize(
    "session_id",
    ["a" * 65, "bad.chars", "with%20space", "s%C3%A9ance", "semi;colon", "a" * 64 + "%0A", "%0A"],
    ids=["too-long", "dot", "space", "unicode", "semicolon", "64-chars-and-newline", "newline"],
)
def test_an_invalid_session_id_is_refused_with_400(client, customer_and_key, session_id):
    _, key = customer_and_key

    post = post_payload(client, key, session_id, payload_body(0))
    get = get_session(client, key, session_id)

    assert post.status_code == 400
    assert error_of(post).startswith("session_id")
    assert get.status_code == 400
    assert error_of(get).startswith("session_id")
    assert_nothing_stored()


@pytest.mark.parametrize("session_id", ["a" * 64, "A", "Az09_-"])
def test_a_session_id_of_the_allowed_characters_and_length_is_accepted(
    client, customer_and_key, session_id
):
    _, key = customer_and_key

    response = post_payload(client, key, session_id, payload_body(0))

    assert response.status_code == 202
    assert Session.objects.get().external_id == session_id


# --- 401 ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Basic dXNlcjpwdw==", "Bearer", "Bearer ", "Token onr_abc", "onr_abc"],
    ids=["missing", "empty", "basic", "bearer-alone", "bearer-blank", "token-scheme", "no-scheme"],
)
def test_a_request_without_a_bearer_key_is_refused_with_401(
    client, customer_and_key, authorization
):
    headers = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}

    post = post_payload(client, None, "s-1", payload_body(0), **headers)
    get = get_session(client, None, "s-1", **headers)

    for response in (post, get):
        assert response.status_code == 401
        assert "missing ingest key" in error_of(response)
        assert response["WWW-Authenticate"].startswith("Bearer")
    assert_nothing_stored()


def test_an_unknown_key_is_refused_with_401(client, customer_and_key):
    _, key = customer_and_key

    response = post_payload(client, key + "x", "s-1", payload_body(0))

    assert response.status_code == 401
    assert "unknown or revoked" in error_of(response)
    assert_nothing_stored()


def test_a_revoked_key_is_refused_with_401(client, customer_and_key):
    customer, key = customer_and_key
    IngestKey.objects.filter(customer=customer).update(revoked_at=timezone.now())

    post = post_payload(client, key, "s-1", payload_body(0))
    get = get_session(client, key, "s-1")

    assert post.status_code == 401
    assert get.status_code == 401
    assert "unknown or revoked" in error_of(post)
    assert_nothing_stored()


def test_the_bearer_scheme_is_case_insensitive(client, customer_and_key):
    _, key = customer_and_key

    response = post_payload(
        client, None, "s-1", payload_body(0), HTTP_AUTHORIZATION=f"bearer {key}"
    )

    assert response.status_code == 202


def test_using_a_key_records_when_it_was_last_used(client, customer_and_key):
    customer, key = customer_and_key

    post_payload(client, key, "s-1", payload_body(0))

    assert IngestKey.objects.get(customer=customer).last_used_at is not None


# --- 415 ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""],
    ids=["text", "form", "multipart", "none"],
)
def test_a_wrong_content_type_is_refused_with_415(client, customer_and_key, content_type):
    _, key = customer_and_key

    response = post_payload(client, key, "s-1", payload_body(0), content_type=content_type)

    assert response.status_code == 415
    assert "Content-Type" in error_of(response)
    assert_nothing_stored()


def test_a_json_content_type_with_a_charset_is_accepted(client, customer_and_key):
    _, key = customer_and_key

    response = post_payload(
        client, key, "s-1", payload_body(0), content_type="application/json; charset=utf-8"
    )

    assert response.status_code == 202


@pytest.mark.parametrize("encoding", ["br", "deflate", "compress", "gzip, br", "x-gzip"])
def test_an_unknown_content_encoding_is_refused_with_415(client, customer_and_key, encoding):
    _, key = customer_and_key

    response = post_payload(client, key, "s-1", payload_body(0), HTTP_CONTENT_ENCODING=encoding)

    assert response.status_code == 415
    assert "Content-Encoding" in error_of(response)
    assert_nothing_stored()


# --- 405 ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
def test_the_payloads_url_only_allows_post(client, customer_and_key, method):
    _, key = customer_and_key

    response = client.generic(
        method, "/api/v1/sessions/s-1/payloads", HTTP_AUTHORIZATION=f"Bearer {key}"
    )

    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert method in error_of(response)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_the_session_url_only_allows_get(client, customer_and_key, method):
    _, key = customer_and_key

    response = client.generic(
        method,
        "/api/v1/sessions/s-1",
        json.dumps(payload_body(0)),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )

    assert response.status_code == 405
    assert response["Allow"] == "GET"
    error_of(response)
    assert_nothing_stored()


# --- Tenants --------------------------------------------------------------------


def test_another_customers_key_cannot_read_a_session(
    client, customer_and_key, other_customer_and_key
):
    _, key_a = customer_and_key
    _, key_b = other_customer_and_key
    post_payload(client, key_a, "shared-id", payload_body(0))

    response = get_session(client, key_b, "shared-id")

    assert response.status_code == 404
    # Same answer as for a session that does not exist at all.
    missing = get_session(client, key_b, "never-sent")
    assert missing.status_code == 404
    assert "shared-id" not in json.dumps(missing.json())


def test_another_customer_writing_the_same_session_id_gets_its_own_session(
    client, customer_and_key, other_customer_and_key
):
    customer_a, key_a = customer_and_key
    customer_b, key_b = other_customer_and_key
    post_payload(client, key_a, "shared-id", payload_body(0))

    response = post_payload(client, key_b, "shared-id", payload_body(0, events=[], final=True))

    # Same payload_id, different tenant: accepted, not a duplicate of A's.
    assert response.status_code == 202
    a = Session.objects.get(customer=customer_a, external_id="shared-id")
    b = Session.objects.get(customer=customer_b, external_id="shared-id")
    assert a.pk != b.pk
    assert (a.state, a.payload_count) == (State.OPEN, 1)
    assert (b.state, b.payload_count) == (State.READY, 1)
    assert get_session(client, key_a, "shared-id").json()["state"] == "open"
    assert get_session(client, key_b, "shared-id").json()["state"] == "ready"


# --- GET ------------------------------------------------------------------------


def test_get_returns_the_state_and_no_computed_fields_before_processing(client, customer_and_key):
    _, key = customer_and_key
    post_payload(client, key, "s-1", payload_body(0))

    response = get_session(client, key, "s-1")

    assert response.status_code == 200
    document = response.json()
    assert document["session_id"] == "s-1"
    assert document["state"] == "open"
    assert document["payload_count"] == 1
    assert document["ready_at"] is None
    assert document["computed"] is None


def test_get_returns_the_computed_fields_once_processed(client, customer_and_key):
    customer, key = customer_and_key
    post_payload(client, key, "s-1", payload_body(0, final=True))
    session = Session.objects.get(customer=customer, external_id="s-1")

    assert process(session) == "processed"
    response = get_session(client, key, "s-1")

    assert response.status_code == 200
    document = response.json()
    assert document["state"] == "processed"
    assert document["processed_at"] is not None
    assert document["attempts"] == 1
    assert document["last_error"] is None
    computed = document["computed"]
    assert computed["event_total"] == 3
    assert computed["click_count"] == 1
    assert computed["length_ms"] == 999  # from the full snapshot to the click
    assert computed["landing_page"] == "https://acme.test/"
    assert computed["exit_page"] == "https://acme.test/"
    assert computed["error_count"] == 0
    assert computed["pages"] == ["https://acme.test/"]
    assert computed["stream_bytes"] > 0


def test_a_new_payload_reopens_a_processed_session(client, customer_and_key):
    customer, key = customer_and_key
    post_payload(client, key, "s-1", payload_body(0, final=True))
    session = Session.objects.get(customer=customer, external_id="s-1")
    process(session)

    response = post_payload(client, key, "s-1", payload_body(1))

    assert response.status_code == 202
    assert response.json()["state"] == "open"
    session.refresh_from_db()
    assert session.state == State.OPEN
    assert session.ready_at is None
    assert session.payload_count == 2
    assert get_session(client, key, "s-1").json()["state"] == "open"


def test_a_duplicate_sent_to_a_processed_session_leaves_it_processed(client, customer_and_key):
    customer, key = customer_and_key
    post_payload(client, key, "s-1", payload_body(0, final=True))
    session = Session.objects.get(customer=customer, external_id="s-1")
    process(session)

    response = post_payload(client, key, "s-1", payload_body(0, final=True))

    assert response.status_code == 200
    assert response.json()["state"] == "processed"
    session.refresh_from_db()
    assert session.state == State.PROCESSED


# --- OpenAPI --------------------------------------------------------------------


def test_the_openapi_document_is_json_describing_both_paths(client, db):
    response = client.get("/api/v1/openapi.json")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    document = json.loads(response.content)
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {
        "/api/v1/sessions/{session_id}/payloads",
        "/api/v1/sessions/{session_id}",
    }
    post = document["paths"]["/api/v1/sessions/{session_id}/payloads"]["post"]
    assert {"200", "202", "400", "401", "413", "415", "503"} <= set(post["responses"])


# --- Keys -----------------------------------------------------------------------


def test_keys_are_stored_only_as_a_digest(customer_and_key):
    customer, key = customer_and_key

    row = IngestKey.objects.filter(customer=customer).values().get()

    assert row["key_hash"] == hash_ingest_key(key)
    assert all(key not in str(value) for value in row.values())
    assert row["prefix"] == key[:12]  # only a short prefix, to tell keys apart


def test_keys_are_compared_in_constant_time(client, customer_and_key, monkeypatch):
    _, key = customer_and_key
    import onboarding.models

    calls = []
    real = onboarding.models.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(onboarding.models.hmac, "compare_digest", spy)
    ingest_key = IngestKey.objects.get(key_hash=hash_ingest_key(key))

    assert ingest_key.matches(key)
    assert not ingest_key.matches(key + "x")
    assert post_payload(client, key, "s-1", payload_body(0)).status_code == 202
    assert len(calls) == 3
    assert all(a == ingest_key.key_hash for a, _ in calls)


# --- 503 ------------------------------------------------------------------------


def test_a_database_outage_while_storing_answers_503_with_retry_after(
    client, customer_and_key, monkeypatch
):
    _, key = customer_and_key

    def outage(**kwargs):
        raise OperationalError("could not connect to server: Connection refused")

    monkeypatch.setattr("pool.api.payload_store", outage)

    response = post_payload(client, key, "s-1", payload_body(0))

    assert response.status_code == 503
    assert int(response["Retry-After"]) > 0
    assert response["Content-Type"] == "application/json"
    assert "database unavailable" in response.json()["error"]
    assert_nothing_stored()


def test_a_lost_connection_while_authenticating_answers_503(client, customer_and_key, monkeypatch):
    _, key = customer_and_key

    def outage(request):
        raise InterfaceError("connection already closed")

    monkeypatch.setattr("pool.api.customer_for_key", outage)

    response = get_session(client, key, "s-1")

    assert response.status_code == 503
    assert "Retry-After" in response
    assert response.json()["error"]


# --- Chunked bodies (no Content-Length); through real gunicorn in tests/integration ---


def chunked_post(client, key: str, session_id: str, body: bytes, **meta):
    """As gunicorn hands a de-chunked body to Django: no CONTENT_LENGTH, the stream."""
    return client.generic(
        "POST",
        f"/api/v1/sessions/{session_id}/payloads",
        b"",
        CONTENT_TYPE="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
        HTTP_TRANSFER_ENCODING="chunked",
        CONTENT_LENGTH="",
        **{"wsgi.input": io.BytesIO(body), **meta},
    )


def test_a_chunked_body_is_read_from_the_stream(client, customer_and_key):
    _, key = customer_and_key
    body = json.dumps(payload_body(0)).encode()

    response = chunked_post(client, key, "s-1", body, **{"wsgi.input_terminated": True})

    assert response.status_code == 202
    assert Payload.objects.filter(session__external_id="s-1").exists()


def test_a_chunked_body_over_the_limit_is_refused_with_413(client, customer_and_key, settings):
    _, key = customer_and_key
    settings.INGEST_MAX_BYTES = 1000
    body = json.dumps(payload_body(0, padding="x" * 5000)).encode()

    response = chunked_post(client, key, "s-1", body, **{"wsgi.input_terminated": True})

    assert response.status_code == 413 and "exceeds 1000 bytes" in error_of(response)
    assert_nothing_stored()


def test_a_chunked_body_a_server_cannot_delimit_is_refused_with_411(client, customer_and_key):
    _, key = customer_and_key
    body = json.dumps(payload_body(0)).encode()

    response = chunked_post(client, key, "s-1", body)  # no wsgi.input_terminated

    assert response.status_code == 411 and "Content-Length" in error_of(response)
    assert_nothing_stored()
