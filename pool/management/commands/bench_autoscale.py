"""`python manage.py bench_autoscale`: does lag-based autoscaling follow a step in traffic?

One cluster at 1 worker with autoscale on (min 1, max 4, target lag 30 s) and a real
runpool subprocess. Phases:
  0. calibrate: autoscale off, a backlog drains on 1 worker: what one worker handles/s;
  1. load:      ready sessions arrive at 3x that rate for --load-seconds;
  2. settle:    traffic stops; wait until workers are back at the minimum.
Prints the peak lag, how long lag stayed above target, the resizes the autoscaler made
(flapping shows as many), and whether workers returned to the minimum.

runpool must call pool.autoscale.autoscale_tick (every AUTOSCALE_TICK_S). If the runpool
it starts does not (no cluster samples appear), the bench says so and drives the ticks
from its own process, so the figures still mean something.
Run it against PostgreSQL; it creates its own cluster and customer and deletes them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, close_old_connections, connection
from django.db.models import Min
from django.utils import timezone

from onboarding.models import Customer
from pool.autoscale import AUTOSCALE_BY, AUTOSCALE_TICK_S, autoscale_tick, autoscale_update
from pool.benchmarks import (
    SteadyArrivals,
    processed_count,
    repeated_recording_body,
    wait_customer_idle,
    wait_heartbeat_workers,
)
from pool.management.commands.bench_fairness import add_ready
from pool.models import (
    BACKLOG_STATES,
    ClusterAutoscale,
    ClusterChange,
    ClusterSample,
    Session,
    WorkerCluster,
)

CLUSTER = "bench-auto"
SLUG = "bench-auto"


@dataclass
class Reading:
    t: float  # seconds since the load started
    lag_s: float
    backlog: int
    desired: int
    decision: str = ""


@dataclass
class Run:
    readings: list[Reading] = field(default_factory=list)
    sent: int = 0
    processed_in_load: int = 0


class Ticker(threading.Thread):
    """Stands in for runpool's autoscale tick while pool.runner does not call it."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(AUTOSCALE_TICK_S):
            close_old_connections()
            try:
                autoscale_tick(now=timezone.now())
            except DatabaseError:  # PostgreSQL restarting: the next tick retries
                connection.close()
        connection.close()


