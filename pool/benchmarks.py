"""Shared helpers of the bench_* commands (docs/benchmarks.md).

Each benchmark starts a real `manage.py runpool` (or gunicorn) subprocess against the
configured database, puts realistic sessions straight into the session table (the rrweb
recordings of tests/fixtures, stored exactly as the ingest API stores them), and
measures from the outside: timestamps in the database, psutil for CPU and memory.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import psutil
from django.conf import settings
from django.core.management.base import CommandError
from django.db import close_old_connections, connection, transaction
from django.db.models import Max, Min
from django.utils import timezone

from onboarding.models import Customer
from pool import processing
from pool.ingest import compress_body, decompress_body
from pool.models import BACKLOG_STATES, Payload, PoolHost, Session, State, WorkerCluster
from pool.runner import freeze_heap_before_fork
from pool.worker import session_compute

RECORDINGS = Path(settings.BASE_DIR) / "tests" / "fixtures" / "rrweb"
LOGS = Path(settings.VAR_DIR) / "bench-logs"
BENCH_PREFIX = "bench-"


def require_postgresql() -> None:
    if connection.vendor != "postgresql":
        raise CommandError("run the benchmarks against PostgreSQL (set DATABASE_URL)")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


# --- Realistic sessions --------------------------------------------------------------


def recording_payloads(name: str) -> list[dict]:
    """The payloads of tests/fixtures/rrweb/<name>.payloads.json, as the recorder sent them."""
    return json.loads((RECORDINGS / f"{name}.payloads.json").read_text())["payloads"]


def recording_bodies(name: str, *, merged: bool = False) -> list[bytes]:
    """A real recording's payloads as the ingest API stores them (zlib level 1 of the JSON
    body the recorder sent): one per payload sent, or all events in one (merged)."""
    payloads = recording_payloads(name)
    if merged:
        payloads = [{"payload_id": 0, "events": [e for p in payloads for e in p["events"]]}]
    last = len(payloads) - 1
    return [
        compress_body(
            json.dumps({"payload_id": i, "events": p["events"], "final": i == last}).encode()
        )
        for i, p in enumerate(payloads)
    ]


def repeated_recording_body(name: str, *, times: int) -> bytes:
    """One stored payload holding a real recording's events `times` times in a row, each
    copy later than the last: a session that costs `times` as much to process. For load
    tests that must offer several times one worker's rate: with light sessions that is
    hundreds a second, more than the test itself could insert without taking the CPU
    the workers need."""
    events = [e for p in recording_payloads(name) for e in p["events"]]
    span = events[-1]["timestamp"] - events[0]["timestamp"] + 1000
    repeated = [
        {**event, "timestamp": event["timestamp"] + copy * span}
        for copy in range(times)
        for event in events
    ]
    return compress_body(json.dumps({"payload_id": 0, "events": repeated}).encode())


def decompress_body_raw(blob: bytes) -> bytes:
    return zlib.decompress(blob)


def decoded_payloads(bodies: list[bytes]) -> list[dict]:
    """What a worker reads back for one session: the decompressed payloads with their ids."""
    return [decompress_body(body) for body in bodies]


def sessions_insert_ready(
    *,
    customer: Customer,
    n: int,
    bodies: list[bytes],
    prefix: str,
    ready_at: datetime | None = None,
    batch: int = 1000,
) -> list[int]:
    """n ready sessions of `customer`, each holding `bodies` as its payloads (bulk INSERTs)."""
    ready_at = ready_at or timezone.now()
    raw_bytes = [len(decompress_body_raw(b)) for b in bodies]
    ids: list[int] = []
    for start in range(0, n, batch):
        count = min(batch, n - start)
        # One transaction: a running pool must never see a ready session without its
        # payloads (it would process it as empty, in no time).
        with transaction.atomic():
            sessions = Session.objects.bulk_create(
                [
                    Session(
                        customer=customer,
                        external_id=f"{prefix}-{start + i}",
                        state=State.READY,
                        ready_at=ready_at,
                        last_payload_at=ready_at,
                        payload_count=len(bodies),
                        bytes_received=sum(raw_bytes),
                    )
                    for i in range(count)
                ]
            )
            Payload.objects.bulk_create(
                [
                    Payload(
                        session=s,
                        payload_id=pid,
                        body=body,
                        event_count=0,
                        raw_bytes=raw_bytes[pid],
                        final=pid == len(bodies) - 1,
                        received_at=ready_at,
                    )
                    for s in sessions
                    for pid, body in enumerate(bodies)
                ],
                batch_size=2000,
            )
        ids.extend(s.pk for s in sessions)
    return ids


class SteadyArrivals(threading.Thread):
    """New ready sessions for a customer at a steady rate, inserted every `every_s` (as
    the ingest API would close them), until `stop` is set. `sent` counts them."""

    def __init__(
        self, customer: Customer, bodies: list[bytes], rate: float, *, every_s: float = 0.2
    ) -> None:
        super().__init__(daemon=True)
        self.customer, self.bodies, self.rate, self.every_s = customer, bodies, rate, every_s
        self.stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        started = time.monotonic()
        try:
            while not self.stop.is_set():
                due = int(self.rate * (time.monotonic() - started)) - self.sent
                if due > 0:
                    prefix = f"arr{started:.0f}-{self.sent}"
                    sessions_insert_ready(
                        customer=self.customer, n=due, bodies=self.bodies, prefix=prefix
                    )
                    self.sent += due
                self.stop.wait(self.every_s)
        finally:
            connection.close()  # this thread's own connection


# --- A bench cluster and customer ------------------------------------------------------


def bench_setup(*, name: str, workers: int, paused: bool = True) -> tuple[WorkerCluster, Customer]:
    """A cluster (paused: sessions wait until the measurement starts) and one customer."""
    bench_cleanup(name=name)
    cluster = WorkerCluster.objects.create(
        name=f"{BENCH_PREFIX}{name}", desired_workers=workers, paused=paused
    )
    customer = Customer.objects.create(
        name=f"bench {name}", slug=f"{BENCH_PREFIX}{name}", cluster=cluster
    )
    return cluster, customer


def sessions_delete(*, customer_id: int) -> None:
    """Raw SQL: the ORM's cascade would load every session into memory first."""
    with connection.cursor() as cursor:
        for table in ("pool_payload", "pool_sessionstream"):
            cursor.execute(
                f"DELETE FROM {table} WHERE session_id IN "
                "(SELECT id FROM pool_session WHERE customer_id = %s)",
                [customer_id],
            )
        cursor.execute("DELETE FROM pool_session WHERE customer_id = %s", [customer_id])


