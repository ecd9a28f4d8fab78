"""Hands ready sessions to clusters' django-q2 queues, fairly across customers.

Why a dispatcher instead of enqueueing at ingest: django-q2's ORM broker dequeues in no
particular order, so a queue holding a big customer's 20,000 tasks would make everyone
wait behind them. Sessions wait in the session table (ordered, indexed) and each cluster's
broker queue is kept shallow, so fairness, pauses and cluster moves apply at once.

Fairness is stride scheduling over customers: every customer carries a virtual "pass";
the one with the lowest pass gets the next slot and advances by 1/weight. A customer that
had nothing to do re-enters at the current minimum, so idleness earns no burst credit.
Work-conserving: a slot is never left empty while any customer of the cluster has work.
"""

from __future__ import annotations

import heapq
import math
import uuid
from collections import defaultdict
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Sum, Window
from django.db.models.functions import RowNumber
from django_q.conf import Conf
from django_q.models import OrmQ
from django_q.signing import SignedPackage

from onboarding.models import Customer
from pool.models import ClusterHeartbeat, Session, State, WorkerCluster

TASK_FUNC = "pool.tasks.process_session"
# Keep about this many seconds of work queued per cluster on top of 2x live workers, so
# fast sessions never leave a worker waiting for the next dispatcher tick.
QUEUE_AHEAD_S = 0.3


def live_workers_by_cluster(*, now: datetime) -> dict[int, int]:
    fresh = now - timedelta(seconds=settings.POOL_STALE_AFTER_S)
    rows = (
        ClusterHeartbeat.objects.filter(seen_at__gte=fresh, host__stopped=False)
        .values("cluster_id")
        .annotate(live=Sum("live_workers"))
    )
    return {row["cluster_id"]: row["live"] or 0 for row in rows}


def queued_by_cluster() -> dict[int, int]:
    rows = (
        Session.objects.filter(state=State.QUEUED)
        .values("dispatched_cluster_id")
        .annotate(n=Count("id"))
    )
    return {row["dispatched_cluster_id"]: row["n"] for row in rows}


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
        self.rates: dict[int, float] = {}  # cluster id -> recent sessions/s, set by runpool

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
        """One tick: top up every running, unpaused cluster's queue. Returns sessions sent."""
        live = live_workers_by_cluster(now=now)
        queued = queued_by_cluster()
        sent = 0
        for cluster in WorkerCluster.objects.filter(paused=False):
            workers = live.get(cluster.id, 0)
            if workers == 0:
                continue  # nobody would pull it; sessions stay ready (and visibly lagging)
            need = self.target_depth(cluster_id=cluster.id, workers=workers) - queued.get(
                cluster.id, 0
            )
            if need > 0:
                sent += self.dispatch_cluster(cluster=cluster, n=need, now=now)
        return sent

    def target_depth(self, *, cluster_id: int, workers: int) -> int:
        rate = self.rates.get(cluster_id, 0.0)
        return max(2 * workers, math.ceil(rate * QUEUE_AHEAD_S))

    def dispatch_cluster(self, *, cluster: WorkerCluster, n: int, now: datetime) -> int:
        candidates = oldest_ready(cluster_id=cluster.id, per_customer=n)
        if not candidates:
            return 0
        weights = dict(Customer.objects.filter(pk__in=list(candidates)).values_list("id", "weight"))
        chosen = self.pick(candidates=candidates, weights=weights, n=n)
        return sessions_enqueue(cluster=cluster, session_ids=chosen, now=now)


def sessions_enqueue(*, cluster: WorkerCluster, session_ids: list[int], now: datetime) -> int:
    """ready → queued and the broker message, in one transaction (the ORM broker shares the
    database), so a session is never queued without a task nor a task sent for a session
    another host took: rows locked by a concurrent dispatcher are skipped."""
    with transaction.atomic():
        ids = list(
            Session.objects.select_for_update(skip_locked=True)
            .filter(pk__in=session_ids, state=State.READY)
            .values_list("id", flat=True)
        )
        if not ids:
            return 0
        Session.objects.filter(pk__in=ids).update(
            state=State.QUEUED, queued_at=now, dispatched_cluster=cluster
        )
        OrmQ.objects.using(Conf.ORM or "default").bulk_create(
            [OrmQ(key=cluster.name, payload=task_package(sid, now), lock=now) for sid in ids]
        )
    return len(ids)


def task_package(session_id: int, now: datetime) -> str:
    """The signed package django_q.tasks.async_task would build, made here so a whole
    batch goes to the broker in one INSERT."""
    task_id = uuid.uuid4().hex
    task = {
        "id": task_id,
        "name": f"session-{session_id}-{task_id[:8]}",
        "func": TASK_FUNC,
        "args": (session_id,),
        "kwargs": {},
        "started": now,
        "save": False,  # our result lives on the session row; skip django-q2's Success rows
        "ack_failure": True,
    }
    return SignedPackage.dumps(task)
