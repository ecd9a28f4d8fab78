"""In Chromium: sessions ingested through the API show up on the open overview, live."""

from __future__ import annotations

import http.client
import json
import math
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from django.utils import timezone

from onboarding.services import customer_create
from pool.clusters import cluster_create, cluster_resize, customer_move, customer_set_weight
from pool.models import ClusterHeartbeat, LagSample, PoolHost, Session, State, WorkerCluster
from tests.conftest import payload_body, screenshot

pytestmark = [pytest.mark.browser]

PAGES = ["/", "/pricing", "/checkout", "/search?q=shoes", "/account/settings", "/blog/launch"]


def add_sessions(
    customer,
    n: int,
    *,
    state: str,
    ready_ago_s: tuple[float, float],
    processed_ago_s: tuple[float, float] | None = None,
    cluster: WorkerCluster | None = None,
) -> None:
    """n sessions whose ready_at (and processed_at) are spread evenly over the ranges."""
    now = timezone.now()

    def spread(bounds: tuple[float, float], i: int) -> datetime:
        oldest, newest = bounds
        return now - timedelta(seconds=oldest + (newest - oldest) * i / max(n - 1, 1))

    sessions = []
    for i in range(n):
        ready_at = spread(ready_ago_s, i)
        done = processed_ago_s is not None
        length_ms = 30_000 + (i * 7919) % 600_000
        sessions.append(
            Session(
                customer=customer,
                external_id=f"{state}-{i:05d}",
                state=state,
                created_at=ready_at - timedelta(seconds=length_ms / 1000 + 30),
                last_payload_at=ready_at,
                payload_count=1 + i % 9,
                ready_at=ready_at,
                queued_at=ready_at if state != State.READY else None,
                dispatched_cluster=cluster if done or state != State.READY else None,
                worker_host="pool-a" if done else "",
                processed_at=spread(processed_ago_s, i) if done else None,
                processing_ms=40.0 + i % 90 if done else None,
                length_ms=length_ms if done else None,
                active_ms=int(length_ms * (0.35 + (i % 50) / 100)) if done else None,
                click_count=i % 37 if done else None,
                rage_click_count=1 if done and i % 23 == 0 else 0 if done else None,
                error_count=i % 4 if done and i % 5 == 0 else 0 if done else None,
                landing_page=f"https://{customer.slug}.example{PAGES[i % len(PAGES)]}"
                if done
                else "",
            )
        )
    Session.objects.bulk_create(sessions, batch_size=500)


def add_lag_history(customer, now: datetime, lag_at, rate: float = 30.0) -> None:
    """One raw LagSample per 15 s over the last hour; lag_at(minutes_ago) -> (lag_s, backlog).
    Throughput wobbles around `rate`; arrivals outrun it while the backlog grows."""
    epoch = int(now.timestamp())
    newest = epoch - epoch % LagSample.RAW
    samples = []
    for k in range(240):
        at = datetime.fromtimestamp(newest - k * LagSample.RAW, tz=UTC)
        lag_s, backlog = lag_at(k * LagSample.RAW / 60)
        growing = lag_s > lag_at((k + 1) * LagSample.RAW / 60)[0]
        noise = math.sin(k * 12.9898) * 0.08 + math.sin(k / 11) * 0.05
        processed = rate * (1 + noise)
        arrivals = processed * (1.2 if growing else 0.97) + rate * 0.04 * math.cos(k * 7.31)
        samples.append(
            LagSample(
                customer=customer,
                at=at,
                resolution_s=LagSample.RAW,
                backlog=max(0, int(backlog)),
                lag_s=max(0.0, lag_s),
                processed_per_min=max(0.0, processed),
                arrivals_per_min=max(0.0, arrivals),
            )
        )
    LagSample.objects.bulk_create(samples)


