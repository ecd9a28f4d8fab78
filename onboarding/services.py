"""Writes on customers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from onboarding.checklists import checklist_event_record, checklist_start
from onboarding.models import Checklist, ChecklistEvent, Customer, IngestKey
from pool.models import WorkerCluster

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

DEFAULT_CLUSTER = "shared"


def customer_create(
    *, name: str, large: bool = False, cluster_name: str = DEFAULT_CLUSTER, workers: int = 2
) -> tuple[Customer, str]:
    """Create a customer (and its cluster if missing); returns it and its first plain key."""
    with transaction.atomic():
        cluster, _ = WorkerCluster.objects.get_or_create(
            name=cluster_name, defaults={"desired_workers": workers}
        )
        customer = Customer.objects.create(
            name=name,
            slug=slugify(name)[:64] or "customer",
            large=large,
            onboarded_at=timezone.now() if large else None,
            cluster=cluster,
        )
        _, plain = IngestKey.issue(customer=customer, label="first key")
        if large:
            checklist_start(customer=customer, started_at=customer.onboarded_at)
    return customer, plain


def customer_mark_onboarded(*, customer: Customer, by: AbstractBaseUser | None) -> Checklist:
    """Mark a customer onboarded now (as a large customer) and start its checklist.

    Idempotent: a customer already onboarded keeps its date, and its checklist.
    """
    now = timezone.now()
    with transaction.atomic():
        marked = Customer.objects.filter(pk=customer.pk, onboarded_at__isnull=True).update(
            onboarded_at=now, large=True
        )
        customer.refresh_from_db(fields=["onboarded_at", "large"])
        if marked:
            checklist_event_record(
                customer=customer,
                action=ChecklistEvent.Action.ONBOARDED,
                subject="customer",
                by=by,
                before="not onboarded",
                after=f"onboarded at {now:%Y-%m-%d %H:%M} UTC",
                at=now,
            )
        return checklist_start(customer=customer, by=by, started_at=customer.onboarded_at)
