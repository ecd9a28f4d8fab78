"""Post-onboarding checklists (issue 6): services, selectors and the automatic checks.

Every write goes through a service here and leaves a ChecklistEvent in the same
transaction. State changes are conditional UPDATEs (the expected state is in the WHERE
clause), so a double-submitted form or two runpool hosts evaluating at once cannot
sign an item twice or log one change twice.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone

from onboarding.checklist_models import (
    DEFAULT_TEMPLATE,
    DEFAULT_TEMPLATE_NAME,
    Check,
    Checklist,
    ChecklistEvent,
    ChecklistItem,
    ChecklistTemplate,
    CheckResult,
    DoneHow,
    ItemKind,
    TemplateItem,
)
from onboarding.models import Customer
from pool.models import LagSample, Session

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

    User = AbstractBaseUser | AnonymousUser

logger = logging.getLogger(__name__)

Action = ChecklistEvent.Action

OVERRIDE_PERMISSION = "onboarding.override_check"
START_PERMISSION = "onboarding.start_checklist"


class ChecklistError(ValueError):
    """A change that the item's kind or state does not allow (shown to the user)."""


# --- Permissions -----------------------------------------------------------------


def item_may_sign(*, user: User, item: ChecklistItem) -> bool:
    """Sign or un-sign a manual item: ops items need sign_ops_item, admin items sign_admin_item."""
    return user.is_authenticated and user.has_perm(item.sign_permission)


def item_may_override(*, user: User, item: ChecklistItem) -> bool:
    return user.is_authenticated and item.is_automatic and user.has_perm(OVERRIDE_PERMISSION)


def item_may_withdraw(*, user: User, item: ChecklistItem) -> bool:
    """May withdraw this item's sign-off or override (whatever its state right now):
    the same permission that signs or overrides it."""
    if item.is_automatic:
        return item_may_override(user=user, item=item)
    return item_may_sign(user=user, item=item)


def item_may_unsign(*, user: User, item: ChecklistItem) -> bool:
    # A system verification is withdrawn by nobody: the figures said so.
    if item.done_how not in (DoneHow.SIGNED, DoneHow.OVERRIDDEN):
        return False
    return item_may_withdraw(user=user, item=item)


# --- Audit log -------------------------------------------------------------------


def checklist_event_record(
    *,
    customer: Customer,
    action: str,
    subject: str,
    by: User | None = None,
    item: ChecklistItem | None = None,
    before: str = "",
    after: str = "",
    note: str = "",
    at: datetime | None = None,
) -> ChecklistEvent:
    """Append one row to the audit log (the only way rows get there)."""
    person = by if by is not None and by.is_authenticated else None
    return ChecklistEvent.objects.create(
        customer=customer,
        item=item,
        at=at or timezone.now(),
        by=person,
        actor=person.get_username() if person else "system",
        action=action,
        subject=subject[:200],
        before=before[:500],
        after=after[:500],
        note=note,
    )


# --- Starting a checklist ----------------------------------------------------------


def checklist_template_default() -> ChecklistTemplate:
    template = ChecklistTemplate.objects.filter(is_default=True).first()
    if template is not None:
        return template
    logger.warning("no default checklist template; recreating %r", DEFAULT_TEMPLATE_NAME)
    template, created = ChecklistTemplate.objects.get_or_create(name=DEFAULT_TEMPLATE_NAME)
    if created or not template.items.exists():
        TemplateItem.objects.bulk_create(
            TemplateItem(
                template=template,
                position=position,
                title=title,
                guidance=guidance,
                due_days=due_days,
                signer=signer,
                kind=ItemKind.AUTOMATIC if check_name else ItemKind.MANUAL,
                check_name=check_name,
            )
            for position, (title, guidance, due_days, signer, check_name) in enumerate(
                DEFAULT_TEMPLATE, 1
            )
        )
    ChecklistTemplate.objects.filter(pk=template.pk).update(is_default=True)
    return template


