"""The alerts page, the overview's banner, and acknowledging in place (htmx) with permission."""

from __future__ import annotations

import pytest
from django.template import Context, Template
from django.test import RequestFactory

from onboarding.alerts import alerts_evaluate, open_alerts_by_customer
from onboarding.models import Alert, AlertChannel, AlertDelivery, AlertEvent
from onboarding.services import customer_create
from tests.onboarding.test_alerts_evaluation import (
    CRITICAL,
    GRACE,
    T0,
    WARN,
    backlog,
    global_rule_set,
    ops_mail,
    processed,
    seconds,
)

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def alerts(customer_and_key, other_customer_and_key):
    """Acme: an open critical alert; Globex: a resolved warning, then an open one."""
    global_rule_set()
    ops_mail()
    acme, globex = customer_and_key[0], other_customer_and_key[0]
    backlog(acme, ready_at=T0)
    old = backlog(globex, ready_at=T0)
    alerts_evaluate(now=T0 + seconds(WARN + GRACE))
    processed(globex, at=T0 + seconds(WARN + GRACE + 60), sessions=old)
    alerts_evaluate(now=T0 + seconds(WARN + GRACE + 70))
    backlog(globex, ready_at=T0 + seconds(1000))
    alerts_evaluate(now=T0 + seconds(CRITICAL + GRACE))
    return {
        "acme": Alert.objects.get(customer=acme),
        "globex_resolved": Alert.objects.get(customer=globex, resolved_at__isnull=False),
        "globex_open": Alert.objects.get(customer=globex, resolved_at=None),
    }


