"""Helpers shared by the benchmark commands (bench_resize, bench_dashboard).

Worker processes are found the way an operator would with `ps`: through the OS, by the
titles django-q2 gives them (see pool.runner.is_worker_title), never by asking runpool.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import psutil

from pool.runner import is_worker_title, process_title


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between the closest ranks (numpy's default)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def timed(fn: Callable[[], object], *, runs: int, warmup: int = 2) -> list[float]:
    """Seconds taken by each of `runs` calls of fn, after `warmup` calls not measured."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


# --- Processes of a runpool, as the OS sees them --------------------------------------


def is_gone(proc: psutil.Process) -> bool:
    """Exited (a zombie waiting for its parent to reap it counts as exited)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True


def generation_sentinels(runpool_pid: int) -> dict[int, psutil.Process]:
    """runpool forks one django-q2 Sentinel per running generation: its live children."""
    try:
        children = psutil.Process(runpool_pid).children()
    except psutil.NoSuchProcess:
        return {}
    return {p.pid: p for p in children if not is_gone(p)}


def sentinel_workers(sentinel: psutil.Process) -> list[psutil.Process]:
    """Worker processes of one generation (not its pusher or monitor, not yet-untitled)."""
    try:
        children = sentinel.children()
    except psutil.NoSuchProcess:
        return []
    return [p for p in children if is_worker_title(process_title(p))]


def tree_snapshot(runpool_pid: int) -> dict[int, int]:
    """{sentinel pid: number of its workers}: what runpool runs right now."""
    return {
        pid: len(sentinel_workers(proc)) for pid, proc in generation_sentinels(runpool_pid).items()
    }


def wait_until(predicate: Callable[[], object], *, timeout: float, interval: float = 0.01):
    """predicate()'s first truthy value, or None after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


class CpuClock:
    """CPU seconds used so far by this process and, when PostgreSQL runs on this machine,
    by the backend serving `backend_pid`: unlike wall time, hardly moved by other load.
    (The backend's counter ticks in 10 ms: read it over batches, not single renders.)"""

    def __init__(self, backend_pid: int | None = None) -> None:
        self.backend: psutil.Process | None = None
        try:
            proc = psutil.Process(backend_pid) if backend_pid else None
            if proc is not None and proc.name().startswith("postgres"):
                proc.cpu_times()
                self.backend = proc
        except psutil.Error:
            self.backend = None

    def __call__(self) -> float:
        total = time.process_time()
        if self.backend is not None:
            try:
                times = self.backend.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                self.backend = None
        return total


def unapplied_migrations() -> list[str]:
    """Migrations the configured database lacks (a bench on it would fail half-way)."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    return [f"{m.app_label}.{m.name}" for m, _ in plan]
