"""The two roles of design.md as groups: ops (see, sign, acknowledge) and admins (all)."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

OPS = [
    ("onboarding", "view_customer"),
    ("pool", "view_workercluster"),
    ("pool", "view_session"),
]


def create_roles(apps, schema_editor):
    # Permissions are normally created after migrate; make sure they exist now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    ops, _ = Group.objects.get_or_create(name="ops")
    ops.permissions.add(
        *[Permission.objects.get(content_type__app_label=a, codename=c) for a, c in OPS]
    )
    admins, _ = Group.objects.get_or_create(name="admins")
    admins.permissions.add(
        *Permission.objects.filter(content_type__app_label__in=["onboarding", "pool"])
    )


class Migration(migrations.Migration):
    dependencies = [
        ("onboarding", "0002_initial"),
        ("pool", "0002_shared_cluster"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(create_roles, migrations.RunPython.noop)]