def checklist_start(
    *,
    customer: Customer,
    by: User | None = None,
    started_at: datetime | None = None,
    template: ChecklistTemplate | None = None,
) -> Checklist:
    """Start the customer's checklist from a template (the default one unless given).

    Idempotent: a customer has one checklist, and starting it again returns that one.
    Due dates are the onboarding start (started_at, default now) plus each item's due_days.
    """
    now = timezone.now()
    started_at = started_at or now
    with transaction.atomic():
        # Serializes concurrent starts for the same customer (a double-clicked button).
        Customer.objects.select_for_update().filter(pk=customer.pk).first()
        existing = Checklist.objects.filter(customer=customer).first()
        if existing is not None:
            return existing
        template = template or checklist_template_default()
        checklist = Checklist.objects.create(
            customer=customer,
            template=template,
            template_name=template.name,
            started_at=started_at,
            started_by=by if by is not None and by.is_authenticated else None,
        )
        items = ChecklistItem.objects.bulk_create(
            ChecklistItem(
                checklist=checklist,
                position=t.position,
                title=t.title,
                guidance=t.guidance,
                due_at=started_at + timedelta(days=t.due_days),
                signer=t.signer,
                kind=t.kind,
                check_name=t.check_name,
            )
            for t in template.items.order_by("position", "id")
        )
        checklist_event_record(
            customer=customer,
            action=Action.STARTED,
            subject="checklist",
            by=by,
            before="no checklist",
            after=f"{len(items)} items from “{template.name}”",
            at=now,
        )
    return checklist


# --- Signing, un-signing, overriding ---------------------------------------------


def checklist_item_sign(
    *, item: ChecklistItem, by: User, note: str = "", now: datetime | None = None
) -> bool:
    """A person signs a manual item off. Returns False if it was already done."""
    if not item_may_sign(user=by, item=item):
        raise PermissionDenied("you may not sign this item")
    if item.is_automatic:
        raise ChecklistError("Automatic items are verified by the system; an admin may override.")
    return _item_close(item=item, how=DoneHow.SIGNED, by=by, note=note, now=now)


def checklist_item_override(
    *, item: ChecklistItem, by: User, reason: str, now: datetime | None = None
) -> bool:
    """An admin marks a failing (or unverifiable) automatic item done, with a reason."""
    if not item_may_override(user=by, item=item):
        raise PermissionDenied("you may not override this item")
    if not reason.strip():
        raise ChecklistError("An override needs a reason.")
    return _item_close(item=item, how=DoneHow.OVERRIDDEN, by=by, note=reason, now=now)


def checklist_item_unsign(
    *, item: ChecklistItem, by: User, reason: str, now: datetime | None = None
) -> bool:
    """Withdraw a sign-off or an override; the item is open again. Needs a reason."""
    if not item_may_withdraw(user=by, item=item):
        raise PermissionDenied("you may not withdraw this sign-off")
    if not reason.strip():
        raise ChecklistError("Un-signing needs a reason.")
    if item.done_how == DoneHow.VERIFIED:
        raise ChecklistError("The system verified this item from live figures.")
    if not item.is_done:
        return False  # already open (a second click on the same form)
    now = now or timezone.now()
    before = _done_label(item)
    with transaction.atomic():
        reopened = ChecklistItem.objects.filter(
            pk=item.pk, done_at=item.done_at, done_how=item.done_how
        ).update(done_how="", done_at=None, done_by=None, note="")
        if not reopened:
            return False
        item.done_how, item.done_at, item.done_by, item.note = "", None, None, ""
        customer = item.checklist.customer
        checklist_event_record(
            customer=customer,
            item=item,
            action=Action.UNSIGNED,
            subject=item.title,
            by=by,
            before=before,
            after=item.state_label,
            note=reason,
            at=now,
        )
        if Checklist.objects.filter(pk=item.checklist_id, completed_at__isnull=False).update(
            completed_at=None
        ):
            checklist_event_record(
                customer=customer,
                action=Action.REOPENED,
                subject="checklist",
                by=by,
                before="complete",
                after=f"open again: {item.title}",
                at=now,
            )
    return True


