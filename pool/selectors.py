"""Reads for the cluster pages and APIs (a fixed number of queries)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from django.db.models import Count
from django.utils import timezone

from onboarding.models import Customer
from pool.models import ClusterChange, ClusterHeartbeat, PoolHost, Session, State, WorkerCluster

SHARE_WINDOW = timedelta(minutes=5)


@dataclass
class CustomerShare:
    customer: Customer
    processed: int
    share: float  # of the cluster's sessions processed in the window


@dataclass
class ClusterRow:
    cluster: WorkerCluster
    heartbeats: list[ClusterHeartbeat] = field(default_factory=list)
    queued: int = 0
    shares: list[CustomerShare] = field(default_factory=list)

    @property
    def fresh(self) -> list[ClusterHeartbeat]:
        return [hb for hb in self.heartbeats if not hb.host.is_stale]

    @property
    def live_workers(self) -> int:
        return sum(hb.live_workers for hb in self.fresh)

    @property
    def busy_workers(self) -> int:
        return sum(hb.busy_workers for hb in self.fresh)

    @property
    def processed_per_min(self) -> int:
        return sum(hb.processed_per_min for hb in self.fresh)

    @property
    def settled(self) -> bool:
        """Every live host runs exactly the desired number of workers."""
        return bool(self.fresh) and all(
            hb.live_workers == self.cluster.desired_workers
            and hb.applied_workers == self.cluster.desired_workers
            for hb in self.fresh
        )


def cluster_rows() -> list[ClusterRow]:
    rows = {c.id: ClusterRow(cluster=c) for c in WorkerCluster.objects.all()}
    for hb in ClusterHeartbeat.objects.select_related("host").order_by("host__name"):
        if hb.cluster_id in rows:
            rows[hb.cluster_id].heartbeats.append(hb)
    queued = (
        Session.objects.filter(state=State.QUEUED)
        .values("dispatched_cluster_id")
        .annotate(n=Count("id"))
    )
    for entry in queued:
        if entry["dispatched_cluster_id"] in rows:
            rows[entry["dispatched_cluster_id"]].queued = entry["n"]
    _attach_shares(rows)
    return list(rows.values())


def _attach_shares(rows: dict[int, ClusterRow]) -> None:
    """Each customer's share of its cluster's throughput over the last 5 minutes."""
    since = timezone.now() - SHARE_WINDOW
    done = dict(
        Session.objects.filter(processed_at__gte=since)
        .values("customer_id")
        .annotate(n=Count("id"))
        .values_list("customer_id", "n")
    )
    for customer in Customer.objects.order_by("name"):
        row = rows.get(customer.cluster_id)
        if row is not None:
            row.shares.append(CustomerShare(customer, done.get(customer.id, 0), 0.0))
    for row in rows.values():
        total = sum(s.processed for s in row.shares)
        for s in row.shares:
            s.share = s.processed / total if total else 0.0


def hosts() -> list[PoolHost]:
    return list(PoolHost.objects.order_by("stopped", "name"))


def recent_changes(limit: int = 30) -> list[ClusterChange]:
    return list(ClusterChange.objects.select_related("cluster", "by")[:limit])
