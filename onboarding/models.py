"""Customers and the keys their recorders use to send sessions."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.db import models
from django.utils import timezone

KEY_PREFIX = "onr_"


def hash_ingest_key(plain: str) -> str:
    # Keys carry 256 bits of entropy, so a fast digest is enough (no need for a slow KDF)
    # and lets the API find a key by its digest with one indexed lookup.
    return hashlib.sha256(plain.encode()).hexdigest()


class Customer(models.Model):
    name = models.CharField(max_length=200, unique=True)
    slug = models.SlugField(max_length=64, unique=True)
    large = models.BooleanField(default=False, help_text="Gets a post-onboarding checklist.")
    onboarded_at = models.DateTimeField(null=True, blank=True)
    cluster = models.ForeignKey(
        "pool.WorkerCluster", on_delete=models.PROTECT, related_name="customers"
    )
    weight = models.PositiveIntegerField(
        default=1, help_text="Share of its cluster's workers relative to the other customers."
    )
    warn_lag_s = models.PositiveIntegerField("warn lag (s)", default=300)
    critical_lag_s = models.PositiveIntegerField("critical lag (s)", default=1800)
    stall_after_s = models.PositiveIntegerField(
        "stalled after (s)",
        default=600,
        help_text="A backlog with nothing processed for this long is STALLED.",
    )
    # Maintained by workers in the transaction that stores a result, so /metrics can
    # report a monotonic counter without counting sessions.
    processed_total = models.PositiveBigIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class IngestKey(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="ingest_keys")
    label = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, editable=False, help_text="Shown to tell keys apart.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.customer})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    @classmethod
    def issue(cls, *, customer: Customer, label: str = "") -> tuple[IngestKey, str]:
        """Create a key; the plain text is returned once and never stored."""
        plain = KEY_PREFIX + secrets.token_urlsafe(32)
        key = cls.objects.create(
            customer=customer, label=label, prefix=plain[:12], key_hash=hash_ingest_key(plain)
        )
        return key, plain

    def matches(self, plain: str) -> bool:
        return hmac.compare_digest(self.key_hash, hash_ingest_key(plain))


from onboarding.alert_models import *  # noqa: E402,F401,F403
from onboarding.checklist_models import *  # noqa: E402,F401,F403
