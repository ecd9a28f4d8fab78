from django.contrib import admin, messages

from onboarding.models import Customer, IngestKey


class IngestKeyInline(admin.TabularInline):
    model = IngestKey
    extra = 0
    fields = ["prefix", "label", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = ["prefix", "created_at", "last_used_at"]


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "cluster", "large", "onboarded_at", "weight", "warn_lag_s"]
    list_filter = ["cluster", "large"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [IngestKeyInline]
    actions = ["issue_key"]

    @admin.action(description="Issue a new ingest key (shown once)")
    def issue_key(self, request, queryset):
        for customer in queryset:
            _, plain = IngestKey.issue(customer=customer, label=f"issued by {request.user}")
            self.message_user(
                request, f"New key for {customer}: {plain} (copy it now)", messages.WARNING
            )


@admin.register(IngestKey)
class IngestKeyAdmin(admin.ModelAdmin):
    list_display = ["prefix", "customer", "label", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["customer"]
    readonly_fields = ["prefix", "key_hash", "created_at", "last_used_at"]

    def has_add_permission(self, request):
        return False  # keys are issued with the customer action, which shows the plain key once


import onboarding.alert_admin  # noqa: E402,F401
import onboarding.checklist_admin  # noqa: E402,F401
