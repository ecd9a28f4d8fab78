"""Pool down with a real runpool: heartbeats stop when it stops, and come back with it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.db.models import Max

from onboarding.alerts import alerts_evaluate
from onboarding.models import Alert, AlertChannel, AlertRule
from onboarding.services import customer_create
from pool.models import ClusterHeartbeat
from tests.integration.conftest import runpool, wait_for  # noqa: F401 - runpool is a fixture

pytestmark = [pytest.mark.integration]


def last_heartbeat(cluster):
    return ClusterHeartbeat.objects.filter(cluster=cluster).aggregate(m=Max("seen_at"))["m"]


def test_a_stopped_runpool_raises_pool_down_and_a_new_one_resolves_it(runpool):  # noqa: F811
    customer, _ = customer_create(name="Acme Corp")
    cluster = customer.cluster
    AlertChannel.objects.create(name="ops mail", kind="email", target="ops@example.com")
    # The migration's global rule, or the built-in default once a test flushed it: 60 s.
    AlertRule.objects.filter(customer=None).update(pool_down_after_s=60, enabled=True)

    first = runpool("it-alerts-1")
    wait_for(lambda: last_heartbeat(cluster), 60, message="a heartbeat from runpool")
    first.stop()
    assert first.popen.returncode == 0, first.tail()
    stopped = last_heartbeat(cluster)

    assert alerts_evaluate(now=stopped + timedelta(seconds=59))["opened"] == 0
    assert alerts_evaluate(now=stopped + timedelta(seconds=61))["opened"] == 1
    alert = Alert.objects.get()
    assert (alert.kind, alert.cluster, alert.severity) == ("pool_down", cluster, "critical")
    assert alert.condition_started_at == stopped
    assert alert.grace_ended_at == stopped + timedelta(seconds=60)
    assert alert.first_notified_at is not None and alert.notification_delay_s < 5
    assert [m.subject for m in mail.outbox] == [
        "[Onramp] [POOL DOWN] cluster shared: no runpool heartbeat for 1m 01s"
    ]

    runpool("it-alerts-2")
    wait_for(
        lambda: last_heartbeat(cluster) > stopped + timedelta(seconds=3),
        60,
        message="a heartbeat from the new runpool",
    )
    # The new runpool evaluates alerts itself (in real time) and may resolve it first.
    alerts_evaluate(now=stopped + timedelta(seconds=62))
    alert.refresh_from_db()
    assert alert.resolved_at is not None
    assert alert.resolution == "runpool heartbeats are back"
    assert alert.deliveries.filter(event="resolved").count() == 1
    assert alert.events.filter(action="resolved").count() == 1
