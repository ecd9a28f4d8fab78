"""`python manage.py seed_demo`: demo users, clusters and customers for `make run`."""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import Group, Permission, User
from django.core.management.base import BaseCommand

from onboarding.models import Customer, IngestKey
from onboarding.roles import roles_ensure
from onboarding.services import customer_create
from pool.models import WorkerCluster

DEMO_CUSTOMERS = [
    ("MegaShop", True, "shared"),
    ("Acme Corp", False, "shared"),
    ("Globex", False, "shared"),
    ("Initech", False, "shared"),
    ("Umbrella Health", False, "priority"),
]


class Command(BaseCommand):
    help = "Create demo users (admin/ops), clusters and customers; write their keys for simulate."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--password", default="onramp-demo")

    def handle(self, *args, **options) -> None:
        password = options["password"]
        roles_ensure(Group=Group, Permission=Permission)
        self.user("admin", password, group="admins", superuser=True)
        self.user("ops", password, group="ops")
        WorkerCluster.objects.get_or_create(name="priority", defaults={"desired_workers": 1})
        keys = {}
        for name, large, cluster in DEMO_CUSTOMERS:
            customer = Customer.objects.filter(name=name).first()
            if customer is None:
                customer, plain = customer_create(name=name, large=large, cluster_name=cluster)
            else:
                IngestKey.objects.filter(customer=customer).update(revoked_at=None)
                _, plain = IngestKey.issue(customer=customer, label="demo")
            keys[customer.slug] = plain
        path = Path(settings.VAR_DIR) / "demo_keys.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(keys, indent=2))
        self.stdout.write(f"demo customers: {', '.join(keys)}; keys in {path}")
        self.stdout.write(f"logins: admin / {password} (admin), ops / {password} (ops staff)")

    def user(self, name: str, password: str, *, group: str, superuser: bool = False) -> None:
        user, _ = User.objects.get_or_create(username=name)
        user.set_password(password)
        user.is_staff = superuser
        user.is_superuser = superuser
        user.save()
        user.groups.add(Group.objects.get(name=group))
