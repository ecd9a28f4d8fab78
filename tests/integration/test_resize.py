"""Admins resize and pause a cluster while sessions flow: nothing lost, nothing run twice."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from onboarding.services import customer_create
from pool.clusters import cluster_pause, cluster_resize
from pool.ingest import compress_body
from pool.models import Payload, Session, State, WorkerCluster
from tests.integration.conftest import wait_for, worker_processes

pytestmark = [pytest.mark.integration]

BODY = compress_body(
    b'{"payload_id":0,"events":[{"type":4,"data":{"href":"https://a.test/"},"timestamp":1700000000000},'
    b'{"type":2,"data":{"node":{}},"timestamp":1700000000001},'
    b'{"type":3,"data":{"source":2,"type":2,"x":3,"y":4},"timestamp":1700000002000}]}'
)


class Feeder(threading.Thread):
    """Ready sessions at a steady rate, as if recorders kept sending."""

    def __init__(self, customer, per_second: int) -> None:
        super().__init__(daemon=True)
        self.customer, self.per_second = customer, per_second
        self.stop = threading.Event()
        self.created = 0

    def run(self) -> None:
        while not self.stop.is_set():
            now = timezone.now()
            batch = Session.objects.bulk_create(
                [
                    Session(
                        customer=self.customer,
                        external_id=f"f-{self.created + i}",
                        state=State.READY,
                        ready_at=now,
                    )
                    for i in range(self.per_second // 10)
                ]
            )
            Payload.objects.bulk_create(
                [
                    Payload(session=s, payload_id=0, body=BODY, event_count=3, raw_bytes=300)
                    for s in batch
                ]
            )
            self.created += len(batch)
            self.stop.wait(0.1)
        connection.close()  # this thread's own connection; the test database is dropped later


def test_resize_and_pause_under_load_lose_nothing_and_run_nothing_twice(runpool):
    customer = customer_create(name="Acme Corp")[0]
    cluster = WorkerCluster.objects.get(name="shared")
    cluster_resize(cluster=cluster, workers=1)
    pool = runpool("it-resize")
    wait_for(lambda: len(worker_processes(pool.pid)) == 1, 30, message="1 live worker")
    feeder = Feeder(customer, per_second=60)
    feeder.start()
    try:
        for workers in (4, 2, 1, 3):
            cluster_resize(cluster=cluster, workers=workers)
            # Within 5 s the OS shows exactly the new count (old generation gone).
            wait_for(
                lambda w=workers: len(worker_processes(pool.pid)) == w,
                5,
                0.05,
                f"{workers} workers",
            )
            time.sleep(2)  # let sessions flow on this size
            assert len(worker_processes(pool.pid)) == workers

        cluster_pause(cluster=cluster, paused=True)
        paused_at = timezone.now()
        time.sleep(4)
        # Nothing new was handed to the paused cluster; the backlog grows, visibly.
        assert not Session.objects.filter(queued_at__gt=paused_at + timedelta(seconds=1.5)).exists()
        assert Session.objects.filter(state=State.READY).count() > 100
        cluster_pause(cluster=cluster, paused=False)
        # At least 1,000 sessions flow through the changes, however loaded the machine is.
        wait_for(lambda: feeder.created >= 1000, 120, 0.2, "1,000 sessions fed")
    finally:
        feeder.stop.set()
        feeder.join()
    assert feeder.created >= 1000
    wait_for(
        lambda: not Session.objects.exclude(state=State.PROCESSED).exists(),
        120,
        0.5,
        "all processed",
    )
    customer.refresh_from_db()
    assert Session.objects.count() == feeder.created
    assert customer.processed_total == feeder.created  # each result applied exactly once
    assert set(Session.objects.values_list("attempts", flat=True)) == {1}  # none ran twice
