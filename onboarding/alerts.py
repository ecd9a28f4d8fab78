"""Lag alerts (issue 7): which rule applies, evaluation, services and selectors.

runpool calls alerts_evaluate(now=...) every few seconds. One pass:
1. loads the rules once and resolves each customer's (its own rule, then the global
   rule, then the customer's dashboard thresholds);
2. compares the lag figures (onboarding.lag.lag_rows, a fixed number of queries) and the
   clusters' heartbeats with them, and opens, escalates, reminds or resolves alerts. At
   most one alert per customer (or cluster) and kind is open: the database enforces it,
   so several runpool hosts may evaluate at once;
3. queues one AlertDelivery per enabled channel for each of those events, in the same
   transaction as the event;
4. sends the due deliveries (onboarding.alert_delivery): in parallel, with short
   timeouts; a failure is recorded and retried later with backoff, and never raises.

Conditions are derived from the figures alone (lag = now - oldest ready_at), so "when did
lag cross the threshold" is exact and no pending state needs storing between passes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING

from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.db.models import F, Max, Q, QuerySet
from django.utils import timezone

from onboarding.alert_delivery import (
    alert_deliveries_send,
    alert_text,
    deliveries_queue,
)
from onboarding.alert_models import (
    SEVERITY_RANK,
    Alert,
    AlertChannel,
    AlertDelivery,
    AlertEvent,
    AlertKind,
    AlertRule,
    DeliveryStatus,
    NotifyEvent,
    Severity,
)
from onboarding.lag import LagRow, lag_rows
from onboarding.models import Customer
from pool.models import ClusterHeartbeat, WorkerCluster

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

logger = logging.getLogger("onboarding.alerts")

DEFAULT_GRACE_S = 60
DEFAULT_REMIND_EVERY_S = 30 * 60
DEFAULT_POOL_DOWN_AFTER_S = 60
DATABASE_DOWN = (OperationalError, InterfaceError)


# --- Rules -----------------------------------------------------------------------------


@dataclass(frozen=True)
class EffectiveRule:
    """A customer's rule with every blank filled in; 0 means that alert is off."""

    enabled: bool
    warn_lag_s: int
    critical_lag_s: int
    stall_after_s: int
    grace_s: int
    remind_every_s: int
    source: str

    @property
    def lag_thresholds(self) -> list[tuple[str, int]]:
        levels = [(Severity.WARN, self.warn_lag_s), (Severity.CRITICAL, self.critical_lag_s)]
        return sorted(((sev, s) for sev, s in levels if s > 0), key=lambda level: level[1])

    @property
    def alerts_on_something(self) -> bool:
        return self.enabled and bool(self.lag_thresholds or self.stall_after_s)


@dataclass
class RuleBook:
    default: AlertRule | None
    by_customer: dict[int, AlertRule]

    def _pick(self, layers: list[AlertRule], name: str, fallback: int) -> int:
        for rule in layers:
            value = getattr(rule, name)
            if value is not None:
                return value
        return fallback

    def for_customer(self, customer: Customer) -> EffectiveRule:
        own = self.by_customer.get(customer.id)
        layers = [rule for rule in (own, self.default) if rule is not None]
        enabled = layers[0].enabled if layers else True
        return EffectiveRule(
            enabled=enabled,
            warn_lag_s=self._pick(layers, "warn_lag_s", customer.warn_lag_s),
            critical_lag_s=self._pick(layers, "critical_lag_s", customer.critical_lag_s),
            stall_after_s=self._pick(layers, "stall_after_s", customer.stall_after_s),
            grace_s=self._pick(layers, "grace_s", DEFAULT_GRACE_S),
            remind_every_s=self._pick(layers, "remind_every_s", DEFAULT_REMIND_EVERY_S),
            source="customer rule" if own else "global rule" if self.default else "built-in",
        )

    @property
    def pool_down_after_s(self) -> int:
        if self.default is not None and not self.default.enabled:
            return 0
        return self._pick(
            [self.default] if self.default else [], "pool_down_after_s", DEFAULT_POOL_DOWN_AFTER_S
        )

    @property
    def default_remind_every_s(self) -> int:
        layers = [self.default] if self.default else []
        return self._pick(layers, "remind_every_s", DEFAULT_REMIND_EVERY_S)