class Command(BaseCommand):
    help = "Autoscale benchmark: a step to 3x one worker's rate, then silence."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--factor", type=float, default=3.0)
        parser.add_argument(
            "--repeat",
            type=int,
            default=10,
            help="each session is the checkout recording this many times over, so that "
            "3x one worker's rate is few enough sessions for this command to insert",
        )
        parser.add_argument("--load-seconds", type=float, default=240)
        parser.add_argument("--settle-seconds", type=float, default=420)
        parser.add_argument("--calibrate-seconds", type=float, default=15)
        parser.add_argument("--target-lag", type=int, default=30)
        parser.add_argument("--max-workers", type=int, default=4)
        parser.add_argument(
            "--no-cpu-cap",
            action="store_true",
            help="runpool ignores CPU headroom (AUTOSCALE_CPU_CAP=0), e.g. on a shared box",
        )

    def handle(self, *args, **opts) -> None:
        if connection.vendor != "postgresql":
            raise CommandError("run the autoscale benchmark against PostgreSQL (DATABASE_URL)")
        if opts["no_cpu_cap"] and not hasattr(settings, "AUTOSCALE_CPU_CAP"):
            self.stdout.write(
                "warning: config.settings has no AUTOSCALE_CPU_CAP (read from the environment); "
                "runpool keeps the CPU cap"
            )
        self.cleanup()
        cluster = WorkerCluster.objects.create(name=CLUSTER, desired_workers=1)
        customer = Customer.objects.create(name="bench autoscale", slug=SLUG, cluster=cluster)
        body = repeated_recording_body("checkout", times=opts["repeat"])
        pool = self.start_pool(no_cpu_cap=opts["no_cpu_cap"])
        ticker = None
        try:
            wait_heartbeat_workers(cluster, 1)
            per_worker = self.calibrate(customer, body, opts["calibrate_seconds"])
            if not self.runpool_ticks(cluster):
                self.stdout.write(
                    "note: runpool does not call pool.autoscale.autoscale_tick yet; "
                    "the bench drives the ticks itself"
                )
                if opts["no_cpu_cap"]:
                    settings.AUTOSCALE_CPU_CAP = False  # the ticks run in this process
                ticker = Ticker()
                ticker.start()
            autoscale_update(
                cluster=cluster,
                enabled=True,
                min_workers=1,
                max_workers=opts["max_workers"],
                target_lag_s=opts["target_lag"],
            )
            run = self.load_and_settle(customer, cluster, body, per_worker * opts["factor"], opts)
        finally:
            if ticker:
                ticker.stop.set()
                ticker.join()
            pool.send_signal(signal.SIGTERM)
            pool.wait(120)
            changes = self.retrying(
                lambda: list(
                    ClusterChange.objects.filter(
                        cluster__name=CLUSTER, field="desired_workers", by_label=AUTOSCALE_BY
                    ).order_by("at")
                )
            )
            self.retrying(self.cleanup)
        self.report(run, changes, per_worker, opts)

    # --- phases -------------------------------------------------------------------
    def calibrate(self, customer: Customer, body: bytes, seconds: float) -> float:
        add_ready(customer, 3000, body, "calibrate")  # more than one worker can finish
        time.sleep(3)  # past the first dispatch and worker start-up
        before = processed_count(customer)
        time.sleep(seconds)
        rate = (processed_count(customer) - before) / seconds
        # Pause so the dispatcher leaves what is left alone while it is deleted.
        WorkerCluster.objects.filter(pk=customer.cluster_id).update(paused=True)
        time.sleep(1)
        wait_customer_idle(customer)
        Session.objects.filter(customer=customer).delete()
        WorkerCluster.objects.filter(pk=customer.cluster_id).update(paused=False)
        self.stdout.write(f"calibration: one worker handles {rate:.1f} sessions/s")
        if rate <= 0:
            raise CommandError("the worker processed nothing during calibration")
        return rate

    def load_and_settle(self, customer, cluster, body, per_s: float, opts) -> Run:
        self.stdout.write(
            f"load: {per_s:.1f} sessions/s for {opts['load_seconds']:.0f} s "
            f"({opts['factor']:.1f}x one worker), then silence"
        )
        run = Run()
        done_before = processed_count(customer)
        feeder = SteadyArrivals(customer, [body], per_s, every_s=0.5)
        started = time.monotonic()
        feeder.start()
        load_end = started + opts["load_seconds"]
        deadline = load_end + opts["settle_seconds"]
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now >= load_end and feeder.is_alive():
                feeder.stop.set()
                feeder.join()
                run.processed_in_load = processed_count(customer) - done_before
            try:
                reading = self.read(customer, cluster, now - started)
            except DatabaseError:  # PostgreSQL restarting (a shared machine): read again
                connection.close()
                time.sleep(1)
                continue
            run.readings.append(reading)
            settled = reading.t - max(opts["load_seconds"], self.last_change(run))
            # Back at the minimum with nothing waiting: watch 30 s more for a late flap.
            if now >= load_end and reading.desired == 1 and reading.backlog == 0 and settled > 30:
                break
            time.sleep(1)
        feeder.stop.set()
        feeder.join()
        run.sent = feeder.sent
        return run

    def last_change(self, run: Run) -> float:
        return max(
            (
                r.t
                for a, r in zip(run.readings, run.readings[1:], strict=False)
                if a.desired != r.desired
            ),
            default=0.0,
        )

    def read(self, customer: Customer, cluster: WorkerCluster, t: float) -> Reading:
        backlog = Session.objects.filter(customer=customer, state__in=BACKLOG_STATES)
        oldest = backlog.aggregate(m=Min("ready_at"))["m"]
        lag = (timezone.now() - oldest).total_seconds() if oldest else 0.0
        desired = WorkerCluster.objects.get(pk=cluster.pk).desired_workers
        decision = (
            ClusterAutoscale.objects.filter(pk=cluster.pk)
            .values_list("last_decision", flat=True)
            .first()
        )
        return Reading(
            t=t,
            lag_s=max(lag, 0.0),
            backlog=backlog.count(),
            desired=desired,
            decision=re.sub(r"\d+", "N", decision or ""),
        )

    # --- report -------------------------------------------------------------------
    def report(self, run: Run, changes: list[ClusterChange], per_worker: float, opts) -> None:
        target, load_s = opts["target_lag"], opts["load_seconds"]
        if not run.readings:
            raise CommandError("no readings")
        peak = max(run.readings, key=lambda r: r.lag_s)
        over = next((r for r in run.readings if r.lag_s > target), None)
        back = next((r for r in run.readings if r.t > peak.t and r.lag_s <= target), None)
        self.stdout.write(
            f"during the load: {run.sent / load_s:.1f} sessions/s arrived, "
            f"{run.processed_in_load / load_s:.1f}/s processed"
        )
        self.stdout.write(f"peak lag: {peak.lag_s:.0f} s at t={peak.t:.0f} s (target {target} s)")
        if over is None:
            self.stdout.write("lag never went above the target")
        elif back is None:
            self.stdout.write(f"lag above target from t={over.t:.0f} s and never back under")
        else:
            when = "during the load" if back.t <= load_s else f"{back.t - load_s:.0f} s after it"
            self.stdout.write(
                f"lag back under target at t={back.t:.0f} s ({when}): "
                f"{back.t - over.t:.0f} s above target"
            )
        start = changes[0].at - timedelta(seconds=1) if changes else None
        steps = ", ".join(f"{c.before}→{c.after}" for c in changes) or "none"
        self.stdout.write(f"resizes by the autoscaler: {len(changes)} ({steps})")
        if start is not None:
            offsets = [f"+{(c.at - start).total_seconds():.0f}s" for c in changes]
            self.stdout.write(f"  at (from the first): {' '.join(offsets)}")
        top = max(r.desired for r in run.readings)
        last = run.readings[-1]
        returned = next(
            (r for r in run.readings if r.t >= load_s and r.desired == 1 and r.backlog == 0),
            None,
        )
        self.stdout.write(f"workers: 1 → peak {top} → {last.desired} at the end")
        if returned:
            self.stdout.write(
                f"back at the minimum (1 worker, nothing waiting) {returned.t - load_s:.0f} s "
                "after the traffic stopped"
            )
        else:
            self.stdout.write("NOT back at the minimum before the bench gave up")
        self.stdout.write(
            f"one worker: {per_worker:.1f}/s; arrivals {per_worker * opts['factor']:.1f}/s"
        )
        reasons = Counter(r.decision for r in run.readings if r.decision)
        self.stdout.write("the autoscaler's last decision, by seconds seen:")
        for reason, seconds in reasons.most_common(6):
            self.stdout.write(f"  {seconds:4d} s  {reason}")

    # --- helpers ------------------------------------------------------------------
    def retrying(self, work, attempts: int = 30):
        for attempt in range(attempts):
            try:
                return work()
            except DatabaseError:
                if attempt == attempts - 1:
                    raise
                connection.close()
                time.sleep(1)

    def runpool_ticks(self, cluster: WorkerCluster, timeout: float = 15) -> bool:
        """runpool's tick records a sample per cluster every 10 s."""
        since = timezone.now()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ClusterSample.objects.filter(cluster=cluster, at__gte=since).exists():
                return True
            time.sleep(1)
        return False

    def start_pool(self, *, no_cpu_cap: bool) -> subprocess.Popen:
        env = dict(os.environ, **({"AUTOSCALE_CPU_CAP": "0"} if no_cpu_cap else {}))
        return subprocess.Popen(
            [sys.executable, "manage.py", "runpool", "--host", "bench-auto"],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def cleanup(self) -> None:
        Customer.objects.filter(slug=SLUG).delete()
        WorkerCluster.objects.filter(name=CLUSTER).delete()
