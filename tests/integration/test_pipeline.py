"""Sessions flow end to end: HTTP ingest on gunicorn → runpool's django-q2 workers → processed."""

from __future__ import annotations

import http.client
import os
import signal
import threading
import time

import pytest

from onboarding.services import customer_create
from pool.models import PoolHost, Session, State
from pool.runner import process_title
from tests.conftest import payload_body
from tests.integration.conftest import wait_for, worker_processes

pytestmark = [pytest.mark.integration]


def send_sessions(port: int, key: str, ids: list[str], errors: list) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    for sid in ids:
        for payload_id, final in ((0, False), (1, True)):
            body = payload_body(payload_id, final=final)
            conn.request(
                "POST", f"/api/v1/sessions/{sid}/payloads", body=_json(body), headers=headers
            )
            reply = conn.getresponse()
            reply.read()
            if reply.status != 202:
                errors.append((sid, payload_id, reply.status))


def _json(body: dict) -> bytes:
    import json

    return json.dumps(body).encode()


def kill_a_busy_worker(runpool_pid: int, stop: threading.Event, killed: list) -> None:
    """SIGKILL the first worker caught mid-task (its title says 'processing')."""
    while not stop.is_set() and not killed:
        for proc in worker_processes(runpool_pid):
            try:
                if " processing " in process_title(proc):
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.append(proc.pid)
                    return
            except (ProcessLookupError, OSError):
                continue
        time.sleep(0.002)


def test_500_sessions_are_each_processed_exactly_once_despite_a_killed_busy_worker(
    gunicorn, runpool
):
    customer, key = customer_create(name="Acme Corp")
    pool = runpool("it-1")
    wait_for(lambda: len(worker_processes(pool.pid)) == 2, 30, message="2 live workers")

    stop = threading.Event()
    killed: list[int] = []
    killer = threading.Thread(target=kill_a_busy_worker, args=(pool.pid, stop, killed))
    killer.start()
    errors: list = []
    ids = [f"s-{i:04d}" for i in range(500)]
    senders = [
        threading.Thread(target=send_sessions, args=(gunicorn.port, key, ids[i::4], errors))
        for i in range(4)
    ]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    assert errors == []

    def all_processed() -> bool:
        return Session.objects.filter(customer=customer, state=State.PROCESSED).count() == 500

    try:
        wait_for(all_processed, 120, interval=0.5, message="500 processed sessions")
    except AssertionError:
        import subprocess

        from django.db.models import Count

        print(list(Session.objects.values("state").annotate(n=Count("id"))))
        for proc in worker_processes(pool.pid):
            print(
                subprocess.run(
                    [".venv/bin/py-spy", "dump", "--pid", str(proc.pid)],
                    capture_output=True,
                    text=True,
                ).stdout
            )
        raise
    finally:
        stop.set()
        killer.join()
    assert killed, "no busy worker was caught and killed"
    customer.refresh_from_db()
    # The counter moves in the transaction that stores a result: exactly once each.
    assert customer.processed_total == 500
    assert Session.objects.filter(customer=customer).count() == 500
    # The killed worker's session came back (lease expired if it had claimed it, queued
    # timeout if it died between taking the task and claiming) and ran once more at most.
    assert not Session.objects.filter(customer=customer, attempts__gt=2).exists()
    # django-q2 replaced the dead worker.
    wait_for(lambda: len(worker_processes(pool.pid)) == 2, 30, message="worker replaced")
    assert pool.stop(signal.SIGTERM, timeout=60) == 0, pool.tail()


def test_runpool_stops_gracefully_on_sigint(runpool):
    customer_create(name="Acme Corp")  # and with it the shared cluster
    pool = runpool("it-2")
    wait_for(lambda: len(worker_processes(pool.pid)) == 2, 30, message="2 live workers")
    assert pool.stop(signal.SIGINT, timeout=60) == 0
    assert worker_processes(pool.pid) == []
    assert PoolHost.objects.get(name="it-2").stopped
