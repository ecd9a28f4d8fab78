"""Autoscale settings per cluster, and the figures capacity planning keeps over time.

Imported at the end of pool.models, so these are pool models like the others.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

__all__ = ["ClusterAutoscale", "ClusterSample", "HostSample"]


class ClusterAutoscale(models.Model):
    """Lag-based autoscaling of one cluster; off until an admin turns it on.

    The *_since fields are the hysteresis state: how long lag has stayed above the
    target (scale up) or well under it (scale down). A single reading never resizes.
    """

    cluster = models.OneToOneField(
        "pool.WorkerCluster", on_delete=models.CASCADE, primary_key=True, related_name="autoscale"
    )
    enabled = models.BooleanField(default=False)
    min_workers = models.PositiveIntegerField(default=1, help_text="Workers per host, at least.")
    max_workers = models.PositiveIntegerField(default=4, help_text="Workers per host, at most.")
    target_lag_s = models.PositiveIntegerField("target lag (s)", default=60)
    above_since = models.DateTimeField(null=True, blank=True)
    calm_since = models.DateTimeField(null=True, blank=True)
    last_change_at = models.DateTimeField(null=True, blank=True)
    last_tick_at = models.DateTimeField(null=True, blank=True)
    last_decision = models.CharField(max_length=200, blank=True)
    # Why it is off, when a manual resize switched it off (shown next to the toggle).
    off_reason = models.CharField(max_length=200, blank=True)

    def __str__(self) -> str:
        state = "on" if self.enabled else "off"
        return (
            f"{state}, {self.min_workers}–{self.max_workers} workers, target {self.target_lag_s}s"
        )


class ClusterSample(models.Model):
    """One cluster over one SAMPLE_S bucket: how many sessions its live workers finished,
    and whether work was waiting at the bucket's end (so the bucket measured capacity,
    not a lull). The source of 'sessions/s per worker'."""

    cluster = models.ForeignKey(
        "pool.WorkerCluster", on_delete=models.CASCADE, related_name="samples"
    )
    at = models.DateTimeField(help_text="End of the bucket.")
    live_workers = models.PositiveIntegerField()
    processed = models.PositiveIntegerField()
    ready = models.PositiveIntegerField(help_text="Sessions waiting for a worker at `at`.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["cluster", "at"], name="clustersample_unique_at")
        ]
        indexes = [models.Index(fields=["at"], name="clustersample_at_idx")]


class HostSample(models.Model):
    """A pool host's CPU and memory over one bucket: the sum of the heartbeats' readings
    and their count, so a bucket's mean is exact however many heartbeats landed in it."""

    host = models.ForeignKey("pool.PoolHost", on_delete=models.CASCADE, related_name="samples")
    at = models.DateTimeField(default=timezone.now)
    readings = models.PositiveIntegerField(default=0)
    cpu_total = models.FloatField(default=0)
    memory_total = models.FloatField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["host", "at"], name="hostsample_unique_at")]
        indexes = [models.Index(fields=["at"], name="hostsample_at_idx")]

    @property
    def cpu_percent(self) -> float:
        return self.cpu_total / self.readings if self.readings else 0.0

    @property
    def memory_percent(self) -> float:
        return self.memory_total / self.readings if self.readings else 0.0
