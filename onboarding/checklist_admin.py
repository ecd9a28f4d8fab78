"""Admin for checklists: templates are managed here; running checklists and the audit
log are read-only, because their changes go through the audited services."""

from __future__ import annotations

from django.contrib import admin

from onboarding.checklist_models import (
    Checklist,
    ChecklistEvent,
    ChecklistItem,
    ChecklistTemplate,
    TemplateItem,
)


class TemplateItemInline(admin.TabularInline):
    model = TemplateItem
    extra = 1
    fields = ["position", "title", "guidance", "due_days", "signer", "kind", "check_name"]


@admin.register(ChecklistTemplate)
class ChecklistTemplateAdmin(admin.ModelAdmin):
    list_display = ["name", "is_default", "created_at"]
    inlines = [TemplateItemInline]
    readonly_fields = ["created_at"]

    def has_delete_permission(self, request, obj=None):
        # Onboarding starts from the default template: mark another one default first.
        if obj is not None and obj.is_default:
            return False
        return super().has_delete_permission(request, obj)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ChecklistItemInline(admin.TabularInline):
    model = ChecklistItem
    extra = 0
    fields = ["position", "title", "due_at", "signer", "kind", "check_result", "done_how"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Checklist)
class ChecklistAdmin(ReadOnlyAdmin):
    list_display = ["customer", "template_name", "started_at", "completed_at"]
    list_filter = ["completed_at"]
    inlines = [ChecklistItemInline]


@admin.register(ChecklistEvent)
class ChecklistEventAdmin(ReadOnlyAdmin):
    list_display = ["at", "customer", "actor", "action", "subject", "before", "after"]
    list_filter = ["action", "customer"]
    search_fields = ["subject", "actor", "note"]
    date_hierarchy = "at"
    actions = None  # not even the bulk "delete selected"
