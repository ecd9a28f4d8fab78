"""Capacity: what a cluster's sessions cost and how many workers its lag needs.

Two layers, so the arithmetic can be tested on controlled figures:
- pure functions on figures: worker_rate, cost_figures, cpu_room, rate_needed,
  workers_needed, advise;
- selectors that gather those figures (a fixed number of queries, bounded by customers,
  hosts and recent sessions): cluster_capacities, capacity_page, customer_advice;
plus the two writes that keep the figures: host_sample_record (from each heartbeat) and
cluster_samples_record (from the autoscale tick, see pool.autoscale).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db.models import Count, F, Min, Sum

from onboarding.models import Customer
from pool.models import (
    BACKLOG_STATES,
    ClusterAutoscale,
    ClusterHeartbeat,
    ClusterSample,
    HostSample,
    PoolHost,
    Session,
    State,
    WorkerCluster,
)

SAMPLE_S = 10  # bucket of ClusterSample and HostSample
SAMPLE_RETENTION = timedelta(hours=2)
HOST_CHART = timedelta(hours=1)
COST_WINDOW = timedelta(minutes=10)  # "recent": sessions processed in the last 10 minutes
COST_ROWS = 5000  # processing times read for the mean and p95, newest first
ARRIVAL_WINDOW = timedelta(minutes=2)  # short, so a stop in traffic shows within minutes
CPU_WINDOW = timedelta(minutes=1)
# Plan hosts up to 90 % CPU: the runpool loop, django-q2's pushers and the OS need the rest.
CPU_CEILING = 0.9
# A worker is one process: it cannot use more than a core. Below 0.1 the estimate is noise.
CPU_PER_WORKER_MAX, CPU_PER_WORKER_MIN = 1.0, 0.1
# Size for arrivals at 80 % utilisation: a cluster at 100 % has no slack for bursts.
UTILISATION = 0.8
ADVISOR_WITHIN_S = 1800


# --- Figures (pure) --------------------------------------------------------------


@dataclass(frozen=True)
class SampleFigures:
    live_workers: int
    processed: int
    ready_before: int
    ready_after: int


@dataclass(frozen=True)
class Cost:
    sessions: int  # processed on the cluster in COST_WINDOW
    mean_ms: float | None
    p95_ms: float | None
    per_worker_per_s: float | None
    # True: measured while sessions were waiting, i.e. the capacity of a worker. False: a
    # lower bound (workers were partly idle).
    saturated: bool = False


def worker_rate(*, samples: Sequence[SampleFigures]) -> tuple[float | None, bool]:
    """Sessions/s one worker finishes. Buckets where sessions waited at both ends measure
    capacity (the dispatcher keeps queues full while anything is ready); without any, the
    mean over all buckets is a lower bound."""
    busy = [s for s in samples if s.live_workers and s.ready_before and s.ready_after]
    for chosen, saturated in ((busy, True), ([s for s in samples if s.live_workers], False)):
        worker_s = sum(s.live_workers for s in chosen) * SAMPLE_S
        done = sum(s.processed for s in chosen)
        if worker_s and done:
            return done / worker_s, saturated
    return None, False


def cost_figures(*, processing_ms: Sequence[float], samples: Sequence[SampleFigures]) -> Cost:
    rate, saturated = worker_rate(samples=samples)
    if not processing_ms:
        return Cost(0, None, None, rate, saturated)
    ordered = sorted(processing_ms)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return Cost(len(ordered), sum(ordered) / len(ordered), p95, rate, saturated)


@dataclass(frozen=True)
class HostLoad:
    name: str
    cpu_count: int
    cpu_percent: float  # mean over the last minute
    sessions_per_s: float  # all clusters on the host, last minute


def cpu_per_worker(*, host: HostLoad, rate_per_worker: float | None) -> float:
    """Cores one busy worker costs: the host's CPU in use per session it processed, times a
    worker's sessions/s. Counting all the host's CPU as the workers' errs on the safe side
    (it includes a local database and any neighbour). Nothing measured: a whole core."""
    if not rate_per_worker or host.sessions_per_s <= 0:
        return CPU_PER_WORKER_MAX
    cores_used = host.cpu_count * host.cpu_percent / 100
    per_worker = cores_used / host.sessions_per_s * rate_per_worker
    return min(CPU_PER_WORKER_MAX, max(CPU_PER_WORKER_MIN, per_worker))


def cpu_room(*, hosts: Sequence[HostLoad], rate_per_worker: float | None) -> int:
    """More workers per host that every live host has the CPU for (desired_workers applies
    to every host, so the fullest host decides)."""
    rooms = []
    for host in hosts:
        free = host.cpu_count * (CPU_CEILING - host.cpu_percent / 100)
        per_worker = cpu_per_worker(host=host, rate_per_worker=rate_per_worker)
        rooms.append(max(0, math.floor(free / per_worker + 1e-9)))
    return min(rooms) if rooms else 0


@dataclass(frozen=True)
class CustomerLoad:
    name: str
    backlog: int
    lag_s: float
    arrivals_per_s: float
    warn_lag_s: float


def rate_needed(*, loads: Sequence[CustomerLoad], within_s: float, lag_limit_s=None) -> float:
    """Sessions/s the cluster must finish so that, `within_s` from now, no customer's lag
    is above its limit (its warn threshold, or `lag_limit_s`), and then keeps up.

    By then every session older than the limit must be done: with within ≥ limit, the whole
    backlog plus what arrives in the first (within − limit) seconds; with within < limit,
    only the part of the backlog already older than (limit − within), taken as spread
    evenly over the current lag. Keeping up afterwards needs arrivals / UTILISATION.
    """
    total = 0.0
    for c in loads:
        limit = c.warn_lag_s if lag_limit_s is None else lag_limit_s
        if within_s >= limit:
            work = c.backlog + c.arrivals_per_s * (within_s - limit)
        elif c.lag_s > 0:
            work = c.backlog * min(1.0, max(0.0, (c.lag_s - (limit - within_s)) / c.lag_s))
        else:
            work = 0.0
        total += max(c.arrivals_per_s / UTILISATION, work / within_s)
    return total


def workers_needed(*, rate: float, rate_per_worker: float, hosts: int) -> int:
    """Workers per host (at least 1) for a cluster-wide rate."""
    total = math.ceil(rate / rate_per_worker - 1e-9)
    return max(1, math.ceil(total / max(hosts, 1)))


def clear_eta_s(*, backlog: int, arrivals_per_s: float, capacity_per_s: float) -> float | None:
    """Seconds to empty a backlog at a capacity (None: it would not catch up)."""
    if backlog == 0:
        return 0.0
    net = capacity_per_s - arrivals_per_s
    return backlog / net if net > 0 else None


# --- Advisor (pure) ----------------------------------------------------------------


@dataclass(frozen=True)
class ClusterFigures:
    name: str
    desired: int  # workers per host
    hosts: int  # live hosts running the cluster
    paused: bool
    rate_per_worker: float | None
    cpu_room: int | None  # more workers per host the CPU allows (None: not capped)
    max_workers: int
    customers: tuple[CustomerLoad, ...] = ()


@dataclass(frozen=True)
class Advice:
    cluster: str
    kind: str  # more | fewer | hold | ok | idle | blocked | unknown | paused | no-host
    current: int
    target: int  # workers per host to apply (== current: nothing to apply)
    needed: int | None = None  # per host, before the CPU and POOL_MAX_WORKERS caps
    cpu_room: int | None = None
    eta_s: float | None = None  # to clear the backlog at `target`
    lagging: tuple[str, ...] = ()
    sentence: str = ""

    @property
    def actionable(self) -> bool:
        return self.target != self.current


def advise(*, figures: ClusterFigures, within_s: float, focus: str | None = None) -> Advice:
    """The advisor: workers that bring every customer's lag under its warn threshold within
    `within_s`, capped by the CPU of the live hosts, said as a sentence one can act on.
    `focus` names the customer whose page shows it."""
    f = figures
    loads = f.customers
    lagging = tuple(c.name for c in loads if c.backlog and c.lag_s >= c.warn_lag_s)
    base = Advice(cluster=f.name, kind="ok", current=f.desired, target=f.desired, lagging=lagging)
    who = _whose(focus=focus, lagging=lagging)
    if f.paused:
        return replace(base, kind="paused", sentence=f"{f.name} is paused: resume it first.")
    if f.hosts == 0:
        text = f"No live runpool host runs {f.name}: start one (manage.py runpool)."
        return replace(base, kind="no-host", sentence=text)
    if not any(c.backlog or c.arrivals_per_s for c in loads):
        text = f"Nothing waiting on {f.name} and nothing arrived in the last few minutes."
        return replace(base, kind="idle", sentence=text)
    if f.rate_per_worker is None:
        text = f"No session finished on {f.name} in the last 10 minutes: nothing to measure yet."
        return replace(base, kind="unknown", sentence=text)
    needed = workers_needed(
        rate=rate_needed(loads=loads, within_s=within_s),
        rate_per_worker=f.rate_per_worker,
        hosts=f.hosts,
    )
    advice = replace(base, needed=needed, cpu_room=f.cpu_room)
    if needed <= f.desired:
        return _enough(advice=advice, figures=f, who=who)
    return _more(advice=advice, figures=f, who=who)


def _eta(figures: ClusterFigures, workers: int) -> float | None:
    """Time to clear the cluster's whole backlog with `workers` per host."""
    return clear_eta_s(
        backlog=sum(c.backlog for c in figures.customers),
        arrivals_per_s=sum(c.arrivals_per_s for c in figures.customers),
        capacity_per_s=(figures.rate_per_worker or 0) * figures.hosts * workers,
    )