def _item_close(
    *,
    item: ChecklistItem,
    how: str,
    by: User | None,
    note: str,
    now: datetime | None,
    before: str | None = None,
) -> bool:
    now = now or timezone.now()
    before = before if before is not None else item.state_label
    person = by if by is not None and by.is_authenticated else None
    with transaction.atomic():
        closed = ChecklistItem.objects.filter(pk=item.pk, done_at__isnull=True).update(
            done_how=how, done_at=now, done_by=person, note=note.strip()
        )
        if not closed:
            return False
        item.done_how, item.done_at, item.done_by, item.note = how, now, person, note.strip()
        action = {
            DoneHow.SIGNED: Action.SIGNED,
            DoneHow.OVERRIDDEN: Action.OVERRIDDEN,
            DoneHow.VERIFIED: Action.VERIFIED,
        }[how]
        checklist_event_record(
            customer=item.checklist.customer,
            item=item,
            action=action,
            subject=item.title,
            by=by,
            before=before,
            after=_done_label(item),
            note=note.strip(),
            at=now,
        )
        _checklist_complete_if_done(checklist=item.checklist, by=by, now=now)
    return True


def _checklist_complete_if_done(*, checklist: Checklist, by: User | None, now: datetime) -> None:
    if checklist.items.filter(done_at__isnull=True).exists():
        return
    if Checklist.objects.filter(pk=checklist.pk, completed_at__isnull=True).update(
        completed_at=now
    ):
        total = checklist.items.count()
        checklist_event_record(
            customer=checklist.customer,
            action=Action.COMPLETED,
            subject="checklist",
            by=by,
            before=f"{total - 1} of {total} done",
            after=f"{total} of {total} done",
            at=now,
        )


def _done_label(item: ChecklistItem) -> str:
    if not item.is_done:
        return item.state_label
    who = item.done_by.get_username() if item.done_by_id else "system"
    if item.done_how == DoneHow.VERIFIED:
        return f"verified: {item.evidence}" if item.evidence else "verified"
    return f"{item.get_done_how_display()} by {who}"


# --- Automatic checks ----------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    result: str  # a CheckResult
    text: str
    figure: float | None = None
    measured_at: datetime | None = None


LAG_WINDOW = timedelta(hours=24)
# Samples come every LagSample.RAW seconds; a gap longer than this means nobody was
# measuring (runpool down), and a window with a hole is not "continuously" within limits.
LAG_MAX_GAP = timedelta(seconds=60)


def check_first_sessions(*, customer: Customer, now: datetime) -> Evidence:
    first = (
        Session.objects.filter(customer=customer, processed_at__isnull=False)
        .order_by("processed_at")
        .values_list("processed_at", flat=True)
        .first()
    )
    if first is not None:
        total = Customer.objects.values_list("processed_total", flat=True).get(pk=customer.pk)
        return Evidence(
            CheckResult.PASS,
            f"first session processed at {first:%Y-%m-%d %H:%M} UTC; {total} processed so far",
            figure=total,
            measured_at=now,
        )
    received = Session.objects.filter(customer=customer).exists()
    text = "sessions received, none processed yet" if received else "no sessions received yet"
    return Evidence(CheckResult.FAIL, text, figure=0, measured_at=now)


