"""Create the ops and admins groups (see onboarding/roles.py)."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

from onboarding.roles import roles_ensure


def create_roles(apps, schema_editor):
    # Permissions are normally created after migrate; make sure they exist now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    roles_ensure(Group=apps.get_model("auth", "Group"), Permission=apps.get_model("auth", "Permission"))


class Migration(migrations.Migration):
    dependencies = [
        ("onboarding", "0002_initial"),
        ("pool", "0002_shared_cluster"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(create_roles, migrations.RunPython.noop)]