def alert_rules_load(*, customer: Customer | None = None) -> RuleBook:
    """One query. A missing global rule means the built-in defaults (tests flush it)."""
    rules = AlertRule.objects.all()
    if customer is not None:
        rules = rules.filter(Q(customer=None) | Q(customer=customer))
    book = RuleBook(default=None, by_customer={})
    for rule in rules:
        if rule.customer_id is None:
            book.default = rule
        else:
            book.by_customer[rule.customer_id] = rule
    return book


def customer_has_alert_channel(customer: Customer) -> bool:
    """True when a lag rule applies to the customer and an enabled channel would be told."""
    rule = alert_rules_load(customer=customer).for_customer(customer)
    if not rule.alerts_on_something:
        return False
    return AlertChannel.objects.filter(
        Q(customer=None) | Q(customer=customer), enabled=True
    ).exists()


# --- Conditions ------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """One subject against one rule at `now`."""

    holds: bool  # bad now, grace period or not: keeps an open alert open
    severity: str | None = None  # the highest severity whose grace period is over
    threshold_s: int = 0  # that severity's threshold
    severity_due_at: datetime | None = None
    started_at: datetime | None = None  # when the first threshold was crossed
    due_at: datetime | None = None  # started_at + grace: when the alert fires
    value_s: float = 0.0
    backlog: int = 0
    reason: str = ""  # why it does not hold: the resolution's wording
    grace_s: int = 0  # how long a lower severity must last before an alert steps down


def lag_condition(*, row: LagRow, rule: EffectiveRule, now: datetime) -> Condition:
    if not rule.enabled:
        return Condition(holds=False, reason="alerting turned off for this customer")
    crossed = [(sev, s) for sev, s in rule.lag_thresholds if row.lag_s >= s]
    if not crossed:
        return Condition(holds=False, value_s=row.lag_s, reason="lag back under its threshold")
    oldest = now - timedelta(seconds=row.lag_s)
    grace = timedelta(seconds=rule.grace_s)
    due = [(sev, s) for sev, s in crossed if oldest + timedelta(seconds=s) + grace <= now]
    started = oldest + timedelta(seconds=crossed[0][1])
    severity, threshold = max(due, key=lambda level: SEVERITY_RANK[level[0]]) if due else (None, 0)
    return Condition(
        holds=True,
        severity=severity,
        threshold_s=threshold,
        severity_due_at=oldest + timedelta(seconds=threshold) + grace if due else None,
        started_at=started,
        due_at=started + grace,
        value_s=row.lag_s,
        backlog=row.backlog,
        grace_s=rule.grace_s,
    )


def stall_condition(*, row: LagRow, rule: EffectiveRule, now: datetime) -> Condition:
    """Burrow's STALL, as on the dashboard: a backlog and nothing processed for the window."""
    if not (rule.enabled and rule.stall_after_s):
        return Condition(holds=False, reason="stall alerts turned off for this customer")
    window = timedelta(seconds=rule.stall_after_s)
    last = row.last_processed_at
    if not row.backlog or row.lag_s < rule.stall_after_s:
        return Condition(holds=False, reason="backlog caught up")
    if last is not None and now - last < window:
        return Condition(holds=False, reason="sessions are being processed again")
    oldest = now - timedelta(seconds=row.lag_s)
    quiet_since = max(oldest, last) if last else oldest
    started = quiet_since + window
    due = started + timedelta(seconds=rule.grace_s)
    return Condition(
        holds=True,
        severity=Severity.CRITICAL if due <= now else None,
        threshold_s=rule.stall_after_s,
        severity_due_at=due,
        started_at=started,
        due_at=due,
        value_s=(now - quiet_since).total_seconds(),
        backlog=row.backlog,
    )


