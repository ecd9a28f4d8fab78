"""A worker's batch: claimed and stored together, each session judged on its own."""

from __future__ import annotations

import json

import pytest

from pool import worker
from pool.ingest import parse_payload
from pool.models import Payload, Session, SessionStream, State
from pool.services import payload_store
from tests.conftest import payload_body, post_payload

pytestmark = pytest.mark.django_db


def ingest(client, key: str, session_id: str) -> Session:
    response = post_payload(client, key, session_id, payload_body(0, final=True))
    assert response.status_code == 202
    return Session.objects.get(external_id=session_id)


def queued(client, key: str, *names: str) -> list[int]:
    ids = [ingest(client, key, name).pk for name in names]
    Session.objects.filter(pk__in=ids).update(state=State.QUEUED)
    return ids


def processed_total(customer) -> int:
    customer.refresh_from_db()
    return customer.processed_total


def test_a_batch_stores_every_result_stream_and_counter(client, customer_and_key):
    customer, key = customer_and_key
    ids = queued(client, key, "a", "b", "c")

    outcomes = worker.sessions_process(session_ids=ids, host="h1")

    assert outcomes == ["processed"] * 3
    for session in Session.objects.filter(pk__in=ids):
        assert session.state == State.PROCESSED
        assert session.attempts == 1 and session.worker_host == "h1"
        assert session.event_total == len(payload_body(0)["events"])
        assert session.claim_token == "" and session.processed_at is not None
        assert session.stream_bytes == len(SessionStream.objects.get(session=session).data)
    assert processed_total(customer) == 3


def test_sessions_that_are_not_queued_are_skipped_and_left_alone(client, customer_and_key):
    customer, key = customer_and_key
    [mine] = queued(client, key, "queued")
    ready = ingest(client, key, "ready")

    outcomes = worker.sessions_process(session_ids=[ready.pk, mine, mine], host="h1")

    assert outcomes == ["skipped", "processed", "processed"]
    ready.refresh_from_db()
    assert ready.state == State.READY and ready.attempts == 0
    assert processed_total(customer) == 1


def test_a_batch_delivered_twice_is_applied_once(client, customer_and_key):
    customer, key = customer_and_key
    ids = queued(client, key, "a", "b")

    assert worker.sessions_process(session_ids=ids, host="h1") == ["processed"] * 2
    assert worker.sessions_process(session_ids=ids, host="h2") == ["skipped"] * 2

    assert processed_total(customer) == 2
    assert set(Session.objects.values_list("attempts", "worker_host")) == {(1, "h1")}


def test_a_poison_session_goes_back_to_ready_without_its_batch(client, customer_and_key):
    customer, key = customer_and_key
    good, poison = queued(client, key, "good", "poison")
    Payload.objects.filter(session_id=poison).update(body=b"not zlib")

    outcomes = worker.sessions_process(session_ids=[poison, good], host="h1")

    assert outcomes == ["retry", "processed"]
    poisoned = Session.objects.get(pk=poison)
    assert poisoned.state == State.READY and "zlib" in poisoned.last_error
    assert Session.objects.get(pk=good).state == State.PROCESSED
    assert processed_total(customer) == 1


def test_a_session_taken_back_mid_batch_is_superseded_not_overwritten(
    client, customer_and_key, monkeypatch
):
    customer, key = customer_and_key
    first, second = queued(client, key, "first", "second")
    compute = worker.session_compute

    def a_new_payload_arrives_meanwhile(rows):
        # While the batch is being computed, "second" receives a payload (design.md:
        # a payload reopens its session whatever its state).
        if not Session.objects.filter(external_id="second", state=State.OPEN).exists():
            raw = json.dumps(payload_body(1)).encode()
            payload_store(
                customer=customer, session_id="second", payload=parse_payload(raw), raw=raw
            )
        return compute(rows)

    monkeypatch.setattr(worker, "session_compute", a_new_payload_arrives_meanwhile)

    outcomes = worker.sessions_process(session_ids=[first, second], host="h1")

    assert outcomes == ["processed", "superseded"]
    reopened = Session.objects.get(pk=second)
    assert reopened.state == State.OPEN and reopened.processed_at is None
    assert not SessionStream.objects.filter(session_id=second).exists()
    assert processed_total(customer) == 1


def test_a_result_the_database_refuses_fails_that_session_alone(
    client, customer_and_key, monkeypatch, settings
):
    customer, key = customer_and_key
    settings.SESSION_MAX_ATTEMPTS = 1
    good, refused, other = queued(client, key, "good", "refused", "other")
    values = worker.result_values

    def a_value_out_of_range(summary, stream, elapsed_ms):
        result = values(summary, stream, elapsed_ms)
        if len(computed) == 1:  # the second session of the batch
            result["click_count"] = -1  # a positive integer column: the database refuses it
        computed.append(result)
        return result

    computed: list[dict] = []
    monkeypatch.setattr(worker, "result_values", a_value_out_of_range)

    outcomes = worker.sessions_process(session_ids=[good, refused, other], host="h1")

    assert outcomes == ["processed", "failed", "processed"]
    failed = Session.objects.get(pk=refused)
    assert failed.state == State.FAILED and failed.last_error
    assert not SessionStream.objects.filter(session_id=refused).exists()
    assert processed_total(customer) == 2
