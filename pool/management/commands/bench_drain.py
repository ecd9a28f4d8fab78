"""`python manage.py bench_drain`: does runpool drain at the machine's limit?

In one run, on the same realistic sessions (a real rrweb recording, stored as the ingest
API stores it):
  - the machine's limit: multiprocessing.Pool(n) running pool.processing.summarize +
    compress_stream over the decompressed payloads held in memory (n = 1 and 2);
  - runpool with 1 worker, then the same cluster resized to 2: sessions/s from the
    moment they are ready to the last one processed (sessions wait in a paused cluster,
    the measurement starts when it is unpaused).
The limit is measured before and after the runpool phases and averaged, so a change in
the machine's load during the run weighs on both sides alike.
Prints drain efficiency (runpool 2 workers ÷ Pool(2), target ≥ 0.8) and scaling
(runpool 2 workers ÷ 1 worker, target ≥ 1.7).
"""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand

from pool import benchmarks as b
from pool.models import WorkerCluster


class Command(BaseCommand):
    help = "Drain efficiency (runpool ÷ multiprocessing.Pool) and 1 → 2 worker scaling."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--sessions", type=int, default=3000, help="per measured drain")
        parser.add_argument("--recording", default="demoit-react-hooks")
        parser.add_argument(
            "--merged", action="store_true", help="one payload per session, not as recorded"
        )
        parser.add_argument("--workers", type=int, default=2)
        parser.add_argument(
            "--no-scaling", action="store_true", help="skip the 1-worker drain and its limit"
        )
        parser.add_argument("--timeout", type=float, default=600)

    def handle(self, *args, **opts) -> None:
        b.require_postgresql()
        n, workers = opts["sessions"], opts["workers"]
        counts = [workers] if opts["no_scaling"] else [1, workers]
        bodies = b.recording_bodies(opts["recording"], merged=opts["merged"])
        sessions = [b.decoded_payloads(bodies)]
        self.say(
            f"bench_drain: {n} sessions per drain, recording {opts['recording']} "
            f"({len(bodies)} payloads, {sum(map(len, bodies)) / 1024:.0f} KiB stored); "
            f"{b.load_average()}"
        )
        limit: dict[int, list[float]] = {w: [] for w in counts}
        self.measure_limit(limit, sessions, n)
        cluster, customer = b.bench_setup(name="drain", workers=counts[0])
        pool = b.start_runpool(host=f"{b.BENCH_PREFIX}drain")
        drained: dict[int, float] = {}
        try:
            for w in counts:
                drained[w] = self.drain(cluster, customer, pool, n=n, workers=w, opts=opts)
        finally:
            pool.stop()
            b.bench_cleanup(name="drain")
        self.measure_limit(limit, sessions, n)
        self.report(limit, drained, counts, workers)

    def drain(self, cluster, customer, pool, *, n: int, workers: int, opts) -> float:
        WorkerCluster.objects.filter(pk=cluster.pk).update(desired_workers=workers)
        b.wait_live_workers(cluster, workers, pool=pool)
        customer.refresh_from_db()
        before = customer.processed_total
        b.sessions_delete(customer_id=customer.pk)
        b.sessions_insert_ready(
            customer=customer, n=n, bodies=self.bodies(opts), prefix=f"w{workers}"
        )
        meter = b.CpuMeter(pool.pid)
        meter.begin()
        started = time.monotonic()
        since = b.unpause(cluster)
        b.wait_drained(
            customer, timeout=opts["timeout"], pool=pool, on_poll=lambda left: meter.sample()
        )
        meter.sample()
        b.pause(cluster)
        done, span = b.processed_span(customer, since=since)
        customer.refresh_from_db()
        if customer.processed_total - before != n or done != n:
            self.say(
                f"  WARNING: {done} processed, processed_total +{customer.processed_total - before}"
            )
        rate = n / span
        self.say(
            f"  runpool {workers} worker(s): {n} sessions in {span:.2f} s = {rate:.1f}/s "
            f"(wall {time.monotonic() - started:.1f} s); {b.load_average()}"
        )
        self.say(f"    {meter.describe(n)}")
        return rate

    def measure_limit(self, limit: dict[int, list[float]], sessions, n: int) -> None:
        for w in limit:
            rate, cpu_ms = b.pool_rate(sessions=sessions, n=n, workers=w)
            limit[w].append(rate)
            self.say(
                f"  multiprocessing.Pool({w}): {rate:.1f} sessions/s, "
                f"CPU ms per session {cpu_ms:.2f}; {b.load_average()}"
            )

    def bodies(self, opts) -> list[bytes]:
        if not hasattr(self, "_bodies"):
            self._bodies = b.recording_bodies(opts["recording"], merged=opts["merged"])
        return self._bodies

    def report(self, limit, drained, counts, workers) -> None:
        mean = {w: sum(limit[w]) / len(limit[w]) for w in counts}
        if 1 in drained and workers != 1:
            self.say(
                f"  Pool({workers}) ÷ Pool(1) on this machine now: {mean[workers] / mean[1]:.2f}"
            )
            self.say(
                f"scaling: {drained[workers] / drained[1]:.2f} "
                f"(runpool {workers} workers ÷ 1 worker, target >= 1.7)"
            )
        self.say(
            f"drain efficiency: {drained[workers] / mean[workers]:.2f} "
            f"(runpool {drained[workers]:.1f}/s ÷ multiprocessing.Pool({workers}) "
            f"{mean[workers]:.1f}/s, target >= 0.8)"
        )

    def say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()