def check_lag_24h(*, customer: Customer, now: datetime) -> Evidence:
    """Raw samples and 5-minute rollups (max lag) must cover the last 24 h, none at or above
    the warn threshold (the level at which the dashboard shows WARN)."""
    start = now - LAG_WINDOW
    # A rollup that began up to 5 minutes before the window still covers its start.
    in_window = Q(resolution_s=LagSample.RAW, at__gte=start) | Q(
        resolution_s=LagSample.ROLLUP, at__gt=start - timedelta(seconds=LagSample.ROLLUP)
    )
    samples = LagSample.objects.filter(in_window, customer=customer, at__lte=now)
    worst = samples.aggregate(m=Max("lag_s"))["m"]
    if worst is None:
        return Evidence(CheckResult.FAIL, "no lag samples in the last 24 h (is runpool running?)")
    latest = samples.aggregate(m=Max("at"))["m"]
    if worst >= customer.warn_lag_s:
        peak_at = samples.filter(lag_s=worst).order_by("-at").values_list("at", flat=True).first()
        return Evidence(
            CheckResult.FAIL,
            f"lag reached {worst:.0f}s at {peak_at:%Y-%m-%d %H:%M} UTC "
            f"(warn at {customer.warn_lag_s}s)",
            figure=worst,
            measured_at=latest,
        )
    uncovered = _uncovered(samples.order_by("at").values_list("at", "resolution_s"), start, now)
    if uncovered:
        gap_start, gap_end = uncovered
        return Evidence(
            CheckResult.FAIL,
            f"max lag {worst:.0f}s, but no samples from {gap_start:%Y-%m-%d %H:%M} "
            f"to {gap_end:%Y-%m-%d %H:%M} UTC",
            figure=worst,
            measured_at=latest,
        )
    return Evidence(
        CheckResult.PASS,
        f"max lag {worst:.0f}s over the last 24 h (warn at {customer.warn_lag_s}s)",
        figure=worst,
        measured_at=latest,
    )


def _uncovered(rows, start: datetime, end: datetime) -> tuple[datetime, datetime] | None:
    """The first hole longer than LAG_MAX_GAP in [start, end], or None if covered.
    A sample at `at` of resolution r covers [at, at + r)."""
    covered_until = start
    for at, resolution in rows.iterator(chunk_size=2000):
        if at - covered_until > LAG_MAX_GAP:
            return covered_until, at
        covered_until = max(covered_until, at + timedelta(seconds=resolution))
    if end - covered_until > LAG_MAX_GAP:
        return covered_until, end
    return None


def check_alert_channel(*, customer: Customer, now: datetime) -> Evidence:
    # Alerting is another issue; until onboarding.alerts exists this cannot be verified.
    try:
        alerts = importlib.import_module("onboarding.alerts")
    except ModuleNotFoundError as exc:
        if exc.name != "onboarding.alerts":
            raise
        alerts = None
    has_channel = getattr(alerts, "customer_has_alert_channel", None)
    if has_channel is None:
        return Evidence(
            CheckResult.UNKNOWN, "alerting (onboarding.alerts) is not there yet", None, now
        )
    if has_channel(customer):
        return Evidence(
            CheckResult.PASS, "a lag alert rule with a notification channel exists", 1, now
        )
    return Evidence(
        CheckResult.FAIL, "no lag alert rule with a notification channel for this customer", 0, now
    )


CHECKS: dict[str, Callable[..., Evidence]] = {
    Check.FIRST_SESSIONS: check_first_sessions,
    Check.LAG_24H: check_lag_24h,
    Check.ALERT_CHANNEL: check_alert_channel,
}


def checklist_checks_evaluate(*, now: datetime) -> int:
    """Evaluate every open automatic item of every open checklist; returns how many.

    Steps per item: run its check; store the evidence; if the result changed, log it
    (only changes, so the log does not grow every 30 s); if it passes, the item is
    verified and done. An error in one check is logged and leaves the others running.
    """
    items = (
        ChecklistItem.objects.filter(
            kind=ItemKind.AUTOMATIC, done_at__isnull=True, checklist__completed_at__isnull=True
        )
        .select_related("checklist__customer")
        .order_by("checklist_id", "position")
    )
    evaluated = 0
    for item in items:
        try:
            evidence = CHECKS[item.check_name](customer=item.checklist.customer, now=now)
        except Exception as exc:  # one broken check must not stop the others
            logger.exception("checklist check %s failed for item %s", item.check_name, item.pk)
            evidence = Evidence(CheckResult.UNKNOWN, f"the check failed to run: {exc}"[:500])
        checklist_item_record_evidence(item=item, evidence=evidence, now=now)
        evaluated += 1
    return evaluated


