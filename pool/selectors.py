"""Reads for the cluster pages and APIs."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import Count

from pool.models import ClusterHeartbeat, Session, State, WorkerCluster


@dataclass
class ClusterRow:
    cluster: WorkerCluster
    heartbeats: list[ClusterHeartbeat] = field(default_factory=list)
    queued: int = 0

    @property
    def live_workers(self) -> int:
        return sum(hb.live_workers for hb in self.heartbeats if not hb.host.is_stale)

    @property
    def busy_workers(self) -> int:
        return sum(hb.busy_workers for hb in self.heartbeats if not hb.host.is_stale)

    @property
    def processed_per_min(self) -> int:
        return sum(hb.processed_per_min for hb in self.heartbeats if not hb.host.is_stale)

    @property
    def settled(self) -> bool:
        live = [hb for hb in self.heartbeats if not hb.host.is_stale]
        return bool(live) and all(hb.live_workers == self.cluster.desired_workers for hb in live)


def cluster_rows() -> list[ClusterRow]:
    """Three queries: clusters, heartbeats with hosts, queued counts."""
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
    return list(rows.values())
