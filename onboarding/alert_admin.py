"""Admin for alerting: admins manage rules and channels here; alerts and deliveries are
read-only, because they change only through evaluation and acknowledgement."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from onboarding.alert_delivery import alert_channel_test
from onboarding.alert_models import (
    Alert,
    AlertChannel,
    AlertDelivery,
    AlertEvent,
    AlertRule,
    DeliveryStatus,
)


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    list_display = [
        "__str__",
        "enabled",
        "warn_lag_s",
        "critical_lag_s",
        "stall_after_s",
        "grace_s",
        "remind_every_s",
        "pool_down_after_s",
    ]
    list_filter = ["enabled"]
    autocomplete_fields = ["customer"]
    readonly_fields = ["updated_at"]


@admin.register(AlertChannel)
class AlertChannelAdmin(admin.ModelAdmin):
    list_display = ["name", "customer", "kind", "enabled", "last_success_at", "last_failure_at"]
    list_filter = ["kind", "enabled", "customer"]
    search_fields = ["name", "target"]
    autocomplete_fields = ["customer"]
    readonly_fields = ["created_at", "last_success_at", "last_failure_at", "last_error"]
    actions = ["send_test"]

    @admin.action(description="Send a test message now")
    def send_test(self, request: HttpRequest, queryset: QuerySet[AlertChannel]) -> None:
        for channel in queryset:
            error = alert_channel_test(channel=channel)
            if error:
                self.message_user(request, f"{channel}: failed: {error}", messages.ERROR)
            else:
                self.message_user(request, f"{channel}: sent", messages.SUCCESS)


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class AlertEventInline(ReadOnlyInline):
    model = AlertEvent
    fields = ["at", "action", "by", "detail"]


class AlertDeliveryInline(ReadOnlyInline):
    model = AlertDelivery
    fields = ["channel", "event", "status", "attempts", "next_attempt_at", "sent_at", "last_error"]


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "kind",
        "severity",
        "customer",
        "cluster",
        "opened_at",
        "first_notified_at",
        "acknowledged_at",
        "resolved_at",
    ]
    list_filter = ["kind", "severity", "customer", "cluster"]
    date_hierarchy = "opened_at"
    inlines = [AlertEventInline, AlertDeliveryInline]


@admin.register(AlertDelivery)
class AlertDeliveryAdmin(ReadOnlyAdmin):
    list_display = ["id", "alert", "channel", "event", "status", "attempts", "next_attempt_at"]
    list_filter = ["status", "event", "channel"]
    actions = ["retry_now"]

    @admin.action(description="Retry now (failing or given-up deliveries)")
    def retry_now(self, request: HttpRequest, queryset: QuerySet[AlertDelivery]) -> None:
        count = queryset.filter(status__in=[DeliveryStatus.PENDING, DeliveryStatus.FAILED]).update(
            status=DeliveryStatus.PENDING, next_attempt_at=timezone.now()
        )
        self.message_user(request, f"{count} deliveries will be retried at the next pass.")
