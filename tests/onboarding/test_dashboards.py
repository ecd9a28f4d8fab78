"""The ops pages: overview, customer page, clusters page, machine-readable views."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from onboarding.lag import MIN_RATE_WINDOW_S, Status, lag_rows, lag_samples_record
from onboarding.services import customer_create
from pool.models import LagSample, PoolHost, Session, State
from pool.worker import session_process
from tests.conftest import payload_body, post_payload


def make_sessions(customer, n: int, *, state: str, ready_ago_s: float = 0, processed_ago_s=None):
    now = timezone.now()
    Session.objects.bulk_create(
        [
            Session(
                customer=customer,
                external_id=f"{state}-{i}-{customer.slug}-{ready_ago_s}",
                state=state,
                ready_at=now - timedelta(seconds=ready_ago_s),
                processed_at=None
                if processed_ago_s is None
                else now - timedelta(seconds=processed_ago_s),
            )
            for i in range(n)
        ]
    )


@pytest.fixture
def acme(db):
    return customer_create(name="Acme Corp")[0]


def test_lag_is_the_age_of_the_oldest_unprocessed_session(acme):
    make_sessions(acme, 3, state=State.READY, ready_ago_s=120)
    make_sessions(acme, 2, state=State.PROCESSING, ready_ago_s=30)
    make_sessions(acme, 5, state=State.PROCESSED, ready_ago_s=900, processed_ago_s=60)
    row = lag_rows()[0]
    assert row.backlog == 5
    assert 119 <= row.lag_s <= 125
    assert row.processed_per_min == pytest.approx(1.0)  # 5 in the last 5 minutes
    assert row.status == Status.OK


def test_status_follows_the_customers_thresholds(acme):
    acme.warn_lag_s, acme.critical_lag_s = 60, 600
    acme.save()
    make_sessions(acme, 1, state=State.READY, ready_ago_s=90)
    make_sessions(acme, 1, state=State.PROCESSED, ready_ago_s=90, processed_ago_s=5)
    assert lag_rows()[0].status == Status.WARN
    make_sessions(acme, 1, state=State.READY, ready_ago_s=700)
    assert lag_rows()[0].status == Status.CRITICAL


def test_a_backlog_without_progress_is_stalled(acme):
    acme.stall_after_s = 300
    acme.save()
    make_sessions(acme, 4, state=State.READY, ready_ago_s=400)
    assert lag_rows()[0].status == Status.STALLED
    assert lag_rows()[0].eta_s is None  # not catching up


def test_eta_uses_the_net_rate(acme):
    make_sessions(acme, 10, state=State.READY, ready_ago_s=10)
    make_sessions(acme, 50, state=State.PROCESSED, ready_ago_s=400, processed_ago_s=30)
    row = lag_rows()[0]
    # The columns are 5-minute averages: 10 processed/min, 2 arrivals/min.
    assert row.processed_per_min == pytest.approx(10) and row.arrivals_per_min == pytest.approx(2)
    # The ETA uses the part of the window with events (the last 30 s): 100 processed/min,
    # 20 arrivals/min → 80/min net → 10 sessions in 7.5 s.
    assert row.eta_s == pytest.approx(10 / 80 * 60, rel=0.02)


def test_eta_early_in_a_catch_up_is_not_diluted_by_an_empty_window(acme):
    # Processing started 2 minutes ago: 240 done (120/min), 500 still waiting.
    make_sessions(acme, 500, state=State.READY, ready_ago_s=900)
    make_sessions(acme, 240, state=State.PROCESSED, ready_ago_s=900, processed_ago_s=120)
    row = lag_rows()[0]
    assert row.processed_per_min == pytest.approx(48)  # 240 over the 5-minute window
    assert row.eta_s == pytest.approx(500 / 120 * 60, rel=0.02)  # not 500 / 48


def test_eta_from_a_few_seconds_of_events_counts_them_over_the_minimum_span(acme):
    # 20 processed in the last 2 s: rates over MIN_RATE_WINDOW_S (10 s), not over 2 s.
    make_sessions(acme, 100, state=State.READY, ready_ago_s=900)
    make_sessions(acme, 20, state=State.PROCESSED, ready_ago_s=900, processed_ago_s=2)
    row = lag_rows()[0]
    assert row.eta_s == pytest.approx(100 / (20 / MIN_RATE_WINDOW_S * 60) * 60, rel=0.02)


def test_the_overview_needs_a_login(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_the_overview_runs_a_fixed_number_of_queries(
    client, ops_user, django_assert_max_num_queries
):
    client.force_login(ops_user)
    for name in ("A1", "B2", "C3"):
        customer_create(name=name)
    client.get("/")  # warm up session and auth caches
    with django_assert_max_num_queries(12) as few:
        client.get("/")
    for name in ("D4", "E5", "F6", "G7"):
        c = customer_create(name=name)[0]
        make_sessions(c, 20, state=State.READY, ready_ago_s=5)
    with django_assert_max_num_queries(len(few.captured_queries)):
        response = client.get("/")
    assert response.status_code == 200
    assert b"G7" in response.content


def test_the_overview_polls_a_fragment_without_the_page(client, ops_user, acme):
    client.force_login(ops_user)
    page = client.get("/")
    assert b'hx-trigger="every 3s' in page.content and b"<html" in page.content
    fragment = client.get("/", headers={"HX-Request": "true"})
    assert fragment.status_code == 200
    assert b"<html" not in fragment.content and b'id="live"' in fragment.content
    assert b"Acme Corp" in fragment.content


def test_the_overview_filters_and_sorts(client, ops_user):
    client.force_login(ops_user)
    big = customer_create(name="Big Co")[0]
    customer_create(name="Small Co")
    make_sessions(big, 30, state=State.READY, ready_ago_s=50)
    body = client.get("/?sort=backlog").content.decode()
    assert body.index("Big Co") < body.index("Small Co")
    body = client.get("/?q=small").content.decode()
    assert "Small Co" in body and "Big Co" not in body


def test_lag_samples_feed_the_sparkline_and_charts(client, ops_user, acme):
    client.force_login(ops_user)
    now = timezone.now()
    make_sessions(acme, 3, state=State.READY, ready_ago_s=60)
    for minutes in range(10, 0, -1):
        lag_samples_record(now=now - timedelta(minutes=minutes))
    assert LagSample.objects.filter(customer=acme).count() == 10
    overview = client.get("/").content.decode()
    assert "<polyline" in overview and "lag over the last hour" in overview
    page = client.get(f"/customers/{acme.slug}/?window=1h").content.decode()
    assert "Lag (age of the oldest unprocessed session)" in page
    assert "<title>" in page and "lag: " in page  # hover values
    for window in ("24h", "7d", "bogus"):
        assert client.get(f"/customers/{acme.slug}/?window={window}").status_code == 200


def test_customer_page_lists_recent_and_failed_sessions(client, admin_user, customer_and_key):
    customer, key = customer_and_key
    assert post_payload(client, key, "good", payload_body(0, final=True)).status_code == 202
    good = Session.objects.get(external_id="good")
    Session.objects.filter(pk=good.pk).update(state=State.QUEUED)
    session_process(session_id=good.pk, host="test")
    Session.objects.create(
        customer=customer, external_id="bad", state=State.FAILED, attempts=5, last_error="boom"
    )
    client.force_login(admin_user)
    page = client.get(f"/customers/{customer.slug}/").content.decode()
    assert "good" in page and "acme.test" in page
    assert "boom" in page and "Retry" in page


def test_only_admins_retry_failed_sessions(client, ops_user, admin_user, acme):
    failed = Session.objects.create(
        customer=acme, external_id="bad", state=State.FAILED, attempts=5
    )
    url = f"/customers/{acme.slug}/sessions/{failed.pk}/retry"
    client.force_login(ops_user)
    assert client.post(url).status_code == 403
    client.force_login(admin_user)
    assert client.post(url).status_code == 302
    failed.refresh_from_db()
    assert failed.state == State.READY and failed.attempts == 0


def test_lag_api_wants_a_login_or_the_token(client, ops_user, acme, settings):
    settings.OPS_API_TOKEN = "s3cret-token"
    assert client.get("/api/v1/lag").status_code == 401
    assert client.get("/api/v1/lag", headers={"Authorization": "Bearer wrong"}).status_code == 401
    reply = client.get("/api/v1/lag", headers={"Authorization": "Bearer s3cret-token"})
    assert reply.status_code == 200
    assert reply.json()["customers"][0]["customer"] == "acme-corp"
    client.force_login(ops_user)
    assert client.get("/api/v1/lag").json()["customers"][0]["status"] == "OK"


def test_metrics_are_prometheus_text(client, ops_user, acme):
    make_sessions(acme, 2, state=State.READY, ready_ago_s=30)
    client.force_login(ops_user)
    text = client.get("/metrics").content.decode()
    assert "# TYPE onramp_customer_backlog gauge" in text
    assert 'onramp_customer_backlog{customer="acme-corp",cluster="shared"} 2' in text
    assert 'onramp_customer_processed_total{customer="acme-corp",cluster="shared"} 0' in text
    assert 'onramp_cluster_desired_workers{cluster="shared"} 2' in text


def test_healthz_wants_a_fresh_pool_heartbeat(client, db):
    reply = client.get("/healthz")
    assert reply.status_code == 503 and "no runpool heartbeat" in reply.json()["pool"]
    PoolHost.objects.create(name="h1")
    assert client.get("/healthz").status_code == 200
    PoolHost.objects.filter(name="h1").update(seen_at=timezone.now() - timedelta(minutes=5))
    assert client.get("/healthz").status_code == 503


def test_samples_roll_up_and_are_pruned(acme):
    from onboarding.lag import lag_samples_rollup

    now = timezone.now()
    LagSample.objects.bulk_create(
        [
            LagSample(
                customer=acme,
                at=now - timedelta(hours=30, seconds=15 * i),
                backlog=i,
                lag_s=i,
                processed_per_min=1,
                arrivals_per_min=1,
            )
            for i in range(40)
        ]
    )
    lag_samples_rollup(now=now)
    assert not LagSample.objects.filter(resolution_s=LagSample.RAW).exists()  # past 26 h
    rollups = LagSample.objects.filter(resolution_s=LagSample.ROLLUP)
    assert rollups.exists() and max(r.lag_s for r in rollups) == 39


def test_healthz_for_a_web_host_checks_only_the_database(client, db):
    assert client.get("/healthz").status_code == 503  # no pool heartbeat
    reply = client.get("/healthz?scope=web")
    assert reply.status_code == 200 and reply.json()["database"] == "ok"
