"""The default post-onboarding checklist, built from the incident's lessons, and who may sign.

The items are a frozen copy (migrations must not import app code that may change later);
onboarding.checklists.DEFAULT_TEMPLATE holds the same list for a database that lost it.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

NAME = "Large customer onboarding"
ITEMS = [
    # (title, guidance, due_days, signer, kind, check_name)
    (
        "First sessions received and processed",
        "Verified when the first of the customer's sessions has been processed. If nothing "
        "arrives, check that the recorder is installed and sends with the right ingest key.",
        1, "ops", "automatic", "first_sessions_processed",
    ),
    (
        "Processing lag within the warn threshold for 24 h",
        "Verified when lag samples cover the last 24 hours and none reached the customer's "
        "warn threshold. The incident's queue fell four days behind before anyone noticed.",
        3, "ops", "automatic", "lag_within_warn_24h",
    ),
    (
        "Lag alert rule with a notification channel",
        "Verified when a lag alert rule for this customer notifies at least one channel "
        "(email or webhook), so the team hears of lag before the customer does.",
        1, "ops", "automatic", "lag_alert_channel",
    ),
    (
        "Cluster capacity reviewed",
        "Compare the customer's projected peak traffic (sessions per minute) with its "
        "cluster's measured throughput on the Clusters page; resize the cluster if the peak "
        "comes near it. Note the figures you compared.",
        3, "admin", "manual", "",
    ),
    (
        "Dedicated cluster decided",
        "Decide whether the customer keeps sharing its cluster or gets its own, so that one "
        "customer cannot hold back everyone else. Note the decision and why.",
        7, "admin", "manual", "",
    ),
    (
        "Day-7 check-in with the customer",
        "Ask the customer whether replays, counts and errors look right to them, and whether "
        "their traffic matches what they projected.",
        7, "ops", "manual", "",
    ),
    (
        "Day-30 review",
        "Review a month of lag, alerts and failed sessions with the team; record follow-ups.",
        30, "ops", "manual", "",
    ),
]

OPS_PERMISSIONS = [
    "view_checklist",
    "view_checklistitem",
    "view_checklistevent",
    "view_checklisttemplate",
    "view_templateitem",
    "sign_ops_item",
]


def create_default(apps, schema_editor):
    ChecklistTemplate = apps.get_model("onboarding", "ChecklistTemplate")
    TemplateItem = apps.get_model("onboarding", "TemplateItem")
    if ChecklistTemplate.objects.filter(is_default=True).exists():
        return
    template, _ = ChecklistTemplate.objects.get_or_create(
        name=NAME,
        defaults={
            "is_default": True,
            "description": "Lesson three of the incident: follow each new large customer "
            "until everything runs as it should.",
        },
    )
    TemplateItem.objects.bulk_create(
        TemplateItem(
            template=template,
            position=position,
            title=title,
            guidance=guidance,
            due_days=due_days,
            signer=signer,
            kind=kind,
            check_name=check_name,
        )
        for position, (title, guidance, due_days, signer, kind, check_name) in enumerate(
            ITEMS, start=1
        )
    )


def grant_permissions(apps, schema_editor):
    # Permissions are normally created after migrate; make sure the new ones exist now.
    app_config = apps.get_app_config("onboarding")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    onboarding = Permission.objects.filter(content_type__app_label="onboarding")
    ops, _ = Group.objects.get_or_create(name="ops")
    ops.permissions.add(*onboarding.filter(codename__in=OPS_PERMISSIONS))
    # Admins hold every onboarding permission (0003); add the ones created since.
    admins, _ = Group.objects.get_or_create(name="admins")
    admins.permissions.add(*onboarding)


class Migration(migrations.Migration):
    dependencies = [
        ("onboarding", "0004_checklists"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [
        migrations.RunPython(create_default, migrations.RunPython.noop),
        migrations.RunPython(grant_permissions, migrations.RunPython.noop),
    ]
