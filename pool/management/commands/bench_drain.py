"""`python manage.py bench_drain`: does runpool drain at the machine's limit?

In one run, on the same realistic sessions (a real rrweb recording, its payloads stored
as the ingest API stores them), in alternating rounds so that a change in the machine's
load weighs on both sides alike:
  - the machine's limit: multiprocessing.Pool(n) running the processing function a
    worker runs, pool.worker.session_compute (decompress and parse the stored payloads,
    summarize, compress the event stream), over the same stored payloads held in memory;
  - runpool with n workers: sessions/s from the moment they are ready to the last one
    processed (sessions wait in a paused cluster, the clock starts when it is unpaused),
    with the CPU every process involved used per session (runpool's tree and the
    database backends serving it);
first with n = 1, then with the cluster resized to n = 2. What separates the two is
everything runpool adds: dispatch, the broker, reading and writing PostgreSQL.
For context it also measures Pool(2) over payloads already decompressed and parsed.
Prints scaling (runpool 2 workers ÷ 1 worker, target ≥ 1.7) and, last, drain efficiency
(runpool 2 workers ÷ Pool(2), target ≥ 0.8).
"""

from __future__ import annotations

from django.core.management.base import BaseCommand

from pool import benchmarks as b
from pool.models import WorkerCluster


class Command(BaseCommand):
    help = "Drain efficiency (runpool ÷ multiprocessing.Pool) and 1 → 2 worker scaling."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--sessions", type=int, default=1000, help="per round and side")
        parser.add_argument("--rounds", type=int, default=3)
        parser.add_argument("--recording", default="demoit-react-hooks")
        parser.add_argument(
            "--merged", action="store_true", help="one payload per session, not as recorded"
        )
        parser.add_argument("--workers", type=int, default=2)
        parser.add_argument("--no-scaling", action="store_true", help="skip the 1-worker rounds")
        parser.add_argument("--timeout", type=float, default=900)

    def handle(self, *args, **opts) -> None:
        b.require_postgresql()
        workers = opts["workers"]
        counts = [workers] if opts["no_scaling"] or workers == 1 else [1, workers]
        self.bodies = b.recording_bodies(opts["recording"], merged=opts["merged"])
        self.rows = [list(enumerate(self.bodies))]  # (payload_id, body), as a worker reads them
        self.say(
            f"bench_drain: {opts['rounds']} rounds of {opts['sessions']} sessions per side, "
            f"recording {opts['recording']} ({len(self.bodies)} payloads, "
            f"{sum(map(len, self.bodies)) / 1024:.0f} KiB stored); {b.load_average()}"
        )
        cluster, customer = b.bench_setup(name="drain", workers=counts[0])
        pool = b.start_runpool(host=f"{b.BENCH_PREFIX}drain")
        limit: dict[int, float] = {}
        drained: dict[int, float] = {}
        try:
            for w in counts:
                limit[w], drained[w] = self.rounds(cluster, customer, pool, workers=w, opts=opts)
        finally:
            pool.stop()
            b.bench_cleanup(name="drain")
        decoded, cpu_ms = b.pool_rate(
            sessions=[b.decoded_payloads(self.bodies)], n=opts["sessions"], workers=workers
        )
        self.say(
            f"  for context: Pool({workers}) over payloads already decompressed and parsed: "
            f"{decoded:.1f}/s ({cpu_ms:.2f} ms CPU per session); runpool ÷ it = "
            f"{drained[workers] / decoded:.2f}"
        )
        if len(counts) > 1:
            self.say(
                f"  Pool({workers}) ÷ Pool(1) on this machine now: {limit[workers] / limit[1]:.2f}"
            )
            self.say(
                f"scaling: {drained[workers] / drained[1]:.2f} "
                f"(runpool {workers} workers ÷ 1 worker, target >= 1.7)"
            )
        self.say(
            f"drain efficiency: {drained[workers] / limit[workers]:.2f} "
            f"(runpool {drained[workers]:.1f}/s ÷ multiprocessing.Pool({workers}) "
            f"{limit[workers]:.1f}/s, target >= 0.8)"
        )

    def rounds(self, cluster, customer, pool, *, workers: int, opts) -> tuple[float, float]:
        """(Pool sessions/s, runpool sessions/s) over alternating rounds, totals ÷ totals."""
        n = opts["sessions"]
        WorkerCluster.objects.filter(pk=cluster.pk).update(desired_workers=workers)
        b.wait_live_workers(cluster, workers, pool=pool)
        pool_s = runpool_s = 0.0
        meter = b.CpuMeter(pool.pid)
        for i in range(opts["rounds"]):
            rate, pool_cpu_ms = b.pool_rate(sessions=self.rows, n=n, workers=workers, stored=True)
            pool_s += n / rate
            runpool_s += self.drain(
                cluster, customer, pool, meter, n=n, tag=f"w{workers}r{i}", opts=opts
            )
            self.say(
                f"  round {i + 1}: Pool({workers}) {rate:.1f}/s, runpool {workers} worker(s) "
                f"{n * (i + 1) / runpool_s:.1f}/s so far; {b.load_average()}"
            )
        total = n * opts["rounds"]
        self.say(
            f"  {workers} worker(s): Pool {total / pool_s:.1f}/s ({pool_cpu_ms:.2f} ms CPU per "
            f"session), runpool {total / runpool_s:.1f}/s"
        )
        self.say(f"    runpool {meter.describe(total)}")
        return total / pool_s, total / runpool_s

    def drain(self, cluster, customer, pool, meter, *, n: int, tag: str, opts) -> float:
        """Seconds for runpool to process n ready sessions, checked exactly once."""
        customer.refresh_from_db()
        before = customer.processed_total
        b.sessions_delete(customer_id=customer.pk)
        b.sessions_insert_ready(customer=customer, n=n, bodies=self.bodies, prefix=tag)
        b.vacuum()
        meter.resume()
        since = b.unpause(cluster)
        b.wait_drained(
            customer, timeout=opts["timeout"], pool=pool, on_poll=lambda left: meter.sample()
        )
        meter.pause()
        b.pause(cluster)
        _, span = b.processed_span(customer, since=since)
        b.check_exactly_once(customer, n=n, total_before=before)
        return span

    def say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()
