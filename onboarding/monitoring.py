"""Machine-readable views: /api/v1/lag (JSON), /metrics (Prometheus), /healthz."""

from __future__ import annotations

import hmac
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone

from onboarding.lag import STATUS_RANK, lag_rows
from pool.models import PoolHost
from pool.selectors import cluster_rows


def _token_ok(request: HttpRequest) -> bool:
    token = settings.OPS_API_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


def _allowed(request: HttpRequest) -> bool:
    return request.user.is_authenticated or _token_ok(request)


def _unauthorized() -> JsonResponse:
    response = JsonResponse(
        {"error": "log in, or send 'Authorization: Bearer <OPS_API_TOKEN>'"}, status=401
    )
    response["WWW-Authenticate"] = 'Bearer realm="onramp"'
    return response


def lag_api(request: HttpRequest) -> JsonResponse:
    if not _allowed(request):
        return _unauthorized()
    now = timezone.now()
    rows = sorted(lag_rows(now=now), key=lambda r: (-STATUS_RANK[r.status], -r.lag_s))
    return JsonResponse({"at": now.isoformat(), "customers": [row.as_dict() for row in rows]})


def metrics(request: HttpRequest) -> HttpResponse:
    if not (_allowed(request) or settings.METRICS_PUBLIC):
        return _unauthorized()
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[dict, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{rendered}}} {value:g}")

    rows = lag_rows()
    cust = [({"customer": r.customer.slug, "cluster": r.customer.cluster.name}, r) for r in rows]
    family(
        "onramp_customer_backlog",
        "gauge",
        "Sessions ready, queued or processing.",
        [(labels, r.backlog) for labels, r in cust],
    )
    family(
        "onramp_customer_lag_seconds",
        "gauge",
        "Age of the oldest unprocessed session.",
        [(labels, r.lag_s) for labels, r in cust],
    )
    family(
        "onramp_customer_processed_total",
        "counter",
        "Sessions processed.",
        [(labels, r.customer.processed_total) for labels, r in cust],
    )
    family(
        "onramp_customer_status",
        "gauge",
        "0 OK, 1 WARN, 2 CRITICAL, 3 STALLED.",
        [(labels, STATUS_RANK[r.status]) for labels, r in cust],
    )
    clusters = cluster_rows()
    family(
        "onramp_cluster_desired_workers",
        "gauge",
        "Desired workers per host.",
        [({"cluster": c.cluster.name}, c.cluster.desired_workers) for c in clusters],
    )
    family(
        "onramp_cluster_live_workers",
        "gauge",
        "Live worker processes on fresh hosts.",
        [({"cluster": c.cluster.name}, c.live_workers) for c in clusters],
    )
    family(
        "onramp_cluster_busy_workers",
        "gauge",
        "Workers processing a session now.",
        [({"cluster": c.cluster.name}, c.busy_workers) for c in clusters],
    )
    family(
        "onramp_cluster_paused",
        "gauge",
        "1 when paused.",
        [({"cluster": c.cluster.name}, int(c.cluster.paused)) for c in clusters],
    )
    return HttpResponse("\n".join(lines) + "\n", content_type="text/plain; version=0.0.4")


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def healthz(request: HttpRequest) -> JsonResponse:
    """Unauthenticated on purpose (load balancers, Docker HEALTHCHECK); says nothing secret.

    `?scope=web` checks only what a web host needs (the database), so a load balancer does
    not pull every web host (and with them ingest) out of rotation when the pool is down.
    """
    checks: dict[str, object] = {}
    healthy = True
    web_only = request.GET.get("scope") == "web"
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
        if web_only:
            return JsonResponse({"status": "ok", "scope": "web", **checks})
        fresh = timezone.now() - timedelta(seconds=settings.POOL_STALE_AFTER_S)
        live = PoolHost.objects.filter(stopped=False, seen_at__gte=fresh).count()
        checks["pool_hosts_fresh"] = live
        if not live:
            healthy = False
            checks["pool"] = f"no runpool heartbeat in the last {settings.POOL_STALE_AFTER_S}s"
    except DatabaseError as exc:
        healthy = False
        checks["database"] = f"unreachable: {exc.__class__.__name__}"
    response = JsonResponse(
        {"status": "ok" if healthy else "unhealthy", **checks}, status=200 if healthy else 503
    )
    if not healthy:
        response["Retry-After"] = "5"
    return response
