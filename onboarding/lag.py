"""Per-customer lag: the figures of design.md's "Lag" section, and their history.

Every read here costs a fixed number of queries, each bounded by the number of
customers or by the unprocessed backlog (partial indexes), never by all sessions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db.models import Count, Max, Min, OuterRef, Subquery
from django.utils import timezone

from onboarding.models import Customer
from pool.models import BACKLOG_STATES, LagSample, Session

RATE_WINDOW = timedelta(minutes=5)
RAW_RETENTION = timedelta(hours=26)
ROLLUP_AFTER = timedelta(hours=2)
ROLLUP_RETENTION = timedelta(days=90)


class Status:
    OK = "OK"
    WARN = "WARN"
    CRITICAL = "CRITICAL"
    STALLED = "STALLED"


STATUS_RANK = {Status.OK: 0, Status.WARN: 1, Status.CRITICAL: 2, Status.STALLED: 3}


@dataclass
class LagRow:
    customer: Customer
    backlog: int
    lag_s: float
    processed_per_min: float
    arrivals_per_min: float
    eta_s: float | None  # None: not catching up
    status: str
    last_processed_at: datetime | None

    @property
    def rank(self) -> int:
        return STATUS_RANK[self.status]

    def as_dict(self) -> dict:
        return {
            "customer": self.customer.slug,
            "name": self.customer.name,
            "cluster": self.customer.cluster.name,
            "status": self.status,
            "backlog": self.backlog,
            "lag_s": round(self.lag_s, 1),
            "processed_per_min": round(self.processed_per_min, 2),
            "arrivals_per_min": round(self.arrivals_per_min, 2),
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "catching_up": self.eta_s is not None,
            "processed_total": self.customer.processed_total,
            "last_processed_at": self.last_processed_at.isoformat()
            if self.last_processed_at
            else None,
        }


def lag_status(*, customer: Customer, backlog: int, lag_s: float, last_processed_at, now) -> str:
    stall = timedelta(seconds=customer.stall_after_s)
    if backlog and lag_s >= customer.stall_after_s:
        if last_processed_at is None or now - last_processed_at >= stall:
            return Status.STALLED
    if lag_s >= customer.critical_lag_s:
        return Status.CRITICAL
    if lag_s >= customer.warn_lag_s:
        return Status.WARN
    return Status.OK


def eta_seconds(*, backlog: int, processed_per_min: float, arrivals_per_min: float) -> float | None:
    if backlog == 0:
        return 0.0
    net = processed_per_min - arrivals_per_min
    if net <= 0:
        return None
    return backlog / net * 60


def lag_rows(*, now: datetime | None = None, customers=None) -> list[LagRow]:
    """Four queries whatever the number of customers or sessions."""
    now = now or timezone.now()
    since = now - RATE_WINDOW
    last_done = (
        Session.objects.filter(customer=OuterRef("pk"), processed_at__isnull=False)
        .order_by("-processed_at")
        .values("processed_at")[:1]
    )
    qs = customers if customers is not None else Customer.objects.all()
    customer_list = list(
        qs.select_related("cluster").annotate(last_processed_at=Subquery(last_done))
    )
    backlog = {
        r["customer_id"]: r
        for r in Session.objects.filter(state__in=BACKLOG_STATES)
        .values("customer_id")
        .annotate(n=Count("id"), oldest=Min("ready_at"))
    }
    processed = _count_by_customer(Session.objects.filter(processed_at__gte=since), "processed_at")
    arrivals = _count_by_customer(Session.objects.filter(ready_at__gte=since), "ready_at")
    minutes = RATE_WINDOW.total_seconds() / 60
    rows = []
    for customer in customer_list:
        entry = backlog.get(customer.id)
        n = entry["n"] if entry else 0
        oldest = entry["oldest"] if entry else None
        lag_s = max(0.0, (now - oldest).total_seconds()) if oldest else 0.0
        done, first_done = processed.get(customer.id, (0, None))
        came, first_came = arrivals.get(customer.id, (0, None))
        p_rate, a_rate = done / minutes, came / minutes
        # The ETA divides by the part of the window that had events: at the start of a
        # catch-up the 5-minute window is mostly empty and a 5-minute average would make
        # the ETA several times too long. The columns keep the 5-minute averages.
        active = _active_minutes(now=now, firsts=(first_done, first_came))
        rows.append(
            LagRow(
                customer=customer,
                backlog=n,
                lag_s=lag_s,
                processed_per_min=p_rate,
                arrivals_per_min=a_rate,
                eta_s=eta_seconds(
                    backlog=n, processed_per_min=done / active, arrivals_per_min=came / active
                ),
                status=lag_status(
                    customer=customer,
                    backlog=n,
                    lag_s=lag_s,
                    last_processed_at=customer.last_processed_at,
                    now=now,
                ),
                last_processed_at=customer.last_processed_at,
            )
        )
    return rows


def _count_by_customer(qs, field: str) -> dict[int, tuple[int, datetime]]:
    """Per customer: how many in the window, and the earliest of them (same query)."""
    rows = qs.values("customer_id").annotate(n=Count("id"), first=Min(field))
    return {row["customer_id"]: (row["n"], row["first"]) for row in rows}


# Below this much time with events, rates are too noisy for an ETA. Short, because a
# quarter of the way into a catch-up is often only a few dozen seconds in (bench_catchup:
# ~13 s at 400 sessions/s), and by then thousands of sessions measure the rate.
MIN_RATE_WINDOW_S = 10


def _active_minutes(*, now: datetime, firsts: tuple) -> float:
    present = [first for first in firsts if first is not None]
    if not present:
        return RATE_WINDOW.total_seconds() / 60
    seconds = (now - min(present)).total_seconds()
    return max(MIN_RATE_WINDOW_S, min(seconds, RATE_WINDOW.total_seconds())) / 60


# --- History --------------------------------------------------------------------

_last_bucket: datetime | None = None


def lag_samples_record(*, now: datetime) -> int:
    """One raw sample per customer per LagSample.RAW seconds (idempotent across hosts)."""
    global _last_bucket
    bucket = _bucket(now, LagSample.RAW)
    if bucket == _last_bucket:
        return 0
    _last_bucket = bucket
    samples = [
        LagSample(
            customer=row.customer,
            at=bucket,
            resolution_s=LagSample.RAW,
            backlog=row.backlog,
            lag_s=row.lag_s,
            processed_per_min=row.processed_per_min,
            arrivals_per_min=row.arrivals_per_min,
        )
        for row in lag_rows(now=now)
    ]
    LagSample.objects.bulk_create(samples, ignore_conflicts=True)
    if bucket.minute % 5 == 0 and bucket.second < LagSample.RAW:
        lag_samples_rollup(now=now)
    return len(samples)


def lag_samples_rollup(*, now: datetime) -> None:
    """Fold raw samples older than ROLLUP_AFTER into 5-minute ones (max lag and backlog,
    mean rates), then prune: charts stay fast after months of samples."""
    horizon = _bucket(now - ROLLUP_AFTER, LagSample.ROLLUP)
    done = LagSample.objects.filter(resolution_s=LagSample.ROLLUP).aggregate(m=Max("at"))["m"]
    start = done + timedelta(seconds=LagSample.ROLLUP) if done else None
    raw = LagSample.objects.filter(resolution_s=LagSample.RAW, at__lt=horizon)
    if start:
        raw = raw.filter(at__gte=start)
    groups: dict[tuple[int, datetime], list[LagSample]] = {}
    for sample in raw.order_by("at").iterator(chunk_size=2000):
        groups.setdefault((sample.customer_id, _bucket(sample.at, LagSample.ROLLUP)), []).append(
            sample
        )
    LagSample.objects.bulk_create(
        [
            LagSample(
                customer_id=customer_id,
                at=at,
                resolution_s=LagSample.ROLLUP,
                backlog=max(s.backlog for s in group),
                lag_s=max(s.lag_s for s in group),
                processed_per_min=sum(s.processed_per_min for s in group) / len(group),
                arrivals_per_min=sum(s.arrivals_per_min for s in group) / len(group),
            )
            for (customer_id, at), group in groups.items()
        ],
        ignore_conflicts=True,
    )
    LagSample.objects.filter(resolution_s=LagSample.RAW, at__lt=now - RAW_RETENTION).delete()
    LagSample.objects.filter(resolution_s=LagSample.ROLLUP, at__lt=now - ROLLUP_RETENTION).delete()


def _bucket(moment: datetime, seconds: int) -> datetime:
    epoch = int(moment.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, tz=moment.tzinfo or UTC)
