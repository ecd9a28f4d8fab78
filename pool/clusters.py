"""Writes on worker clusters: resize, pause, create, move a customer. All audited.

runpool hosts poll the WorkerCluster table every second and apply what they find
(see pool.runner), so a change here reaches every live host within seconds.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from onboarding.models import Customer
from pool.models import ClusterChange, WorkerCluster


def _audit(*, cluster: WorkerCluster, by, by_label: str, field: str, before, after) -> None:
    ClusterChange.objects.create(
        cluster=cluster,
        by=by if isinstance(by, AbstractBaseUser) else None,
        by_label=by_label,
        field=field,
        before=str(before),
        after=str(after),
    )


def _cluster_set(*, cluster: WorkerCluster, field: str, value, by, by_label: str) -> WorkerCluster:
    """Change one field under a row lock and audit it; no row, no audit, if nothing changes."""
    with transaction.atomic():
        cluster = WorkerCluster.objects.select_for_update().get(pk=cluster.pk)
        before = getattr(cluster, field)
        if before != value:
            _audit(
                cluster=cluster, by=by, by_label=by_label, field=field, before=before, after=value
            )
            setattr(cluster, field, value)
            cluster.save(update_fields=[field])
    return cluster


def cluster_resize(
    *, cluster: WorkerCluster, workers: int, by=None, by_label: str = ""
) -> WorkerCluster:
    if not 1 <= workers <= settings.POOL_MAX_WORKERS:
        raise ValueError(f"workers must be between 1 and {settings.POOL_MAX_WORKERS}")
    return _cluster_set(
        cluster=cluster, field="desired_workers", value=workers, by=by, by_label=by_label
    )


def cluster_pause(
    *, cluster: WorkerCluster, paused: bool, by=None, by_label: str = ""
) -> WorkerCluster:
    return _cluster_set(cluster=cluster, field="paused", value=paused, by=by, by_label=by_label)


def cluster_create(*, name: str, workers: int, by=None) -> WorkerCluster:
    if not 1 <= workers <= settings.POOL_MAX_WORKERS:
        raise ValueError(f"workers must be between 1 and {settings.POOL_MAX_WORKERS}")
    with transaction.atomic():
        cluster = WorkerCluster.objects.create(name=name, desired_workers=workers)
        _audit(
            cluster=cluster,
            by=by,
            by_label="",
            field="created",
            before="",
            after=f"{workers} workers",
        )
    return cluster


def customer_move(*, customer: Customer, cluster: WorkerCluster, by=None) -> Customer:
    """Ready sessions follow at once: the dispatcher reads the customer's cluster on every
    tick. Sessions already queued on the old cluster finish there."""
    with transaction.atomic():
        customer = (
            Customer.objects.select_for_update().select_related("cluster").get(pk=customer.pk)
        )
        old = customer.cluster
        if old.pk != cluster.pk:
            customer.cluster = cluster
            customer.save(update_fields=["cluster"])
            for side in (old, cluster):
                _audit(
                    cluster=side,
                    by=by,
                    by_label="",
                    field=f"customer {customer.slug}",
                    before=old.name,
                    after=cluster.name,
                )
    return customer


def customer_set_weight(*, customer: Customer, weight: int, by=None) -> Customer:
    if weight < 1:
        raise ValueError("weight must be at least 1")
    with transaction.atomic():
        customer = (
            Customer.objects.select_for_update().select_related("cluster").get(pk=customer.pk)
        )
        if customer.weight != weight:
            _audit(
                cluster=customer.cluster,
                by=by,
                by_label="",
                field=f"weight {customer.slug}",
                before=customer.weight,
                after=weight,
            )
            customer.weight = weight
            customer.save(update_fields=["weight"])
    return customer
