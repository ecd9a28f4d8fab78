"""Post-onboarding checklists (issue 6): templates, running checklists and their audit log.

A running checklist copies its template's items when it starts, so editing a template
later changes only the checklists started after the edit. Every change to a running
checklist goes through onboarding.checklists, which writes a ChecklistEvent.
"""

from __future__ import annotations

from datetime import datetime
from functools import cached_property

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

__all__ = [
    "Check",
    "CheckResult",
    "Checklist",
    "ChecklistEvent",
    "ChecklistItem",
    "ChecklistTemplate",
    "DoneHow",
    "ItemKind",
    "Signer",
    "TemplateItem",
]


class Signer(models.TextChoices):
    OPS = "ops", "ops staff"
    ADMIN = "admin", "admins only"


class ItemKind(models.TextChoices):
    MANUAL = "manual", "manual sign-off"
    AUTOMATIC = "automatic", "automatic check"


class Check(models.TextChoices):
    """The named automatic checks; their code is in onboarding.checklists.CHECKS."""

    FIRST_SESSIONS = "first_sessions_processed", "first sessions received and processed"
    LAG_24H = "lag_within_warn_24h", "lag within the warn threshold for 24 h"
    ALERT_CHANNEL = "lag_alert_channel", "lag alert rule with a notification channel"


class CheckResult(models.TextChoices):
    PENDING = "pending", "not evaluated yet"
    PASS = "pass", "passing"
    FAIL = "fail", "failing"
    UNKNOWN = "unknown", "cannot be verified yet"


class DoneHow(models.TextChoices):
    SIGNED = "signed", "signed off"
    VERIFIED = "verified", "verified by the system"
    OVERRIDDEN = "overridden", "overridden"


def _kind_matches_check() -> Q:
    # A manual item names no check; an automatic one must name the check that decides it.
    return Q(kind=ItemKind.MANUAL, check_name="") | (Q(kind=ItemKind.AUTOMATIC) & ~Q(check_name=""))


class ChecklistTemplate(models.Model):
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    is_default = models.BooleanField(
        default=False, help_text="Started for every customer marked onboarded."
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"],
                condition=Q(is_default=True),
                name="checklisttemplate_one_default",
                violation_error_message="Another template is already the default; unmark it first.",
            )
        ]

    def __str__(self) -> str:
        return self.name


class TemplateItem(models.Model):
    template = models.ForeignKey(ChecklistTemplate, on_delete=models.CASCADE, related_name="items")
    position = models.PositiveIntegerField(default=0)
    title = models.CharField(max_length=200)
    guidance = models.TextField(blank=True)
    due_days = models.PositiveIntegerField(help_text="Due this many days after onboarding starts.")
    signer = models.CharField(
        "who may sign", max_length=8, choices=Signer.choices, default=Signer.OPS
    )
    kind = models.CharField(max_length=10, choices=ItemKind.choices, default=ItemKind.MANUAL)
    # Not "check": that name is Model.check(), Django's system checks.
    check_name = models.CharField(
        "check", max_length=40, choices=Check.choices, blank=True, help_text="Automatic items only."
    )

    class Meta:
        ordering = ["template", "position", "id"]
        constraints = [
            models.CheckConstraint(
                condition=_kind_matches_check(),
                name="templateitem_kind_check",
                violation_error_message="Automatic items need a check; manual items have none.",
            )
        ]

    def __str__(self) -> str:
        return self.title


