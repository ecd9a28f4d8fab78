"""Hands ready sessions to clusters' django-q2 queues, fairly across customers.

Why a dispatcher instead of enqueueing at ingest: django-q2's ORM broker dequeues in no
particular order, so a queue holding a big customer's 20,000 tasks would make everyone
wait behind them. Sessions wait in the session table (ordered, indexed) and each cluster's
broker queue is kept shallow, so fairness, pauses and cluster moves apply at once.

Fairness is stride scheduling over customers: every customer carries a virtual "pass";
the one with the lowest pass gets the next slot and advances by 1/weight. A customer that
had nothing to do re-enters at the current minimum, so idleness earns no burst credit.
Work-conserving: a slot is never left empty while any customer of the cluster has work.

Cost per session matters as much as fairness (docs/benchmarks.md): the queue is refilled
only once it is down to half its depth, so one dispatch moves many sessions, and a broker
task carries a small batch of session ids when the queue is deep, so django-q2's
per-task work (dequeue, acknowledge, IPC) and the worker's two statements are paid once
per batch instead of per session. The refill's NOTIFY wakes the pushers (pool.broker).
"""

from __future__ import annotations

import heapq
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Window
from django.db.models.functions import RowNumber
from django_q.conf import Conf
from django_q.models import OrmQ
from django_q.signing import SignedPackage

from onboarding.models import Customer
from pool.broker import notify_tasks
from pool.models import ClusterHeartbeat, PoolHost, Session, State, WorkerCluster

TASK_FUNC = "pool.tasks.process_sessions"
MAX_DEPTH_PER_WORKER = 32
# A task's sessions are claimed together, processed one after the other by one worker
# and stored together (pool.worker): 16 keeps a task to ~50-100 ms of work for realistic
# sessions (fairness, resize drains) while the per-task costs (broker, two statements)
# are shared by enough sessions to vanish (docs/benchmarks.md).
MAX_SESSIONS_PER_TASK = 16
DEEPEN_WITHIN_S = 1.0
SHRINK_AFTER_S = 4.0


@dataclass
class ClusterLoad:
    id: int
    name: str
    live: int  # workers on hosts with a fresh heartbeat
    queued: int  # sessions sent to its broker queue and not yet claimed
    has_ready: bool  # whether any of its customers has a ready session


