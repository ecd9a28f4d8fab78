"""Processes die under load; every session still ends processed exactly once.

Real gunicorn, real runpool, recorders sending over HTTP the whole time. A SIGKILLed busy
worker is covered by tests/integration/test_pipeline.py
(test_500_sessions_are_each_processed_exactly_once_despite_a_killed_busy_worker); here:
- idle workers SIGKILLed again and again (django-q2 issue #23: a worker killed while
  blocked in task_queue.get() dies holding the queue's read lock and stalls its whole
  cluster; runpool's recover_stalled replaces the generation after STALL_AFTER_S);
- runpool itself SIGKILLed: its cluster processes must not outlive it (orphans would
  keep pulling tasks outside any runpool's control), and a restarted runpool gets back
  the sessions the dead one held, through lease expiry and the queued timeout.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from datetime import timedelta

import psutil
import pytest
from django.utils import timezone

from onboarding.services import customer_create
from pool.models import Session, State
from pool.runner import STALL_AFTER_S, process_title
from tests.integration.conftest import subprocess_env, wait_for, worker_processes
from tests.reliability import (
    Recorder,
    Traffic,
    assert_processed_exactly_once,
    fault_survived,
    session_payload,
)

pytest_plugins = ["tests.integration.conftest_reliability"]
pytestmark = [pytest.mark.integration]


def start_recorders(
    port: int, key: str, traffic: Traffic, *, n: int, think_s: float, events: int = 12
):
    recorders = [
        Recorder(
            port=port,
            key=key,
            prefix=f"r{i}",
            traffic=traffic,
            until=time.monotonic() + 600,  # bounded; the test stops them much earlier
            max_sessions=5_000,
            think_s=think_s,
            events=events,
        )
        for i in range(n)
    ]
    for recorder in recorders:
        recorder.start()
    return recorders


def stop_recorders(recorders: list[Recorder]) -> None:
    for recorder in recorders:
        recorder.stop()
    for recorder in recorders:
        recorder.join(timeout=120)
        assert not recorder.is_alive(), f"{recorder.name} did not finish its session"


def processed_since(customer, moment) -> int:
    return Session.objects.filter(
        customer=customer, state=State.PROCESSED, processed_at__gt=moment
    ).count()


def all_idle_workers(runpool_pid: int) -> list[psutil.Process]:
    """The workers if there are two and both are idle, else []."""
    workers = worker_processes(runpool_pid)
    if len(workers) == 2 and all(process_title(p).endswith(" idle") for p in workers):
        return workers
    return []


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_processing_continues_while_idle_workers_are_killed_again_and_again(gunicorn, runpool):
    customer, key = customer_create(name="Idle Kill Co")
    pool = runpool("it-idle")
    wait_for(lambda: len(worker_processes(pool.pid)) == 2, 30, message="2 live workers")
    traffic = Traffic()
    recorders = start_recorders(gunicorn.port, key, traffic, n=2, think_s=0.2)
    recoveries: list[float] = []
    try:
        for _ in range(3):
            # Steady state first: both workers up and sessions flowing.
            wait_for(lambda: len(worker_processes(pool.pid)) == 2, 60, message="2 live workers")
            mark = timezone.now()
            wait_for(lambda m=mark: processed_since(customer, m) >= 5, 60, message="flowing")
            # Kill when every worker is idle: one of them is blocked in task_queue.get()
            # holding the queue's read lock, the other one waits for that lock.
            idle = wait_for(lambda: all_idle_workers(pool.pid), 30, 0.01, "idle workers")
            killed_at, started = timezone.now(), time.monotonic()
            for proc in idle:
                os.kill(proc.pid, signal.SIGKILL)
            # Reincarnated workers block on the lock the dead one held, and a stalled
            # cluster processes nothing: ten sessions after the kill mean it recovered.
            # (Not every kill stalls: the lock holder may be between two get() calls.)
            wait_for(
                lambda k=killed_at: processed_since(customer, k) >= 10,
                STALL_AFTER_S + 50,
                interval=0.2,
                message="processing to resume after killing the idle workers",
            )
            recoveries.append(time.monotonic() - started)
    finally:
        stop_recorders(recorders)

    attempts = assert_processed_exactly_once(
        test="idle workers killed", customer=customer, traffic=traffic, max_attempts=2
    )
    stalls = pool.tail(100_000).count(" stalled: ")
    assert stalls >= 1, "no kill stalled the cluster: the test did not reproduce issue #23"
    assert pool.stop(signal.SIGTERM, timeout=60) == 0, pool.tail()
    fault_survived(
        "SIGKILL every idle worker, 3 times (django-q2 #23)",
        f"{len(traffic.sessions)} sessions, {stalls} stalled generations replaced, "
        f"processing resumed after {', '.join(f'{s:.0f}' for s in recoveries)} s, "
        f"attempts {attempts}",
    )


def test_a_lone_session_after_idle_workers_were_killed_waits_little_longer_than_the_stall(
    gunicorn, runpool
):
    """With little traffic no task waits in the broker: the stalled generation's pusher
    takes each one into its dead buffer (up to workers + 1). The stall must still be
    seen within STALL_AFTER_S of the session's task being taken, not after the session
    went round the queued timeout workers + 1 times."""
    customer, key = customer_create(name="Quiet Co")
    pool = runpool("it-quiet")
    idle = wait_for(lambda: all_idle_workers(pool.pid), 30, 0.01, "2 idle workers")
    for proc in idle:
        os.kill(proc.pid, signal.SIGKILL)
    wait_for(lambda: len(worker_processes(pool.pid)) == 2, 30, message="workers reincarnated")
    traffic = Traffic()
    recorder = Recorder(
        port=gunicorn.port, key=key, prefix="lone", traffic=traffic, until=0, max_sessions=1
    )
    recorder.send("lone-0", 0, session_payload(0, final=True))
    sent = time.monotonic()
    bound = STALL_AFTER_S + int(subprocess_env()["SESSION_QUEUED_TIMEOUT_S"]) + 5
    wait_for(
        lambda: Session.objects.filter(customer=customer, state=State.PROCESSED).exists(),
        bound + 60,
        message="the lone session to be processed",
    )
    waited = time.monotonic() - sent
    assert waited < bound, f"processed after {waited:.0f} s"
    assert_processed_exactly_once(
        test="lone session after idle kill", customer=customer, traffic=traffic, max_attempts=1
    )
    fault_survived(
        "SIGKILL every idle worker of a quiet cluster, then 1 session",
        f"processed {waited:.0f} s after it was sent",
    )


def test_a_stalled_host_recovers_while_another_host_keeps_the_queue_drained(gunicorn, runpool):
    """Two pool hosts share the cluster's broker queue. When the idle workers of one are
    killed, the other keeps the queue short, so no task waits in the broker for long: the
    stalled host must still notice, or it runs zero workers while showing two live."""
    customer, key = customer_create(name="Two Hosts Co")
    stalled = runpool("it-a")
    healthy = runpool("it-b")
    for pool in (stalled, healthy):
        wait_for(lambda p=pool: len(worker_processes(p.pid)) == 2, 30, message="2 live workers")
    traffic = Traffic()
    recorders = start_recorders(gunicorn.port, key, traffic, n=2, think_s=0.1)
    try:
        wait_for(lambda: processed_since(customer, timezone.now() - timedelta(hours=1)) >= 20, 60)
        idle = wait_for(lambda: all_idle_workers(stalled.pid), 30, 0.01, "idle workers of it-a")
        killed_at, started = timezone.now(), time.monotonic()
        for proc in idle:
            os.kill(proc.pid, signal.SIGKILL)
        by_a = Session.objects.filter(customer=customer, worker_host="it-a")
        wait_for(
            lambda: by_a.filter(processed_at__gt=killed_at).count() >= 5,
            STALL_AFTER_S + 30,
            message="it-a to process sessions again",
        )
        recovered = time.monotonic() - started
    finally:
        stop_recorders(recorders)
    attempts = assert_processed_exactly_once(
        test="stalled host beside a healthy one", customer=customer, traffic=traffic, max_attempts=2
    )
    fault_survived(
        "SIGKILL every idle worker of one of two pool hosts",
        f"it-a processing again after {recovered:.0f} s, {len(traffic.sessions)} sessions, "
        f"attempts {attempts}",
    )


def test_a_killed_runpool_leaves_no_orphans_and_its_successor_processes_everything(
    gunicorn, runpool
):
    customer, key = customer_create(name="Pool Kill Co")
    first = runpool("it-kill")
    wait_for(lambda: len(worker_processes(first.pid)) == 2, 30, message="2 live workers")
    traffic = Traffic()
    # Sessions of 2 x 2,000 events take tens of milliseconds to process: when runpool dies
    # one of them is surely mid-way, and it must come back through the lease reaper.
    recorders = start_recorders(gunicorn.port, key, traffic, n=4, think_s=0.02, events=2_000)
    tree: list[psutil.Process] = []
    try:
        wait_for(lambda: processed_since(customer, timezone.now() - timedelta(hours=1)) >= 30, 60)
        tree = psutil.Process(first.pid).children(recursive=True)
        in_progress = Session.objects.filter(customer=customer, state=State.PROCESSING)
        wait_for(in_progress.exists, 30, 0.001, "a session in progress")
        first.popen.send_signal(signal.SIGKILL)
        first.popen.wait(10)
        killed_at = timezone.now()
        held = dict(
            Session.objects.filter(
                customer=customer, state__in=[State.QUEUED, State.PROCESSING]
            ).values_list("external_id", "state")
        )
        # The cluster processes go with their runpool: nobody else could stop them.
        wait_for(
            lambda: not any(alive(p) for p in tree),
            15,
            message="the dead runpool's cluster processes to exit",
        )
        # With no runpool, nothing is processed (an orphaned cluster would go on).
        time.sleep(2)
        quiet_from = timezone.now()
        time.sleep(3)
        assert processed_since(customer, quiet_from) == 0

        shutil.copy(first.log_path, first.log_path.with_name("runpool-it-kill-sigkilled.log"))
        second = runpool("it-kill")
        wait_for(lambda: len(worker_processes(second.pid)) == 2, 30, message="successor up")
        wait_for(lambda: processed_since(customer, killed_at) >= 30, 60, message="successor busy")
    finally:
        stop_recorders(recorders)
        for proc in tree:  # never leave processes behind, whatever happened above
            if alive(proc):
                proc.kill()

    attempts = assert_processed_exactly_once(
        test="runpool killed", customer=customer, traffic=traffic, max_attempts=2
    )
    # What the dead runpool held came back through the lease reaper or the queued timeout;
    # a session it was processing ran once more (attempts 2), and was counted once.
    was_processing = [sid for sid, state in held.items() if state == State.PROCESSING]
    assert was_processing, "runpool died with no session in progress: nothing was tested"
    assert not Session.objects.filter(external_id__in=held).exclude(state=State.PROCESSED).exists()
    assert set(
        Session.objects.filter(external_id__in=was_processing).values_list("attempts", flat=True)
    ) == {2}
    assert second.stop(signal.SIGTERM, timeout=60) == 0, second.tail()
    fault_survived(
        "SIGKILL runpool itself, then restart it",
        f"{len(tree)} cluster processes exited with it; the {len(held)} sessions it held "
        f"({len(was_processing)} mid-processing) came back; {len(traffic.sessions)} sessions, "
        f"attempts {attempts}",
    )