def pool_condition(
    *, cluster: WorkerCluster, last_seen: datetime | None, after_s: int, now: datetime
) -> Condition:
    if not after_s:
        return Condition(holds=False, reason="pool-down alerts turned off")
    # A cluster that never had a heartbeat has been without one since it was created.
    since = last_seen or cluster.created_at
    age = (now - since).total_seconds()
    if age < after_s:
        return Condition(holds=False, value_s=max(age, 0.0), reason="runpool heartbeats are back")
    due = since + timedelta(seconds=after_s)
    return Condition(
        holds=True,
        severity=Severity.CRITICAL,
        threshold_s=after_s,
        severity_due_at=due,
        started_at=since,
        due_at=due,
        value_s=age,
    )


# --- Evaluation ------------------------------------------------------------------------


def alerts_evaluate(*, now: datetime) -> dict[str, int]:
    """Evaluate every rule, then send what is due; returns what changed and was sent.

    Never raises for a failing channel, rule or subject: each is logged and the rest still
    runs. Only a database that went away propagates (OperationalError, InterfaceError), so
    that runpool's loop reconnects as it does for its own queries.
    """
    changes = ("opened", "escalated", "downgraded", "reminded", "resolved", "sent", "failed")
    counts = dict.fromkeys(changes, 0)
    rules = alert_rules_load()
    for name, step in (("lag", _lag_alerts_evaluate), ("pool-down", _pool_alerts_evaluate)):
        try:
            for change in step(rules=rules, now=now):
                counts[change] += 1
        except DATABASE_DOWN:
            raise
        except Exception:
            logger.exception("%s alert evaluation failed", name)
    try:
        counts["sent"], counts["failed"] = alert_deliveries_send(now=now)
    except DATABASE_DOWN:
        raise
    except Exception:
        logger.exception("alert delivery pass failed")
    return counts


def _open_alerts(**filters: object) -> QuerySet[Alert]:
    return Alert.objects.filter(resolved_at=None, **filters).select_related(
        "customer__cluster", "cluster"
    )


def _lag_alerts_evaluate(*, rules: RuleBook, now: datetime) -> list[str]:
    open_alerts = {(a.customer_id, a.kind): a for a in _open_alerts(customer__isnull=False)}
    changes = []
    for row in lag_rows(now=now):
        rule = rules.for_customer(row.customer)
        for kind, condition_of in (
            (AlertKind.LAG, lag_condition),
            (AlertKind.STALLED, stall_condition),
        ):
            changes.append(
                _alert_sync(
                    alert=open_alerts.get((row.customer.id, kind)),
                    condition_of=partial(condition_of, row=row, rule=rule, now=now),
                    subject={"kind": kind, "customer": row.customer},
                    remind_s=rule.remind_every_s,
                    now=now,
                )
            )
    return [c for c in changes if c]


def _pool_alerts_evaluate(*, rules: RuleBook, now: datetime) -> list[str]:
    last_seen = dict(
        ClusterHeartbeat.objects.values("cluster_id")
        .annotate(last=Max("seen_at"))
        .values_list("cluster_id", "last")
    )
    open_alerts = {a.cluster_id: a for a in _open_alerts(kind=AlertKind.POOL_DOWN)}
    changes = []
    for cluster in WorkerCluster.objects.all():
        changes.append(
            _alert_sync(
                alert=open_alerts.get(cluster.id),
                condition_of=partial(
                    pool_condition,
                    cluster=cluster,
                    last_seen=last_seen.get(cluster.id),
                    after_s=rules.pool_down_after_s,
                    now=now,
                ),
                subject={"kind": AlertKind.POOL_DOWN, "cluster": cluster},
                remind_s=rules.default_remind_every_s,
                now=now,
            )
        )
    return [c for c in changes if c]


