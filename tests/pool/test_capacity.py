"""Measured cost, CPU headroom and the advisor: arithmetic on controlled figures, the
selectors on controlled rows, and the admin actions behind the advisor's button."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from django.utils import timezone

from onboarding.models import Customer
from onboarding.services import customer_create
from pool.autoscale import autoscale_update
from pool.capacity import (
    SAMPLE_S,
    ClusterFigures,
    CustomerLoad,
    HostLoad,
    SampleFigures,
    about,
    advise,
    cluster_capacities,
    cost_figures,
    cpu_per_worker,
    cpu_room,
    customer_advice,
    host_sample_record,
    rate_needed,
    worker_rate,
    workers_needed,
)
from pool.models import (
    ClusterAutoscale,
    ClusterChange,
    ClusterHeartbeat,
    ClusterSample,
    HostSample,
    PoolHost,
    Session,
    State,
    WorkerCluster,
)

HTMX = {"HX-Request": "true"}

# Acme: 3,600 sessions waiting, 15 minutes behind, 3.5 new per second, warn at 5 minutes.
ACME = CustomerLoad(name="Acme", backlog=3600, lag_s=900, arrivals_per_s=3.5, warn_lag_s=300)
SHARED = ClusterFigures(
    name="shared",
    desired=2,
    hosts=1,
    paused=False,
    rate_per_worker=1.0,
    cpu_room=5,
    max_workers=32,
    customers=(ACME,),
)


# --- Measured cost -----------------------------------------------------------------


def test_a_worker_s_rate_is_measured_only_while_sessions_were_waiting():
    samples = [
        SampleFigures(live_workers=2, processed=40, ready_before=10, ready_after=5),  # busy
        SampleFigures(live_workers=2, processed=60, ready_before=5, ready_after=3),  # busy
        SampleFigures(live_workers=2, processed=4, ready_before=3, ready_after=0),  # ran dry
        SampleFigures(live_workers=2, processed=1, ready_before=0, ready_after=0),  # lull
    ]
    rate, saturated = worker_rate(samples=samples)
    assert saturated
    assert rate == pytest.approx(100 / (2 * 2 * SAMPLE_S))


def test_without_a_busy_bucket_the_rate_is_a_lower_bound():
    samples = [SampleFigures(2, 10, 0, 0), SampleFigures(2, 10, 0, 0)]
    rate, saturated = worker_rate(samples=samples)
    assert not saturated
    assert rate == pytest.approx(20 / (4 * SAMPLE_S))


def test_nothing_processed_measures_nothing():
    assert worker_rate(samples=[SampleFigures(2, 0, 5, 5)]) == (None, False)
    assert worker_rate(samples=[]) == (None, False)


def test_cost_has_the_mean_and_the_95th_percentile_of_processing_times():
    times = [float(ms) for ms in range(1, 101)]  # 1 … 100 ms
    cost = cost_figures(processing_ms=times, samples=[])
    assert cost.sessions == 100
    assert cost.mean_ms == pytest.approx(50.5)
    assert cost.p95_ms == 95
    assert cost.per_worker_per_s is None


# --- CPU headroom ------------------------------------------------------------------


def test_a_worker_costs_the_host_s_cpu_per_session_times_its_rate():
    # 8 cores at 25 %: 2 cores for 4 sessions/s, so 0.5 core-seconds a session.
    host = HostLoad("h1", cpu_count=8, cpu_percent=25, sessions_per_s=4)
    assert cpu_per_worker(host=host, rate_per_worker=1.0) == pytest.approx(0.5)
    # A worker is one process: never more than one core; unmeasured: one core.
    assert cpu_per_worker(host=host, rate_per_worker=10.0) == 1.0
    assert cpu_per_worker(host=replace(host, sessions_per_s=0), rate_per_worker=1.0) == 1.0


def test_cpu_room_is_what_the_fullest_host_can_take_up_to_90_percent():
    idle = HostLoad("idle", cpu_count=8, cpu_percent=25, sessions_per_s=2)  # 1 core/worker
    assert cpu_room(hosts=[idle], rate_per_worker=1.0) == 5  # 8 × 0.65 = 5.2 cores
    busy = HostLoad("busy", cpu_count=2, cpu_percent=80, sessions_per_s=2)  # 0.8 core/worker
    assert cpu_room(hosts=[busy], rate_per_worker=1.0) == 0  # 0.2 core free
    assert cpu_room(hosts=[idle, busy], rate_per_worker=1.0) == 0
    saturated = HostLoad("full", cpu_count=4, cpu_percent=100, sessions_per_s=8)
    assert cpu_room(hosts=[saturated], rate_per_worker=1.0) == 0


# --- Workers needed ----------------------------------------------------------------


def test_the_rate_needed_clears_the_backlog_and_what_arrives_until_lag_is_under_warn():
    # Within 30 min, everything older than 5 min must be done: the 3,600 waiting plus
    # 25 minutes of arrivals, 3,600 + 3.5 × 1,500 = 8,850 sessions in 1,800 s.
    assert rate_needed(loads=[ACME], within_s=1800) == pytest.approx(8850 / 1800)
    # Then keeping up needs the arrivals at 80 % utilisation.
    calm = replace(ACME, backlog=0, lag_s=0)
    assert rate_needed(loads=[calm], within_s=1800) == pytest.approx(3.5 / 0.8)


def test_within_less_than_the_warn_threshold_only_the_oldest_part_must_go():
    # Lag 10 min, warn 5 min, within 2 min: sessions older than 3 min must be done, the
    # oldest 7/10 of the backlog taken as spread evenly over the lag.
    load = CustomerLoad("Acme", backlog=1000, lag_s=600, arrivals_per_s=0, warn_lag_s=300)
    assert rate_needed(loads=[load], within_s=120) == pytest.approx(700 / 120)


def test_workers_needed_rounds_up_and_spreads_over_hosts():
    assert workers_needed(rate=4.9, rate_per_worker=1.0, hosts=1) == 5
    assert workers_needed(rate=5.0, rate_per_worker=1.0, hosts=1) == 5
    assert workers_needed(rate=5.0, rate_per_worker=1.0, hosts=2) == 3
    assert workers_needed(rate=0.0, rate_per_worker=1.0, hosts=1) == 1


# --- The advisor -------------------------------------------------------------------


def test_it_says_how_many_more_workers_clear_the_backlog_and_what_the_cpu_allows():
    advice = advise(figures=SHARED, within_s=1800)
    assert advice.kind == "more"
    assert (advice.current, advice.needed, advice.target) == (2, 5, 5)
    assert advice.eta_s == pytest.approx(2400)  # 3,600 / (5 − 3.5) per second
    assert advice.sentence == (
        "3 more workers on shared would clear Acme's backlog in about 40 minutes; "
        "the hosts have CPU for 5 more."
    )
    assert advice.actionable


def test_with_no_cpu_headroom_it_advises_another_host_and_nothing_to_apply():
    advice = advise(figures=replace(SHARED, cpu_room=0), within_s=1800)
    assert advice.kind == "blocked"
    assert advice.target == 2 and not advice.actionable
    assert "no CPU to spare" in advice.sentence
    assert "add a pool host" in advice.sentence


def test_with_some_headroom_it_applies_what_fits_and_says_what_that_gives():
    advice = advise(figures=replace(SHARED, cpu_room=2), within_s=1800)
    assert advice.kind == "more"
    assert advice.target == 4
    # 4 workers finish 4/s against 3.5/s arriving: 3,600 / 0.5 = 2 hours.
    assert advice.sentence.endswith(
        "the hosts have CPU for 2 more, which would clear it in about 2 hours."
    )


def test_with_no_arrivals_the_backlog_alone_sets_the_workers():
    quiet = replace(ACME, arrivals_per_s=0)
    advice = advise(figures=replace(SHARED, desired=1, customers=(quiet,)), within_s=1800)
    # 3,600 sessions in 30 minutes at 1/s per worker: 2 workers.
    assert (advice.kind, advice.target) == ("more", 2)
    assert advice.eta_s == pytest.approx(1800)
    same = advise(figures=replace(SHARED, customers=(quiet,)), within_s=1800, focus="Acme")
    assert same.kind == "hold" and not same.actionable
    assert (
        same.sentence == "shared's 2 workers are enough: Acme's backlog clears in about 30 minutes."
    )


def test_an_idle_cluster_gets_nothing_to_do():
    empty = replace(ACME, backlog=0, lag_s=0, arrivals_per_s=0)
    advice = advise(figures=replace(SHARED, customers=(empty,)), within_s=1800)
    assert advice.kind == "idle" and not advice.actionable


def test_a_cluster_with_spare_workers_can_give_some_back():
    light = replace(ACME, backlog=0, lag_s=0, arrivals_per_s=0.4)
    advice = advise(figures=replace(SHARED, desired=4, customers=(light,)), within_s=1800)
    assert (advice.kind, advice.target) == ("fewer", 1)
    assert advice.sentence == "shared keeps up; 1 worker would do (now 4)."


def test_it_cannot_advise_without_measurements_a_live_host_or_while_paused():
    assert advise(figures=replace(SHARED, rate_per_worker=None), within_s=1800).kind == "unknown"
    assert advise(figures=replace(SHARED, hosts=0), within_s=1800).kind == "no-host"
    assert advise(figures=replace(SHARED, paused=True), within_s=1800).kind == "paused"


def test_pool_max_workers_caps_the_advice():
    advice = advise(figures=replace(SHARED, max_workers=3, cpu_room=None), within_s=1800)
    assert advice.target == 3
    assert "a limit of 3 workers for 1 more" in advice.sentence


def test_on_several_hosts_it_speaks_of_workers_per_host():
    advice = advise(figures=replace(SHARED, hosts=2, cpu_room=None), within_s=1800, focus="Acme")
    assert advice.target == 3  # 5 workers in all, over 2 hosts
    assert advice.sentence.startswith("1 more worker per host on shared would clear Acme's")


def test_durations_read_as_a_person_says_them():
    assert about(30) == "under a minute"
    assert about(2400) == "about 40 minutes"
    assert about(7 * 60) == "about 7 minutes"
    assert about(5 * 3600) == "about 5 hours"
    assert about(None).startswith("never")


# --- Selectors on rows ---------------------------------------------------------------


@pytest.fixture
def acme(db) -> Customer:
    return customer_create(name="Acme Corp")[0]


def live_host(*, now, cluster: WorkerCluster, workers: int, cpu: float = 10.0) -> PoolHost:
    host = PoolHost.objects.create(
        name="h1", seen_at=now, cpu_count=4, cpu_percent=cpu, memory_percent=40
    )
    ClusterHeartbeat.objects.create(
        host=host, cluster=cluster, applied_workers=workers, live_workers=workers, seen_at=now
    )
    return host


def backlog(customer: Customer, *, n: int, ready_at, prefix: str = "b") -> None:
    Session.objects.bulk_create(
        Session(customer=customer, external_id=f"{prefix}{i}", state=State.READY, ready_at=ready_at)
        for i in range(n)
    )


def test_the_selectors_measure_cost_from_processed_sessions_and_samples(acme):
    now = timezone.now()
    cluster = acme.cluster
    live_host(now=now, cluster=cluster, workers=2)
    Session.objects.bulk_create(
        Session(
            customer=acme,
            external_id=f"done{i}",
            state=State.PROCESSED,
            ready_at=now - timedelta(minutes=2),
            processed_at=now - timedelta(seconds=30),
            processing_ms=float(i),
            dispatched_cluster=cluster,
        )
        for i in range(1, 21)
    )
    for k in range(3):  # three busy buckets: 2 workers finished 20 sessions in each
        ClusterSample.objects.create(
            cluster=cluster,
            at=now - timedelta(seconds=SAMPLE_S * (3 - k)),
            live_workers=2,
            processed=20,
            ready=7,
        )
    (row,) = cluster_capacities(now=now)
    assert row.cost.sessions == 20
    assert row.cost.mean_ms == pytest.approx(10.5)
    assert row.cost.p95_ms == 19
    assert row.cost.saturated
    assert row.cost.per_worker_per_s == pytest.approx(1.0)  # 40 sessions / (2 × 2 × 10 s)
    assert row.figures.hosts == 1


def test_a_lagging_customer_s_page_gets_a_sentence_and_others_none(acme):
    now = timezone.now()
    live_host(now=now, cluster=acme.cluster, workers=1)
    for k in range(2):
        ClusterSample.objects.create(
            cluster=acme.cluster, at=now - timedelta(seconds=10 * (2 - k)), live_workers=1,
            processed=10, ready=100,
        )  # fmt: skip
    assert customer_advice(customer=acme, now=now) is None  # nothing waiting
    # 3,600 waiting for 10 minutes: 2 workers at 1/s clear them in the 30 minutes.
    backlog(acme, n=3600, ready_at=now - timedelta(minutes=10))
    assert customer_advice(customer=acme, now=now).kind == "hold"
    WorkerCluster.objects.filter(pk=acme.cluster_id).update(desired_workers=1)
    advice = customer_advice(customer=acme, now=now)
    assert advice is not None
    assert advice.kind == "more"
    assert "Acme Corp's backlog" in advice.sentence


def test_host_samples_keep_the_mean_of_every_heartbeat_in_a_bucket(db):
    host = PoolHost.objects.create(name="h1")
    start = timezone.now().replace(microsecond=0)
    start -= timedelta(seconds=start.second % SAMPLE_S)
    for offset, cpu in [(0, 20.0), (2, 40.0), (4, 90.0), (SAMPLE_S, 10.0)]:
        host_sample_record(
            host=host, now=start + timedelta(seconds=offset), cpu_percent=cpu, memory_percent=50
        )
    first, second = HostSample.objects.order_by("at")
    assert first.readings == 3 and first.cpu_percent == pytest.approx(50)
    assert second.cpu_percent == pytest.approx(10)
    host_sample_record(host=host, now=start + timedelta(hours=3), cpu_percent=5, memory_percent=5)
    assert HostSample.objects.count() == 1  # older than two hours: pruned


# --- Pages and buttons ---------------------------------------------------------------


@pytest.fixture
def lagging(acme):
    """Acme 10 minutes behind on a 1-worker cluster that finishes 1 session/s."""
    now = timezone.now()
    cluster = acme.cluster
    WorkerCluster.objects.filter(pk=cluster.pk).update(desired_workers=1)
    live_host(now=now, cluster=cluster, workers=1)
    for k in range(2):
        ClusterSample.objects.create(
            cluster=cluster, at=now - timedelta(seconds=10 * (2 - k)), live_workers=1,
            processed=10, ready=100,
        )  # fmt: skip
    backlog(acme, n=3600, ready_at=now - timedelta(minutes=10))
    return acme


def test_ops_see_the_advice_without_any_button(client, ops_user, lagging):
    client.force_login(ops_user)
    body = client.get("/clusters/capacity", headers=HTMX).content.decode()
    assert 'data-advice="more"' in body
    assert "on shared would clear Acme Corp&#x27;s backlog" in body
    assert "/advice/apply" not in body
    assert "/clusters/shared/autoscale" not in body
    page = client.get("/customers/acme-corp/advice").content.decode()
    assert "Acme Corp&#x27;s backlog" in page and "/advice/apply" not in page


def test_ops_cannot_apply_advice_nor_change_autoscale(client, ops_user, lagging):
    client.force_login(ops_user)
    assert client.post("/clusters/shared/advice/apply", {"workers": 3}).status_code == 403
    assert client.post("/clusters/shared/autoscale", {"enabled": "on"}).status_code == 403
    assert WorkerCluster.objects.get(name="shared").desired_workers == 1


def test_anonymous_users_are_sent_to_log_in(client, lagging):
    for method, path in [
        ("get", "/clusters/capacity"),
        ("get", "/customers/acme-corp/advice"),
        ("post", "/clusters/shared/advice/apply"),
        ("post", "/clusters/shared/autoscale"),
    ]:
        response = getattr(client, method)(path, {"workers": 3})
        assert response.status_code == 302
        assert response["Location"].startswith("/login/")


def test_an_admin_applies_the_advice_in_one_click_through_the_audited_resize(
    client, admin_user, lagging
):
    client.force_login(admin_user)
    body = client.get("/customers/acme-corp/advice").content.decode()
    assert 'name="workers" value="' in body
    target = int(body.split('name="workers" value="')[1].split('"')[0])
    assert target > 1
    response = client.post(
        "/clusters/shared/advice/apply",
        {"workers": target, "customer": "acme-corp"},
        headers=HTMX,
    )
    assert response.status_code == 200
    assert 'id="advice"' in response.content.decode()
    assert WorkerCluster.objects.get(name="shared").desired_workers == target
    change = ClusterChange.objects.get(field="desired_workers")
    assert (change.actor, change.before, change.after) == ("adam-admin", "1", str(target))


def test_applying_without_htmx_redirects_back_with_a_message(client, admin_user, lagging):
    client.force_login(admin_user)
    response = client.post(
        "/clusters/shared/advice/apply", {"workers": 2, "next": "/customers/acme-corp/"}
    )
    assert response.status_code == 302 and response["Location"] == "/customers/acme-corp/"
    evil = client.post(
        "/clusters/shared/advice/apply", {"workers": 2, "next": "https://evil.test/"}
    )
    assert evil["Location"] == "/clusters/"


def test_an_impossible_number_of_workers_is_refused(client, admin_user, lagging, settings):
    settings.POOL_MAX_WORKERS = 8
    client.force_login(admin_user)
    for workers in (0, 9, "many"):
        response = client.post("/clusters/shared/advice/apply", {"workers": workers}, headers=HTMX)
        assert response.status_code == 400
    assert WorkerCluster.objects.get(name="shared").desired_workers == 1


def test_an_admin_turns_autoscale_on_and_it_is_audited(client, admin_user, lagging):
    client.force_login(admin_user)
    response = client.post(
        "/clusters/shared/autoscale",
        {"enabled": "on", "min_workers": 1, "max_workers": 4, "target_lag_s": 30},
        headers=HTMX,
    )
    assert response.status_code == 200
    assert "autoscale on" in response.content.decode()
    auto = ClusterAutoscale.objects.get(cluster__name="shared")
    assert (auto.enabled, auto.min_workers, auto.max_workers, auto.target_lag_s) == (
        True,
        1,
        4,
        30,
    )
    change = ClusterChange.objects.get(field="autoscale")
    assert change.actor == "adam-admin"
    assert change.after == "on, 1–4 workers, target 30s"


def test_autoscale_settings_are_validated(client, admin_user, lagging, settings):
    settings.POOL_MAX_WORKERS = 8
    client.force_login(admin_user)
    for data in [
        {"enabled": "on", "min_workers": 3, "max_workers": 2, "target_lag_s": 30},
        {"enabled": "on", "min_workers": 0, "max_workers": 2, "target_lag_s": 30},
        {"enabled": "on", "min_workers": 1, "max_workers": 9, "target_lag_s": 30},
        {"enabled": "on", "min_workers": 1, "max_workers": 2, "target_lag_s": 0},
    ]:
        response = client.post("/clusters/shared/autoscale", data, headers=HTMX)
        assert response.status_code == 400, data
    assert not ClusterAutoscale.objects.filter(enabled=True).exists()
    with pytest.raises(ValueError):
        autoscale_update(
            cluster=lagging.cluster, enabled=True, min_workers=2, max_workers=1, target_lag_s=5
        )


def test_the_fragment_shows_hosts_with_their_cpu_and_a_chart(client, ops_user, lagging):
    host = PoolHost.objects.get(name="h1")
    now = timezone.now()
    for minutes in range(50, 0, -10):
        host_sample_record(
            host=host, now=now - timedelta(minutes=minutes), cpu_percent=30, memory_percent=60
        )
    host_sample_record(host=host, now=now, cpu_percent=70, memory_percent=60)
    client.force_login(ops_user)
    body = client.get("/clusters/capacity").content.decode()
    assert 'data-host="h1"' in body
    assert "<svg" in body and "h1, last hour" in body
    assert '<td class="num host-cpu">70%</td>' in body  # the last minute's mean


def test_the_clusters_page_and_a_lagging_customer_s_page_show_the_advisor(
    client, admin_user, lagging
):
    client.force_login(admin_user)
    page = client.get("/clusters/").content.decode()
    assert 'id="capacity"' in page and 'data-advice="more"' in page
    assert "/clusters/shared/advice/apply" in page
    customer = client.get("/customers/acme-corp/").content.decode()
    assert 'id="advice"' in customer and 'data-advice="more"' in customer
    Session.objects.filter(customer=lagging).delete()  # caught up: the advice goes
    assert 'data-advice="' not in client.get("/customers/acme-corp/advice").content.decode()
