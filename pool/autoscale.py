"""Lag-based autoscaling of worker clusters (off by default, per cluster).

runpool calls autoscale_tick every AUTOSCALE_TICK_S. For each cluster with autoscale on,
autoscale_decide (pure: tested with controlled time) moves desired workers up when lag
stays above the target and the hosts have CPU, down when the backlog is gone, with a
hysteresis band and cooldowns so it does not flap. Every change goes through
cluster_resize, audited as made by the "autoscaler". A person's resize switches it off.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from datetime import datetime

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError, transaction
from django.utils import timezone

from pool.capacity import (
    ClusterCapacity,
    ClusterFigures,
    cluster_capacities,
    cluster_samples_record,
    rate_needed,
    workers_needed,
)
from pool.clusters import cluster_resize
from pool.models import ClusterAutoscale, ClusterChange, WorkerCluster

logger = logging.getLogger("pool.autoscale")

AUTOSCALE_TICK_S = 5
AUTOSCALE_BY = "autoscaler"
CALM_FRACTION = 0.5  # "backlog gone": lag at most half the target; between the two, hold
WITHIN_TARGETS = 5  # size the cluster to bring lag under target within 5 targets


@dataclass(frozen=True)
class Timing:
    """How long a condition must last, and how long after a change the next may come.

    They follow the target lag an admin chose: a 10 s target wants quick reactions, a
    10 minute one does not. Up: lag above target for half a target (one slow batch is not
    a trend); then a target's time for the new workers to start and show their effect.
    Down: calm for two targets, and two targets after any change, which with the band
    between CALM_FRACTION and the target is the hysteresis that stops flapping.
    """

    up_after_s: float
    up_cooldown_s: float
    down_after_s: float
    down_cooldown_s: float

    @classmethod
    def for_target(cls, target_lag_s: float) -> Timing:
        def clamp(value: float, low: float, high: float) -> float:
            return min(max(value, low), high)

        return cls(
            up_after_s=clamp(target_lag_s / 2, 5, 60),
            up_cooldown_s=clamp(target_lag_s, 10, 120),
            down_after_s=clamp(2 * target_lag_s, 30, 600),
            down_cooldown_s=clamp(2 * target_lag_s, 30, 600),
        )


@dataclass(frozen=True)
class Decision:
    workers: int
    above_since: datetime | None
    calm_since: datetime | None
    reason: str

    def changes(self, current: int) -> bool:
        return self.workers != current


def autoscale_decide(
    *,
    auto: ClusterAutoscale,
    current: int,
    lag_s: float,
    needed: int | None,
    cpu_room: int | None,
    now: datetime,
) -> Decision:
    """Up when lag stays above target (and the CPU allows), down when it stays well under.

    Steps: clamp into [min, max]; track since when lag has been above the target, or at
    most CALM_FRACTION of it (in between, neither clock runs); once above for long enough
    and past the cooldown, up to the advisor's `needed` (at least +1, at most what the CPU
    allows); once calm for long enough, down to `needed` (never below min).
    """
    target = auto.target_lag_s
    timing = Timing.for_target(target)
    above = (auto.above_since or now) if lag_s > target else None
    calm = (auto.calm_since or now) if lag_s <= target * CALM_FRACTION else None
    hold = Decision(current, above, calm, "hold")
    if not auto.min_workers <= current <= auto.max_workers:
        bounded = min(max(current, auto.min_workers), auto.max_workers)
        return replace(
            hold, workers=bounded, reason=f"kept within {auto.min_workers}–{auto.max_workers}"
        )
    since_change = (now - auto.last_change_at).total_seconds() if auto.last_change_at else math.inf
    if above is not None and (now - above).total_seconds() >= timing.up_after_s:
        if current >= auto.max_workers:
            return replace(hold, reason=f"lag {lag_s:.0f}s above target; at the maximum")
        if since_change < timing.up_cooldown_s:
            return replace(hold, reason="lag above target; the last change is taking effect")
        # `needed` promised lag under target within WITHIN_TARGETS targets; if lag stays
        # above for longer than that, the estimate was optimistic: add one anyway.
        overdue = (now - above).total_seconds() >= WITHIN_TARGETS * target + timing.up_after_s
        if needed is not None and needed <= current and not overdue:
            return replace(hold, reason=f"lag {lag_s:.0f}s above target but catching up")
        want = min(max(current + 1, needed or 0), auto.max_workers)
        if cpu_room is not None:
            want = min(want, current + cpu_room)
        if want <= current:
            return replace(hold, reason=f"lag {lag_s:.0f}s above target; no CPU to spare")
        return replace(hold, workers=want, reason=f"lag {lag_s:.0f}s above target {target}s")
    if calm is not None and (now - calm).total_seconds() >= timing.down_after_s:
        if current <= auto.min_workers or since_change < timing.down_cooldown_s:
            return hold
        want = max(auto.min_workers, needed if needed is not None else current - 1)
        if want < current:
            return replace(hold, workers=want, reason=f"backlog gone (lag {lag_s:.0f}s)")
    return hold


# --- Services ---------------------------------------------------------------------


def autoscale_tick(*, now: datetime | None = None) -> list[str]:
    """What runpool calls every AUTOSCALE_TICK_S: record cluster samples, then let every
    cluster with autoscale on decide. Returns the changes made (for logs and tests)."""
    now = now or timezone.now()
    cluster_samples_record(now=now)
    enabled = set(ClusterAutoscale.objects.filter(enabled=True).values_list("pk", flat=True))
    if not enabled:
        return []
    changes = []
    for capacity in cluster_capacities(now=now, timings=False):
        if capacity.cluster.pk not in enabled:
            continue
        try:
            change = autoscale_apply(capacity=capacity, now=now)
        except DatabaseError:
            raise  # runpool retries with fresh connections
        except Exception:
            # One cluster's failure must stop neither the others nor runpool's dispatching.
            logger.exception("autoscaling cluster %s failed", capacity.cluster.name)
            continue
        if change:
            logger.info("autoscale %s", change)
            changes.append(change)
    return changes


def autoscale_apply(*, capacity: ClusterCapacity, now: datetime) -> str:
    """Decide and apply for one cluster, under a row lock so that hosts running the tick
    at the same moment, or an admin switching autoscale off, cannot interleave."""
    f = capacity.figures
    lag = max((c.lag_s for c in f.customers if c.backlog), default=0.0)
    with transaction.atomic():
        auto = ClusterAutoscale.objects.select_for_update().get(pk=capacity.cluster.pk)
        if not auto.enabled:
            return ""
        if auto.last_tick_at and (now - auto.last_tick_at).total_seconds() < AUTOSCALE_TICK_S / 2:
            return ""  # another host decided for this tick
        cluster = WorkerCluster.objects.get(pk=auto.pk)
        if f.paused or not f.hosts:
            # More workers would not help a paused cluster or one no host runs.
            why = "paused" if f.paused else "no live host"
            decision = Decision(cluster.desired_workers, None, None, f"hold: {why}")
        else:
            decision = autoscale_decide(
                auto=auto,
                current=cluster.desired_workers,
                lag_s=lag,
                needed=_needed(figures=f, target_lag_s=auto.target_lag_s),
                cpu_room=f.cpu_room,
                now=now,
            )
            workers = min(decision.workers, settings.POOL_MAX_WORKERS)
            decision = replace(decision, workers=workers)
        auto.above_since, auto.calm_since = decision.above_since, decision.calm_since
        auto.last_tick_at, auto.last_decision = now, decision.reason[:200]
        fields = ["above_since", "calm_since", "last_tick_at", "last_decision"]
        if decision.changes(cluster.desired_workers):
            cluster_resize(cluster=cluster, workers=decision.workers, by_label=AUTOSCALE_BY)
            auto.last_change_at = now
            fields.append("last_change_at")
        auto.save(update_fields=fields)
    if not decision.changes(cluster.desired_workers):
        return ""
    return f"{cluster.name}: {cluster.desired_workers} → {decision.workers} ({decision.reason})"


def _needed(*, figures: ClusterFigures, target_lag_s: int) -> int | None:
    """The advisor's arithmetic with the autoscale target in place of warn thresholds."""
    if not figures.rate_per_worker:
        return None
    rate = rate_needed(
        loads=figures.customers,
        within_s=WITHIN_TARGETS * target_lag_s,
        lag_limit_s=target_lag_s,
    )
    return workers_needed(rate=rate, rate_per_worker=figures.rate_per_worker, hosts=figures.hosts)


