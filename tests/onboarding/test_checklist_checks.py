"""Automatic checklist items, evaluated from real data: sessions through the real pipeline
and lag samples as runpool records them."""

from __future__ import annotations

import importlib
import sys
import types
from datetime import timedelta

import pytest
from django.conf import settings
from django.template import engines
from django.utils import timezone

from onboarding import checklists, lag
from onboarding.checklists import check_lag_24h, checklist_checks_evaluate, checklist_start
from onboarding.models import ChecklistEvent, ChecklistItem, CheckResult, DoneHow
from pool.models import LagSample, Session
from pool.worker import session_process
from tests.conftest import payload_body, post_payload

pytestmark = pytest.mark.django_db


@pytest.fixture
def checklist(customer_and_key):
    customer, _ = customer_and_key
    return checklist_start(customer=customer)


@pytest.fixture
def no_alerting(monkeypatch):
    # None in sys.modules makes the import fail as if the module did not exist, whether
    # or not onboarding/alerts.py has landed by now.
    # The pages and their template tags import it: load them before hiding it.
    importlib.import_module(settings.ROOT_URLCONF)
    engines.all()
    monkeypatch.setitem(sys.modules, "onboarding.alerts", None)


def item(checklist, check_name: str) -> ChecklistItem:
    return checklist.items.get(check_name=check_name)


def process_through_the_pipeline(client, key: str, session_id: str) -> Session:
    response = post_payload(client, key, session_id, payload_body(final=True))
    assert response.status_code == 202
    Session.objects.filter(external_id=session_id).update(state="queued")
    session = Session.objects.get(external_id=session_id)
    assert session_process(session_id=session.pk, host="test") == "processed"
    return session


# --- First sessions --------------------------------------------------------------------


def test_first_sessions_is_verified_once_a_session_is_processed(
    client, customer_and_key, checklist, no_alerting
):
    _, key = customer_and_key
    first = item(checklist, "first_sessions_processed")

    checklist_checks_evaluate(now=timezone.now())
    first.refresh_from_db()
    assert (first.check_result, first.evidence) == ("fail", "no sessions received yet")

    post_payload(client, key, "s-1", payload_body(final=False))
    checklist_checks_evaluate(now=timezone.now())
    first.refresh_from_db()
    assert first.evidence == "sessions received, none processed yet" and not first.is_done

    session = process_through_the_pipeline(client, key, "s-2")
    now = timezone.now()
    checklist_checks_evaluate(now=now)
    first.refresh_from_db()
    assert first.done_how == DoneHow.VERIFIED and first.done_by is None
    assert first.check_result == CheckResult.PASS and first.figure == 1
    assert first.measured_at == now
    session.refresh_from_db()
    assert f"first session processed at {session.processed_at:%Y-%m-%d %H:%M}" in first.evidence
    events = list(
        ChecklistEvent.objects.filter(item=first).order_by("id").values_list("action", "after")
    )
    # One row per change of result (not one per evaluation), then the verification.
    assert [a for a, _ in events] == ["checked", "verified"]
    assert events[1][1].startswith("verified: first session processed at")


def test_a_verified_item_is_no_longer_evaluated(client, customer_and_key, checklist, no_alerting):
    _, key = customer_and_key
    process_through_the_pipeline(client, key, "s-1")
    assert checklist_checks_evaluate(now=timezone.now()) == 3
    assert checklist_checks_evaluate(now=timezone.now()) == 2


# --- Lag within the warn threshold for 24 h ---------------------------------------------


def history(customer, now, *, lag_s=5.0, since=timedelta(hours=24), until=timedelta(0)):
    """Samples as runpool leaves them: 15-second samples for the last two hours and
    5-minute rollups (max lag) before that."""
    samples = []
    at = now - since
    while at <= now - until:
        recent = now - at <= lag.ROLLUP_AFTER
        step = LagSample.RAW if recent else LagSample.ROLLUP
        samples.append(
            LagSample(
                customer=customer,
                at=at,
                resolution_s=step,
                backlog=0,
                lag_s=lag_s,
                processed_per_min=1,
                arrivals_per_min=1,
            )
        )
        at += timedelta(seconds=step)
    LagSample.objects.bulk_create(samples)


