"""`python manage.py bench_catchup`: catching up on a backlog while traffic continues.

One cluster (2 workers by default), a real runpool subprocess, realistic sessions (a real
recording's events; one payload a session by default, so that inserting the arrivals,
which this process does alongside, costs little next to processing them):
  1. capacity: a backlog drains alone; sessions/s from ready to processed (measured
     again after the catch-up; the ideal uses the mean of both);
  2. catch-up: a backlog of 10,000 sessions that became ready over the past hour (an
     accumulated backlog, older than the dashboard's rate window) while new sessions
     keep arriving at half the capacity; drained when the customer's lag (age of its
     oldest unprocessed session) is back under a few seconds.
Prints the time to drain ÷ the ideal backlog ÷ (capacity − arrival rate) (target ≤ 1.2),
and the dashboard's ETA (onboarding.lag.lag_rows()[i].eta_s) read a quarter of the way
in against the time that actually remained (target within ±20 %).
"""

from __future__ import annotations

import time
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections
from django.utils import timezone

from onboarding.lag import lag_rows
from onboarding.models import Customer
from pool import benchmarks as b

CAUGHT_UP_LAG_S = 5.0


def _eta_text(eta: float | None) -> str:
    return "not catching up" if eta is None else f"{eta:.0f} s"


class Command(BaseCommand):
    help = "Catch-up time ÷ ideal, and the dashboard ETA's accuracy, under continuing traffic."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--backlog", type=int, default=10000)
        parser.add_argument("--capacity-sessions", type=int, default=3000)
        parser.add_argument("--workers", type=int, default=2)
        parser.add_argument("--recording", default="demoit-react-hooks")
        parser.add_argument(
            "--split",
            action="store_true",
            help="payloads as recorded (39 rows a session) instead of one: the arrivals' "
            "inserts then cost this process as much CPU as the pool spends processing",
        )
        parser.add_argument("--timeout", type=float, default=3600)

    def handle(self, *args, **opts) -> None:
        b.require_postgresql()
        bodies = b.recording_bodies(opts["recording"], merged=not opts["split"])
        self.say(
            f"bench_catchup: backlog {opts['backlog']}, {opts['workers']} workers, "
            f"recording {opts['recording']} ({len(bodies)} payload(s) a session); "
            f"{b.load_average()}"
        )
        cluster, customer = b.bench_setup(name="catchup", workers=opts["workers"])
        pool = b.start_runpool(host=f"{b.BENCH_PREFIX}catchup")
        try:
            b.wait_live_workers(cluster, opts["workers"], pool=pool)
            before = self.capacity(cluster, customer, pool, bodies, opts, label="before")
            result = self.catch_up(cluster, customer, pool, bodies, before, opts)
            b.sessions_delete(customer_id=customer.pk)
            after = self.capacity(cluster, customer, pool, bodies, opts, label="after")
        finally:
            pool.stop()
            b.bench_cleanup(name="catchup")
        # Measured on both sides of the catch-up, so a change in the machine's load
        # during the run weighs on the ideal too.
        self.report((before + after) / 2, *result)

    def capacity(self, cluster, customer, pool, bodies, opts, *, label: str) -> float:
        n = opts["capacity_sessions"]
        b.sessions_insert_ready(customer=customer, n=n, bodies=bodies, prefix=f"cap-{label}")
        b.vacuum()
        since = b.unpause(cluster)
        b.wait_drained(customer, timeout=opts["timeout"], pool=pool)
        b.pause(cluster)
        done, span = b.processed_span(customer, since=since)
        # Gone before the catch-up, so the dashboard's rates see only the catch-up.
        b.sessions_delete(customer_id=customer.pk)
        capacity = done / span
        self.say(
            f"  capacity {label}: {done} sessions in {span:.1f} s = {capacity:.1f}/s; "
            f"{b.load_average()}"
        )
        return capacity

    def catch_up(self, cluster, customer, pool, bodies, capacity: float, opts):
        """Arrivals at half the capacity measured just before."""
        backlog = opts["backlog"]
        now = timezone.now()
        # Spread over the past hour, the way a backlog builds up.
        for i in range(10):
            b.sessions_insert_ready(
                customer=customer,
                n=backlog // 10 + (1 if i < backlog % 10 else 0),
                bodies=bodies,
                prefix=f"old{i}",
                ready_at=now - timedelta(minutes=60 - 5 * i),
            )
        arrivals = b.SteadyArrivals(customer, bodies, capacity / 2)
        readings: list[tuple[float, float | None, int]] = []
        started = time.monotonic()
        cpu_started = time.process_time()  # this process: mostly the arrivals' inserts
        arrivals.start()
        b.unpause(cluster)
        try:
            drained_at = self.wait_caught_up(customer, pool, readings, started, opts)
        finally:
            arrivals.stop.set()
            arrivals.join()
        b.pause(cluster)
        arrival_rate = arrivals.sent / drained_at
        self.say(
            f"  inserting the arrivals cost this process "
            f"{(time.process_time() - cpu_started) / max(arrivals.sent, 1) * 1000:.2f} ms CPU "
            f"per session (on the same 2 cores)"
        )
        return backlog, arrival_rate, drained_at, readings

    def wait_caught_up(self, customer, pool, readings, started: float, opts) -> float:
        """Seconds until the customer's lag is back under CAUGHT_UP_LAG_S, reading the
        dashboard's row every second meanwhile."""
        while True:
            close_old_connections()
            row = next(r for r in lag_rows(customers=Customer.objects.filter(pk=customer.pk)))
            elapsed = time.monotonic() - started
            readings.append((elapsed, row.eta_s, row.backlog))
            if row.lag_s <= CAUGHT_UP_LAG_S or row.backlog == 0:
                return elapsed
            if elapsed > opts["timeout"] or pool.popen.poll() is not None:
                raise CommandError(f"not caught up after {elapsed:.0f} s; see {pool.log_path}")
            time.sleep(1.0)

    def report(self, capacity, backlog, arrival_rate, actual, readings) -> None:
        ideal = backlog / max(capacity - arrival_rate, 1e-9)
        quarter = min(readings, key=lambda r: abs(r[0] - actual / 4))
        at, eta, _ = quarter
        remaining = actual - at
        self.say(
            f"  arrivals {arrival_rate:.1f}/s, mean capacity {capacity:.1f}/s; drained in "
            f"{actual:.1f} s; ideal {backlog} ÷ ({capacity:.1f} − {arrival_rate:.1f}) "
            f"= {ideal:.1f} s; {b.load_average()}"
        )
        for t, e, n in readings[:: max(1, len(readings) // 8)]:
            self.say(
                f"    t={t:5.0f} s backlog {n:6d} dashboard ETA {_eta_text(e)}, "
                f"actual {actual - t:.0f} s"
            )
        during = backlog / actual + arrival_rate
        self.say(
            f"  capacity during the catch-up (backlog ÷ time + arrivals): {during:.1f}/s, "
            f"{(1 - during / capacity) * 100:.0f} % under the capacity measured alone: the "
            f"arrivals' inserts and this command's dashboard readings share the 2 cores; "
            f"with arrivals at half the capacity, the ratio grows about twice as fast as "
            f"that shortfall"
        )
        if eta is None:
            eta_line = "ETA: not catching up"
            verdict = "NOT met"
        else:
            error = eta / remaining - 1
            eta_line = f"ETA error: {error * 100:+.0f} %"
            verdict = "met" if abs(error) <= 0.2 else "NOT met"
        self.say(
            f"catch-up: {actual / ideal:.2f} × ideal (target <= 1.2); {eta_line} at "
            f"t={at:.0f} s (dashboard {eta if eta is None else round(eta)} s vs "
            f"{remaining:.0f} s actual; target within ±20 %: {verdict})"
        )

    def say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()
