"""The pool host: what `manage.py runpool` runs.

One django-q2 cluster per WorkerCluster, each in its own process tree, plus the
housekeeping loop (dispatch, idle close, lease reaping, heartbeats, lag samples).

Resizing a running cluster: django-q2 1.11 fixes a cluster's pool size when its
Sentinel starts (it reads Conf.WORKERS once) and has no resize API. So a resize starts
a new *generation*: a fresh Cluster whose Sentinel is forked with the new worker count,
and then asks the old generation to stop gracefully (its stop_event, the same path as
SIGTERM to a cluster's main process): the old pusher stops pulling, its workers finish
the few tasks already in its local buffer, and it exits. Both generations pull from the
same broker queue meanwhile, and every session is claimed by a conditional UPDATE, so a
session is neither lost nor processed twice. Other clusters are never touched.
This relies on django-q2 1.11.1 internals (Cluster.stop_event, Cluster.sentinel, Conf
read at fork time); pyproject.toml pins that version.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from datetime import timedelta

import psutil
from django import db
from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.db.models import Count
from django.utils import timezone

from pool import worker_context
from pool.dispatch import FairDispatcher
from pool.models import ClusterHeartbeat, PoolHost, Session, WorkerCluster
from pool.services import sessions_close_idle, sessions_reap

try:
    import setproctitle
except ModuleNotFoundError:  # pragma: no cover - a pinned dependency
    setproctitle = None

logger = logging.getLogger("pool.runner")

TICK_S = 0.05
HOUSEKEEPING_S = 1.0


@dataclass
class Generation:
    """One started django-q2 Cluster with a fixed number of workers."""

    queue: str
    workers: int
    cluster: object = None  # django_q.cluster.Cluster
    stopping_since: float | None = None

    def start(self) -> None:
        # Imported late: django_q.cluster calls django.setup() at import.
        from django_q.brokers import get_broker
        from django_q.cluster import Cluster
        from django_q.conf import Conf

        Conf.WORKERS = self.workers
        # One task waiting per worker: enough to hide the broker's latency, small enough
        # that a resize or a pause strands little work in this generation's buffer.
        Conf.QUEUE_LIMIT = self.workers
        Conf.CLUSTER_NAME = self.queue
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        title = setproctitle.getproctitle() if setproctitle else None
        db.connections.close_all()  # never share a socket with the forked processes
        self.cluster = Cluster(get_broker(self.queue))
        for sig, handler in handlers.items():  # Cluster() installs its own in our process
            signal.signal(sig, handler)
        self.cluster.start()
        if title:
            setproctitle.setproctitle(title)

    @property
    def sentinel_pid(self) -> int | None:
        sentinel = getattr(self.cluster, "sentinel", None)
        return sentinel.pid if sentinel else None

    def is_alive(self) -> bool:
        sentinel = getattr(self.cluster, "sentinel", None)
        return bool(sentinel and sentinel.is_alive())

    def request_stop(self) -> None:
        if self.stopping_since is None:
            self.stopping_since = time.monotonic()
            if self.cluster and self.cluster.stop_event:
                self.cluster.stop_event.set()

    def kill(self) -> None:
        """Last resort for a generation that will not stop (a task stuck past its timeout)."""
        pid = self.sentinel_pid
        if pid is None:
            return
        try:
            parent = psutil.Process(pid)
            for proc in [*parent.children(recursive=True), parent]:
                proc.kill()
        except psutil.NoSuchProcess:
            pass

    def reap(self) -> None:
        sentinel = getattr(self.cluster, "sentinel", None)
        if sentinel is not None:
            sentinel.join(timeout=0)

    def worker_processes(self) -> list[psutil.Process]:
        """Worker processes as the OS sees them (children of the Sentinel that are
        neither its pusher nor its monitor; django-q2 titles them via setproctitle)."""
        pid = self.sentinel_pid
        if pid is None or not self.is_alive():
            return []
        try:
            children = psutil.Process(pid).children()
            return [p for p in children if _is_worker(p)]
        except psutil.NoSuchProcess:
            return []


def process_title(proc: psutil.Process) -> str:
    """The title django-q2 gave a process ('' once it is gone). setproctitle pads the
    original argv slots with empty strings, hence the filter."""
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return ""
        return " ".join(part for part in proc.cmdline() if part).strip()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


def is_worker_title(title: str) -> bool:
    """Workers are titled 'qcluster Process-… idle|processing …'; a worker that was just
    forked still carries its Sentinel's title for a moment and is counted once renamed."""
    return title.startswith("qcluster Process-") and not title.endswith(("monitor", "pusher"))


def _is_worker(proc: psutil.Process) -> bool:
    return is_worker_title(process_title(proc))


def _is_busy(proc: psutil.Process) -> bool:
    return " processing " in process_title(proc)


@dataclass
class ClusterRuntime:
    """This host's view of one WorkerCluster: its current generation and old ones draining."""

    cluster_id: int
    name: str
    current: Generation | None = None
    draining: list[Generation] = field(default_factory=list)

    def apply(self, workers: int) -> None:
        if self.current and self.current.workers == workers and self.current.is_alive():
            return
        old = self.current
        self.current = Generation(queue=self.name, workers=workers)
        self.current.start()
        if old is not None:
            old.request_stop()
            self.draining.append(old)
        logger.info("cluster %s now runs %d workers", self.name, workers)

    def stop(self) -> None:
        if self.current:
            self.current.request_stop()
            self.draining.append(self.current)
            self.current = None

    def reap_drained(self, *, kill_after_s: float) -> None:
        for gen in list(self.draining):
            if not gen.is_alive():
                gen.reap()
                self.draining.remove(gen)
            elif time.monotonic() - (gen.stopping_since or 0) > kill_after_s:
                logger.error("cluster %s generation did not stop; killing it", self.name)
                gen.kill()

    def workers(self) -> list[psutil.Process]:
        procs = []
        for gen in [self.current, *self.draining]:
            if gen:
                procs.extend(gen.worker_processes())
        return procs


