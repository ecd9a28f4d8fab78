"""Alert state for other pages: the overview's banner and a customer row's badge."""

from __future__ import annotations

from django import template

from onboarding.alert_models import Alert
from onboarding.alerts import alerts_open_summary
from onboarding.models import Customer

register = template.Library()


@register.simple_tag
def open_alerts_summary() -> dict:
    """{% open_alerts_summary as summary %}: count, critical, unacknowledged, alerts (top 3)."""
    return alerts_open_summary()


@register.inclusion_tag("onboarding/alerts.html#alert-badge")
def alert_badge(alerts: dict[int, Alert] | None, customer: Customer) -> dict:
    """{% alert_badge alerts row.customer %} with alerts = open_alerts_by_customer():
    the customer's worst open alert as a badge linking to it, or nothing."""
    return {"alert": (alerts or {}).get(customer.pk)}