def seed_a_busy_pool(admin) -> None:
    """Customers in every state, an hour of lag history and two live hosts."""
    now = timezone.now()
    shared = WorkerCluster.objects.get(name="shared")
    cluster_resize(cluster=shared, workers=8, by=admin)
    globex = customer_create(name="Globex", large=True)[0]
    big = cluster_create(name="dedicated-globex", workers=4, by=admin)
    customer_move(customer=globex, cluster=big, by=admin)
    cluster_resize(cluster=big, workers=6, by=admin)
    initech = customer_create(name="Initech")[0]
    customer_set_weight(customer=initech, weight=2, by=admin)
    umbrella = customer_create(name="Umbrella Health")[0]
    hooli = customer_create(name="Hooli")[0]
    stark = customer_create(name="Stark Industries")[0]

    # Globex fell behind 48 minutes ago and is not catching up: CRITICAL.
    add_sessions(globex, 1800, state=State.READY, ready_ago_s=(2880, 5))
    add_sessions(globex, 6, state=State.PROCESSING, ready_ago_s=(2900, 2890), cluster=big)
    add_sessions(globex, 150, state=State.PROCESSED, ready_ago_s=(3300, 2920), processed_ago_s=(290, 2), cluster=big)  # fmt: skip
    add_lag_history(globex, now, lambda m: (max(0, (48 - m) * 60), max(0, (48 - m) * 37)), 30)
    # Initech's backlog is seven minutes old: WARN, but catching up.
    add_sessions(initech, 240, state=State.READY, ready_ago_s=(420, 3))
    add_sessions(initech, 400, state=State.PROCESSED, ready_ago_s=(900, 400), processed_ago_s=(299, 1), cluster=shared)  # fmt: skip
    add_lag_history(initech, now, lambda m: (60 + 360 * math.exp(-(((m - 8) / 9) ** 2)), 40 + 200 * math.exp(-(((m - 8) / 9) ** 2))), 78)  # fmt: skip
    # Umbrella and Stark keep up; Hooli is idle after a spike half an hour ago.
    add_sessions(umbrella, 12, state=State.QUEUED, ready_ago_s=(25, 2), cluster=shared)
    add_sessions(umbrella, 300, state=State.PROCESSED, ready_ago_s=(600, 30), processed_ago_s=(298, 3), cluster=shared)  # fmt: skip
    add_lag_history(
        umbrella, now, lambda m: (20 + 12 * math.sin(m / 4), 10 + 5 * math.sin(m / 3)), 59
    )
    add_sessions(stark, 200, state=State.PROCESSED, ready_ago_s=(700, 20), processed_ago_s=(297, 4), cluster=shared)  # fmt: skip
    add_lag_history(stark, now, lambda m: (8 + 6 * abs(math.sin(m / 6)), 4), 39)
    add_sessions(hooli, 50, state=State.PROCESSED, ready_ago_s=(3000, 1500), processed_ago_s=(2900, 1400), cluster=shared)  # fmt: skip
    add_lag_history(hooli, now, lambda m: (300 * math.exp(-(((m - 30) / 4) ** 2)), 0), 2)

    for name, pid, cpu in (("pool-a", 4127, 71.0), ("pool-b", 3988, 64.0)):
        host = PoolHost.objects.create(
            name=name,
            pid=pid,
            started_at=now - timedelta(hours=5),
            cpu_count=8,
            cpu_percent=cpu,
            memory_percent=38.0,
            rss_bytes=1_900_000_000,
        )
        ClusterHeartbeat.objects.create(host=host, cluster=shared, applied_workers=8, live_workers=8, busy_workers=6, processed_per_min=190)  # fmt: skip
        ClusterHeartbeat.objects.create(host=host, cluster=big, applied_workers=6, live_workers=6, busy_workers=6, processed_per_min=16)  # fmt: skip


def refresh_heartbeats() -> None:
    now = timezone.now()
    PoolHost.objects.update(seen_at=now)
    ClusterHeartbeat.objects.update(seen_at=now)


def post_final_payload(base_url: str, key: str, session_id: str) -> int:
    url = urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.request(
            "POST",
            f"/api/v1/sessions/{session_id}/payloads",
            body=json.dumps(payload_body(0, final=True)),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        reply = conn.getresponse()
        reply.read()
        return reply.status
    finally:
        conn.close()


def test_the_backlog_of_a_customer_grows_on_the_open_overview_without_a_reload(
    transactional_db, live_server, login_page, ops_user, admin_user, customer_and_key
):
    from playwright.sync_api import expect

    acme, key = customer_and_key
    seed_a_busy_pool(admin_user)
    add_sessions(acme, 3, state=State.READY, ready_ago_s=(40, 20))
    add_sessions(acme, 120, state=State.PROCESSED, ready_ago_s=(500, 60), processed_ago_s=(290, 5), cluster=acme.cluster)  # fmt: skip
    add_lag_history(acme, timezone.now(), lambda m: (15 + 10 * math.sin(m / 5), 3), 24)

    page = login_page(ops_user)
    page.set_default_timeout(10_000)
    backlog = page.locator(f"tr[data-customer={acme.slug}] td.backlog")
    expect(backlog).to_have_text("3")
    expect(page.locator("tr[data-customer=globex] .badge")).to_have_text("CRITICAL")
    expect(page.locator("tr[data-customer=initech] .badge")).to_have_text("WARN")
    page.evaluate("window.notReloaded = true")  # gone if anything reloaded the page

    statuses = [post_final_payload(live_server.url, key, f"live-{i}") for i in range(5)]
    assert statuses == [202] * 5
    assert Session.objects.filter(customer=acme, state=State.READY).count() == 8

    # htmx polls every 3 s: the cell changes within a few polls, in place.
    expect(backlog).to_have_text("8", timeout=10_000)
    assert page.evaluate("window.notReloaded") is True
    expect(page.locator("#total-backlog")).to_have_text(str(1800 + 6 + 240 + 12 + 8))
    screenshot(page, "overview")

    page.locator("tr[data-customer=globex]").get_by_role("link", name="Globex", exact=True).click()
    page.wait_for_url(f"{live_server.url}/customers/globex/")
    expect(page.locator("h1 .badge")).to_have_text("CRITICAL")
    expect(page.locator(".chart svg").first).to_be_visible()
    screenshot(page, "customer")

    refresh_heartbeats()
    page.goto(f"{live_server.url}/clusters/")
    expect(page.locator("section[data-cluster=shared] td.host-live").first).to_have_text("8")
    screenshot(page, "clusters")
