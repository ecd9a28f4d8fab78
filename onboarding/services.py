"""Writes on customers."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from onboarding.models import Customer, IngestKey
from pool.models import WorkerCluster

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
    return customer, plain
