"""Lag alert rules evaluated with a controlled clock: sessions are written with the
ready_at / processed_at that make the lag, and every evaluation is given its `now`."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.core import mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from onboarding.alerts import (
    alert_acknowledge,
    alerts_evaluate,
    customer_has_alert_channel,
    open_alerts_by_customer,
)
from onboarding.models import (
    Alert,
    AlertChannel,
    AlertDelivery,
    AlertEvent,
    AlertRule,
    Customer,
)
from onboarding.services import customer_create
from pool.models import ClusterHeartbeat, PoolHost, Session, State

pytestmark = pytest.mark.django_db

T0 = timezone.now().replace(microsecond=0)
WARN, CRITICAL, GRACE = 300, 1800, 60  # the customer's defaults and the global rule's grace


def seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


def backlog(customer: Customer, *, ready_at, n: int = 1, prefix: str = "s") -> list[Session]:
    start = Session.objects.filter(customer=customer).count()
    return [
        Session.objects.create(
            customer=customer,
            external_id=f"{prefix}-{start + i}",
            state=State.READY,
            ready_at=ready_at,
        )
        for i in range(n)
    ]


def processed(customer: Customer, *, at, sessions: list[Session] | None = None) -> None:
    """Mark sessions (or one new session) processed at `at`."""
    if sessions is None:
        sessions = backlog(customer, ready_at=at - seconds(1), prefix="done")
    Session.objects.filter(pk__in=[s.pk for s in sessions]).update(
        state=State.PROCESSED, processed_at=at
    )


def alerts_of(customer: Customer, kind: str = "lag") -> list[Alert]:
    return list(Alert.objects.filter(customer=customer, kind=kind).order_by("id"))


def subjects() -> list[str]:
    return [message.subject for message in mail.outbox]


def global_rule_set(**overrides) -> AlertRule:
    # Pool-down and stall alerts are off unless a test turns them on: these tests move the
    # clock far past the shared cluster's last heartbeat (none) and process nothing.
    defaults = {
        "enabled": True,
        "grace_s": GRACE,
        "remind_every_s": 1800,
        "pool_down_after_s": 0,
        "warn_lag_s": None,
        "critical_lag_s": None,
        "stall_after_s": 0,
    }
    rule, _ = AlertRule.objects.update_or_create(customer=None, defaults=defaults | overrides)
    return rule


def ops_mail() -> AlertChannel:
    return AlertChannel.objects.create(name="ops mail", kind="email", target="ops@example.com")


@pytest.fixture
def global_rule(db) -> AlertRule:
    return global_rule_set()


@pytest.fixture
def acme(customer_and_key, global_rule) -> Customer:
    """Acme Corp on the shared cluster, the global rule, and a global email channel."""
    ops_mail()
    customer, _ = customer_and_key
    return customer


# --- Thresholds and grace --------------------------------------------------------------


def test_nothing_fires_within_the_grace_period_then_warn_fires_when_it_ends(acme):
    backlog(acme, ready_at=T0, n=3)

    alerts_evaluate(now=T0 + seconds(WARN - 1))
    alerts_evaluate(now=T0 + seconds(WARN + GRACE - 1))  # crossed, still in its grace
    assert alerts_of(acme) == [] and mail.outbox == []

    counts = alerts_evaluate(now=T0 + seconds(WARN + GRACE))
    assert counts["opened"] == 1 and counts["sent"] == 1
    [alert] = alerts_of(acme)
    assert (alert.severity, alert.threshold_s, alert.backlog) == ("warn", WARN, 3)
    assert alert.condition_started_at == T0 + seconds(WARN)  # when lag crossed 5 min
    assert alert.grace_ended_at == T0 + seconds(WARN + GRACE)
    assert alert.opened_at == T0 + seconds(WARN + GRACE)
    assert alert.first_notified_at is not None and alert.notification_delay_s < 5
    assert subjects() == [
        "[Onramp] [WARN] Acme Corp: processing lag 6m 00s (≥ 5m 00s WARN threshold), backlog 3"
    ]
    assert mail.outbox[0].to == ["ops@example.com"]
    assert [e.action for e in alert.events.all()] == ["opened"]


def test_a_late_first_evaluation_opens_at_once_and_shows_how_late_it_was(acme):
    # runpool was down when lag crossed the threshold: the delay is measured from then.
    backlog(acme, ready_at=T0)
    alerts_evaluate(now=T0 + seconds(WARN + GRACE + 100))
    [alert] = alerts_of(acme)
    assert alert.grace_ended_at == T0 + seconds(WARN + GRACE)
    assert 100 <= alert.notification_delay_s < 105


def test_escalation_to_critical_is_recorded_on_the_same_alert_and_notified(acme):
    backlog(acme, ready_at=T0)
    alerts_evaluate(now=T0 + seconds(WARN + GRACE))
    alerts_evaluate(now=T0 + seconds(CRITICAL + GRACE - 1))  # critical, within its grace
    assert alerts_of(acme)[0].severity == "warn"

    counts = alerts_evaluate(now=T0 + seconds(CRITICAL + GRACE))
    assert counts["escalated"] == 1
    [alert] = alerts_of(acme)
    assert (alert.severity, alert.threshold_s) == ("critical", CRITICAL)
    assert alert.escalated_at == T0 + seconds(CRITICAL + GRACE)
    assert alert.opened_at == T0 + seconds(WARN + GRACE)  # the same episode
    assert [e.action for e in alert.events.all()] == ["opened", "escalated"]
    assert subjects()[1].startswith(
        "[Onramp] [CRITICAL] Acme Corp: escalated, processing lag 31m 00s"
    )


def critical_then_between_thresholds(acme) -> datetime:
    """A critical alert, then its oldest session processed: the lag falls between the
    warn and critical thresholds. Returns when the lag first reads lower."""
    [oldest] = backlog(acme, ready_at=T0)
    backlog(acme, ready_at=T0 + seconds(1200))
    critical = T0 + seconds(CRITICAL + GRACE)
    alerts_evaluate(now=critical)
    assert alerts_of(acme)[0].severity == "critical"
    processed(acme, at=critical + seconds(10), sessions=[oldest])
    lower = critical + seconds(20)  # lag now 680 s: above warn, under critical
    alerts_evaluate(now=lower)
    return lower


def test_critical_steps_down_to_warn_after_the_grace_period_and_says_so(acme):
    lower = critical_then_between_thresholds(acme)
    alerts_evaluate(now=lower + seconds(GRACE - 1))
    assert alerts_of(acme)[0].severity == "critical"  # not yet: hysteresis

    counts = alerts_evaluate(now=lower + seconds(GRACE))

    assert counts["downgraded"] == 1
    [alert] = alerts_of(acme)
    assert (alert.severity, alert.threshold_s) == ("warn", WARN)
    assert alert.is_open and alert.downgrade_since is None
    assert [e.action for e in alert.events.all()] == ["opened", "downgraded"]
    assert subjects()[-1].startswith("[Onramp] [WARN] Acme Corp: down from critical")


def test_lag_back_over_critical_before_the_grace_ends_restarts_the_step_down_clock(acme):
    lower = critical_then_between_thresholds(acme)
    [again] = backlog(acme, ready_at=T0, prefix="late")  # an old session back in the backlog
    alerts_evaluate(now=lower + seconds(30))
    assert alerts_of(acme)[0].downgrade_since is None
    processed(acme, at=lower + seconds(40), sessions=[again])
    alerts_evaluate(now=lower + seconds(50))  # lower again: the clock starts anew

    alerts_evaluate(now=lower + seconds(50 + GRACE - 1))
    assert alerts_of(acme)[0].severity == "critical"
    alerts_evaluate(now=lower + seconds(50 + GRACE))
    [alert] = alerts_of(acme)
    assert alert.severity == "warn"
    assert [e.action for e in alert.events.all()] == ["opened", "downgraded"]
    assert len(mail.outbox) == 2  # opened (critical), downgraded: nothing for the flap


def test_a_first_evaluation_past_both_thresholds_opens_critical_from_the_first_crossing(acme):
    backlog(acme, ready_at=T0)
    alerts_evaluate(now=T0 + seconds(CRITICAL + GRACE))
    [alert] = alerts_of(acme)
    assert alert.severity == "critical" and alert.condition_started_at == T0 + seconds(WARN)
    assert len(mail.outbox) == 1


def test_there_is_at_most_one_open_alert_per_customer_and_kind(acme):
    backlog(acme, ready_at=T0)
    for step in range(6):
        alerts_evaluate(now=T0 + seconds(WARN + GRACE + 10 * step))
    assert len(alerts_of(acme)) == 1 and len(mail.outbox) == 1

    # The database holds the line too: a second runpool host racing to open the same alert.
    alert = alerts_of(acme)[0]
    with pytest.raises(IntegrityError), transaction.atomic():
        Alert.objects.create(
            kind="lag",
            customer=acme,
            severity="warn",
            threshold_s=WARN,
            condition_started_at=alert.condition_started_at,
            grace_ended_at=alert.grace_ended_at,
            opened_at=alert.opened_at,
        )


def test_it_resolves_when_the_backlog_is_processed_and_a_new_episode_is_a_new_alert(acme):
    sessions = backlog(acme, ready_at=T0, n=2)
    alerts_evaluate(now=T0 + seconds(WARN + GRACE))
    processed(acme, at=T0 + seconds(WARN + GRACE + 30), sessions=sessions)

    counts = alerts_evaluate(now=T0 + seconds(WARN + GRACE + 40))
    assert counts["resolved"] == 1
    [alert] = alerts_of(acme)
    assert alert.resolved_at == T0 + seconds(WARN + GRACE + 40)
    assert alert.resolution == "lag back under its threshold"
    assert [e.action for e in alert.events.all()] == ["opened", "resolved"]
    assert (
        subjects()[1]
        == "[Onramp] [RESOLVED] Acme Corp: WARN over, lag back under its threshold after 40s"
    )

    alerts_evaluate(now=T0 + seconds(WARN + GRACE + 50))
    assert len(mail.outbox) == 2  # resolved once

    later = T0 + seconds(3600)
    backlog(acme, ready_at=later)
    alerts_evaluate(now=later + seconds(WARN + GRACE))
    first, second = alerts_of(acme)
    assert first.resolved_at and second.resolved_at is None


def test_a_stalled_backlog_opens_a_stalled_alert(acme, global_rule):
    global_rule.stall_after_s = None  # the customer's own: 600 s
    global_rule.save()
    stall = acme.stall_after_s
    processed(acme, at=T0)  # the last progress
    backlog(acme, ready_at=T0, n=5)

    alerts_evaluate(now=T0 + seconds(stall + GRACE - 1))
    assert alerts_of(acme, "stalled") == []
    alerts_evaluate(now=T0 + seconds(stall + GRACE))
    [alert] = alerts_of(acme, "stalled")
    assert alert.label == "STALLED" and alert.severity == "critical"
    assert alert.condition_started_at == T0 + seconds(stall)
    assert any(
        "[STALLED] Acme Corp: 5 sessions waiting and nothing processed for 11m" in s
        for s in subjects()
    )

    processed(acme, at=T0 + seconds(stall + GRACE + 5))  # progress again
    alerts_evaluate(now=T0 + seconds(stall + GRACE + 10))
    alert.refresh_from_db()
    assert alert.resolution == "sessions are being processed again"


# --- Reminders and acknowledgement ------------------------------------------------------


def test_reminders_repeat_while_open_until_an_ops_user_acknowledges(acme, ops_user, global_rule):
    global_rule.critical_lag_s = 0  # stays a warning however long it lasts
    global_rule.save()
    backlog(acme, ready_at=T0)
    opened = T0 + seconds(WARN + GRACE)
    alerts_evaluate(now=opened)
    alerts_evaluate(now=opened + seconds(1799))
    assert len(mail.outbox) == 1

    assert alerts_evaluate(now=opened + seconds(1800))["reminded"] == 1
    assert subjects()[1].startswith(
        "[Onramp] [WARN] Acme Corp: still open after 30m 00s, not acknowledged, processing lag 36m"
    )
    alerts_evaluate(now=opened + seconds(1810))
    assert len(mail.outbox) == 2  # one reminder per interval

    [alert] = alerts_of(acme)
    assert alert_acknowledge(alert=alert, by=ops_user, now=opened + seconds(1900))
    assert not alert_acknowledge(alert=alert, by=ops_user)  # once
    alerts_evaluate(now=opened + seconds(3600))
    assert len(mail.outbox) == 2
    alert.refresh_from_db()
    assert alert.acknowledged_by == ops_user and alert.reminders_sent == 1
    assert [e.action for e in alert.events.all()] == ["opened", "reminded", "acknowledged"]


def test_an_escalation_after_acknowledgement_is_notified_and_rearms_reminders(acme, ops_user):
    backlog(acme, ready_at=T0)
    alerts_evaluate(now=T0 + seconds(WARN + GRACE))
    alert_acknowledge(alert=alerts_of(acme)[0], by=ops_user)
    escalated = T0 + seconds(CRITICAL + GRACE)
    alerts_evaluate(now=escalated)
    alert = alerts_of(acme)[0]
    assert alert.severity == "critical" and alert.acknowledged_at is None
    alerts_evaluate(now=escalated + seconds(1800))
    assert len(mail.outbox) == 3  # opened, escalated, reminder


def test_a_reminder_waiting_for_a_retry_is_dropped_once_acknowledged(acme, ops_user):
    backlog(acme, ready_at=T0)
    alerts_evaluate(now=T0 + seconds(WARN + GRACE))
    alert = alerts_of(acme)[0]
    AlertDelivery.objects.create(
        alert=alert,
        channel=AlertChannel.objects.get(),
        event="reminder",
        payload={"text": "x", "summary": "x"},
        created_at=T0,
        next_attempt_at=T0 + seconds(10_000),
    )
    alert_acknowledge(alert=alert, by=ops_user)
    assert AlertDelivery.objects.get(event="reminder").status == "cancelled"


# --- Rules -----------------------------------------------------------------------------


def test_blank_thresholds_follow_the_customer_dashboard_thresholds(acme):
    Customer.objects.filter(pk=acme.pk).update(warn_lag_s=100)
    backlog(acme, ready_at=T0)
    alerts_evaluate(now=T0 + seconds(100 + GRACE))
    assert alerts_of(acme)[0].threshold_s == 100


def test_a_customer_rule_overrides_the_global_default(acme, global_rule):
    global_rule.warn_lag_s = 1000
    global_rule.save()
    AlertRule.objects.create(customer=acme, warn_lag_s=50, grace_s=0)
    other, _ = customer_create(name="Globex")
    backlog(acme, ready_at=T0)
    backlog(other, ready_at=T0)

    alerts_evaluate(now=T0 + seconds(50))
    assert [a.customer for a in Alert.objects.all()] == [acme]
    alerts_evaluate(now=T0 + seconds(1000 + GRACE))
    assert {a.customer.name for a in Alert.objects.all()} == {"Acme Corp", "Globex"}


def test_a_disabled_customer_rule_silences_it_and_closes_its_open_alerts(acme):
    backlog(acme, ready_at=T0)
    alerts_evaluate(now=T0 + seconds(WARN + GRACE))
    AlertRule.objects.create(customer=acme, enabled=False)
    alerts_evaluate(now=T0 + seconds(WARN + GRACE + 10))
    [alert] = alerts_of(acme)
    assert alert.resolution == "alerting turned off for this customer"


def test_without_any_rule_row_the_built_in_defaults_apply(acme):
    AlertRule.objects.all().delete()
    heartbeat(acme.cluster, T0 + seconds(WARN + 30))  # the pool is up: only the lag alert opens
    backlog(acme, ready_at=T0)
    alerts_evaluate(now=T0 + seconds(WARN + 60))
    assert alerts_of(acme)[0].grace_ended_at == T0 + seconds(WARN + 60)
    assert Alert.objects.count() == 1


def test_only_one_global_rule_and_one_rule_per_customer_can_exist(acme, global_rule):
    with pytest.raises(IntegrityError), transaction.atomic():
        AlertRule.objects.create(customer=None)
    AlertRule.objects.create(customer=acme)
    with pytest.raises(IntegrityError), transaction.atomic():
        AlertRule.objects.create(customer=acme)


def test_customer_has_alert_channel_needs_a_rule_and_an_enabled_channel(
    customer_and_key, global_rule
):
    customer, _ = customer_and_key
    assert not customer_has_alert_channel(customer)  # no channel at all

    other, _ = customer_create(name="Globex")
    own = AlertChannel.objects.create(
        name="globex hook", kind="webhook", target="https://hooks.example.com/x", customer=other
    )
    assert customer_has_alert_channel(other) and not customer_has_alert_channel(customer)

    own.enabled = False
    own.save()
    assert not customer_has_alert_channel(other)
    AlertChannel.objects.create(name="ops", kind="email", target="ops@example.com")
    assert customer_has_alert_channel(customer) and customer_has_alert_channel(other)

    AlertRule.objects.create(customer=customer, enabled=False)
    assert not customer_has_alert_channel(customer)
    AlertRule.objects.create(customer=other, warn_lag_s=0, critical_lag_s=0, stall_after_s=0)
    assert not customer_has_alert_channel(other)  # a rule that can never fire


# --- Pool down -------------------------------------------------------------------------


def heartbeat(cluster, at, host: str = "h1") -> None:
    pool_host, _ = PoolHost.objects.update_or_create(name=host, defaults={"seen_at": at})
    ClusterHeartbeat.objects.update_or_create(
        host=pool_host, cluster=cluster, defaults={"seen_at": at}
    )


def test_a_cluster_without_heartbeats_for_the_threshold_is_down_until_they_return(
    acme, global_rule
):
    global_rule.pool_down_after_s = 60
    global_rule.save()
    heartbeat(acme.cluster, T0)

    alerts_evaluate(now=T0 + seconds(59))
    assert not Alert.objects.filter(kind="pool_down").exists()
    alerts_evaluate(now=T0 + seconds(61))
    [alert] = Alert.objects.filter(kind="pool_down")
    assert alert.cluster == acme.cluster and alert.customer is None
    assert (alert.condition_started_at, alert.grace_ended_at) == (T0, T0 + seconds(60))
    assert subjects() == ["[Onramp] [POOL DOWN] cluster shared: no runpool heartbeat for 1m 01s"]

    heartbeat(acme.cluster, T0 + seconds(70), host="h2")  # another host takes over
    alerts_evaluate(now=T0 + seconds(75))
    alert.refresh_from_db()
    assert alert.resolution == "runpool heartbeats are back"


def test_pool_down_notifies_the_channels_of_the_cluster_customers(acme, global_rule):
    global_rule.pool_down_after_s = 60
    global_rule.save()
    AlertChannel.objects.create(
        name="acme", kind="email", target="acme-team@example.com", customer=acme
    )
    outside, _ = customer_create(name="Initech", cluster_name="dedicated")
    AlertChannel.objects.create(
        name="initech", kind="email", target="ini@example.com", customer=outside
    )
    heartbeat(acme.cluster, T0)
    heartbeat(outside.cluster, T0 + seconds(60))

    alerts_evaluate(now=T0 + seconds(61))
    assert sorted(m.to[0] for m in mail.outbox) == ["acme-team@example.com", "ops@example.com"]


# --- Selector for the overview ----------------------------------------------------------


def test_open_alerts_by_customer_gives_each_customer_its_worst_open_alert(acme, global_rule):
    other, _ = customer_create(name="Globex")
    lonely, _ = customer_create(name="Initech", cluster_name="dedicated")
    backlog(acme, ready_at=T0)
    backlog(other, ready_at=T0 + seconds(WARN))
    alerts_evaluate(now=T0 + seconds(CRITICAL + GRACE))
    assert {c: a.severity for c, a in open_alerts_by_customer().items()} == {
        acme.pk: "critical",
        other.pk: "warn",
    }

    global_rule.pool_down_after_s = 60
    global_rule.save()
    heartbeat(lonely.cluster, T0 + seconds(CRITICAL + GRACE))
    alerts_evaluate(now=T0 + seconds(CRITICAL + GRACE + 1))
    by_customer = open_alerts_by_customer()
    # The shared cluster is down: its customers' rows say so unless they have worse.
    assert by_customer[acme.pk].kind == "lag" and by_customer[other.pk].kind == "pool_down"
    assert lonely.pk not in by_customer
    assert AlertEvent.objects.filter(action="opened").count() == 3


# --- Robustness ------------------------------------------------------------------------


def test_a_failing_step_is_logged_and_the_rest_still_runs(acme, monkeypatch, caplog):
    def broken(**kwargs):
        raise RuntimeError("a bug in stall detection")

    monkeypatch.setattr("onboarding.alerts.stall_condition", broken)
    backlog(acme, ready_at=T0)
    counts = alerts_evaluate(now=T0 + seconds(WARN + GRACE))
    assert counts["opened"] == 1 and counts["sent"] == 1
    assert "a bug in stall detection" in caplog.text
