"""Worker clusters, sessions and their payloads, and what runpool hosts report."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class WorkerCluster(models.Model):
    name = models.SlugField(
        max_length=64, unique=True, help_text="Also the name of its django-q2 queue."
    )
    desired_workers = models.PositiveIntegerField(default=2, help_text="Workers on every host.")
    paused = models.BooleanField(default=False, help_text="Paused clusters get no new sessions.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class State(models.TextChoices):
    OPEN = "open"
    READY = "ready"
    QUEUED = "queued"
    PROCESSING = "processing"
    PROCESSED = "processed"
    FAILED = "failed"


BACKLOG_STATES = [State.READY, State.QUEUED, State.PROCESSING]


class Session(models.Model):
    """One recorded browser session; the table is the source of truth for its state.

    django-q2 tasks carry only the id; every transition is a conditional UPDATE so a
    task that is lost, duplicated or re-run cannot lose a session or apply twice.
    """

    customer = models.ForeignKey(
        "onboarding.Customer", on_delete=models.CASCADE, related_name="sessions"
    )
    external_id = models.CharField(max_length=64)
    state = models.CharField(max_length=16, choices=State.choices, default=State.OPEN)
    created_at = models.DateTimeField(default=timezone.now)
    last_payload_at = models.DateTimeField(default=timezone.now)
    payload_count = models.PositiveIntegerField(default=0)
    bytes_received = models.PositiveBigIntegerField(default=0)
    # Lifecycle
    ready_at = models.DateTimeField(null=True, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    dispatched_cluster = models.ForeignKey(
        WorkerCluster, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    claim_token = models.CharField(max_length=32, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    worker_host = models.CharField(max_length=100, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    processing_ms = models.FloatField(null=True, blank=True)
    # Computed by pool.processing
    length_ms = models.BigIntegerField(null=True, blank=True)
    active_ms = models.BigIntegerField(null=True, blank=True)
    click_count = models.PositiveIntegerField(null=True, blank=True)
    rage_click_count = models.PositiveIntegerField(null=True, blank=True)
    error_count = models.PositiveIntegerField(null=True, blank=True)
    event_total = models.PositiveIntegerField(null=True, blank=True)
    landing_page = models.TextField(blank=True)
    exit_page = models.TextField(blank=True)
    out_of_order = models.BooleanField(default=False)
    excluded_reason = models.CharField(max_length=32, blank=True)
    summary = models.JSONField(default=dict, blank=True)
    stream_bytes = models.PositiveBigIntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["customer", "external_id"], name="session_unique_id")
        ]
        indexes = [
            # Per-customer backlog and oldest ready_at (lag) read only unprocessed rows.
            models.Index(
                fields=["customer", "ready_at"],
                condition=Q(state__in=BACKLOG_STATES),
                name="session_backlog_idx",
            ),
            # Dispatcher: oldest ready sessions of one customer, in its exact order
            # (ready_at, id). With id in the key, ties on ready_at (a bulk import, a
            # batch closed at once) no longer make PostgreSQL sort every tied row on
            # each refill: 4.7 ms per refill with 20,000 tied sessions, growing with them.
            models.Index(
                fields=["customer", "ready_at", "id"],
                condition=Q(state=State.READY),
                name="session_ready_order_idx",
            ),
            # Arrivals per minute: sessions that became ready in a window. ready_at first,
            # so the range scan reads only the window, not every stored session.
            models.Index(fields=["ready_at", "customer"], name="session_arrivals_idx"),
            # Throughput and recent sessions.
            models.Index(fields=["customer", "processed_at"], name="session_processed_idx"),
            models.Index(fields=["processed_at"], name="session_processed_at_idx"),
            models.Index(
                fields=["last_payload_at"],
                condition=Q(state=State.OPEN),
                name="session_open_idx",
            ),
            models.Index(
                fields=["dispatched_cluster", "queued_at"],
                condition=Q(state=State.QUEUED),
                name="session_queued_idx",
            ),
            models.Index(
                fields=["lease_until"],
                condition=Q(state=State.PROCESSING),
                name="session_processing_idx",
            ),
            models.Index(
                fields=["customer", "last_payload_at"],
                condition=Q(state=State.FAILED),
                name="session_failed_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.customer_id}/{self.external_id}"


class Payload(models.Model):
    """A batch of events as the recorder sent it, zlib-compressed JSON."""

    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="payloads")
    payload_id = models.BigIntegerField()
    body = models.BinaryField()
    event_count = models.PositiveIntegerField()
    raw_bytes = models.PositiveIntegerField()
    final = models.BooleanField(default=False)
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["session", "payload_id"], name="payload_unique_id")
        ]

    def __str__(self) -> str:
        return f"{self.session_id}#{self.payload_id}"


class SessionStream(models.Model):
    """The merged event stream in processing order, compressed (kept out of Session rows)."""

    session = models.OneToOneField(
        Session, on_delete=models.CASCADE, primary_key=True, related_name="stream"
    )
    data = models.BinaryField()


class PoolHost(models.Model):
    """A runpool process on one machine, as of its last heartbeat."""

    name = models.CharField(max_length=100, unique=True)
    pid = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(default=timezone.now)
    seen_at = models.DateTimeField(default=timezone.now)
    cpu_count = models.PositiveIntegerField(default=0)
    cpu_percent = models.FloatField(default=0)
    memory_percent = models.FloatField(default=0)
    rss_bytes = models.PositiveBigIntegerField(default=0)
    stopped = models.BooleanField(default=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def age_s(self, now=None) -> float:
        return ((now or timezone.now()) - self.seen_at).total_seconds()

    @property
    def is_stale(self) -> bool:
        return self.stopped or self.age_s() > settings.POOL_STALE_AFTER_S


class ClusterHeartbeat(models.Model):
    """What one host runs for one cluster: the source of 'live vs desired'."""

    host = models.ForeignKey(PoolHost, on_delete=models.CASCADE, related_name="clusters")
    cluster = models.ForeignKey(WorkerCluster, on_delete=models.CASCADE, related_name="heartbeats")
    applied_workers = models.PositiveIntegerField(default=0)
    live_workers = models.PositiveIntegerField(default=0)
    busy_workers = models.PositiveIntegerField(default=0)
    processed_per_min = models.PositiveIntegerField(default=0)
    seen_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["host", "cluster"], name="heartbeat_unique_host")
        ]


class ClusterChange(models.Model):
    """Audit trail of cluster settings and customer moves (who, when, what, from → to)."""

    cluster = models.ForeignKey(WorkerCluster, on_delete=models.CASCADE, related_name="changes")
    at = models.DateTimeField(default=timezone.now, db_index=True)
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    by_label = models.CharField(max_length=100, blank=True, help_text="e.g. 'autoscaler'")
    field = models.CharField(max_length=64)
    before = models.CharField(max_length=200, blank=True)
    after = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-at"]

    @property
    def actor(self) -> str:
        return self.by.get_username() if self.by else (self.by_label or "system")


class LagSample(models.Model):
    """Per-customer lag over time. Raw samples are rolled up into coarser ones and pruned."""

    RAW = 15
    ROLLUP = 300

    customer = models.ForeignKey(
        "onboarding.Customer", on_delete=models.CASCADE, related_name="lag_samples"
    )
    at = models.DateTimeField()
    resolution_s = models.PositiveIntegerField(default=RAW)
    backlog = models.PositiveIntegerField()
    lag_s = models.FloatField()
    processed_per_min = models.FloatField()
    arrivals_per_min = models.FloatField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "resolution_s", "at"], name="lagsample_unique_at"
            )
        ]
        indexes = [models.Index(fields=["resolution_s", "at"], name="lagsample_at_idx")]


from pool.autoscale_models import *  # noqa: E402,F401,F403
