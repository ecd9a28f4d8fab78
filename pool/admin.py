from django.contrib import admin

from pool.models import (
    ClusterChange,
    ClusterHeartbeat,
    LagSample,
    Payload,
    PoolHost,
    Session,
    SessionStream,
    WorkerCluster,
)


@admin.register(WorkerCluster)
class WorkerClusterAdmin(admin.ModelAdmin):
    list_display = ["name", "desired_workers", "paused", "created_at"]


@admin.register(Session)
class SessionAdmin(admin.ModelAdmin):
    list_display = ["external_id", "customer", "state", "ready_at", "processed_at", "attempts"]
    list_filter = ["state", "customer"]
    search_fields = ["external_id"]
    raw_id_fields = ["customer", "dispatched_cluster"]
    show_full_result_count = False  # counting millions of sessions on every page is slow


@admin.register(Payload)
class PayloadAdmin(admin.ModelAdmin):
    list_display = ["session", "payload_id", "event_count", "raw_bytes", "received_at"]
    raw_id_fields = ["session"]
    show_full_result_count = False


@admin.register(SessionStream)
class SessionStreamAdmin(admin.ModelAdmin):
    raw_id_fields = ["session"]


@admin.register(PoolHost)
class PoolHostAdmin(admin.ModelAdmin):
    list_display = ["name", "pid", "seen_at", "cpu_count", "cpu_percent", "stopped"]


@admin.register(ClusterHeartbeat)
class ClusterHeartbeatAdmin(admin.ModelAdmin):
    list_display = ["host", "cluster", "applied_workers", "live_workers", "busy_workers", "seen_at"]


@admin.register(ClusterChange)
class ClusterChangeAdmin(admin.ModelAdmin):
    list_display = ["at", "cluster", "by", "by_label", "field", "before", "after"]

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(LagSample)
class LagSampleAdmin(admin.ModelAdmin):
    list_display = ["customer", "at", "resolution_s", "backlog", "lag_s"]
    list_filter = ["resolution_s", "customer"]
