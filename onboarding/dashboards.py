"""Reads for the ops pages: the overview table, a customer's charts, the summary strip.

A fixed number of queries per page whatever the number of customers or sessions; the
lag history comes from LagSample rows (one per customer per 15 s, rolled up after 2 h).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Sum

from onboarding.charts import Series, downsample_max, line_chart, sparkline
from onboarding.lag import LagRow, lag_rows
from onboarding.models import Customer
from onboarding.templatetags.onramp import duration
from pool.models import ClusterHeartbeat, LagSample

SPARK_WINDOW = timedelta(hours=1)
WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}
SORTS = {
    "status": lambda r: (-r.rank, -r.lag_s, r.customer.name.lower()),
    "name": lambda r: r.customer.name.lower(),
    "backlog": lambda r: (-r.backlog, r.customer.name.lower()),
    "lag": lambda r: (-r.lag_s, r.customer.name.lower()),
    "processed": lambda r: (-r.processed_per_min, r.customer.name.lower()),
    "arrivals": lambda r: (-r.arrivals_per_min, r.customer.name.lower()),
    "eta": lambda r: (r.eta_s is not None, -(r.eta_s or 0)),
}


@dataclass
class OverviewRow:
    lag: LagRow
    spark: str
    progress: int | None  # % of the last hour's peak backlog already worked off

    def __getattr__(self, name):  # the template reads LagRow fields straight through
        return getattr(self.lag, name)


@dataclass
class Summary:
    total_backlog: int
    worst_lag_s: float
    worst_customer: str
    processed_per_min: float
    arrivals_per_min: float
    live_workers: int
    desired_workers: int


def overview(*, now: datetime, sort: str = "status", query: str = "") -> tuple[list, Summary]:
    customers = Customer.objects.all()
    if query:
        customers = customers.filter(name__icontains=query)
    rows = lag_rows(now=now, customers=customers)
    history = _recent_samples(now=now, customer_ids=[r.customer.id for r in rows])
    result = []
    for row in rows:
        samples = history.get(row.customer.id, [])
        peak = max([s[1] for s in samples] + [row.backlog])
        progress = None if not row.backlog or peak == 0 else round(100 * (1 - row.backlog / peak))
        lag_values = [s[0] for s in samples] + [row.lag_s]
        title = (
            f"lag over the last hour, now {duration(row.lag_s)}, peak {duration(max(lag_values))}"
        )
        result.append(
            OverviewRow(lag=row, spark=sparkline(lag_values, title=title), progress=progress)
        )
    result.sort(key=lambda r: SORTS.get(sort, SORTS["status"])(r.lag))
    return result, _summary(rows, now=now)


def _recent_samples(*, now: datetime, customer_ids: list[int]) -> dict[int, list[tuple]]:
    """(lag_s, backlog) per customer over the last hour, one per minute (the sample
    taken in each minute's first 15 s): 60 rows per customer, not 240."""
    rows = (
        LagSample.objects.filter(resolution_s=LagSample.RAW, at__gte=now - SPARK_WINDOW)
        .filter(customer_id__in=customer_ids, at__second__lt=LagSample.RAW)
        .order_by("at")
        .values_list("customer_id", "at", "lag_s", "backlog")
    )
    per_minute: dict[int, dict] = defaultdict(dict)
    for customer_id, at, lag_s, backlog in rows:
        key = at.replace(second=0)
        prev = per_minute[customer_id].get(key)
        if prev is None or lag_s > prev[0]:
            per_minute[customer_id][key] = (lag_s, backlog)
    return {cid: list(points.values()) for cid, points in per_minute.items()}


def _summary(rows: list[LagRow], *, now: datetime) -> Summary:
    fresh = now - timedelta(seconds=settings.POOL_STALE_AFTER_S)
    workers = ClusterHeartbeat.objects.filter(seen_at__gte=fresh, host__stopped=False).aggregate(
        live=Sum("live_workers"), desired=Sum("applied_workers")
    )
    worst = max(rows, key=lambda r: r.lag_s, default=None)
    return Summary(
        total_backlog=sum(r.backlog for r in rows),
        worst_lag_s=worst.lag_s if worst else 0.0,
        worst_customer=worst.customer.name if worst and worst.lag_s else "",
        processed_per_min=sum(r.processed_per_min for r in rows),
        arrivals_per_min=sum(r.arrivals_per_min for r in rows),
        live_workers=workers["live"] or 0,
        desired_workers=workers["desired"] or 0,
    )


def customer_charts(*, customer: Customer, window: str, now: datetime) -> dict[str, str]:
    span = WINDOWS.get(window, WINDOWS["1h"])
    # Raw samples cover the last 26 h; beyond that only the 5-minute rollups exist.
    resolution = LagSample.RAW if span <= timedelta(hours=24) else LagSample.ROLLUP
    samples = list(
        LagSample.objects.filter(customer=customer, resolution_s=resolution, at__gte=now - span)
        .order_by("at")
        .values_list("at", "lag_s", "backlog", "processed_per_min", "arrivals_per_min")
    )

    def pick(index: int) -> list[tuple[datetime, float]]:
        return downsample_max([(s[0], float(s[index])) for s in samples])

    return {
        "lag": line_chart(
            [Series("lag", pick(1))],
            title="Lag (age of the oldest unprocessed session)",
            fmt=duration,
        ),
        "backlog": line_chart([Series("backlog", pick(2), "#f79009")], title="Backlog (sessions)"),
        "throughput": line_chart(
            [
                Series("processed/min", pick(3), "#12b76a"),
                Series("arrivals/min", pick(4), "#7a5af8"),
            ],
            title="Throughput (sessions per minute, 5-minute average)",
            fmt=lambda v: f"{v:.1f}",
        ),
    }