def test_lag_passes_when_samples_cover_24_hours_below_the_warn_threshold(customer_and_key):
    customer, _ = customer_and_key
    now = timezone.now()
    history(customer, now, lag_s=42)
    evidence = check_lag_24h(customer=customer, now=now)
    assert evidence.result == CheckResult.PASS
    assert evidence.text == "max lag 42s over the last 24 h (warn at 300s)"
    assert evidence.figure == 42
    latest = LagSample.objects.order_by("-at").first().at
    assert evidence.measured_at == latest


def test_lag_fails_without_samples(customer_and_key):
    customer, _ = customer_and_key
    evidence = check_lag_24h(customer=customer, now=timezone.now())
    assert evidence.result == CheckResult.FAIL and "no lag samples" in evidence.text


def test_lag_fails_when_samples_cover_less_than_24_hours(customer_and_key):
    customer, _ = customer_and_key
    now = timezone.now()
    history(customer, now, since=timedelta(hours=20))
    evidence = check_lag_24h(customer=customer, now=now)
    assert evidence.result == CheckResult.FAIL and "but no samples from" in evidence.text


def test_lag_fails_on_a_hole_in_the_samples(customer_and_key):
    customer, _ = customer_and_key
    now = timezone.now()
    history(customer, now, until=timedelta(hours=10))
    history(customer, now, since=timedelta(hours=9))
    evidence = check_lag_24h(customer=customer, now=now)
    assert evidence.result == CheckResult.FAIL and "but no samples from" in evidence.text


def test_a_rollup_at_the_warn_threshold_fails_the_check(customer_and_key):
    customer, _ = customer_and_key
    now = timezone.now()
    history(customer, now)
    rollup = LagSample.objects.filter(resolution_s=LagSample.ROLLUP).order_by("at")[10]
    LagSample.objects.filter(pk=rollup.pk).update(lag_s=customer.warn_lag_s)
    evidence = check_lag_24h(customer=customer, now=now)
    assert evidence.result == CheckResult.FAIL
    assert evidence.text.startswith("lag reached 300s at") and evidence.figure == 300


def test_samples_older_than_24_hours_do_not_count(customer_and_key):
    customer, _ = customer_and_key
    now = timezone.now()
    history(customer, now)
    LagSample.objects.create(
        customer=customer,
        at=now - timedelta(hours=25),
        resolution_s=LagSample.ROLLUP,
        backlog=9,
        lag_s=5000,
        processed_per_min=0,
        arrivals_per_min=0,
    )
    assert check_lag_24h(customer=customer, now=now).result == CheckResult.PASS


def test_real_lag_above_the_threshold_keeps_the_item_open(
    client, customer_and_key, checklist, monkeypatch, no_alerting
):
    customer, key = customer_and_key
    now = timezone.now()
    history(customer, now - timedelta(seconds=LagSample.RAW))
    # A real session waits 400 s in the backlog (warn is 300 s); runpool samples it.
    post_payload(client, key, "slow", payload_body(final=True))
    Session.objects.filter(external_id="slow").update(ready_at=now - timedelta(seconds=400))
    monkeypatch.setattr(lag, "_last_bucket", None)
    assert lag.lag_samples_record(now=now) == 1
    checklist_checks_evaluate(now=now)
    lag_item = item(checklist, "lag_within_warn_24h")
    lag_item.refresh_from_db()
    assert lag_item.check_result == CheckResult.FAIL and not lag_item.is_done
    assert lag_item.evidence.startswith("lag reached 4") and "(warn at 300s)" in lag_item.evidence
    assert lag_item.figure >= 400

    # Processing it clears the backlog, but the 24 h window still holds the breach.
    Session.objects.filter(external_id="slow").update(state="queued")
    session_process(session_id=Session.objects.get(external_id="slow").pk, host="test")
    later = now + timedelta(seconds=LagSample.RAW)
    lag.lag_samples_record(now=later)
    checklist_checks_evaluate(now=later)
    lag_item.refresh_from_db()
    assert lag_item.check_result == CheckResult.FAIL


