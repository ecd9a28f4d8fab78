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

import ctypes
import gc
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psutil
from django import db
from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.db.models import Count
from django.utils import timezone

from pool import worker_context
from pool.autoscale import AUTOSCALE_TICK_S, autoscale_tick
from pool.capacity import host_sample_record
from pool.dispatch import FairDispatcher
from pool.models import ClusterHeartbeat, PoolHost, Session, WorkerCluster
from pool.services import sessions_close_idle, sessions_reap

try:
    import setproctitle
except ModuleNotFoundError:  # pragma: no cover - a pinned dependency
    setproctitle = None

logger = logging.getLogger("pool.runner")

# django-q2 issue #23: a worker killed while idle can die holding the local task queue's
# read lock, and then every worker of that cluster blocks forever. Seen from outside: tasks
# wait in the broker, yet no worker of ours is processing anything. After this long we
# replace the cluster's generation.
STALL_AFTER_S = 10.0
TICK_S = 0.05
BUSY_TICK_S = 0.01
HOUSEKEEPING_S = 1.0
EVALUATE_S = 10.0  # alert rules and automatic checklist checks

# A SIGKILLed runpool cannot stop its clusters: their Sentinels, reparented to init, would
# go on pulling tasks for ever, outside any runpool's heartbeats, resizes and shutdown.
# So every process forked below runpool (the hook is inherited by forked children) asks
# Linux to SIGKILL it when the process that forked it dies: runpool's death takes its
# Sentinels, and a Sentinel's death takes its workers, pusher and monitor. Sessions they
# held come back through the lease reaper and the queued timeout, as after any kill.
PR_SET_PDEATHSIG = 1
_forked_by = 0


def _remember_parent() -> None:
    global _forked_by
    _forked_by = os.getpid()


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != _forked_by:  # the parent died before prctl took effect
        os._exit(1)
    # Out of runpool's process group: a signal to the whole group (Ctrl-C in a terminal,
    # honcho's killpg) must reach runpool alone, which then stops its clusters gracefully.
    # Sentinels reset SIGTERM to the default, so a group SIGTERM would kill workers mid-task.
    os.setpgid(0, 0)


def freeze_heap_before_fork() -> None:
    """Move every object alive now out of the cyclic garbage collector's reach (gc.freeze),
    so the processes forked next do not traverse Django's ~75,000 objects each time
    processing's allocations trigger a full collection. Measured here: a session's
    processing went 4.6 → 3.8 ms of CPU in a process with Django loaded. Also keeps
    those objects' pages shared with the parent (no copy-on-write from GC bookkeeping).
    Garbage is collected first, so none is frozen."""
    gc.collect()
    gc.freeze()


def without_connection_health_checks() -> None:
    """Django's CONN_HEALTH_CHECKS costs a `SELECT 1` round trip each time django-q2
    closes old connections: per task in the worker, the monitor and (twice) the pusher.
    runpool's processes handle a lost connection themselves (the loop below reconnects,
    pool.broker and django-q2's worker and monitor close a connection after an error),
    so they skip it; the web keeps it. Call before any connection is opened."""
    for alias in db.connections:
        db.connections.settings[alias]["CONN_HEALTH_CHECKS"] = False


def children_die_with_their_parent() -> None:
    """Linux only; call once, in runpool's process, before any cluster starts."""
    if sys.platform.startswith("linux") and not _forked_by:
        _remember_parent()
        os.register_at_fork(before=_remember_parent, after_in_child=_die_with_parent)