def vacuum() -> None:
    """VACUUM ANALYZE the tables a benchmark fills and empties, so the planner knows the
    new rows and autovacuum does not start on the bench's own deletes mid-measurement."""
    with connection.cursor() as cursor:
        cursor.execute(
            "VACUUM (ANALYZE) pool_session, pool_payload, pool_sessionstream, django_q_ormq"
        )


def bench_cleanup(*, name: str) -> None:
    from django_q.models import OrmQ

    slug = f"{BENCH_PREFIX}{name}"
    for customer_id in Customer.objects.filter(slug=slug).values_list("id", flat=True):
        sessions_delete(customer_id=customer_id)
    Customer.objects.filter(slug=slug).delete()
    WorkerCluster.objects.filter(name=slug).delete()
    OrmQ.objects.filter(key=slug).delete()
    PoolHost.objects.filter(name=slug).delete()


# --- Subprocesses -------------------------------------------------------------------


def bench_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("LOG_LEVEL", "WARNING")
    env.update({k: str(v) for k, v in extra.items()})
    return env


@dataclass
class Subprocess:
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tree(self) -> list[psutil.Process]:
        try:
            parent = psutil.Process(self.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 120) -> None:
        """SIGTERM to the main process only: runpool then stops its clusters gracefully
        (SIGTERM to the whole group would kill workers mid-task, see design.md)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                for proc in self.tree():
                    proc.kill()
                self.popen.wait(10)


def start_subprocess(name: str, args: list[str], env: dict[str, str]) -> Subprocess:
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / f"{name}.log"
    with open(log_path, "w") as log:
        popen = subprocess.Popen(
            args, cwd=settings.BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    return Subprocess(popen=popen, log_path=log_path)


def start_runpool(*, host: str, **env: str) -> Subprocess:
    args = [sys.executable, "manage.py", "runpool", "--host", host]
    return start_subprocess(f"runpool-{host}", args, bench_env(**env))


def wait_live_workers(cluster: WorkerCluster, n: int, *, pool: Subprocess, timeout=60) -> None:
    """Until the cluster's heartbeats report exactly n live workers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pool.popen.poll() is not None:
            raise CommandError(f"runpool exited; see {pool.log_path}")
        fresh = timezone.now() - timedelta(seconds=settings.POOL_STALE_AFTER_S)
        live = sum(
            cluster.heartbeats.filter(seen_at__gte=fresh, host__stopped=False).values_list(
                "live_workers", flat=True
            )
        )
        if live == n:
            return
        time.sleep(0.2)
    raise CommandError(f"runpool did not reach {n} live workers; see {pool.log_path}")


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    total = 0
    try:
        parent = psutil.Process(pid)
        procs = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return total


