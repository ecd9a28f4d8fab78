"""Small formatting filters for the dashboards."""

from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def duration(seconds: float | None) -> str:
    """Human-readable age: 42s, 3m 05s, 2h 10m, 4d 3h."""
    if seconds is None:
        return "—"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


@register.filter
def ms(value: int | None) -> str:
    if value is None:
        return "—"
    return duration(value / 1000)


@register.filter
def status_class(status: str) -> str:
    return f"status-{status.lower()}"


@register.filter
def get_item(mapping: dict | None, key):
    return (mapping or {}).get(key)
