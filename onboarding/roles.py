"""The two roles of design.md as Django groups.

ops: see every dashboard, sign off checklist items, acknowledge alerts.
admins: everything in onboarding and pool (resize clusters, manage customers, keys...).
Used by the data migration and by anything that must restore them (tests flush tables).
"""

from __future__ import annotations

OPS_PERMISSIONS = [
    ("onboarding", "view_customer"),
    ("onboarding", "view_alert"),
    ("onboarding", "acknowledge_alert"),
    ("onboarding", "sign_ops_item"),
    ("onboarding", "view_checklist"),
    ("onboarding", "view_checklistitem"),
    ("onboarding", "view_checklistevent"),
    ("onboarding", "view_checklisttemplate"),
    ("onboarding", "view_templateitem"),
    ("pool", "view_workercluster"),
    ("pool", "view_session"),
]
ADMIN_APPS = ["onboarding", "pool"]


def roles_ensure(*, Group, Permission) -> None:  # noqa: N803 - historical model classes
    ops, _ = Group.objects.get_or_create(name="ops")
    ops.permissions.add(
        *Permission.objects.filter(
            content_type__app_label__in={a for a, _ in OPS_PERMISSIONS},
            codename__in={c for _, c in OPS_PERMISSIONS},
        )
    )
    admins, _ = Group.objects.get_or_create(name="admins")
    admins.permissions.add(*Permission.objects.filter(content_type__app_label__in=ADMIN_APPS))