@dataclass
class Generation:
    """One started django-q2 Cluster with a fixed number of workers."""

    queue: str
    workers: int
    cluster: object = None  # django_q.cluster.Cluster
    stopping_since: float | None = None
    started_at: datetime | None = None

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
        self.started_at = timezone.now()  # before its pusher can take a task
        self.cluster = Cluster(get_broker(self.queue))
        for sig, handler in handlers.items():  # Cluster() installs its own in our process
            signal.signal(sig, handler)
        # Never share a socket with the forked processes: the broker above opens one,
        # and a child closing its copy would end this process's database session.
        db.connections.close_all()
        freeze_heap_before_fork()
        self.cluster.start()
        # The forked processes keep their frozen heap; runpool, which lives on and
        # freezes again at every resize, must not keep what later becomes garbage.
        gc.unfreeze()
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

    def replace_stalled(self) -> None:
        """Start a fresh generation and kill the stalled one (it cannot drain: its workers
        are blocked on a queue lock held by a dead process). Sessions in its local buffer
        stay queued and are re-dispatched after SESSION_QUEUED_TIMEOUT_S."""
        old = self.current
        if old is None:
            return
        self.current = Generation(queue=self.name, workers=old.workers)
        self.current.start()
        old.kill()
        old.stopping_since = time.monotonic()
        self.draining.append(old)

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
        self.retired: list[ClusterRuntime] = []  # deleted clusters still draining
        self.dispatcher = FairDispatcher()
        self.last_housekeeping = 0.0
        self.last_heartbeat = 0.0
        self.last_evaluation = 0.0
        self.last_autoscale = 0.0
        self.process = psutil.Process()
        self.process.cpu_percent()  # primes the CPU counters

    # --- lifecycle ---------------------------------------------------------------
    def run(self) -> None:
        worker_context.host_name = self.host
        if setproctitle:
            setproctitle.setproctitle(f"runpool {self.host}")
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        children_die_with_their_parent()
        without_connection_health_checks()
        logger.info("runpool %s starting (pid %d)", self.host, os.getpid())
        while not self.stopping:
            try:
                sent = self.tick()
            except DatabaseError as exc:
                # PostgreSQL restarting: keep the workers, retry with fresh connections.
                logger.warning("database unavailable, retrying: %s", exc)
                db.connections.close_all()
                time.sleep(1)
                continue
            # While there is work, come back quickly to keep the queues topped up.
            time.sleep(BUSY_TICK_S if sent else TICK_S)
        self.shutdown()

    def _on_signal(self, signum: int, frame: object) -> None:
        logger.info("runpool %s got signal %d, stopping gracefully", self.host, signum)
        self.stopping = True

    def all_runtimes(self) -> list[ClusterRuntime]:
        return [*self.runtimes.values(), *self.retired]

    def shutdown(self) -> None:
        for runtime in self.runtimes.values():
            runtime.stop()
        deadline = time.monotonic() + settings.Q_TASK_TIMEOUT_S + 10
        while any(rt.draining for rt in self.all_runtimes()) and time.monotonic() < deadline:
            for runtime in self.all_runtimes():
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
    def tick(self) -> int:
        now = timezone.now()
        mono = time.monotonic()
        if mono - self.last_housekeeping >= HOUSEKEEPING_S:
            close_old_connections()
            self.reconcile()
            sessions_close_idle(now=now)
            sessions_reap(now=now)
            self.recover_stalled(now=now)
            self.last_housekeeping = mono
        if mono - self.last_heartbeat >= settings.POOL_HEARTBEAT_S:
            self.heartbeat()
            self.last_heartbeat = mono
            from onboarding.lag import lag_samples_record  # late: onboarding reads pool

            lag_samples_record(now=now)
        if mono - self.last_evaluation >= EVALUATE_S:
            self.evaluate(now=now)
            self.last_evaluation = mono
        if mono - self.last_autoscale >= AUTOSCALE_TICK_S:
            # A resize it decides is a WorkerCluster change like an admin's: every host
            # applies it at its next reconcile.
            self.guarded("autoscale", autoscale_tick, now=now)
            self.last_autoscale = mono
        return self.dispatcher.dispatch(now=now)

    def evaluate(self, *, now) -> None:
        """Alert rules and automatic checklist items. A failure here is logged and never
        stops dispatching: the pool's job comes first."""
        # Late imports: onboarding reads pool, not the other way round at import time.
        from onboarding.alerts import alerts_evaluate
        from onboarding.checklists import checklist_checks_evaluate

        self.guarded("alert rules", alerts_evaluate, now=now)
        self.guarded("checklist checks", checklist_checks_evaluate, now=now)

    def guarded(self, name: str, step, **kwargs) -> None:
        """Run a step whose failure must not stop the pool: logged, then carry on. Database
        errors still go up, to the loop that reconnects."""
        try:
            step(**kwargs)
        except DatabaseError:
            raise
        except Exception:
            logger.exception("%s failed", name)

    def reconcile(self) -> None:
        """Make the running generations match the WorkerCluster table."""
        clusters = {c.id: c for c in WorkerCluster.objects.all()}
        for cluster_id in list(self.runtimes):
            if cluster_id not in clusters:
                # Deleted: stop it, and keep reaping it until its processes are gone (it
                # no longer heartbeats: its WorkerCluster row is gone).
                runtime = self.runtimes.pop(cluster_id)
                runtime.stop()
                self.retired.append(runtime)
        for runtime in list(self.retired):
            runtime.reap_drained(kill_after_s=settings.Q_TASK_TIMEOUT_S + 5)
            if not runtime.draining:
                self.retired.remove(runtime)
        for cluster in clusters.values():
            runtime = self.runtimes.setdefault(
                cluster.id, ClusterRuntime(cluster_id=cluster.id, name=cluster.name)
            )
            workers = max(1, min(cluster.desired_workers, settings.POOL_MAX_WORKERS))
            runtime.apply(workers)
            runtime.reap_drained(kill_after_s=settings.Q_TASK_TIMEOUT_S + 5)

    def recover_stalled(self, *, now) -> None:
        """Replace a generation that had work for STALL_AFTER_S and did none of it.

        Work is a broker task that waited that long, or that a pusher took that long ago
        (after this generation started) and nobody acknowledged: a stalled generation's
        pusher first takes up to workers + 1 tasks into its dead buffer, so with little
        traffic, or another host draining the queue, no task waits in the broker at all.
        None done: no worker busy now, and no session of the cluster processed by this
        host for STALL_AFTER_S (which also spares a generation whose only unacknowledged
        task is one a killed busy worker left behind, while it keeps processing).
        """
        from django_q.conf import Conf
        from django_q.models import OrmQ

        stall = timedelta(seconds=STALL_AFTER_S)
        retry = timedelta(seconds=Conf.RETRY)
        for runtime in self.runtimes.values():
            gen = runtime.current
            if gen is None or gen.stopping_since is not None or gen.started_at is None:
                continue
            if now - gen.started_at < stall:
                continue
            tasks = OrmQ.objects.filter(key=runtime.name)
            waiting = tasks.filter(lock__lte=now - stall)
            # The ORM broker sets lock = time taken + retry when a pusher takes a task.
            taken = tasks.filter(lock__gte=gen.started_at + retry, lock__lte=now - stall + retry)
            if not (waiting.exists() or taken.exists()):
                continue
            procs = gen.worker_processes()
            if not procs or any(_is_busy(p) for p in procs):
                continue
            if Session.objects.filter(
                worker_host=self.host,
                dispatched_cluster_id=runtime.cluster_id,
                processed_at__gte=now - stall,
            ).exists():
                continue
            logger.error(
                "cluster %s stalled: work waiting %.0fs, none done, no worker busy; replacing it",
                runtime.name,
                STALL_AFTER_S,
            )
            runtime.replace_stalled()

    def heartbeat(self) -> None:
        now = timezone.now()
        cpu_percent = psutil.cpu_percent()  # since the previous heartbeat
        memory_percent = psutil.virtual_memory().percent
        host, _ = PoolHost.objects.update_or_create(
            name=self.host,
            defaults={
                "pid": os.getpid(),
                "seen_at": now,
                "stopped": False,
                "cpu_count": psutil.cpu_count() or 1,
                "cpu_percent": cpu_percent,
                "memory_percent": memory_percent,
                "rss_bytes": self.total_rss(),
            },
        )
        host_sample_record(
            host=host, now=now, cpu_percent=cpu_percent, memory_percent=memory_percent
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
            # Live = the current generation's workers: a draining generation finishing its
            # buffer must not make a resize look applied before it is. Busy counts both.
            current = runtime.current.worker_processes() if runtime.current else []
            ClusterHeartbeat.objects.update_or_create(
                host=host,
                cluster_id=runtime.cluster_id,
                defaults={
                    "applied_workers": runtime.current.workers if runtime.current else 0,
                    "live_workers": len(current),
                    "busy_workers": sum(1 for p in runtime.workers() if _is_busy(p)),
                    "processed_per_min": done.get(runtime.cluster_id, 0),
                    "seen_at": now,
                },
            )

    def total_rss(self) -> int:
        total = 0
        for proc in [self.process, *self.process.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total
