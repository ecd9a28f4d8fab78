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
per-task work (dequeue, acknowledge, IPC) is paid once per batch instead of per session.
"""

from __future__ import annotations

import heapq
import uuid
from collections import defaultdict
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Exists, F, OuterRef, Subquery, Sum, Window
from django.db.models.functions import Coalesce, RowNumber
from django_q.conf import Conf
from django_q.models import OrmQ
from django_q.signing import SignedPackage

from onboarding.models import Customer
from pool.models import ClusterHeartbeat, Session, State, WorkerCluster

TASK_FUNC = "pool.tasks.process_sessions"
MAX_DEPTH_PER_WORKER = 32
# A batch is processed one session after the other by one worker; 8 keeps a batch to
# tens of milliseconds of work for realistic sessions (fairness, resize drains).
MAX_SESSIONS_PER_TASK = 8


def clusters_with_load(*, now: datetime) -> list[WorkerCluster]:
    """Unpaused clusters with `live` workers (fresh heartbeats), `queued` sessions and
    whether any of their customers has a ready session: one query per dispatcher tick,
    which runs up to 100 times a second. Every part walks a partial index or the
    heartbeats, so its cost grows with clusters and customers, never with sessions."""
    fresh = now - timedelta(seconds=settings.POOL_STALE_AFTER_S)
    live = (
        ClusterHeartbeat.objects.filter(
            cluster=OuterRef("pk"), seen_at__gte=fresh, host__stopped=False
        )
        .values("cluster")
        .annotate(n=Sum("live_workers"))
        .values("n")
    )
    queued = (
        Session.objects.filter(state=State.QUEUED, dispatched_cluster=OuterRef("pk"))
        .values("dispatched_cluster")
        .annotate(n=Count("id"))
        .values("n")
    )
    # LIMIT 1 keeps PostgreSQL from turning this into a join over every ready session of
    # every cluster: it probes each of the cluster's customers' partial index instead.
    first_ready = Session.objects.filter(customer=OuterRef("pk"), state=State.READY).values("id")[
        :1
    ]
    has_ready = (
        Customer.objects.filter(cluster=OuterRef("pk"))
        .annotate(first_ready=Subquery(first_ready))
        .filter(first_ready__isnull=False)
    )
    return list(
        WorkerCluster.objects.filter(paused=False).annotate(
            live=Coalesce(Subquery(live), 0),
            queued=Coalesce(Subquery(queued), 0),
            has_ready=Exists(has_ready),
        )
    )


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
        self.last_sent: dict[int, int] = {}  # cluster id -> sessions sent at the last tick

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
                # If the queue runs dry now, it is for want of work, not of depth.
                self.last_sent[cluster.id] = 0
                continue
            need = self.refill(cluster_id=cluster.id, workers=workers, queued=waiting)
            if need <= 0:
                continue
            per_task = max(1, min(MAX_SESSIONS_PER_TASK, need // (2 * workers)))
            sent_here = self.dispatch_cluster(cluster=cluster, n=need, now=now, per_task=per_task)
            self.last_sent[cluster.id] = sent_here
            sent += sent_here
        return sent

    def refill(self, *, cluster_id: int, workers: int, queued: int) -> int:
        """Sessions to send now: none while more than half the target depth still waits,
        else enough to fill it. Refilling at half (not after every session) makes each
        dispatch move many sessions at once, which is what keeps its cost per session low.

        The depth starts at 2x live workers and adapts at each refill: if the queue ran
        dry since the last one, workers may have idled, so it doubles (up to 32x
        workers); if a quarter of it still waits, it was deeper than needed and shrinks
        by 10 %. Deeper queues cost fairness only the few hundred milliseconds they hold.
        """
        floor, cap = 2 * workers, MAX_DEPTH_PER_WORKER * workers
        depth = min(max(self.depths.get(cluster_id, floor), floor), cap)
        if queued > depth // 2:
            self.depths[cluster_id] = depth
            return 0
        if queued == 0 and self.last_sent.get(cluster_id):
            depth = min(depth * 2, cap)
        elif queued >= depth // 4 and queued > 0:
            depth = max(floor, int(depth * 0.9))
        self.depths[cluster_id] = depth
        return depth - queued

    def dispatch_cluster(
        self, *, cluster: WorkerCluster, n: int, now: datetime, per_task: int = 1
    ) -> int:
        candidates = oldest_ready(cluster_id=cluster.id, per_customer=n)
        if not candidates:
            return 0
        weights = dict(Customer.objects.filter(pk__in=list(candidates)).values_list("id", "weight"))
        chosen = self.pick(candidates=candidates, weights=weights, n=n)
        return sessions_enqueue(cluster=cluster, session_ids=chosen, now=now, per_task=per_task)


def sessions_enqueue(
    *, cluster: WorkerCluster, session_ids: list[int], now: datetime, per_task: int = 1
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
            state=State.QUEUED, queued_at=now, dispatched_cluster=cluster
        )
        OrmQ.objects.using(Conf.ORM or "default").bulk_create(
            [
                OrmQ(key=cluster.name, payload=task_package(ids[i : i + per_task], now), lock=now)
                for i in range(0, len(ids), per_task)
            ]
        )
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