def _enough(*, advice: Advice, figures: ClusterFigures, who: str) -> Advice:
    f, needed = figures, advice.needed or 1
    eta = _eta(f, f.desired)
    if advice.lagging:
        text = f"{f.name}'s {_workers(f.desired, f.hosts)} are enough: {who} backlog clears in {about(eta)}."
        return replace(advice, kind="hold", eta_s=eta, sentence=text)
    if needed < f.desired and not any(c.backlog for c in f.customers):
        text = f"{f.name} keeps up; {_workers(needed, f.hosts)} would do (now {f.desired})."
        return replace(advice, kind="fewer", target=needed, eta_s=0.0, sentence=text)
    text = f"{f.name} keeps up with its arrivals with {_workers(f.desired, f.hosts)}."
    return replace(advice, kind="ok", eta_s=eta, sentence=text)


def _more(*, advice: Advice, figures: ClusterFigures, who: str) -> Advice:
    """More workers needed: as many as the CPU, and POOL_MAX_WORKERS, allow."""
    f, needed, room = figures, advice.needed or 1, figures.cpu_room
    more = needed - f.desired
    text = f"{_count(more, f.hosts, 'more ')} on {f.name} would clear {who} backlog in {about(_eta(f, needed))}"
    if room == 0:
        text += "; but the hosts have no CPU to spare: add a pool host (another runpool)."
        return replace(advice, kind="blocked", sentence=text)
    target = min(needed, f.max_workers, f.desired + room if room is not None else needed)
    target = max(target, f.desired)
    eta = _eta(f, target)
    each = " each" if f.hosts > 1 else ""
    if target - f.desired < more:
        limit = "CPU" if target < f.max_workers else f"a limit of {f.max_workers} workers"
        then = f"clear it in {about(eta)}" if eta is not None else "not catch up"
        text += f"; the hosts have {limit} for {target - f.desired} more{each}, which would {then}."
    else:
        text += f"; the hosts have CPU for {room} more{each}." if room is not None else "."
    return replace(advice, kind="more", target=target, eta_s=eta, sentence=text)