def test_lag_is_verified_through_the_evaluator(customer_and_key, checklist, no_alerting):
    customer, _ = customer_and_key
    now = timezone.now()
    history(customer, now)
    checklist_checks_evaluate(now=now)
    lag_item = item(checklist, "lag_within_warn_24h")
    lag_item.refresh_from_db()
    assert lag_item.done_how == DoneHow.VERIFIED
    assert lag_item.evidence == "max lag 5s over the last 24 h (warn at 300s)"


# --- Alert rule with a channel -----------------------------------------------------------


def test_the_alert_check_cannot_be_verified_before_alerting_exists(checklist, no_alerting):
    checklist_checks_evaluate(now=timezone.now())
    alert = item(checklist, "lag_alert_channel")
    alert.refresh_from_db()
    assert alert.check_result == CheckResult.UNKNOWN and not alert.is_done
    assert alert.get_check_result_display() == "cannot be verified yet"
    assert alert.evidence == "alerting (onboarding.alerts) is not there yet"
    event = ChecklistEvent.objects.get(item=alert)
    assert event.after.startswith("cannot be verified yet: alerting")


@pytest.mark.parametrize("has_channel", [True, False])
def test_the_alert_check_asks_the_alerting_module(checklist, monkeypatch, has_channel):
    fake = types.ModuleType("onboarding.alerts")
    fake.customer_has_alert_channel = lambda customer: has_channel
    monkeypatch.setitem(sys.modules, "onboarding.alerts", fake)
    checklist_checks_evaluate(now=timezone.now())
    alert = item(checklist, "lag_alert_channel")
    alert.refresh_from_db()
    assert alert.is_done is has_channel
    assert alert.check_result == (CheckResult.PASS if has_channel else CheckResult.FAIL)


# --- The evaluator ------------------------------------------------------------------------


def test_a_broken_check_does_not_stop_the_others(checklist, monkeypatch, no_alerting):
    def broken(**kwargs):
        raise RuntimeError("boom")

    monkeypatch.setitem(checklists.CHECKS, "lag_within_warn_24h", broken)
    assert checklist_checks_evaluate(now=timezone.now()) == 3
    lag_item = item(checklist, "lag_within_warn_24h")
    lag_item.refresh_from_db()
    assert lag_item.check_result == CheckResult.UNKNOWN
    assert lag_item.evidence == "the check failed to run: boom"
    assert item(checklist, "first_sessions_processed").check_result == CheckResult.FAIL


def test_an_unchanged_result_is_logged_once(checklist, no_alerting):
    for _ in range(3):
        checklist_checks_evaluate(now=timezone.now())
    checked = ChecklistEvent.objects.filter(customer=checklist.customer, action="checked")
    assert checked.count() == 3  # one per automatic item: not evaluated yet → failing/unknown


def test_an_overridden_item_is_not_evaluated(admin_user, checklist, no_alerting):
    from onboarding.checklists import checklist_item_override

    alert = item(checklist, "lag_alert_channel")
    checklist_item_override(item=alert, by=admin_user, reason="set up in PagerDuty")
    assert checklist_checks_evaluate(now=timezone.now()) == 2
    alert.refresh_from_db()
    assert alert.done_how == DoneHow.OVERRIDDEN


def test_the_page_shows_the_evidence_and_when_it_was_measured(
    client, ops_user, customer_and_key, checklist, no_alerting
):
    customer, _ = customer_and_key
    now = timezone.now()
    history(customer, now, since=timedelta(hours=3))
    checklist_checks_evaluate(now=now)
    client.force_login(ops_user)
    html = client.get(f"/onboarding/{customer.slug}/").content.decode()
    assert "no sessions received yet" in html
    assert "cannot be verified yet" in html and "onboarding.alerts) is not there yet" in html
    assert "max lag 5s, but no samples from" in html
    assert f"measured {now:%-d %b %H:%M} UTC" in html
