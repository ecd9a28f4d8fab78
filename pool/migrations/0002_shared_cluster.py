from django.db import migrations


def create_shared(apps, schema_editor):
    WorkerCluster = apps.get_model("pool", "WorkerCluster")
    WorkerCluster.objects.get_or_create(name="shared", defaults={"desired_workers": 2})


class Migration(migrations.Migration):
    dependencies = [("pool", "0001_initial")]
    operations = [migrations.RunPython(create_shared, migrations.RunPython.noop)]