def checklist_item_record_evidence(
    *, item: ChecklistItem, evidence: Evidence, now: datetime
) -> None:
    before = item.get_check_result_display()
    with transaction.atomic():
        changed = ChecklistItem.objects.filter(
            pk=item.pk, done_at__isnull=True, check_result=item.check_result
        ).update(
            check_result=evidence.result,
            evidence=evidence.text[:500],
            figure=evidence.figure,
            measured_at=evidence.measured_at,
            evaluated_at=now,
        )
        if not changed:
            return  # another host evaluated it meanwhile, or someone overrode it
        item.check_result = evidence.result
        item.evidence = evidence.text[:500]
        item.figure, item.measured_at, item.evaluated_at = (
            evidence.figure,
            evidence.measured_at,
            now,
        )
        if evidence.result == CheckResult.PASS:
            # The verification event carries the evidence; no separate "checked" row.
            _item_close(item=item, how=DoneHow.VERIFIED, by=None, note="", now=now, before=before)
        elif before != item.get_check_result_display():
            checklist_event_record(
                customer=item.checklist.customer,
                item=item,
                action=Action.CHECKED,
                subject=item.title,
                before=before,
                after=f"{item.get_check_result_display()}: {evidence.text}",
                at=now,
            )


# --- Selectors -----------------------------------------------------------------------


@dataclass
class ChecklistRow:
    checklist: Checklist
    overdue: list[ChecklistItem]
    upcoming: ChecklistItem | None  # the open item due next that is not overdue yet

    @property
    def customer(self) -> Customer:
        return self.checklist.customer


def checklist_rows(*, now: datetime) -> list[ChecklistRow]:
    """Open checklists, those with overdue items first (most overdue first), then by the
    next due date. Two queries: checklists with customers, and their items."""
    checklists = (
        Checklist.objects.filter(completed_at__isnull=True)
        .select_related("customer")
        .prefetch_related("items")
    )
    rows = []
    for checklist in checklists:
        waiting = [i for i in checklist.item_list if not i.is_done and i.due_at >= now]
        rows.append(
            ChecklistRow(
                checklist=checklist,
                overdue=sorted(checklist.overdue_items(now), key=lambda i: i.due_at),
                upcoming=min(waiting, key=lambda i: (i.due_at, i.position), default=None),
            )
        )
    far = now + timedelta(days=36500)

    def order(row: ChecklistRow) -> tuple:
        if row.overdue:
            return (0, min(i.due_at for i in row.overdue), row.customer.name)
        return (1, row.upcoming.due_at if row.upcoming else far, row.customer.name)

    return sorted(rows, key=order)


def checklists_completed(*, limit: int = 10) -> list[Checklist]:
    return list(
        Checklist.objects.filter(completed_at__isnull=False)
        .select_related("customer")
        .prefetch_related("items")
        .order_by("-completed_at")[:limit]
    )


def customers_not_onboarded() -> list[Customer]:
    return list(Customer.objects.filter(checklist__isnull=True).order_by("name"))


def checklist_items_for(*, checklist: Checklist, user: User) -> list[ChecklistItem]:
    """The items with what this user may do to each (for the forms shown in place)."""
    items = list(checklist.items.select_related("done_by"))
    for item in items:
        item.may_sign = (
            not item.is_done and not item.is_automatic and item_may_sign(user=user, item=item)
        )
        item.may_override = not item.is_done and item_may_override(user=user, item=item)
        item.may_unsign = item.is_done and item_may_unsign(user=user, item=item)
    # The progress bar and the rows must agree, so the checklist reuses these objects.
    checklist.item_list = items
    return items


def checklist_events(*, customer: Customer, limit: int = 200) -> list[ChecklistEvent]:
    return list(ChecklistEvent.objects.filter(customer=customer)[:limit])
