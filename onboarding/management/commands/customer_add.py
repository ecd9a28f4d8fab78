"""`python manage.py customer_add NAME [--large] [--cluster NAME]`."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db import IntegrityError

from onboarding.services import DEFAULT_CLUSTER, customer_create


class Command(BaseCommand):
    help = "Create a customer (and its cluster if missing); prints the plain ingest key last."

    def add_arguments(self, parser) -> None:
        parser.add_argument("name")
        parser.add_argument("--large", action="store_true", help="start its onboarding now")
        parser.add_argument("--cluster", default=DEFAULT_CLUSTER)

    def handle(self, *args, **options) -> None:
        try:
            customer, plain = customer_create(
                name=options["name"], large=options["large"], cluster_name=options["cluster"]
            )
        except IntegrityError:
            raise CommandError(f"a customer named {options['name']!r} already exists") from None
        self.stdout.write(
            f"Created customer {customer.name} (slug {customer.slug}) on cluster "
            f"{customer.cluster.name}. Its ingest key, shown only now:"
        )
        self.stdout.write(plain)
