"""`python manage.py bench_resize`: how long a live resize takes to reach the OS.

Steps:
1. start a real `manage.py runpool --host NAME` subprocess against the configured
   database and wait until it runs every existing cluster;
2. create a fresh cluster of 1 worker (no customers, so no work), and find its
   generation: the one django-q2 Sentinel that appears under runpool afterwards;
3. resize it N times through pool.clusters.cluster_resize (the service the UI calls),
   cycling 1 → 4 → 2 → 3 → 1 …, each at a random moment; after each, poll the process tree every 10 ms until the
   new generation runs exactly the desired number of titled worker processes and every
   worker of the old generation has exited; that is the latency;
4. print each latency and p50 / p95 / max; stop runpool with SIGTERM (graceful) and
   delete the cluster and the host row.

Other clusters of the database run in the bench's runpool too (it is a real pool host,
and may process their sessions); their generations are told apart from the bench's by
when they appear. For a quiet measurement, point DATABASE_URL at a scratch database.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import psutil
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, close_old_connections

from pool.bench import (
    generation_sentinels,
    is_gone,
    median,
    percentile,
    sentinel_workers,
    tree_snapshot,
    unapplied_migrations,
    wait_until,
)
from pool.clusters import cluster_create, cluster_resize
from pool.models import PoolHost, WorkerCluster
from pool.runner import HOUSEKEEPING_S

CYCLE = [4, 2, 3, 1]


@dataclass
class Resize:
    before: int
    after: int
    new_ready_s: float  # the new generation runs `after` workers
    old_gone_s: float  # every worker of the old generation has exited

    @property
    def latency_s(self) -> float:
        return max(self.new_ready_s, self.old_gone_s)


class Command(BaseCommand):
    help = (
        "Start a runpool subprocess, resize a fresh cluster N times and measure the time "
        "from each database change until the OS shows the new worker processes and the old "
        "generation's workers are gone."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--resizes", type=int, default=12, help="measured resizes (≥ 1)")
        parser.add_argument(
            "--host",
            default=f"bench-resize-{socket.gethostname()}-{os.getpid()}",
            help="runpool host name for the bench's heartbeats (unique by default)",
        )
        parser.add_argument(
            "--cluster",
            default=f"bench-resize-{os.getpid()}",
            help="name of the cluster to create (must not exist)",
        )
        parser.add_argument(
            "--timeout", type=float, default=60.0, help="seconds to wait for one resize"
        )

    def handle(self, *args, **options) -> None:
        resizes = options["resizes"]
        if resizes < 1:
            raise CommandError("--resizes must be at least 1")
        if max(CYCLE) > settings.POOL_MAX_WORKERS:
            raise CommandError(f"POOL_MAX_WORKERS must be at least {max(CYCLE)}")
        if missing := unapplied_migrations():
            raise CommandError(f"the database lacks migrations {', '.join(missing)}: run migrate")
        name, host = options["cluster"], options["host"]
        if WorkerCluster.objects.filter(name=name).exists():
            raise CommandError(f"cluster {name!r} exists already: pass another --cluster")
        if PoolHost.objects.filter(name=host, stopped=False).exists():
            raise CommandError(f"a runpool host named {host!r} is live: pass another --host")

        self.timeout = options["timeout"]
        self.pool, self.log_path = self.start_runpool(host)
        cluster = None
        try:
            self.wait_for_existing_clusters()
            cluster, sentinel = self.create_cluster(name)
            results = []
            current = 1
            for i in range(resizes):
                # runpool reconciles once a second: changes at random moments sample every
                # phase of that tick, as an admin's clicks would (back-to-back resizes would
                # lock onto it).
                time.sleep(random.uniform(0.1, HOUSEKEEPING_S + 0.5))
                target = CYCLE[i % len(CYCLE)]
                sentinel, result = self.resize(cluster, sentinel, current, target)
                results.append(result)
                current = target
                self.stdout.write(
                    f"resize {i + 1:2d}: {result.before} → {result.after} workers: "
                    f"{result.latency_s:.3f} s (new generation ready at "
                    f"{result.new_ready_s:.3f} s, old workers gone at {result.old_gone_s:.3f} s)"
                )
        finally:
            self.stop_runpool()
            self.clean_up(cluster, host)
        os.unlink(self.log_path)  # kept only when something went wrong
        latencies = [r.latency_s for r in results]
        self.stdout.write(
            f"resize latency: p50 {median(latencies):.2f} s, p95 {percentile(latencies, 95):.2f} s, "
            f"max {max(latencies):.2f} s over {len(latencies)} resizes"
        )

    # --- runpool -----------------------------------------------------------------
    def start_runpool(self, host: str) -> tuple[subprocess.Popen, str]:
        log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed once the child has it
            "w", prefix="bench-resize-runpool-", suffix=".log", delete=False
        )
        # A session of its own: a Ctrl-C of the bench must not reach runpool's workers
        # (SIGINT to the group); the bench stops runpool gracefully itself.
        proc = subprocess.Popen(
            [sys.executable, str(settings.BASE_DIR / "manage.py"), "runpool", "--host", host],
            cwd=settings.BASE_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.stdout.write(f"runpool --host {host} started (pid {proc.pid}, log {log.name})")
        return proc, log.name

    def stop_runpool(self) -> None:
        if self.pool.poll() is None:
            self.pool.send_signal(signal.SIGTERM)
            try:
                self.pool.wait(settings.Q_TASK_TIMEOUT_S + 15)
            except subprocess.TimeoutExpired:
                self.stderr.write("runpool did not stop after SIGTERM; killing its process tree")
                for child in psutil.Process(self.pool.pid).children(recursive=True):
                    child.kill()
                self.pool.kill()
                self.pool.wait(10)
        self.stdout.write(f"runpool stopped (exit code {self.pool.returncode})")

    def clean_up(self, cluster: WorkerCluster | None, host: str) -> None:
        """Delete the bench cluster (its audit rows and heartbeats go with it) and host."""
        try:
            close_old_connections()
            if cluster is not None:
                cluster.delete()
            PoolHost.objects.filter(name=host).delete()
        except DatabaseError as exc:
            self.stderr.write(
                f"could not delete cluster {cluster} and host {host}: {exc}; delete them in "
                "the admin (Worker clusters, Pool hosts)"
            )

    def fail(self, message: str) -> CommandError:
        with open(self.log_path) as log:
            tail = "".join(log.readlines()[-30:])
        return CommandError(f"{message}\n--- runpool log ({self.log_path}) ---\n{tail}")

    def check_alive(self) -> None:
        if self.pool.poll() is not None:
            raise self.fail(f"runpool exited with code {self.pool.returncode}")

    # --- steps -------------------------------------------------------------------
    def wait_for_existing_clusters(self) -> None:
        """Until runpool runs one settled generation per existing cluster (else a late one
        could be taken for the bench's)."""
        expected = WorkerCluster.objects.count()
        seen: list[dict[int, int]] = []

        def settled() -> bool:
            self.check_alive()
            snap = tree_snapshot(self.pool.pid)
            seen.append(snap)
            recent = seen[-100:]  # one second of identical snapshots
            return (
                len(recent) == 100
                and all(s == snap for s in recent)
                and len(snap) == expected
                and all(snap.values())
            )

        if expected and not wait_until(settled, timeout=120):
            raise self.fail(f"runpool did not start its {expected} existing clusters in 120 s")

    def create_cluster(self, name: str) -> tuple[WorkerCluster, psutil.Process]:
        before = set(generation_sentinels(self.pool.pid))
        cluster = cluster_create(name=name, workers=1)

        def started() -> psutil.Process | None:
            self.check_alive()
            for pid, proc in generation_sentinels(self.pool.pid).items():
                if pid not in before and len(sentinel_workers(proc)) == 1:
                    return proc
            return None

        start = time.perf_counter()
        sentinel = wait_until(started, timeout=self.timeout)
        if sentinel is None:
            raise self.fail(f"no generation of {name} appeared in {self.timeout:.0f} s")
        self.stdout.write(
            f"cluster {name} created; its first worker ran after "
            f"{time.perf_counter() - start:.3f} s"
        )
        return cluster, sentinel

    def resize(
        self, cluster: WorkerCluster, old: psutil.Process, before: int, after: int
    ) -> tuple[psutil.Process, Resize]:
        old_workers = sentinel_workers(old)
        known = set(generation_sentinels(self.pool.pid))
        marks: dict[str, float] = {}
        cluster_resize(cluster=cluster, workers=after, by_label="bench_resize")
        start = time.perf_counter()  # the change is committed: runpool may see it now

        def done() -> psutil.Process | None:
            self.check_alive()
            now = time.perf_counter() - start
            new = None
            for pid, proc in generation_sentinels(self.pool.pid).items():
                if pid not in known and len(sentinel_workers(proc)) == after:
                    new = proc
            if new is not None:
                marks.setdefault("new", now)
            old_done = all(is_gone(w) for w in old_workers) and (
                is_gone(old) or not sentinel_workers(old)
            )
            if old_done:
                marks.setdefault("old", now)
            return new if new is not None and old_done else None

        new = wait_until(done, timeout=self.timeout)
        if new is None:
            snapshot = tree_snapshot(self.pool.pid)
            raise self.fail(
                f"resize {before} → {after} not applied in {self.timeout:.0f} s "
                f"(generations: {snapshot})"
            )
        return new, Resize(before, after, marks["new"], marks["old"])