def _whose(*, focus: str | None, lagging: tuple[str, ...]) -> str:
    if focus:
        return f"{focus}'s"
    if len(lagging) == 1:
        return f"{lagging[0]}'s"
    if len(lagging) == 2:
        return f"{lagging[0]}'s and {lagging[1]}'s"
    return f"{len(lagging)} customers'" if lagging else "the"


def _count(n: int, hosts: int, more: str = "") -> str:
    return f"{n} {more}worker{'s' if n != 1 else ''}" + (" per host" if hosts > 1 else "")


def _workers(n: int, hosts: int) -> str:
    return _count(n, hosts)


def about(seconds: float | None) -> str:
    """A duration as a person would say it: 'about 40 minutes'."""
    if seconds is None:
        return "never (it would not catch up)"
    if seconds < 60:
        return "under a minute"
    minutes = seconds / 60
    if minutes < 90:
        n = round(minutes) if minutes < 10 else round(minutes / 5) * 5
        return f"about {n} minute{'s' if n != 1 else ''}"
    hours = minutes / 60
    if hours < 36:
        n = round(hours)
        return f"about {n} hour{'s' if n != 1 else ''}"
    return f"about {round(hours / 24)} days"


# --- Selectors --------------------------------------------------------------------


def _fresh_since(now: datetime) -> datetime:
    return now - timedelta(seconds=settings.POOL_STALE_AFTER_S)