class Checklist(models.Model):
    """One customer's checklist; a customer is onboarded once, so it has at most one."""

    customer = models.OneToOneField(
        "onboarding.Customer", on_delete=models.PROTECT, related_name="checklist"
    )
    template = models.ForeignKey(
        ChecklistTemplate, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    template_name = models.CharField(max_length=200, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        # Changes go through onboarding.checklists so that each one is audited.
        default_permissions = ("view",)
        permissions = [("start_checklist", "Can mark a customer onboarded (starts its checklist)")]
        indexes = [
            models.Index(
                fields=["started_at"], condition=Q(completed_at=None), name="checklist_open_idx"
            )
        ]

    def __str__(self) -> str:
        return f"checklist of {self.customer}"

    @cached_property
    def item_list(self) -> list[ChecklistItem]:
        return list(self.items.all())

    @property
    def done_count(self) -> int:
        return sum(1 for item in self.item_list if item.is_done)

    @property
    def total(self) -> int:
        return len(self.item_list)

    @property
    def percent(self) -> int:
        return round(100 * self.done_count / self.total) if self.total else 100

    def overdue_items(self, now: datetime | None = None) -> list[ChecklistItem]:
        return [item for item in self.item_list if item.is_overdue_at(now or timezone.now())]

    @property
    def overdue(self) -> list[ChecklistItem]:
        return self.overdue_items()


class ChecklistItem(models.Model):
    checklist = models.ForeignKey(Checklist, on_delete=models.PROTECT, related_name="items")
    position = models.PositiveIntegerField(default=0)
    title = models.CharField(max_length=200)
    guidance = models.TextField(blank=True)
    due_at = models.DateTimeField()
    signer = models.CharField(max_length=8, choices=Signer.choices, default=Signer.OPS)
    kind = models.CharField(max_length=10, choices=ItemKind.choices, default=ItemKind.MANUAL)
    check_name = models.CharField("check", max_length=40, choices=Check.choices, blank=True)
    # Done: signed by a person, verified by the system, or a failing check overridden.
    done_how = models.CharField(max_length=10, choices=DoneHow.choices, blank=True)
    done_at = models.DateTimeField(null=True, blank=True)
    done_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    note = models.TextField(blank=True, help_text="Sign-off note or override reason.")
    # Latest evaluation of an automatic check: the figure and when it was measured.
    check_result = models.CharField(
        max_length=8, choices=CheckResult.choices, default=CheckResult.PENDING
    )
    evidence = models.CharField(max_length=500, blank=True)
    figure = models.FloatField(null=True, blank=True)
    measured_at = models.DateTimeField(null=True, blank=True)
    evaluated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["checklist", "position", "id"]
        default_permissions = ("view",)
        permissions = [
            ("sign_ops_item", "Can sign off checklist items that ops staff may sign"),
            ("sign_admin_item", "Can sign off checklist items reserved for admins"),
            ("override_check", "Can override a failing automatic checklist item"),
        ]
        constraints = [
            models.CheckConstraint(condition=_kind_matches_check(), name="checklistitem_kind_check")
        ]
        indexes = [
            # The evaluator reads open automatic items only.
            models.Index(
                fields=["checklist"],
                condition=Q(kind=ItemKind.AUTOMATIC, done_at=None),
                name="checklistitem_auto_open_idx",
            )
        ]

    def __str__(self) -> str:
        return self.title

    @property
    def is_done(self) -> bool:
        return self.done_at is not None

    @property
    def is_automatic(self) -> bool:
        return self.kind == ItemKind.AUTOMATIC

    def is_overdue_at(self, now: datetime) -> bool:
        return not self.is_done and self.due_at < now

    @property
    def is_overdue(self) -> bool:
        return self.is_overdue_at(timezone.now())

    @property
    def sign_permission(self) -> str:
        if self.signer == Signer.ADMIN:
            return "onboarding.sign_admin_item"
        return "onboarding.sign_ops_item"

    @property
    def state_label(self) -> str:
        """Short state for the audit log's before → after."""
        if self.is_done:
            return self.get_done_how_display()
        if self.is_automatic:
            return self.get_check_result_display()
        return "open"


class ChecklistEventQuerySet(models.QuerySet):
    # The audit log is append-only: there is no code path that rewrites or removes it,
    # and these refuse the bulk ones should someone try.
    def update(self, **kwargs):
        raise TypeError("the checklist audit log is append-only")

    def delete(self):
        raise TypeError("the checklist audit log is append-only")


class ChecklistEvent(models.Model):
    """Append-only audit log: who, when, what, before → after, and why."""

    class Action(models.TextChoices):
        ONBOARDED = "onboarded", "customer onboarded"
        STARTED = "started", "checklist started"
        SIGNED = "signed", "signed off"
        UNSIGNED = "unsigned", "sign-off withdrawn"
        CHECKED = "checked", "check result changed"
        VERIFIED = "verified", "verified by the system"
        OVERRIDDEN = "overridden", "check overridden"
        COMPLETED = "completed", "checklist completed"
        REOPENED = "reopened", "checklist reopened"

    customer = models.ForeignKey(
        "onboarding.Customer", on_delete=models.PROTECT, related_name="checklist_events"
    )
    item = models.ForeignKey(
        ChecklistItem, null=True, blank=True, on_delete=models.PROTECT, related_name="events"
    )
    at = models.DateTimeField(default=timezone.now)
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # The username as it was, so the log reads the same if the user is renamed.
    actor = models.CharField(max_length=150)
    action = models.CharField(max_length=12, choices=Action.choices)
    subject = models.CharField(max_length=200)
    before = models.CharField(max_length=500, blank=True)
    after = models.CharField(max_length=500, blank=True)
    note = models.TextField(blank=True)

    objects = ChecklistEventQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-id"]
        # No add/change/delete permissions exist, so no role and no admin page can grant them.
        default_permissions = ("view",)
        indexes = [models.Index(fields=["customer", "-at"], name="checklistevent_customer_idx")]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor}: {self.get_action_display()} {self.subject}"

    def save(self, *args, **kwargs) -> None:
        # Last guard only: services never update an event.
        if not self._state.adding:
            raise TypeError("the checklist audit log is append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise TypeError("the checklist audit log is append-only")


# The default template: the same items as migration 0005, which seeds it. Used again only
# when no template is marked default (a database flushed by tests, or an admin who
# unmarked the default), so that onboarding never fails.
DEFAULT_TEMPLATE_NAME = "Large customer onboarding"
DEFAULT_TEMPLATE = [
    # (title, guidance, due_days, signer, check_name or "" for a manual item)
    (
        "First sessions received and processed",
        "Verified when the first of the customer's sessions has been processed. If nothing "
        "arrives, check that the recorder is installed and sends with the right ingest key.",
        1,
        Signer.OPS,
        Check.FIRST_SESSIONS,
    ),
    (
        "Processing lag within the warn threshold for 24 h",
        "Verified when lag samples cover the last 24 hours and none reached the customer's "
        "warn threshold. The incident's queue fell four days behind before anyone noticed.",
        3,
        Signer.OPS,
        Check.LAG_24H,
    ),
    (
        "Lag alert rule with a notification channel",
        "Verified when a lag alert rule for this customer notifies at least one channel "
        "(email or webhook), so the team hears of lag before the customer does.",
        1,
        Signer.OPS,
        Check.ALERT_CHANNEL,
    ),
    (
        "Cluster capacity reviewed",
        "Compare the customer's projected peak traffic (sessions per minute) with its "
        "cluster's measured throughput on the Clusters page; resize the cluster if the peak "
        "comes near it. Note the figures you compared.",
        3,
        Signer.ADMIN,
        "",
    ),
    (
        "Dedicated cluster decided",
        "Decide whether the customer keeps sharing its cluster or gets its own, so that one "
        "customer cannot hold back everyone else. Note the decision and why.",
        7,
        Signer.ADMIN,
        "",
    ),
    (
        "Day-7 check-in with the customer",
        "Ask the customer whether replays, counts and errors look right to them, and whether "
        "their traffic matches what they projected.",
        7,
        Signer.OPS,
        "",
    ),
    (
        "Day-30 review",
        "Review a month of lag, alerts and failed sessions with the team; record follow-ups.",
        30,
        Signer.OPS,
        "",
    ),
]