def clusters_with_load(*, now: datetime) -> list[ClusterLoad]:
    """Every unpaused cluster with its load, in one query: the dispatcher runs this up to
    100 times a second, so it is plain SQL (the same query through the ORM cost ~2 ms of
    CPU per tick to build). Each part walks a partial index or the heartbeats: the cost
    grows with clusters and customers, never with sessions. The LIMIT 1 keeps
    PostgreSQL from joining every ready session of every cluster: it probes each
    customer's partial index instead. Its ORDER BY is the index's order, so the probe
    stays an index scan even when the statistics are stale: without it, after a large
    backlog came and went, PostgreSQL estimated 100,000 ready rows and chose a
    sequential scan "to find one quickly", 145 ms per tick (bench_fairness)."""
    fresh = now - timedelta(seconds=settings.POOL_STALE_AFTER_S)
    sql = f"""
        SELECT c.id, c.name,
            (SELECT SUM(h.live_workers) FROM {ClusterHeartbeat._meta.db_table} h
             JOIN {PoolHost._meta.db_table} p ON p.id = h.host_id
             WHERE h.cluster_id = c.id AND h.seen_at >= %s AND NOT p.stopped),
            (SELECT COUNT(*) FROM {Session._meta.db_table} q
             WHERE q.state = %s AND q.dispatched_cluster_id = c.id),
            EXISTS (
                SELECT 1 FROM {Customer._meta.db_table} cu WHERE cu.cluster_id = c.id AND (
                    SELECT r.id FROM {Session._meta.db_table} r
                    WHERE r.customer_id = cu.id AND r.state = %s
                    ORDER BY r.ready_at, r.id LIMIT 1
                ) IS NOT NULL
            )
        FROM {WorkerCluster._meta.db_table} c WHERE NOT c.paused ORDER BY c.name
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [fresh, State.QUEUED, State.READY])
        return [
            ClusterLoad(id=cid, name=name, live=live or 0, queued=queued, has_ready=bool(ready))
            for cid, name, live, queued, ready in cursor.fetchall()
        ]


def oldest_ready(*, cluster_id: int, per_customer: int) -> dict[int, list[int]]:
    """Up to `per_customer` oldest ready session ids of every customer of a cluster.

    PostgreSQL walks each customer's partial index with a LATERAL join (cost grows with
    customers, not with the backlog); other databases use a window function.
    """
    if connection.vendor == "postgresql":
        sql = """
            SELECT s.customer_id, s.id FROM onboarding_customer c
            CROSS JOIN LATERAL (
                SELECT id, customer_id, ready_at FROM pool_session
                WHERE customer_id = c.id AND state = %s
                ORDER BY ready_at, id LIMIT %s
            ) s WHERE c.cluster_id = %s ORDER BY s.customer_id, s.ready_at, s.id
        """
        with connection.cursor() as cursor:
            cursor.execute(sql, [State.READY, per_customer, cluster_id])
            rows = cursor.fetchall()
    else:
        rows = (
            Session.objects.filter(state=State.READY, customer__cluster_id=cluster_id)
            .annotate(
                rank=Window(
                    RowNumber(),
                    partition_by=[F("customer_id")],
                    order_by=[F("ready_at").asc(), F("id").asc()],
                )
            )
            .filter(rank__lte=per_customer)
            .order_by("customer_id", "ready_at", "id")
            .values_list("customer_id", "id")
        )
    candidates: dict[int, list[int]] = defaultdict(list)
    for customer_id, session_id in rows:
        candidates[customer_id].append(session_id)
    return candidates


class FairDispatcher:
    def __init__(self) -> None:
        self.passes: dict[int, float] = {}
        # Virtual time: the pass of the latest slot handed out. A customer returning from
        # idleness starts here, so it cannot cash in credit for the time it sent nothing.
        self.vtime = 0.0
        self.dispatched: dict[int, int] = defaultdict(int)  # per customer, for tests and logs
        self.depths: dict[int, int] = {}  # cluster id -> current target queue depth
        # cluster id -> whether its last refill found all the ready sessions it asked for
        self.backlogged: dict[int, bool] = {}
        self.refilled_at: dict[int, float] = {}  # cluster id -> time.monotonic() of it

    def pick(
        self, *, candidates: dict[int, list[int]], weights: dict[int, int], n: int
    ) -> list[int]:
        """Choose n session ids by stride scheduling (see module docstring)."""
        heap = [
            (max(self.passes.get(cid, self.vtime), self.vtime), cid, 0)
            for cid, ids in candidates.items()
            if ids
        ]
        heapq.heapify(heap)
        chosen: list[int] = []
        while heap and len(chosen) < n:
            current, cid, index = heapq.heappop(heap)
            self.vtime = current
            chosen.append(candidates[cid][index])
            self.dispatched[cid] += 1
            current += 1.0 / max(weights.get(cid, 1), 1)
            self.passes[cid] = current
            if index + 1 < len(candidates[cid]):
                heapq.heappush(heap, (current, cid, index + 1))
        return chosen

    def dispatch(self, *, now: datetime) -> int:
        """One tick: refill every running, unpaused cluster's queue that is down to half
        its depth. Returns sessions sent."""
        sent = 0
        for cluster in clusters_with_load(now=now):
            workers = cluster.live
            if workers == 0:
                continue  # nobody would pull it; sessions stay ready (and visibly lagging)
            waiting = cluster.queued
            if not cluster.has_ready:
                self.backlogged[cluster.id] = False
                continue
            need = self.refill(cluster_id=cluster.id, workers=workers, queued=waiting)
            if need <= 0:
                continue
            # About one task per worker per refill: the pushers are woken by NOTIFY, so
            # the broker running dry between refills costs nothing.
            per_task = max(1, min(MAX_SESSIONS_PER_TASK, need // workers))
            sent_here = self.dispatch_cluster(cluster=cluster, n=need, now=now, per_task=per_task)
            self.backlogged[cluster.id] = sent_here >= need
            sent += sent_here
        return sent

    def refill(self, *, cluster_id: int, workers: int, queued: int) -> int:
        """Sessions to send now: none while more than half the target depth still waits,
        else enough to fill it. Refilling at half (not after every session) makes each
        dispatch move many sessions at once, which is what keeps its cost per session low.

        The depth starts at 2x live workers and adapts at each refill. While a backlog
        lasts (the last refill found all it asked for) and half the queue went within
        DEEPEN_WITHIN_S, it holds little work: it doubles, up to 32x workers, so sessions
        go to the broker in batches of up to MAX_SESSIONS_PER_TASK. Without a backlog, or
        when half the queue took longer than SHRINK_AFTER_S (slow sessions), it halves:
        queued sessions must be claimed within SESSION_QUEUED_TIMEOUT_S, and a deep queue
        delays the next customer's sessions by the work it holds.
        """
        floor, cap = 2 * workers, MAX_DEPTH_PER_WORKER * workers
        depth = min(max(self.depths.get(cluster_id, floor), floor), cap)
        if queued > depth // 2:
            self.depths[cluster_id] = depth
            return 0
        now = time.monotonic()
        since_last = now - self.refilled_at.get(cluster_id, float("-inf"))
        if self.backlogged.get(cluster_id) and since_last < DEEPEN_WITHIN_S:
            depth = min(depth * 2, cap)
        elif not self.backlogged.get(cluster_id) or since_last > SHRINK_AFTER_S:
            depth = max(floor, depth // 2)
        self.depths[cluster_id] = depth
        self.refilled_at[cluster_id] = now
        return depth - queued

    def dispatch_cluster(
        self, *, cluster: WorkerCluster | ClusterLoad, n: int, now: datetime, per_task: int = 1
    ) -> int:
        candidates = oldest_ready(cluster_id=cluster.id, per_customer=n)
        if not candidates:
            return 0
        weights = dict(Customer.objects.filter(pk__in=list(candidates)).values_list("id", "weight"))
        chosen = self.pick(candidates=candidates, weights=weights, n=n)
        return sessions_enqueue(cluster=cluster, session_ids=chosen, now=now, per_task=per_task)


def sessions_enqueue(
    *,
    cluster: WorkerCluster | ClusterLoad,
    session_ids: list[int],
    now: datetime,
    per_task: int = 1,
) -> int:
    """ready → queued and the broker messages, in one transaction (the ORM broker shares
    the database), so a session is never queued without a task nor a task sent for a
    session another host took: rows locked by a concurrent dispatcher are skipped.
    Sessions go out in tasks of up to `per_task` ids, in the order given (fair order)."""
    with transaction.atomic():
        locked = set(
            Session.objects.select_for_update(skip_locked=True)
            .filter(pk__in=session_ids, state=State.READY)
            .values_list("id", flat=True)
        )
        if not locked:
            return 0
        ids = [sid for sid in session_ids if sid in locked]
        Session.objects.filter(pk__in=ids).update(
            state=State.QUEUED, queued_at=now, dispatched_cluster_id=cluster.id
        )
        OrmQ.objects.using(Conf.ORM or "default").bulk_create(
            [
                OrmQ(key=cluster.name, payload=task_package(ids[i : i + per_task], now), lock=now)
                for i in range(0, len(ids), per_task)
            ]
        )
        notify_tasks(cluster.name)
    return len(ids)


def task_package(session_ids: list[int], now: datetime) -> str:
    """The signed package django_q.tasks.async_task would build, made here so a whole
    batch goes to the broker in one INSERT."""
    task_id = uuid.uuid4().hex
    task = {
        "id": task_id,
        "name": f"sessions-{session_ids[0]}x{len(session_ids)}-{task_id[:8]}",
        "func": TASK_FUNC,
        "args": (list(session_ids),),
        "kwargs": {},
        "started": now,
        "save": False,  # our result lives on the session row; skip django-q2's Success rows
        "ack_failure": True,
    }
    return SignedPackage.dumps(task)
