"""Notifications of lag alerts: the messages, and their delivery to email and webhooks.

Every notification is an AlertDelivery row queued in the same transaction as the alert's
change (onboarding.alerts); alert_deliveries_send() sends the due ones. A failing
channel only delays its own deliveries: each send has a short timeout, runs in parallel
with the others, and is retried with backoff until ALERT_MAX_ATTEMPTS.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from django.conf import settings
from django.core import mail
from django.db.models import F, Q, QuerySet
from django.urls import reverse
from django.utils import timezone

from onboarding.alert_models import (
    Alert,
    AlertChannel,
    AlertDelivery,
    AlertKind,
    ChannelKind,
    DeliveryStatus,
    NotifyEvent,
)
from onboarding.templatetags.onramp import duration

logger = logging.getLogger("onboarding.alerts")

PARALLEL_SENDS = 8
SENDS_PER_PASS = 100


def _setting(name: str, default: int | str) -> int | str:
    # Read at call time so tests and config/settings.py can set them (ALERT_* settings).
    return getattr(settings, name, default)


# --- Messages --------------------------------------------------------------------------


def alert_channels_for(*, alert: Alert) -> QuerySet[AlertChannel]:
    """Global channels, plus the customer's; for pool down, those of the cluster's customers."""
    scope = Q(customer=None)
    if alert.customer_id:
        scope |= Q(customer_id=alert.customer_id)
    else:
        scope |= Q(customer__cluster_id=alert.cluster_id)
    return AlertChannel.objects.filter(scope, enabled=True)


def deliveries_queue(*, alert: Alert, event: str, now: datetime) -> int:
    payload = alert_payload(alert=alert, event=event, now=now)
    deliveries = [
        AlertDelivery(
            alert=alert,
            channel=channel,
            event=event,
            payload=payload,
            created_at=now,
            next_attempt_at=now,
        )
        for channel in alert_channels_for(alert=alert)
    ]
    AlertDelivery.objects.bulk_create(deliveries)
    return len(deliveries)


def alert_url(alert: Alert) -> str:
    base = str(_setting("ALERT_BASE_URL", "")).rstrip("/")
    return f"{base}{reverse('alerts')}#alert-{alert.pk}"


def _what(alert: Alert) -> str:
    if alert.kind == AlertKind.POOL_DOWN:
        return f"no runpool heartbeat for {duration(alert.value_s)}"
    if alert.kind == AlertKind.STALLED:
        return (
            f"{alert.backlog} sessions waiting and nothing processed for {duration(alert.value_s)}"
        )
    return (
        f"processing lag {duration(alert.value_s)} (≥ {duration(alert.threshold_s)} "
        f"{alert.get_severity_display()} threshold), backlog {alert.backlog}"
    )


def alert_text(*, alert: Alert, event: str, now: datetime) -> str:
    """One line, fit for an email subject and a Slack message."""
    who = alert.subject_name
    if event == NotifyEvent.RESOLVED:
        lasted = duration(alert.duration_s(now))
        return f"[RESOLVED] {who}: {alert.label} over, {alert.resolution} after {lasted}"
    if event == NotifyEvent.ESCALATED:
        return f"[{alert.label}] {who}: escalated, {_what(alert)}"
    if event == NotifyEvent.DOWNGRADED:
        return f"[{alert.label}] {who}: down from critical, {_what(alert)}"
    if event == NotifyEvent.REMINDER:
        lasted = duration(alert.duration_s(now))
        return f"[{alert.label}] {who}: still open after {lasted}, not acknowledged, {_what(alert)}"
    return f"[{alert.label}] {who}: {_what(alert)}"


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def alert_payload(*, alert: Alert, event: str, now: datetime) -> dict:
    """Slack-compatible ({"text": ...}) with structured fields for other receivers."""
    cluster = alert.cluster if alert.cluster_id else alert.customer.cluster
    summary = alert_text(alert=alert, event=event, now=now)
    return {
        "text": f"{summary} {alert_url(alert)}",
        "summary": summary,
        "event": event,
        "alert_id": alert.pk,
        "kind": alert.kind,
        "severity": alert.severity,
        "label": alert.label,
        "customer": alert.customer.slug if alert.customer_id else None,
        "customer_name": alert.customer.name if alert.customer_id else None,
        "cluster": cluster.name,
        "value_s": round(alert.value_s, 1),
        "threshold_s": alert.threshold_s,
        "backlog": alert.backlog,
        "condition_started_at": _iso(alert.condition_started_at),
        "grace_ended_at": _iso(alert.grace_ended_at),
        "opened_at": _iso(alert.opened_at),
        "resolved_at": _iso(alert.resolved_at),
        "resolution": alert.resolution or None,
        "acknowledged_by": alert.acknowledged_by.get_username() if alert.acknowledged_by else None,
        "url": alert_url(alert),
    }


# --- Delivery --------------------------------------------------------------------------


def alert_deliveries_send(*, now: datetime) -> tuple[int, int]:
    """Send every due delivery, in parallel; returns (sent, failed).

    Steps: claim each due row by a conditional UPDATE (which also pushes its next attempt
    past the send timeout, so a crash mid-send only delays a retry); send in threads that
    touch no database; record the outcomes here. Times are `now` plus the real time spent,
    so controlled clocks in tests and real delays in production both read right.
    """
    started = time.monotonic()
    due = AlertDelivery.objects.filter(
        status=DeliveryStatus.PENDING, next_attempt_at__lte=now
    ).select_related("alert__customer__cluster", "alert__cluster", "channel")
    claimed = [
        d for d in due.order_by("next_attempt_at", "id")[:SENDS_PER_PASS] if _delivery_claim(d, now)
    ]
    if not claimed:
        return 0, 0
    with ThreadPoolExecutor(min(PARALLEL_SENDS, len(claimed)), "alert-send") as pool:
        outcomes = list(pool.map(_send_safely, claimed))
    for delivery, (error, finished) in zip(claimed, outcomes, strict=True):
        at = now + timedelta(seconds=finished - started)
        _delivery_record(delivery=delivery, error=error, at=at)
    failed = sum(1 for error, _ in outcomes if error)
    return len(claimed) - failed, failed


def _delivery_claim(delivery: AlertDelivery, now: datetime) -> bool:
    alert = delivery.alert
    if delivery.event == NotifyEvent.REMINDER and (alert.resolved_at or alert.acknowledged_at):
        AlertDelivery.objects.filter(pk=delivery.pk, status=DeliveryStatus.PENDING).update(
            status=DeliveryStatus.CANCELLED, next_attempt_at=None
        )
        return False
    lease = timedelta(seconds=2 * int(_setting("ALERT_SEND_TIMEOUT_S", 5)) + 30)
    won = AlertDelivery.objects.filter(
        pk=delivery.pk, status=DeliveryStatus.PENDING, next_attempt_at=delivery.next_attempt_at
    ).update(next_attempt_at=now + lease, attempts=F("attempts") + 1, last_attempt_at=now)
    delivery.attempts += 1
    return bool(won)


def _send_safely(delivery: AlertDelivery) -> tuple[str, float]:
    try:
        channel_send(channel=delivery.channel, payload=delivery.payload)
        error = ""
    except Exception as exc:  # any failure is the channel's, recorded and retried
        error = _describe(exc)
    return error, time.monotonic()


def _describe(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        body = exc.read(300).decode("utf-8", "replace") if exc.fp else ""
        return f"HTTP {exc.code} {exc.reason}: {body}".strip().rstrip(":")
    if isinstance(exc, urllib.error.URLError):
        return f"{type(exc.reason).__name__}: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def channel_send(*, channel: AlertChannel, payload: dict) -> None:
    """Send one message; raises on any failure. Touches no database (runs in a thread)."""
    timeout = int(_setting("ALERT_SEND_TIMEOUT_S", 5))
    if channel.kind == ChannelKind.EMAIL:
        _email_send(to=channel.recipients, payload=payload, timeout=timeout)
    else:
        _webhook_post(url=channel.target.strip(), payload=payload, timeout=timeout)


def _email_send(*, to: list[str], payload: dict, timeout: int) -> None:
    lines = [payload["text"], ""]
    skip = {"text", "summary"}
    lines += [
        f"{key}: {value}" for key, value in payload.items() if key not in skip and value is not None
    ]
    connection = mail.get_connection(timeout=timeout)  # only the SMTP backend uses it
    message = mail.EmailMessage(
        subject=f"[Onramp] {payload['summary']}"[:200],
        body="\n".join(lines),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=to,
        connection=connection,
    )
    message.send()


def _webhook_post(*, url: str, payload: dict, timeout: int) -> None:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "Onramp-alerts/1"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as reply:  # noqa: S310 - admin-set URL
        reply.read(65536)


def _delivery_record(*, delivery: AlertDelivery, error: str, at: datetime) -> None:
    if not error:
        AlertDelivery.objects.filter(pk=delivery.pk).update(
            status=DeliveryStatus.SENT, sent_at=at, next_attempt_at=None, last_error=""
        )
        AlertChannel.objects.filter(pk=delivery.channel_id).update(last_success_at=at)
        Alert.objects.filter(pk=delivery.alert_id, first_notified_at=None).update(
            first_notified_at=at
        )
        Alert.objects.filter(pk=delivery.alert_id).update(last_notified_at=at)
        return
    gave_up = delivery.attempts >= int(_setting("ALERT_MAX_ATTEMPTS", 10))
    AlertDelivery.objects.filter(pk=delivery.pk).update(
        status=DeliveryStatus.FAILED if gave_up else DeliveryStatus.PENDING,
        next_attempt_at=None if gave_up else at + retry_backoff(attempts=delivery.attempts),
        last_error=error[:2000],
    )
    AlertChannel.objects.filter(pk=delivery.channel_id).update(
        last_failure_at=at, last_error=error[:2000]
    )
    logger.warning("alert delivery %s failed (attempt %d): %s", delivery, delivery.attempts, error)


def retry_backoff(*, attempts: int) -> timedelta:
    """30 s, 1 min, 2 min... capped (ALERT_RETRY_BASE_S, ALERT_RETRY_MAX_S)."""
    base = int(_setting("ALERT_RETRY_BASE_S", 30))
    cap = int(_setting("ALERT_RETRY_MAX_S", 900))
    return timedelta(seconds=min(cap, base * 2 ** max(0, attempts - 1)))


def alert_channel_test(*, channel: AlertChannel) -> str:
    """Send a test message now; returns the error, or '' when it went through."""
    summary = f"[TEST] Onramp alert channel “{channel.name}” works."
    payload = {"text": summary, "summary": summary, "event": "test"}
    error, _ = _send_safely(AlertDelivery(channel=channel, payload=payload))
    at = timezone.now()
    if error:
        AlertChannel.objects.filter(pk=channel.pk).update(last_failure_at=at, last_error=error)
    else:
        AlertChannel.objects.filter(pk=channel.pk).update(last_success_at=at)
    return error