def tree_pss(pid: int) -> int:
    """Proportional set size of a process tree: pages shared after fork counted once in
    all (RSS counts them in every process). For context next to tree_rss."""
    total = 0
    try:
        parent = psutil.Process(pid)
        procs = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for proc in procs:
        try:
            total += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            pass
    return total


# --- Waiting and measuring ------------------------------------------------------------


def unpause(cluster: WorkerCluster) -> datetime:
    """Start of a drain: the dispatcher sees this within one tick."""
    now = timezone.now()
    WorkerCluster.objects.filter(pk=cluster.pk).update(paused=False)
    return now


def pause(cluster: WorkerCluster) -> None:
    WorkerCluster.objects.filter(pk=cluster.pk).update(paused=True)


def backlog_count(customer: Customer) -> int:
    return Session.objects.filter(customer=customer, state__in=BACKLOG_STATES).count()


def wait_drained(
    customer: Customer,
    *,
    timeout: float,
    pool: Subprocess | None = None,
    on_poll: Callable[[int], None] | None = None,
    interval: float = 0.25,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        close_old_connections()  # a long run outlives CONN_MAX_AGE and health checks
        left = backlog_count(customer)
        if on_poll:
            on_poll(left)
        if left == 0:
            return
        if pool is not None and pool.popen.poll() is not None:
            raise CommandError(f"runpool exited; see {pool.log_path}")
        if time.monotonic() > deadline:
            raise CommandError(f"{left} sessions still unprocessed after {timeout:.0f}s")
        time.sleep(interval)


def processed_span(customer: Customer, *, since: datetime) -> tuple[int, float]:
    """(sessions processed, seconds from `since` to the last processed_at)."""
    agg = Session.objects.filter(customer=customer, state=State.PROCESSED).aggregate(
        last=Max("processed_at"), first=Min("processed_at")
    )
    n = Session.objects.filter(customer=customer, state=State.PROCESSED).count()
    if not agg["last"]:
        return 0, 0.0
    return n, (agg["last"] - since).total_seconds()


def check_exactly_once(customer: Customer, *, n: int, total_before: int) -> None:
    """All n sessions processed, each stored once (one stream row each) and counted once."""
    from pool.models import SessionStream

    processed = Session.objects.filter(customer=customer, state=State.PROCESSED).count()
    streams = SessionStream.objects.filter(session__customer=customer).count()
    customer.refresh_from_db()
    counted = customer.processed_total - total_before
    if not (processed == streams == counted == n):
        raise CommandError(
            f"correctness: {n} sessions, {processed} processed, {streams} streams, "
            f"counted {counted} times"
        )
    empty = Session.objects.filter(customer=customer, state=State.PROCESSED, event_total=0)
    if empty.exists():
        raise CommandError(
            f"correctness: {empty.count()} sessions processed without any event (read "
            f"before their payloads were committed?)"
        )


# --- The machine's limit: multiprocessing.Pool over sessions held in memory -------------

_POOL_SESSIONS: list = []


def _process_in_memory(index: int) -> int:
    payloads = _POOL_SESSIONS[index % len(_POOL_SESSIONS)]
    summary, events = processing.summarize(payloads)
    return len(processing.compress_stream(events)) + summary.event_total


def _compute_stored_in_memory(index: int) -> int:
    rows = _POOL_SESSIONS[index % len(_POOL_SESSIONS)]
    summary, stream = session_compute(rows)
    return len(stream) + summary.event_total


def pool_rate(*, sessions: list, n: int, workers: int, stored: bool = False) -> tuple[float, float]:
    """(sessions/s, CPU ms per session) of multiprocessing.Pool(workers) processing
    sessions held in memory.

    The sessions are in memory before the fork and tasks carry only an index (in
    chunks), so nothing but the processing itself is measured: the machine's limit for
    this work. With stored=True, sessions are payload rows (payload_id, body) as
    stored, and each goes through pool.worker.session_compute, the very function a
    worker runs on what it reads from the database; otherwise they are payloads already
    decompressed and parsed, and only summarize + compress_stream run.
    """
    global _POOL_SESSIONS
    _POOL_SESSIONS = sessions
    func = _compute_stored_in_memory if stored else _process_in_memory
    ctx = multiprocessing.get_context("fork")
    cpu_before = _children_cpu_s()
    freeze_heap_before_fork()  # as runpool does before it forks workers
    with ctx.Pool(workers) as pool:
        pool.map(func, range(workers * 4), chunksize=1)  # warm up the forks
        started = time.perf_counter()
        for _ in pool.imap_unordered(func, range(n), chunksize=8):
            pass
        elapsed = time.perf_counter() - started
    _POOL_SESSIONS = []
    gc.unfreeze()
    return n / elapsed, (_children_cpu_s() - cpu_before) / n * 1000


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- Where the CPU goes ----------------------------------------------------------------


def _role(title: str) -> str:
    if title.startswith("runpool"):
        return "runpool (dispatcher)"
    if title.startswith("postgres"):
        return "postgres backends"
    if "MainProcess" in title:
        return "sentinels"
    if title.endswith("pusher"):
        return "pushers"
    if title.endswith("monitor"):
        return "monitors"
    return "workers"


def _client_ports(procs: list[psutil.Process]) -> set[int]:
    ports = set()
    for proc in procs:
        try:
            ports.update(c.laddr.port for c in proc.net_connections(kind="tcp") if c.laddr)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            pass
    return ports


class CpuMeter:
    """CPU seconds by role of a runpool (or gunicorn) tree and of the database backends
    serving this database, over one or several measured intervals (resume … pause).
    Sampled repeatedly, so processes that exit mid-interval still count up to their last
    sample."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self.start: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.roles: dict[int, str] = {}
        self.done: dict[str, float] = {}  # CPU of the intervals already paused, by role
        self.ours: dict[int, bool] = {}  # database backend pid -> serves our tree
        self.running = False

    def _procs(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.root_pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid, backend_type, client_port FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            backends = cursor.fetchall()
        if any(pid not in self.ours for pid, _, _ in backends):
            ports = _client_ports(tree)
            for pid, backend_type, port in backends:
                if pid not in self.ours:
                    # Our tree's connections, and background work on this database
                    # (autovacuum); not other programs' connections to it.
                    self.ours[pid] = backend_type != "client backend" or port in ports
                    if backend_type != "client backend":
                        self.roles[pid] = f"postgres {backend_type}"
        procs = list(tree)
        for pid, _, _ in backends:
            if self.ours[pid]:
                try:
                    procs.append(psutil.Process(pid))
                except psutil.NoSuchProcess:
                    pass
        return procs

    def sample(self) -> None:
        for proc in self._procs():
            try:
                t = proc.cpu_times()
                if proc.pid not in self.roles:
                    title = " ".join(part for part in proc.cmdline() if part).strip()
                    self.roles[proc.pid] = _role(title or proc.name())
                self.last[proc.pid] = t.user + t.system
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                pass

    def begin(self) -> None:
        self.done = {}
        self.resume()

    def resume(self) -> None:
        self.start, self.last = {}, {}
        self.sample()
        self.start = dict(self.last)  # processes born later start from 0
        self.running = True

    def pause(self) -> None:
        self.sample()
        self.done = self.by_role()
        self.running = False

    def by_role(self) -> dict[str, float]:
        totals = dict(self.done)
        if self.running:
            for pid, cpu in self.last.items():
                role = self.roles[pid]
                totals[role] = totals.get(role, 0.0) + cpu - self.start.get(pid, 0.0)
        return totals

    def describe(self, n: int) -> str:
        roles = self.by_role()
        total = sum(roles.values())
        parts = ", ".join(
            f"{role} {cpu / n * 1000:.2f}"
            for role, cpu in sorted(roles.items(), key=lambda r: -r[1])
        )
        return f"CPU ms per session: {total / n * 1000:.2f} total = {parts}"


def processed_count(customer: Customer) -> int:
    return Session.objects.filter(customer=customer, state=State.PROCESSED).count()


def wait_customer_idle(customer: Customer, timeout: float = 60) -> None:
    """Until none of the customer's sessions is queued or processing."""
    deadline = time.monotonic() + timeout
    busy = [State.QUEUED, State.PROCESSING]
    while Session.objects.filter(customer=customer, state__in=busy).exists():
        if time.monotonic() > deadline:
            raise CommandError("the cluster did not go idle")
        time.sleep(0.2)


def wait_heartbeat_workers(cluster: WorkerCluster, n: int, timeout: float = 60) -> None:
    """Until fresh heartbeats report at least n live workers for the cluster."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fresh = timezone.now() - timedelta(seconds=10)
        live = cluster.heartbeats.filter(seen_at__gte=fresh).values_list("live_workers", flat=True)
        if sum(live) >= n:
            return
        time.sleep(0.3)
    raise CommandError("runpool did not start its workers")
