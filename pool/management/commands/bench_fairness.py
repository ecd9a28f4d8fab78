"""`python manage.py bench_fairness`: can a huge customer starve the others?

One cluster with 2 workers and a real runpool subprocess. Three phases in one run:
  0. capacity: the big customer's backlog drains alone (sessions/s the cluster can do);
  A. alone:    5 small customers send ~1 session/s each, nothing else (their lag p95);
  B. mixed:    the same small traffic while a 20,000-session backlog waits.
Prints (a) small customers' lag p95 in B ÷ in A (target ≤ 2, with a 5 s allowance) and
(b) the big customer's drain rate in B (until the phase ends or its backlog is gone) ÷
(capacity − small arrival rate) (target ≥ 0.9). The big backlog is loaded while its
customer is parked on a paused cluster and vacuumed before each measured phase.
Run it against PostgreSQL; it creates its own cluster and customers and deletes them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.utils import timezone

from onboarding.models import Customer
from pool.benchmarks import (
    processed_count,
    sessions_insert_ready,
    vacuum,
    wait_customer_idle,
    wait_heartbeat_workers,
)
from pool.clusters import customer_move
from pool.ingest import compress_body
from pool.models import BACKLOG_STATES, Session, State, WorkerCluster

CLUSTER = "bench-fair"
PARKING = "bench-parked"
FIXTURE = Path(settings.BASE_DIR) / "tests" / "fixtures" / "rrweb" / "checkout.payloads.json"


def realistic_body() -> bytes:
    """One real rrweb recording's events as a single payload: processing costs what it would."""
    doc = json.loads(FIXTURE.read_text())
    events = [e for p in doc["payloads"] for e in p["events"]]
    return compress_body(json.dumps({"payload_id": 0, "events": events}).encode())


def add_ready(customer: Customer, n: int, body: bytes, prefix: str) -> None:
    """n ready sessions holding `body` as their one payload."""
    sessions_insert_ready(customer=customer, n=n, bodies=[body], prefix=prefix)