def _bucket(moment: datetime) -> datetime:
    epoch = int(moment.timestamp())
    return datetime.fromtimestamp(epoch - epoch % SAMPLE_S, tz=moment.tzinfo or UTC)


def customer_loads(*, now: datetime) -> dict[int, list[tuple[Customer, CustomerLoad]]]:
    """Every customer's backlog, lag and arrival rate, grouped by cluster id (3 queries)."""
    backlog = {
        r["customer_id"]: r
        for r in Session.objects.filter(state__in=BACKLOG_STATES)
        .values("customer_id")
        .annotate(n=Count("id"), oldest=Min("ready_at"))
    }
    arrived = dict(
        Session.objects.filter(ready_at__gte=now - ARRIVAL_WINDOW)
        .values("customer_id")
        .annotate(n=Count("id"))
        .values_list("customer_id", "n")
    )
    window_s = ARRIVAL_WINDOW.total_seconds()
    loads: dict[int, list[tuple[Customer, CustomerLoad]]] = defaultdict(list)
    for customer in Customer.objects.order_by("name"):
        entry = backlog.get(customer.id) or {"n": 0, "oldest": None}
        oldest = entry["oldest"]
        load = CustomerLoad(
            name=customer.name,
            backlog=entry["n"],
            lag_s=max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
            arrivals_per_s=arrived.get(customer.id, 0) / window_s,
            warn_lag_s=customer.warn_lag_s,
        )
        loads[customer.cluster_id].append((customer, load))
    return loads


def host_loads(*, now: datetime) -> dict[int, HostLoad]:
    """Live hosts with their CPU over the last minute and their sessions/s."""
    hosts = PoolHost.objects.filter(stopped=False, seen_at__gte=_fresh_since(now))
    cpu = {
        r["host_id"]: r
        for r in HostSample.objects.filter(at__gte=_bucket(now - CPU_WINDOW))
        .values("host_id")
        .annotate(total=Sum("cpu_total"), n=Sum("readings"))
    }
    done = dict(
        ClusterHeartbeat.objects.filter(seen_at__gte=_fresh_since(now))
        .values("host_id")
        .annotate(n=Sum("processed_per_min"))
        .values_list("host_id", "n")
    )
    loads = {}
    for host in hosts:
        entry = cpu.get(host.id)
        percent = entry["total"] / entry["n"] if entry and entry["n"] else host.cpu_percent
        loads[host.id] = HostLoad(host.name, host.cpu_count, percent, (done.get(host.id) or 0) / 60)
    return loads


