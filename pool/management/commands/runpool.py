"""`python manage.py runpool [--host NAME]`: run this host's share of the worker pool."""

from __future__ import annotations

import socket

from django.core.management.base import BaseCommand

from pool.runner import PoolHostRunner


class Command(BaseCommand):
    help = "Run one django-q2 cluster per WorkerCluster, resized live, and the dispatcher."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--host",
            default=socket.gethostname(),
            help="Name of this pool host in heartbeats (default: the machine's hostname).",
        )

    def handle(self, *args, **options) -> None:
        PoolHostRunner(host=options["host"]).run()
