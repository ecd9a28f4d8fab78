"""`python manage.py bench_memory`: does runpool's memory stay flat as sessions go by?

A real runpool subprocess (2 workers by default) processes 20,000 realistic sessions in
waves of 2,000 (each wave deleted once processed, so the database stays small). After
each wave, with the pool idle, the resident memory of runpool and all its processes
(dispatcher, django-q2 sentinels, pushers, monitors, workers) is read with psutil.
Prints RSS after 20,000 ÷ RSS after 2,000 (target ≤ 1.1).
"""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand

from pool import benchmarks as b

MIB = 1024 * 1024


class Command(BaseCommand):
    help = "runpool's total RSS after 20,000 sessions ÷ after 2,000."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--sessions", type=int, default=20000)
        parser.add_argument("--wave", type=int, default=2000)
        parser.add_argument("--workers", type=int, default=2)
        parser.add_argument("--recording", default="demoit-react-hooks")
        parser.add_argument("--merged", action="store_true")
        parser.add_argument("--timeout", type=float, default=1800)

    def handle(self, *args, **opts) -> None:
        b.require_postgresql()
        bodies = b.recording_bodies(opts["recording"], merged=opts["merged"])
        self.say(
            f"bench_memory: {opts['sessions']} sessions in waves of {opts['wave']}, "
            f"{opts['workers']} workers, recording {opts['recording']}; {b.load_average()}"
        )
        cluster, customer = b.bench_setup(name="memory", workers=opts["workers"], paused=False)
        pool = b.start_runpool(host=f"{b.BENCH_PREFIX}memory")
        rss: dict[int, int] = {}
        try:
            b.wait_live_workers(cluster, opts["workers"], pool=pool)
            self.say(f"  before any session: {b.tree_rss(pool.pid) / MIB:.1f} MiB")
            done = 0
            while done < opts["sessions"]:
                n = min(opts["wave"], opts["sessions"] - done)
                b.sessions_insert_ready(customer=customer, n=n, bodies=bodies, prefix=f"m{done}")
                b.wait_drained(customer, timeout=opts["timeout"], pool=pool)
                done += n
                b.sessions_delete(customer_id=customer.pk)
                time.sleep(2)  # let the loop settle: heartbeats, lag samples
                rss[done] = b.tree_rss(pool.pid)
                self.say(
                    f"  after {done:6d} sessions: RSS {rss[done] / MIB:.1f} MiB "
                    f"(PSS {b.tree_pss(pool.pid) / MIB:.1f} MiB) in {len(pool.tree())} "
                    f"processes; {b.load_average()}"
                )
        finally:
            pool.stop()
            b.bench_cleanup(name="memory")
        first, last = rss[min(rss)], rss[max(rss)]
        self.say(
            f"memory: {last / first:.2f} × (runpool RSS {last / MIB:.1f} MiB after {max(rss)} "
            f"sessions ÷ {first / MIB:.1f} MiB after {min(rss)}, target <= 1.1)"
        )

    def say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()
