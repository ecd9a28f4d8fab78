"""Notifications reach a real SMTP server and a real HTTP server on loopback; a failing
channel is retried with backoff and never holds up the others."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import timedelta
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller
from django.utils import timezone

from onboarding.alert_delivery import alert_channel_test, alert_deliveries_send
from onboarding.alerts import alerts_evaluate
from onboarding.models import Alert, AlertChannel, AlertDelivery
from tests.onboarding.test_alerts_evaluation import (
    GRACE,
    T0,
    WARN,
    backlog,
    global_rule_set,
    ops_mail,
    seconds,
)

pytestmark = pytest.mark.django_db

DUE = T0 + seconds(WARN + GRACE)  # when Acme's warning fires in these tests


@pytest.fixture
def acme(customer_and_key):
    global_rule_set()
    ops_mail()
    customer, _ = customer_and_key
    return customer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Inbox:
    """aiosmtpd handler keeping what it receives."""

    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd API
        self.messages.append(
            (envelope.rcpt_tos, message_from_bytes(envelope.content, policy=policy.default))
        )
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server(settings):
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = controller.port
    settings.EMAIL_USE_TLS = False
    yield inbox
    controller.stop()


class Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        server = self.server
        server.received.append((self.headers["Content-Type"], json.loads(body)))
        time.sleep(server.delay)
        status = server.statuses.pop(0) if server.statuses else 200
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"ok" if status < 400 else b"upstream exploded")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def webhook_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    server.received, server.statuses, server.delay = [], [], 0.0
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/T000/B000/secret"
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def webhook_channel(webhook_server, db) -> AlertChannel:
    return AlertChannel.objects.create(name="slack", kind="webhook", target=webhook_server.url)


def test_an_alert_is_emailed_through_a_real_smtp_server(smtp_server, acme):
    backlog(acme, ready_at=T0)
    counts = alerts_evaluate(now=DUE)

    assert counts["sent"] == 1
    [(to, message)] = smtp_server.messages
    assert to == ["ops@example.com"]
    assert message["Subject"].strip().startswith("[Onramp] [WARN] Acme Corp: processing lag 6m 00s")
    body = message.get_content()
    assert "customer: acme-corp" in body and f"/alerts/#alert-{Alert.objects.get().pk}" in body
    delivery = AlertDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("sent", 1, "")


def test_an_alert_is_posted_as_slack_compatible_json(
    webhook_server, webhook_channel, acme, settings
):
    settings.ALERT_BASE_URL = "https://onramp.example.com/"
    backlog(acme, ready_at=T0, n=4)
    alerts_evaluate(now=DUE)

    [(content_type, body)] = webhook_server.received
    alert = Alert.objects.get()
    assert content_type == "application/json"
    assert body["text"] == (
        "[WARN] Acme Corp: processing lag 6m 00s (≥ 5m 00s WARN threshold), backlog 4 "
        f"https://onramp.example.com/alerts/#alert-{alert.pk}"
    )
    assert body["event"] == "opened" and body["alert_id"] == alert.pk
    assert (body["kind"], body["severity"], body["customer"], body["cluster"]) == (
        "lag",
        "warn",
        "acme-corp",
        "shared",
    )
    assert (body["value_s"], body["threshold_s"], body["backlog"]) == (360.0, 300, 4)
    assert body["grace_ended_at"] == DUE.isoformat()


def test_a_failing_webhook_does_not_stop_email_and_is_retried_with_backoff(
    smtp_server, webhook_server, webhook_channel, acme
):
    webhook_server.statuses = [500, 500]
    backlog(acme, ready_at=T0)

    counts = alerts_evaluate(now=DUE)
    assert (counts["sent"], counts["failed"]) == (1, 1)
    assert len(smtp_server.messages) == 1  # email went out anyway
    hook = AlertDelivery.objects.get(channel=webhook_channel)
    assert (hook.status, hook.attempts) == ("pending", 1)
    assert hook.last_error == "HTTP 500 Internal Server Error: upstream exploded"
    assert DUE + seconds(30) <= hook.next_attempt_at < DUE + seconds(32)  # first backoff
    webhook_channel.refresh_from_db()
    assert webhook_channel.is_failing and "HTTP 500" in webhook_channel.last_error
    alert = Alert.objects.get()
    assert alert.first_notified_at is not None  # by email

    alerts_evaluate(now=DUE + seconds(10))  # not due yet: no attempt
    assert len(webhook_server.received) == 1
    alerts_evaluate(now=DUE + seconds(32))  # second attempt fails: backoff doubles
    hook.refresh_from_db()
    assert hook.attempts == 2 and hook.next_attempt_at >= DUE + seconds(32 + 60)
    alerts_evaluate(now=DUE + seconds(95))
    hook.refresh_from_db()
    assert (hook.status, hook.attempts, hook.last_error) == ("sent", 3, "")
    assert len(smtp_server.messages) == 1  # the email was not sent again
    webhook_channel.refresh_from_db()
    assert not webhook_channel.is_failing


def test_a_hanging_webhook_times_out_without_delaying_the_email(
    smtp_server, webhook_server, webhook_channel, acme, settings
):
    settings.ALERT_SEND_TIMEOUT_S = 1
    webhook_server.delay = 3
    backlog(acme, ready_at=T0)

    started = time.monotonic()
    alerts_evaluate(now=DUE)
    assert time.monotonic() - started < 2.5
    assert len(smtp_server.messages) == 1
    hook = AlertDelivery.objects.get(channel=webhook_channel)
    assert hook.status == "pending" and "timed out" in hook.last_error
    alert = Alert.objects.get()
    assert alert.notification_delay_s < 1.5  # measured on the email


def test_an_unreachable_smtp_server_is_recorded_and_the_webhook_still_goes(
    webhook_server, webhook_channel, acme, settings
):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", free_port()  # nobody listens
    backlog(acme, ready_at=T0)
    alerts_evaluate(now=DUE)
    assert len(webhook_server.received) == 1
    email = AlertDelivery.objects.get(channel__kind="email")
    assert email.status == "pending" and "Connection refused" in email.last_error


def test_a_delivery_gives_up_after_the_last_attempt(webhook_channel, acme, settings):
    settings.ALERT_MAX_ATTEMPTS = 2
    AlertChannel.objects.filter(pk=webhook_channel.pk).update(
        target=f"http://127.0.0.1:{free_port()}/nobody"
    )
    AlertChannel.objects.filter(kind="email").delete()
    backlog(acme, ready_at=T0)
    alerts_evaluate(now=DUE)
    alerts_evaluate(now=DUE + seconds(31))
    delivery = AlertDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == ("failed", 2, None)
    assert "ConnectionRefusedError" in delivery.last_error
    alerts_evaluate(now=DUE + timedelta(hours=1))
    delivery.refresh_from_db()
    assert delivery.attempts == 2
    assert Alert.objects.get().first_notified_at is None


def test_a_claimed_delivery_is_not_sent_twice(webhook_server, webhook_channel, acme):
    AlertChannel.objects.filter(kind="email").delete()
    backlog(acme, ready_at=T0)
    alerts_evaluate(now=DUE)
    # A second runpool host passing at the same moment finds nothing left to send.
    assert alert_deliveries_send(now=DUE) == (0, 0)
    assert len(webhook_server.received) == 1


def test_the_time_to_notify_is_well_under_a_minute_in_real_time(smtp_server, acme):
    now = timezone.now()
    backlog(acme, ready_at=now - seconds(WARN + GRACE))  # due exactly now
    alerts_evaluate(now=now)
    alert = Alert.objects.get()
    assert alert.grace_ended_at == now
    assert alert.notification_delay_s < 60
    assert alert.first_notified_at - alert.grace_ended_at < timedelta(seconds=5)


def test_an_admin_can_send_a_test_message(webhook_server, webhook_channel):
    assert alert_channel_test(channel=webhook_channel) == ""
    assert webhook_server.received[0][1]["text"].startswith("[TEST]")
    webhook_server.statuses = [404]
    assert alert_channel_test(channel=webhook_channel).startswith("HTTP 404")
    webhook_channel.refresh_from_db()
    assert webhook_channel.is_failing