def _alert_sync(
    *,
    alert: Alert | None,
    condition_of: Callable[[], Condition],
    subject: dict,
    remind_s: int,
    now: datetime,
) -> str:
    """Bring one subject's alert in line with its condition; returns what changed."""
    try:
        condition = condition_of()
        if alert is None:
            if condition.severity is None:
                return ""  # fine, or still within its grace period
            return "opened" if _alert_open(subject, condition, remind_s, now) else ""
        if not condition.holds:
            return "resolved" if _alert_resolve(alert, condition.reason, now) else ""
        if condition.severity and SEVERITY_RANK[condition.severity] > SEVERITY_RANK[alert.severity]:
            return "escalated" if _alert_escalate(alert, condition, remind_s, now) else ""
        lower = (
            condition.severity and SEVERITY_RANK[condition.severity] < SEVERITY_RANK[alert.severity]
        )
        if lower and _downgrade_due(alert, condition, now):
            return "downgraded" if _alert_downgrade(alert, condition, now) else ""
        if bool(lower) != (alert.downgrade_since is not None):
            # Below its severity since now, or back at it: the step-down clock (re)starts.
            Alert.objects.filter(pk=alert.pk).update(downgrade_since=now if lower else None)
        if (
            remind_s
            and alert.acknowledged_at is None
            and alert.next_reminder_at is not None
            and alert.next_reminder_at <= now
        ):
            return "reminded" if _alert_remind(alert, condition, remind_s, now) else ""
        Alert.objects.filter(pk=alert.pk).update(**_figures(alert, condition))
    except DATABASE_DOWN:
        raise
    except Exception:
        # One subject's surprise must not keep the others unevaluated.
        logger.exception("alert evaluation failed for %s", subject)
    return ""


def _figures(alert: Alert | None, condition: Condition) -> dict:
    peak = max(alert.peak_value_s if alert else 0.0, condition.value_s)
    return {"value_s": condition.value_s, "peak_value_s": peak, "backlog": condition.backlog}


def _alert_open(subject: dict, condition: Condition, remind_s: int, now: datetime) -> bool:
    try:
        with transaction.atomic():
            alert = Alert.objects.create(
                **subject,
                **_figures(None, condition),
                severity=condition.severity,
                threshold_s=condition.threshold_s,
                condition_started_at=condition.started_at,
                grace_ended_at=condition.due_at,
                opened_at=now,
                next_reminder_at=now + timedelta(seconds=remind_s) if remind_s else None,
            )
            text = alert_text(alert=alert, event=NotifyEvent.OPENED, now=now)
            detail = f"{text}; due since {condition.due_at:%H:%M:%S}"
            _event_record(alert=alert, action=AlertEvent.Action.OPENED, at=now, detail=detail)
            deliveries_queue(alert=alert, event=NotifyEvent.OPENED, now=now)
    except IntegrityError:
        return False  # another runpool host opened it first
    logger.warning("alert opened: %s", alert)
    return True


def _alert_escalate(alert: Alert, condition: Condition, remind_s: int, now: datetime) -> bool:
    with transaction.atomic():
        # A new severity is new news: it re-arms reminders even if the warning was acknowledged.
        won = Alert.objects.filter(pk=alert.pk, resolved_at=None, severity=alert.severity).update(
            **_figures(alert, condition),
            severity=condition.severity,
            threshold_s=condition.threshold_s,
            escalated_at=now,
            acknowledged_at=None,
            acknowledged_by=None,
            next_reminder_at=now + timedelta(seconds=remind_s) if remind_s else None,
        )
        if not won:
            return False
        alert.refresh_from_db()
        due = condition.severity_due_at
        detail = f"{alert.get_severity_display()} due since {due:%H:%M:%S} (grace included)"
        _event_record(alert=alert, action=AlertEvent.Action.ESCALATED, at=now, detail=detail)
        deliveries_queue(alert=alert, event=NotifyEvent.ESCALATED, now=now)
    logger.warning("alert escalated: %s", alert)
    return True