def cluster_samples(*, now: datetime) -> dict[int, list[SampleFigures]]:
    rows = ClusterSample.objects.filter(at__gte=now - COST_WINDOW).order_by("cluster_id", "at")
    by_cluster: dict[int, list[ClusterSample]] = defaultdict(list)
    for row in rows:
        by_cluster[row.cluster_id].append(row)
    figures: dict[int, list[SampleFigures]] = {}
    for cluster_id, items in by_cluster.items():
        figures[cluster_id] = [
            SampleFigures(cur.live_workers, cur.processed, prev.ready, cur.ready)
            for prev, cur in zip(items, items[1:], strict=False)
            # Consecutive buckets only: a gap (no runpool) says nothing about waiting.
            if (cur.at - prev.at).total_seconds() <= SAMPLE_S
        ]
    return figures


def processing_times(*, now: datetime) -> dict[int, list[float]]:
    """processing_ms of the sessions each cluster finished in COST_WINDOW (newest first,
    at most COST_ROWS in all: the mean and p95 need no more)."""
    rows = (
        Session.objects.filter(processed_at__gte=now - COST_WINDOW, processing_ms__isnull=False)
        .order_by("-processed_at")
        .values_list("dispatched_cluster_id", "processing_ms")[:COST_ROWS]
    )
    times: dict[int, list[float]] = defaultdict(list)
    for cluster_id, ms in rows:
        times[cluster_id].append(ms)
    return times


@dataclass
class ClusterCapacity:
    cluster: WorkerCluster
    figures: ClusterFigures
    cost: Cost
    advice: Advice
    autoscale: ClusterAutoscale
    customers: list[tuple[Customer, CustomerLoad]] = field(default_factory=list)


def cluster_capacities(
    *, now: datetime, within_s: float = ADVISOR_WITHIN_S, timings: bool = True
) -> list[ClusterCapacity]:
    """Figures, measured cost, advice and autoscale settings of every cluster."""
    loads = customer_loads(now=now)
    hosts = host_loads(now=now)
    samples = cluster_samples(now=now)
    times = processing_times(now=now) if timings else {}
    running: dict[int, set[int]] = defaultdict(set)
    for hb in ClusterHeartbeat.objects.filter(seen_at__gte=_fresh_since(now)):
        if hb.host_id in hosts:
            running[hb.cluster_id].add(hb.host_id)
    autoscales = {a.cluster_id: a for a in ClusterAutoscale.objects.all()}
    capped = getattr(settings, "AUTOSCALE_CPU_CAP", True)
    result = []
    for cluster in WorkerCluster.objects.all():
        cost = cost_figures(
            processing_ms=times.get(cluster.id, []), samples=samples.get(cluster.id, [])
        )
        on = [hosts[h] for h in sorted(running[cluster.id])]
        rate = cost.per_worker_per_s
        figures = ClusterFigures(
            name=cluster.name,
            desired=cluster.desired_workers,
            hosts=len(on),
            paused=cluster.paused,
            rate_per_worker=rate,
            cpu_room=cpu_room(hosts=on, rate_per_worker=rate) if capped else None,
            max_workers=settings.POOL_MAX_WORKERS,
            customers=tuple(load for _, load in loads.get(cluster.id, [])),
        )
        result.append(
            ClusterCapacity(
                cluster=cluster,
                figures=figures,
                cost=cost,
                advice=advise(figures=figures, within_s=within_s),
                autoscale=autoscales.get(cluster.id) or ClusterAutoscale(cluster=cluster),
                customers=loads.get(cluster.id, []),
            )
        )
    return result


@dataclass
class HostCapacity:
    host: PoolHost
    cpu_percent: float  # last minute
    memory_percent: float
    chart: str


@dataclass
class CapacityPage:
    clusters: list[ClusterCapacity]
    hosts: list[HostCapacity]
    within_s: float


def capacity_page(*, now: datetime, within_s: float = ADVISOR_WITHIN_S) -> CapacityPage:
    """Context of templates/pool/_capacity.html: `{"capacity": capacity_page(now=...)}`."""
    return CapacityPage(
        clusters=cluster_capacities(now=now, within_s=within_s),
        hosts=host_capacities(now=now),
        within_s=within_s,
    )