class PoolHostRunner:
    def __init__(self, *, host: str) -> None:
        self.host = host
        self.stopping = False
        self.runtimes: dict[int, ClusterRuntime] = {}
        self.dispatcher = FairDispatcher()
        self.last_housekeeping = 0.0
        self.last_heartbeat = 0.0
        self.process = psutil.Process()
        self.process.cpu_percent()  # primes the CPU counters

    # --- lifecycle ---------------------------------------------------------------
    def run(self) -> None:
        worker_context.host_name = self.host
        if setproctitle:
            setproctitle.setproctitle(f"runpool {self.host}")
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        logger.info("runpool %s starting (pid %d)", self.host, os.getpid())
        while not self.stopping:
            try:
                self.tick()
            except DatabaseError as exc:
                # PostgreSQL restarting: keep the workers, retry with fresh connections.
                logger.warning("database unavailable, retrying: %s", exc)
                db.connections.close_all()
                time.sleep(1)
            time.sleep(TICK_S)
        self.shutdown()

    def _on_signal(self, signum: int, frame: object) -> None:
        logger.info("runpool %s got signal %d, stopping gracefully", self.host, signum)
        self.stopping = True

    def shutdown(self) -> None:
        for runtime in self.runtimes.values():
            runtime.stop()
        deadline = time.monotonic() + settings.Q_TASK_TIMEOUT_S + 10
        while any(rt.draining for rt in self.runtimes.values()) and time.monotonic() < deadline:
            for runtime in self.runtimes.values():
                runtime.reap_drained(kill_after_s=settings.Q_TASK_TIMEOUT_S + 5)
            time.sleep(0.1)
        try:
            close_old_connections()
            PoolHost.objects.filter(name=self.host).update(stopped=True, seen_at=timezone.now())
            ClusterHeartbeat.objects.filter(host__name=self.host).update(
                live_workers=0, busy_workers=0
            )
        except DatabaseError:
            logger.warning("could not record the stop of host %s", self.host)
        logger.info("runpool %s stopped", self.host)

    # --- the loop ----------------------------------------------------------------
    def tick(self) -> None:
        now = timezone.now()
        mono = time.monotonic()
        if mono - self.last_housekeeping >= HOUSEKEEPING_S:
            close_old_connections()
            self.reconcile()
            sessions_close_idle(now=now)
            sessions_reap(now=now)
            self.last_housekeeping = mono
        if mono - self.last_heartbeat >= settings.POOL_HEARTBEAT_S:
            self.heartbeat()
            self.last_heartbeat = mono
            from onboarding.lag import lag_samples_record  # late: onboarding reads pool

            lag_samples_record(now=now)
        self.dispatcher.dispatch(now=now)

    def reconcile(self) -> None:
        """Make the running generations match the WorkerCluster table."""
        clusters = {c.id: c for c in WorkerCluster.objects.all()}
        for cluster_id in list(self.runtimes):
            if cluster_id not in clusters:
                self.runtimes.pop(cluster_id).stop()
        for cluster in clusters.values():
            runtime = self.runtimes.setdefault(
                cluster.id, ClusterRuntime(cluster_id=cluster.id, name=cluster.name)
            )
            workers = max(1, min(cluster.desired_workers, settings.POOL_MAX_WORKERS))
            runtime.apply(workers)
            runtime.reap_drained(kill_after_s=settings.Q_TASK_TIMEOUT_S + 5)

    def reconcile_now(self) -> None:
        self.last_housekeeping = 0.0

    def heartbeat(self) -> None:
        now = timezone.now()
        host, _ = PoolHost.objects.update_or_create(
            name=self.host,
            defaults={
                "pid": os.getpid(),
                "seen_at": now,
                "stopped": False,
                "cpu_count": psutil.cpu_count() or 1,
                "cpu_percent": psutil.cpu_percent(),
                "memory_percent": psutil.virtual_memory().percent,
                "rss_bytes": self.total_rss(),
            },
        )
        done = dict(
            Session.objects.filter(
                worker_host=self.host, processed_at__gte=now - timedelta(minutes=1)
            )
            .values("dispatched_cluster_id")
            .annotate(n=Count("id"))
            .values_list("dispatched_cluster_id", "n")
        )
        for runtime in self.runtimes.values():
            procs = runtime.workers()
            ClusterHeartbeat.objects.update_or_create(
                host=host,
                cluster_id=runtime.cluster_id,
                defaults={
                    "applied_workers": runtime.current.workers if runtime.current else 0,
                    "live_workers": len(procs),
                    "busy_workers": sum(1 for p in procs if _is_busy(p)),
                    "processed_per_min": done.get(runtime.cluster_id, 0),
                    "seen_at": now,
                },
            )
            self.dispatcher.rates[runtime.cluster_id] = done.get(runtime.cluster_id, 0) / 60

    def total_rss(self) -> int:
        total = 0
        for proc in [self.process, *self.process.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total