def p95(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


class SmallTraffic:
    """Each small customer gets one new ready session per second (a feeder thread)."""

    def __init__(self, customers: list[Customer], body: bytes, rate_per_customer: float) -> None:
        self.customers, self.body, self.rate = customers, body, rate_per_customer
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        tick = 0
        while not self.stop.is_set():
            started = time.monotonic()
            for customer in self.customers:
                add_ready(customer, 1, self.body, f"small-{time.time_ns()}-{tick}")
                self.sent += 1
            tick += 1
            self.stop.wait(max(0.0, 1.0 / self.rate - (time.monotonic() - started)))
        connection.close()


class Command(BaseCommand):
    help = "Fairness benchmark: small customers' lag and the big backlog's drain rate."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--backlog", type=int, default=20000)
        parser.add_argument("--small", type=int, default=5)
        parser.add_argument("--phase-seconds", type=float, default=60)
        parser.add_argument("--capacity-seconds", type=float, default=20)
        parser.add_argument("--workers", type=int, default=2)

    def handle(self, *args, **opts) -> None:
        if connection.vendor != "postgresql":
            raise CommandError("run the fairness benchmark against PostgreSQL (DATABASE_URL)")
        self.cleanup()
        cluster = WorkerCluster.objects.create(name=CLUSTER, desired_workers=opts["workers"])
        WorkerCluster.objects.create(name=PARKING, desired_workers=1, paused=True)
        big = Customer.objects.create(name="bench big", slug="bench-big", cluster=cluster)
        smalls = [
            Customer.objects.create(
                name=f"bench small {i}", slug=f"bench-small-{i}", cluster=cluster
            )
            for i in range(opts["small"])
        ]
        body = realistic_body()
        pool = self.start_pool()
        try:
            wait_heartbeat_workers(cluster, opts["workers"])
            capacity = self.phase_capacity(big, body, opts)
            lag_alone = self.phase_small(smalls, body, opts, label="A alone")
            lag_mixed, big_rate, small_rate = self.phase_mixed(big, smalls, body, opts)
        finally:
            pool.send_signal(signal.SIGTERM)
            pool.wait(120)
            self.cleanup()
        alone, mixed = p95(lag_alone), p95(lag_mixed)
        leftover = max(capacity - small_rate, 1e-9)
        self.stdout.write(
            f"capacity (big alone): {capacity:.1f} sessions/s with {opts['workers']} workers"
        )
        self.stdout.write(
            f"small customers' lag p95: alone {alone:.2f} s, with the big backlog {mixed:.2f} s"
        )
        self.stdout.write(
            f"(a) small lag p95 ratio: {mixed / max(alone, 1e-9):.2f} "
            f"(target <= 2, or within alone + 5 s = {alone + 5:.2f} s: "
            f"{'met' if mixed <= max(2 * alone, alone + 5) else 'NOT met'})"
        )
        self.stdout.write(
            f"(b) big drain rate / capacity left over: {big_rate:.1f} / {leftover:.1f} = "
            f"{big_rate / leftover:.2f} (target >= 0.9)"
        )

    # --- phases -------------------------------------------------------------------
    def phase_capacity(self, big: Customer, body: bytes, opts) -> float:
        # Loaded while parked and vacuumed, as before the mixed phase: otherwise the
        # clock would run while autovacuum digests 20,000 new rows on the same cores.
        parking, cluster = WorkerCluster.objects.get(name=PARKING), big.cluster
        customer_move(customer=big, cluster=parking)
        add_ready(big, opts["backlog"], body, "big")
        vacuum()
        customer_move(customer=big, cluster=cluster)
        start_count = processed_count(big)
        time.sleep(opts["capacity_seconds"])
        rate = (processed_count(big) - start_count) / opts["capacity_seconds"]
        # Park the big customer on a paused cluster for the alone phase: its backlog waits.
        customer_move(customer=big, cluster=parking)
        wait_customer_idle(big)
        # Parked, top the backlog back up so the mixed phase starts with the full 20,000.
        waiting = Session.objects.filter(customer=big).exclude(state=State.PROCESSED).count()
        add_ready(big, opts["backlog"] - waiting, body, "big2")
        vacuum()
        self.stdout.write(f"phase 0 capacity: {rate:.1f} sessions/s")
        return rate

    def phase_small(self, smalls, body, opts, *, label: str) -> list[float]:
        since = timezone.now()
        traffic = SmallTraffic(smalls, body, 1.0)
        traffic.thread.start()
        time.sleep(opts["phase_seconds"])
        traffic.stop.set()
        traffic.thread.join()
        lags = self.small_lags(smalls, since, timeout=60)
        self.stdout.write(f"phase {label}: {len(lags)} small sessions, lag p95 {p95(lags):.2f} s")
        return lags

    def phase_mixed(self, big, smalls, body, opts) -> tuple[list[float], float, float]:
        customer_move(customer=big, cluster=WorkerCluster.objects.get(name=CLUSTER))
        Session.objects.filter(customer=big, state=State.READY).update(ready_at=timezone.now())
        since = timezone.now()
        start_big = processed_count(big)
        traffic = SmallTraffic(smalls, body, 1.0)
        traffic.thread.start()
        started = time.monotonic()
        # Until the phase ends or the big backlog is gone (at today's speed 20,000
        # sessions last ~35 s): a rate over time with nothing left to drain means nothing.
        big_waiting = Session.objects.filter(customer=big, state__in=BACKLOG_STATES)
        while time.monotonic() - started < opts["phase_seconds"] and big_waiting.exists():
            time.sleep(0.25)
        elapsed = time.monotonic() - started
        big_rate = (processed_count(big) - start_big) / elapsed
        traffic.stop.set()
        traffic.thread.join()
        small_rate = traffic.sent / elapsed
        lags = self.small_lags(smalls, since, timeout=60)
        self.stdout.write(
            f"phase B mixed: {len(lags)} small sessions, lag p95 {p95(lags):.2f} s; "
            f"big drained {big_rate:.1f}/s while small arrived {small_rate:.1f}/s"
        )
        return lags, big_rate, small_rate

    # --- helpers ------------------------------------------------------------------
    def small_lags(self, smalls, since, *, timeout: float) -> list[float]:
        qs = Session.objects.filter(customer__in=smalls, ready_at__gte=since)
        deadline = time.monotonic() + timeout
        while qs.exclude(state=State.PROCESSED).exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        return [
            (done - ready).total_seconds()
            for ready, done in qs.filter(state=State.PROCESSED).values_list(
                "ready_at", "processed_at"
            )
        ]

    def start_pool(self) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "manage.py", "runpool", "--host", "bench-fair"],
            cwd=settings.BASE_DIR,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def cleanup(self) -> None:
        Customer.objects.filter(slug__startswith="bench-").delete()
        WorkerCluster.objects.filter(name__in=[CLUSTER, PARKING]).delete()