def host_capacities(*, now: datetime) -> list[HostCapacity]:
    from onboarding.charts import Series, line_chart  # late: pool does not need charts

    samples: dict[int, list[HostSample]] = defaultdict(list)
    for s in HostSample.objects.filter(at__gte=now - HOST_CHART).order_by("host_id", "at"):
        samples[s.host_id].append(s)
    rows = []
    for host in PoolHost.objects.filter(seen_at__gte=now - HOST_CHART).order_by("stopped", "name"):
        points = samples.get(host.id, [])
        recent = [s for s in points if s.at >= _bucket(now - CPU_WINDOW)]
        readings = sum(s.readings for s in recent)
        chart = line_chart(
            [
                Series("CPU %", [(s.at, s.cpu_percent) for s in points]),
                Series("memory %", [(s.at, s.memory_percent) for s in points], "#12b76a"),
            ],
            title=f"{host.name}, last hour",
            fmt=lambda v: f"{v:.0f}%",
            width=460,
            height=120,
        )
        rows.append(
            HostCapacity(
                host=host,
                cpu_percent=sum(s.cpu_total for s in recent) / readings
                if readings
                else host.cpu_percent,
                memory_percent=host.memory_percent,
                chart=chart,
            )
        )
    return rows


def customer_advice(
    *, customer: Customer, now: datetime, within_s: float = ADVISOR_WITHIN_S
) -> Advice | None:
    """The advisor's sentence for a customer's page, when that customer is lagging."""
    for capacity in cluster_capacities(now=now, within_s=within_s, timings=False):
        if capacity.cluster.pk != customer.cluster_id:
            continue
        load = next((ld for c, ld in capacity.customers if c.pk == customer.pk), None)
        if load is None or not load.backlog or load.lag_s < load.warn_lag_s:
            return None
        return advise(figures=capacity.figures, within_s=within_s, focus=customer.name)
    return None


# --- Services ---------------------------------------------------------------------


def host_sample_record(
    *, host: PoolHost, now: datetime, cpu_percent: float, memory_percent: float
) -> None:
    """Add one heartbeat's readings to the host's current bucket (only this host writes
    its rows, so update-then-create cannot race with another host)."""
    bucket = _bucket(now)
    updated = HostSample.objects.filter(host=host, at=bucket).update(
        readings=F("readings") + 1,
        cpu_total=F("cpu_total") + cpu_percent,
        memory_total=F("memory_total") + memory_percent,
    )
    if updated:
        return
    HostSample.objects.create(
        host=host, at=bucket, readings=1, cpu_total=cpu_percent, memory_total=memory_percent
    )
    HostSample.objects.filter(host=host, at__lt=now - SAMPLE_RETENTION).delete()


def cluster_samples_record(*, now: datetime) -> int:
    """One ClusterSample per cluster per SAMPLE_S bucket: sessions finished in the bucket
    that just ended, live workers, and sessions waiting now. Several hosts may call this:
    the first row of a bucket wins."""
    end = _bucket(now)
    if ClusterSample.objects.filter(at=end).exists():
        return 0
    done = dict(
        Session.objects.filter(
            processed_at__gte=end - timedelta(seconds=SAMPLE_S), processed_at__lt=end
        )
        .values("dispatched_cluster_id")
        .annotate(n=Count("id"))
        .values_list("dispatched_cluster_id", "n")
    )
    ready = dict(
        Session.objects.filter(state=State.READY)
        .values("customer__cluster_id")
        .annotate(n=Count("id"))
        .values_list("customer__cluster_id", "n")
    )
    live = dict(
        ClusterHeartbeat.objects.filter(seen_at__gte=_fresh_since(now), host__stopped=False)
        .values("cluster_id")
        .annotate(n=Sum("live_workers"))
        .values_list("cluster_id", "n")
    )
    rows = [
        ClusterSample(
            cluster_id=cid,
            at=end,
            live_workers=live.get(cid) or 0,
            processed=done.get(cid, 0),
            ready=ready.get(cid, 0),
        )
        for cid in WorkerCluster.objects.values_list("id", flat=True)
    ]
    ClusterSample.objects.bulk_create(rows, ignore_conflicts=True)
    ClusterSample.objects.filter(at__lt=now - SAMPLE_RETENTION).delete()
    return len(rows)