def test_the_page_needs_a_login(client):
    response = client.get("/alerts/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_the_page_lists_open_alerts_first_then_history(client, ops_user, alerts):
    client.force_login(ops_user)
    html = client.get("/alerts/").content.decode()
    acme, globex_open, globex_old = (
        html.index(f'id="alert-{alerts[name].pk}"')
        for name in ("acme", "globex_open", "globex_resolved")
    )
    assert acme < globex_open < html.index("<h2>History</h2>") < globex_old
    assert "CRITICAL" in html and "lag back under its threshold" in html
    assert "after it was due" in html  # the measured delay
    assert 'name="customer"' in html and "ops mail" in html


def test_the_page_filters_by_customer(client, ops_user, alerts):
    client.force_login(ops_user)
    html = client.get("/alerts/?customer=globex").content.decode()
    assert f'id="alert-{alerts["globex_open"].pk}"' in html
    assert f'id="alert-{alerts["globex_resolved"].pk}"' in html
    assert f'id="alert-{alerts["acme"].pk}"' not in html
    assert "Alerts · Globex" in html

    html = client.get("/alerts/?customer=nobody").content.decode()
    assert "No customer “nobody”" in html and f'id="alert-{alerts["acme"].pk}"' in html


def test_the_polled_region_is_a_fragment_of_open_alerts(client, ops_user, alerts):
    client.force_login(ops_user)
    html = client.get("/alerts/", **HTMX).content.decode()
    assert html.lstrip().startswith('<div id="open-alerts"')
    assert "<h2>History</h2>" not in html and "<html" not in html


def test_an_ops_user_acknowledges_in_place(client, ops_user, alerts):
    client.force_login(ops_user)
    alert = alerts["acme"]
    assert "Acknowledge</button>" in client.get("/alerts/").content.decode()

    response = client.post(f"/alerts/{alert.pk}/acknowledge", **HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith(f'<tr id="alert-{alert.pk}" class="alert-row acked"')
    assert "by <strong>olivia-ops</strong>" in html and "Acknowledge</button>" not in html
    alert.refresh_from_db()
    assert alert.acknowledged_by == ops_user
    assert AlertEvent.objects.filter(alert=alert, action="acknowledged", by=ops_user).exists()


def test_without_htmx_acknowledging_redirects_back_to_the_alert(client, admin_user, alerts):
    client.force_login(admin_user)  # admins may too
    alert = alerts["acme"]
    response = client.post(f"/alerts/{alert.pk}/acknowledge")
    assert response.status_code == 302 and response["Location"] == f"/alerts/#alert-{alert.pk}"
    alert.refresh_from_db()
    assert alert.acknowledged_by == admin_user


def test_an_outsider_may_look_but_not_acknowledge(client, outsider, alerts):
    client.force_login(outsider)
    assert "Acknowledge</button>" not in client.get("/alerts/").content.decode()
    alert = alerts["acme"]
    assert client.post(f"/alerts/{alert.pk}/acknowledge", **HTMX).status_code == 403
    alert.refresh_from_db()
    assert alert.acknowledged_at is None


def test_acknowledging_needs_a_post(client, ops_user, alerts):
    client.force_login(ops_user)
    assert client.get(f"/alerts/{alerts['acme'].pk}/acknowledge").status_code == 405
    assert client.post("/alerts/999999/acknowledge").status_code == 404


def test_a_failing_channel_shows_on_the_page(client, ops_user, alerts):
    AlertChannel.objects.create(
        name="slack", kind="webhook", target="https://hooks.example.com/services/T0/B0/secret"
    )
    delivery = AlertDelivery.objects.filter(alert=alerts["acme"]).first()
    AlertDelivery.objects.filter(pk=delivery.pk).update(
        status="pending", attempts=2, last_error="HTTP 500 Internal Server Error"
    )
    AlertChannel.objects.filter(name="ops mail").update(
        last_failure_at=T0 + seconds(9999), last_error="SMTPServerDisconnected: gone"
    )
    client.force_login(ops_user)
    html = client.get("/alerts/").content.decode()
    assert "failing" in html and "HTTP 500 Internal Server Error" in html
    assert "SMTPServerDisconnected: gone" in html
    assert "https://hooks.example.com/…" in html and "secret" not in html


def test_the_banner_shows_while_an_alert_is_open(client, ops_user, customer_and_key):
    client.force_login(ops_user)
    empty = client.get("/alerts/banner").content.decode()
    assert 'id="alert-banner"' in empty and "open alert" not in empty

    global_rule_set()
    backlog(customer_and_key[0], ready_at=T0)
    alerts_evaluate(now=T0 + seconds(WARN + GRACE))
    html = client.get("/alerts/banner").content.decode()
    assert "1 open alert" in html and "Acme Corp" in html and "1 not acknowledged" in html


def test_the_banner_fragment_renders_with_only_request_and_user(ops_user, alerts):
    request = RequestFactory().get("/")
    request.user = ops_user
    html = Template('{% include "onboarding/_alert_banner.html" %}').render(
        Context({"request": request, "user": ops_user})
    )
    assert "2 open alerts" in html and "2 critical" not in html and "See alerts" in html


def test_the_row_badge_tag_shows_a_customer_alert(ops_user, alerts, customer_and_key):
    third, _ = customer_create(name="Initech")
    template = Template("{% load alert_tags %}{% alert_badge alerts customer %}")
    by_customer = open_alerts_by_customer()
    html = template.render(Context({"alerts": by_customer, "customer": customer_and_key[0]}))
    assert "CRITICAL" in html and f"#alert-{alerts['acme'].pk}" in html
    assert template.render(Context({"alerts": by_customer, "customer": third})).strip() == ""


def test_the_nav_links_to_alerts(client, ops_user):
    client.force_login(ops_user)
    html = client.get("/alerts/").content.decode()
    assert '<a href="/alerts/" class="active">Alerts</a>' in html


def test_admins_manage_rules_and_channels_in_the_admin(client, django_user_model, alerts):
    root = django_user_model.objects.create_superuser("root", "root@example.com", "pw-1-root")
    client.force_login(root)
    for name in ("alertrule", "alertchannel", "alert", "alertdelivery"):
        assert client.get(f"/admin/onboarding/{name}/").status_code == 200, name
    assert client.get(f"/admin/onboarding/alert/{alerts['acme'].pk}/change/").status_code == 200

    bad = client.post(
        "/admin/onboarding/alertchannel/add/",
        {"name": "x", "kind": "email", "target": "not-an-address", "enabled": "on"},
    )
    assert "is not an email address" in bad.content.decode()
    customer = alerts["acme"].customer
    refused = client.post(
        "/admin/onboarding/alertrule/add/",
        {"customer": customer.pk, "enabled": "on", "pool_down_after_s": "30"},
    )
    assert "Pool-down alerts are per cluster" in refused.content.decode()
    second_global = client.post("/admin/onboarding/alertrule/add/", {"enabled": "on"})
    assert "There is already a rule for this scope." in second_global.content.decode()