def _downgrade_due(alert: Alert, condition: Condition, now: datetime) -> bool:
    """A lower severity steps the alert down once it has lasted the grace period, the
    same hysteresis as on the way up: lag hovering around the critical threshold must
    not page, unpage and page again."""
    since = alert.downgrade_since
    return since is not None and since + timedelta(seconds=condition.grace_s) <= now


def _alert_downgrade(alert: Alert, condition: Condition, now: datetime) -> bool:
    with transaction.atomic():
        was = alert.get_severity_display()
        won = Alert.objects.filter(pk=alert.pk, resolved_at=None, severity=alert.severity).update(
            **_figures(alert, condition),
            severity=condition.severity,
            threshold_s=condition.threshold_s,
            downgrade_since=None,
        )
        if not won:
            return False
        alert.refresh_from_db()
        detail = (
            f"{alert.get_severity_display()}: back under the {was} threshold since "
            f"{now - timedelta(seconds=condition.grace_s):%H:%M:%S} (grace included)"
        )
        _event_record(alert=alert, action=AlertEvent.Action.DOWNGRADED, at=now, detail=detail)
        deliveries_queue(alert=alert, event=NotifyEvent.DOWNGRADED, now=now)
    logger.warning("alert downgraded: %s", alert)
    return True


def _alert_remind(alert: Alert, condition: Condition, remind_s: int, now: datetime) -> bool:
    with transaction.atomic():
        won = Alert.objects.filter(
            pk=alert.pk,
            resolved_at=None,
            acknowledged_at=None,
            next_reminder_at=alert.next_reminder_at,
        ).update(
            **_figures(alert, condition),
            next_reminder_at=now + timedelta(seconds=remind_s),
            reminders_sent=F("reminders_sent") + 1,
        )
        if not won:
            return False
        alert.refresh_from_db()
        detail = f"reminder {alert.reminders_sent}"
        _event_record(alert=alert, action=AlertEvent.Action.REMINDED, at=now, detail=detail)
        deliveries_queue(alert=alert, event=NotifyEvent.REMINDER, now=now)
    return True


def _alert_resolve(alert: Alert, reason: str, now: datetime) -> bool:
    with transaction.atomic():
        won = Alert.objects.filter(pk=alert.pk, resolved_at=None).update(
            resolved_at=now, resolution=reason[:200], next_reminder_at=None
        )
        if not won:
            return False
        alert.refresh_from_db()
        _event_record(alert=alert, action=AlertEvent.Action.RESOLVED, at=now, detail=reason)
        # Older news still waiting for a retry is superseded by the resolution notice.
        alert.deliveries.filter(status=DeliveryStatus.PENDING).update(
            status=DeliveryStatus.CANCELLED, next_attempt_at=None
        )
        deliveries_queue(alert=alert, event=NotifyEvent.RESOLVED, now=now)
    logger.warning("alert resolved: %s (%s)", alert, reason)
    return True


def alert_acknowledge(*, alert: Alert, by: AbstractBaseUser, now: datetime | None = None) -> bool:
    """Stop reminders for an open alert (until it escalates). False if nothing changed."""
    now = now or timezone.now()
    with transaction.atomic():
        won = Alert.objects.filter(pk=alert.pk, resolved_at=None, acknowledged_at=None).update(
            acknowledged_at=now, acknowledged_by=by
        )
        if won:
            _event_record(
                alert=alert,
                action=AlertEvent.Action.ACKNOWLEDGED,
                at=now,
                by=by,
                detail="reminders stop unless it escalates",
            )
            alert.deliveries.filter(
                status=DeliveryStatus.PENDING, event=NotifyEvent.REMINDER
            ).update(status=DeliveryStatus.CANCELLED, next_attempt_at=None)
    alert.refresh_from_db()
    return bool(won)


