"""Lag alerts (issue 7): rules, channels, alerts with their timeline, and deliveries.

Alerts are opened, escalated, reminded and resolved by onboarding.alerts, which runpool
calls every few seconds; every notification is an AlertDelivery row that a delivery pass
sends and retries, so a failing channel never holds up evaluation or the other channels.
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import models
from django.db.models import Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

__all__ = [
    "Alert",
    "AlertChannel",
    "AlertDelivery",
    "AlertEvent",
    "AlertKind",
    "AlertRule",
    "ChannelKind",
    "DeliveryStatus",
    "NotifyEvent",
    "Severity",
]


class AlertRule(models.Model):
    """Lag alerting for one customer, or, with no customer, the global default.

    A blank threshold falls back to the global default rule, then to the customer's own
    dashboard thresholds (Customer.warn_lag_s...), so that out of the box alerts fire on
    the statuses the overview shows. 0 turns that alert off.
    """

    customer = models.OneToOneField(
        "onboarding.Customer",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="alert_rule",
        help_text="Empty: the global default, for every customer without a rule of its own.",
    )
    enabled = models.BooleanField(
        default=True, help_text="Off on a customer's rule: no lag alerts for that customer."
    )
    warn_lag_s = models.PositiveIntegerField(
        "warn lag (s)",
        null=True,
        blank=True,
        help_text="Blank: the global default, else the customer's warn lag. 0: no WARN alerts.",
    )
    critical_lag_s = models.PositiveIntegerField(
        "critical lag (s)",
        null=True,
        blank=True,
        help_text="Blank: the global default, else the customer's critical lag. 0: never critical.",
    )
    stall_after_s = models.PositiveIntegerField(
        "stalled after (s)",
        null=True,
        blank=True,
        help_text="A backlog with nothing processed for this long. Blank: the global default, "
        "else the customer's. 0: no STALLED alerts.",
    )
    grace_s = models.PositiveIntegerField(
        "grace period (s)",
        null=True,
        blank=True,
        help_text="A threshold must stay crossed this long before the alert fires "
        "(blank: the global default, else 60).",
    )
    remind_every_s = models.PositiveIntegerField(
        "remind every (s)",
        null=True,
        blank=True,
        help_text="Reminders while an alert stays open and unacknowledged "
        "(blank: the global default, else 1800). 0: no reminders.",
    )
    pool_down_after_s = models.PositiveIntegerField(
        "pool down after (s)",
        null=True,
        blank=True,
        help_text="Global rule only: a cluster without a runpool heartbeat for this long "
        "is down (blank: 60). 0: no pool-down alerts.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = [models.F("customer__name").asc(nulls_first=True)]
        constraints = [
            models.UniqueConstraint(
                Coalesce("customer", Value(0)),
                name="alertrule_one_per_scope",
                violation_error_message="There is already a rule for this scope.",
            )
        ]

    def __str__(self) -> str:
        return f"alert rule for {self.customer}" if self.customer_id else "global alert rule"

    def clean(self) -> None:
        if self.customer_id and self.pool_down_after_s is not None:
            message = "Pool-down alerts are per cluster: set this on the global rule."
            raise ValidationError({"pool_down_after_s": message})


class ChannelKind(models.TextChoices):
    EMAIL = "email", "email"
    WEBHOOK = "webhook", "webhook (JSON, Slack-compatible)"


class AlertChannel(models.Model):
    """Where notifications go: for every alert (global) or for one customer's alerts."""

    name = models.CharField(max_length=100)
    customer = models.ForeignKey(
        "onboarding.Customer",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="alert_channels",
        help_text="Empty: notified of every alert, pool-down alerts included.",
    )
    kind = models.CharField(max_length=10, choices=ChannelKind.choices)
    target = models.CharField(
        max_length=500, help_text="Email addresses separated by commas, or the webhook URL."
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    # Kept by the delivery pass so a broken channel shows without reading deliveries.
    last_success_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_failure_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_error = models.TextField(blank=True, editable=False)

    class Meta:
        ordering = [models.F("customer__name").asc(nulls_first=True), "name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_kind_display()})"

    @property
    def recipients(self) -> list[str]:
        return [part.strip() for part in self.target.split(",") if part.strip()]

    @property
    def target_display(self) -> str:
        """Webhook URLs carry their secret in the path (Slack's do): show the host only."""
        if self.kind == ChannelKind.WEBHOOK:
            parts = urlsplit(self.target.strip())
            return f"{parts.scheme}://{parts.netloc}/…"
        return ", ".join(self.recipients)

    @property
    def is_failing(self) -> bool:
        if self.last_failure_at is None:
            return False
        return self.last_success_at is None or self.last_failure_at > self.last_success_at

    def clean(self) -> None:
        if self.kind == ChannelKind.EMAIL:
            if not self.recipients:
                raise ValidationError({"target": "Give at least one email address."})
            for address in self.recipients:
                try:
                    validate_email(address)
                except ValidationError:
                    raise ValidationError(
                        {"target": f"{address!r} is not an email address."}
                    ) from None
        elif self.kind == ChannelKind.WEBHOOK:
            parts = urlsplit(self.target.strip())
            if parts.scheme not in {"http", "https"} or not parts.netloc:
                raise ValidationError({"target": "Give an http(s) URL."})


class AlertKind(models.TextChoices):
    LAG = "lag", "lag"
    STALLED = "stalled", "stalled"
    POOL_DOWN = "pool_down", "pool down"


class Severity(models.TextChoices):
    WARN = "warn", "WARN"
    CRITICAL = "critical", "CRITICAL"


SEVERITY_RANK = {Severity.WARN: 1, Severity.CRITICAL: 2}


class Alert(models.Model):
    """One episode of a bad condition, from opening to resolution.

    Timing fields answer "how long until someone was told": condition_started_at is when
    the threshold was crossed, grace_ended_at when the alert became due (crossing + grace),
    first_notified_at when the first channel accepted a notification.
    """

    kind = models.CharField(max_length=10, choices=AlertKind.choices)
    customer = models.ForeignKey(
        "onboarding.Customer",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="alerts",
    )
    cluster = models.ForeignKey(
        "pool.WorkerCluster",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="alerts",
        help_text="Pool-down alerts only.",
    )
    severity = models.CharField(max_length=10, choices=Severity.choices)
    threshold_s = models.PositiveIntegerField(help_text="The threshold of the current severity.")
    value_s = models.FloatField(default=0, help_text="Lag (or heartbeat age) when last evaluated.")
    peak_value_s = models.FloatField(default=0)
    backlog = models.PositiveIntegerField(default=0)
    condition_started_at = models.DateTimeField()
    grace_ended_at = models.DateTimeField()
    opened_at = models.DateTimeField(db_index=True)
    escalated_at = models.DateTimeField(null=True, blank=True)
    downgrade_since = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Since when the condition has been below this severity; the alert steps "
        "down once that has lasted the grace period.",
    )
    first_notified_at = models.DateTimeField(null=True, blank=True)
    last_notified_at = models.DateTimeField(null=True, blank=True)
    next_reminder_at = models.DateTimeField(null=True, blank=True)
    reminders_sent = models.PositiveIntegerField(default=0)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-opened_at", "-id"]
        permissions = [("acknowledge_alert", "Can acknowledge alerts (stops reminders)")]
        constraints = [
            # Deduplication holds even with several runpool hosts evaluating at once.
            models.UniqueConstraint(
                fields=["customer", "kind"],
                condition=Q(resolved_at=None, customer__isnull=False),
                name="alert_one_open_per_customer",
            ),
            models.UniqueConstraint(
                fields=["cluster", "kind"],
                condition=Q(resolved_at=None, cluster__isnull=False),
                name="alert_one_open_per_cluster",
            ),
            models.CheckConstraint(
                condition=(
                    Q(kind=AlertKind.POOL_DOWN, cluster__isnull=False, customer=None)
                    | (~Q(kind=AlertKind.POOL_DOWN) & Q(customer__isnull=False, cluster=None))
                ),
                name="alert_subject_matches_kind",
            ),
        ]
        indexes = [
            models.Index(fields=["opened_at"], condition=Q(resolved_at=None), name="alert_open_idx")
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.label} {self.subject_name}"

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None

    @property
    def subject_name(self) -> str:
        if self.kind == AlertKind.POOL_DOWN:
            return f"cluster {self.cluster.name}"
        return self.customer.name

    @property
    def label(self) -> str:
        """What the badge says: the dashboard's words where they exist."""
        if self.kind == AlertKind.STALLED:
            return "STALLED"
        if self.kind == AlertKind.POOL_DOWN:
            return "POOL DOWN"
        return self.get_severity_display()

    @property
    def badge_class(self) -> str:
        if self.kind == AlertKind.STALLED:
            return "status-stalled"
        return "status-critical" if self.severity == Severity.CRITICAL else "status-warn"

    @property
    def notification_delay_s(self) -> float | None:
        """Measured: from the alert becoming due to the first notification delivered."""
        if self.first_notified_at is None:
            return None
        return max(0.0, (self.first_notified_at - self.grace_ended_at).total_seconds())

    def duration_s(self, now: datetime | None = None) -> float:
        end = self.resolved_at or now or timezone.now()
        return (end - self.opened_at).total_seconds()


class AlertEvent(models.Model):
    """The alert's timeline: what happened, when, and who did it (if a person did)."""

    class Action(models.TextChoices):
        OPENED = "opened"
        ESCALATED = "escalated"
        DOWNGRADED = "downgraded"
        REMINDED = "reminded"
        ACKNOWLEDGED = "acknowledged"
        RESOLVED = "resolved"

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField()
    action = models.CharField(max_length=16, choices=Action.choices)
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    detail = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["at", "id"]


class NotifyEvent(models.TextChoices):
    OPENED = "opened"
    ESCALATED = "escalated"
    DOWNGRADED = "downgraded"
    REMINDER = "reminder"
    RESOLVED = "resolved"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "pending"
    SENT = "sent", "sent"
    FAILED = "failed", "gave up"
    CANCELLED = "cancelled", "not needed any more"


class AlertDelivery(models.Model):
    """One notification to one channel. The message is frozen when queued, so a retry
    sends what was true then; the delivery pass claims a due row by a conditional UPDATE."""

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.ForeignKey(AlertChannel, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=10, choices=NotifyEvent.choices)
    payload = models.JSONField(help_text="The webhook body; email uses its subject and text.")
    created_at = models.DateTimeField()
    status = models.CharField(
        max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "alert deliveries"
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status="pending"),
                name="alertdelivery_due_idx",
            )
        ]

    def __str__(self) -> str:
        return f"{self.event} of alert #{self.alert_id} to {self.channel}"

    @property
    def is_failing(self) -> bool:
        return bool(self.last_error) and self.status in {
            DeliveryStatus.PENDING,
            DeliveryStatus.FAILED,
        }