def autoscale_update(
    *,
    cluster: WorkerCluster,
    enabled: bool,
    min_workers: int,
    max_workers: int,
    target_lag_s: int,
    by=None,
) -> ClusterAutoscale:
    """An admin's autoscale settings, audited. Turning it on starts the hysteresis afresh."""
    if not 1 <= min_workers <= max_workers <= settings.POOL_MAX_WORKERS:
        raise ValueError(f"need 1 ≤ min ≤ max ≤ {settings.POOL_MAX_WORKERS}")
    if target_lag_s < 1:
        raise ValueError("the target lag must be at least 1 s")
    with transaction.atomic():
        auto = _locked_autoscale(cluster)
        before = str(auto)
        was_on = auto.enabled
        auto.enabled, auto.min_workers, auto.max_workers = enabled, min_workers, max_workers
        auto.target_lag_s = target_lag_s
        if enabled and not was_on:
            auto.above_since = auto.calm_since = auto.last_change_at = None
            auto.off_reason = auto.last_decision = ""
        auto.save()
        if str(auto) != before:
            _audit(cluster=cluster, by=by, before=before, after=str(auto))
    return auto


def autoscale_disable_on_manual_resize(*, cluster: WorkerCluster, by) -> bool:
    """A person resized the cluster: their number stands, so autoscale goes off until they
    turn it back on. Returns whether it was on. Call inside the resize's transaction, or
    before it, so the autoscaler cannot overwrite the person's number in between."""
    with transaction.atomic():
        try:
            auto = ClusterAutoscale.objects.select_for_update().get(pk=cluster.pk)
        except ClusterAutoscale.DoesNotExist:
            return False
        if not auto.enabled:
            return False
        before = str(auto)
        who = by.get_username() if hasattr(by, "get_username") else str(by or "someone")
        auto.enabled = False
        auto.off_reason = f"switched off by {who}'s manual resize"
        auto.save(update_fields=["enabled", "off_reason"])
        _audit(cluster=cluster, by=by, before=before, after=str(auto))
    return True


def cluster_resize_by_admin(*, cluster: WorkerCluster, workers: int, by) -> WorkerCluster:
    """A person's resize (the resize form, or applying the advisor): autoscale off, then
    the normal audited resize, in one transaction."""
    with transaction.atomic():
        autoscale_disable_on_manual_resize(cluster=cluster, by=by)
        return cluster_resize(cluster=cluster, workers=workers, by=by)


def _locked_autoscale(cluster: WorkerCluster) -> ClusterAutoscale:
    ClusterAutoscale.objects.get_or_create(cluster=cluster)  # retries a concurrent create
    return ClusterAutoscale.objects.select_for_update().get(pk=cluster.pk)


def _audit(*, cluster: WorkerCluster, by, before: str, after: str) -> None:
    """The same audit trail as pool.clusters' changes (field 'autoscale')."""
    ClusterChange.objects.create(
        cluster=cluster,
        by=by if isinstance(by, AbstractBaseUser) else None,
        field="autoscale",
        before=before[:200],
        after=after[:200],
    )