def _event_record(
    *,
    alert: Alert,
    action: str,
    at: datetime,
    by: AbstractBaseUser | None = None,
    detail: str = "",
) -> None:
    AlertEvent.objects.create(alert=alert, action=action, at=at, by=by, detail=detail[:300])


# --- Selectors -------------------------------------------------------------------------


def _rank(alert: Alert) -> tuple[int, int]:
    kinds = {AlertKind.POOL_DOWN: 0, AlertKind.LAG: 1, AlertKind.STALLED: 2}
    return SEVERITY_RANK[alert.severity], kinds[alert.kind]


def open_alerts_by_customer() -> dict[int, Alert]:
    """Customer id → its most severe open alert; a cluster's pool-down alert counts for
    each customer of that cluster. Two queries whatever the number of alerts."""
    result: dict[int, Alert] = {}
    pool_down: dict[int, Alert] = {}
    for alert in _open_alerts():
        if alert.customer_id is None:
            pool_down[alert.cluster_id] = alert
        elif alert.customer_id not in result or _rank(alert) > _rank(result[alert.customer_id]):
            result[alert.customer_id] = alert
    if pool_down:
        members = Customer.objects.filter(cluster_id__in=pool_down).values_list("id", "cluster_id")
        for customer_id, cluster_id in members:
            alert = pool_down[cluster_id]
            if customer_id not in result or _rank(alert) > _rank(result[customer_id]):
                result[customer_id] = alert
    return result


def alerts_open_summary() -> dict:
    """For the banner: how many open, how bad, and on whom (one query)."""
    alerts = sorted(_open_alerts(), key=lambda a: (_rank(a), a.opened_at), reverse=True)
    return {
        "count": len(alerts),
        "critical": sum(1 for a in alerts if a.severity == Severity.CRITICAL),
        "unacknowledged": sum(1 for a in alerts if a.acknowledged_at is None),
        "alerts": alerts[:3],
    }


def _for_customer(alerts: QuerySet[Alert], customer: Customer | None) -> QuerySet[Alert]:
    if customer is None:
        return alerts
    # The customer's own alerts and those of the cluster it is on (its work stops too).
    return alerts.filter(Q(customer=customer) | Q(cluster_id=customer.cluster_id))


def _with_deliveries(alerts: list[Alert]) -> list[Alert]:
    """Attach the latest delivery per channel (what the page shows) to each alert."""
    deliveries = AlertDelivery.objects.filter(alert__in=alerts).select_related("channel")
    latest: dict[tuple[int, int], AlertDelivery] = {}
    for delivery in deliveries.order_by("id"):
        latest[(delivery.alert_id, delivery.channel_id)] = delivery
    for alert in alerts:
        alert.channel_states = [d for (a, _), d in latest.items() if a == alert.pk]
    return alerts


def alerts_open(*, customer: Customer | None = None) -> list[Alert]:
    alerts = _for_customer(_open_alerts(), customer).select_related("acknowledged_by")
    return _with_deliveries(sorted(alerts, key=lambda a: (_rank(a), a.opened_at), reverse=True))


def alerts_history(*, customer: Customer | None = None) -> QuerySet[Alert]:
    resolved = Alert.objects.filter(resolved_at__isnull=False).select_related(
        "customer", "cluster", "acknowledged_by"
    )
    return _for_customer(resolved, customer).order_by("-resolved_at", "-id")


def alert_history_page(*, alerts: list[Alert]) -> list[Alert]:
    return _with_deliveries(alerts)


def alert_get(*, pk: int) -> Alert:
    alert = Alert.objects.select_related("customer__cluster", "cluster", "acknowledged_by").get(
        pk=pk
    )
    return _with_deliveries([alert])[0]


def alert_channels() -> QuerySet[AlertChannel]:
    return AlertChannel.objects.select_related("customer")
