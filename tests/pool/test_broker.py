"""pool.broker: django-q2's ORM broker, oldest task first, woken by NOTIFY on PostgreSQL."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from django.db import connection, connections
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import OrmQ

from pool.broker import CHANNEL, NotifiedORM

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="LISTEN/NOTIFY is PostgreSQL's"),
]


def enqueue(queue: str, payload: str) -> int:
    return OrmQ.objects.create(key=queue, payload=payload, lock=timezone.now()).pk


def other_connection() -> psycopg.Connection:
    """A second client of the test database, as the dispatcher in runpool would be."""
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    return psycopg.connect(**params, autocommit=True)


def test_tasks_are_taken_oldest_first_and_only_once():
    broker = NotifiedORM(list_key="q")
    first = enqueue("q", "one")
    second = enqueue("q", "two")
    enqueue("other", "not mine")

    assert broker.dequeue() == [(first, "one")]
    assert broker.dequeue() == [(second, "two")]
    taken = OrmQ.objects.get(pk=first)
    assert taken.lock > timezone.now()  # delivered again only after django-q2's retry


def test_an_acknowledged_task_is_gone():
    broker = NotifiedORM(list_key="q")
    task_id = enqueue("q", "one")
    [(taken, _)] = broker.dequeue()

    broker.acknowledge(taken)

    assert not OrmQ.objects.filter(pk=task_id).exists()


def test_a_notify_for_its_queue_wakes_an_idle_pusher(monkeypatch):
    monkeypatch.setattr(Conf, "POLL", 60.0)  # without a NOTIFY it would wait a minute
    broker = NotifiedORM(list_key="q")
    result: dict = {}

    def idle_pusher():  # in its own thread, so with its own database connection
        try:
            started = time.monotonic()
            result["tasks"] = broker.dequeue()
            result["waited"] = time.monotonic() - started
        finally:
            connections.close_all()

    thread = threading.Thread(target=idle_pusher)
    thread.start()
    with other_connection() as dispatcher:
        # Until it is woken (a NOTIFY sent before its LISTEN would be missed), at most 30 s.
        deadline = time.monotonic() + 30
        while thread.is_alive() and time.monotonic() < deadline:
            dispatcher.execute("SELECT pg_notify(%s, %s)", [CHANNEL, "q"])
            thread.join(timeout=0.2)

    assert not thread.is_alive(), "no NOTIFY woke the pusher"
    assert result["tasks"] is None  # woken: django-q2's pusher looks again at once
    assert result["waited"] < 30


def test_a_notify_for_another_queue_does_not_end_the_wait(monkeypatch):
    monkeypatch.setattr(Conf, "POLL", 1.0)
    broker = NotifiedORM(list_key="q")
    broker.dequeue()  # LISTENing from now on
    with other_connection() as dispatcher:
        dispatcher.execute("SELECT pg_notify(%s, %s)", [CHANNEL, "other"])
    started = time.monotonic()

    assert broker.dequeue() is None

    assert time.monotonic() - started >= 0.9  # it waited out its poll
