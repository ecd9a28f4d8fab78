"""`python manage.py simulate`: send realistic rrweb sessions through the HTTP API."""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from pool.simulator import Simulator


class Command(BaseCommand):
    help = "Send simulated recorder traffic for several customers to the ingest API."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="Onramp's base URL")
        parser.add_argument(
            "--keys",
            default=str(Path(settings.VAR_DIR) / "demo_keys.json"),
            help="JSON file {customer slug: ingest key} (written by `seed_demo`)",
        )
        parser.add_argument("--big", default=None, help="slug of the customer that sends 60%%")
        parser.add_argument("--rate", type=float, default=2.0, help="new sessions per second")
        parser.add_argument("--duration", type=float, default=0, help="seconds; 0 = until Ctrl-C")
        parser.add_argument("--session-seconds", type=float, default=20, help="mean session length")
        parser.add_argument("--interval", type=float, default=2.0, help="seconds between payloads")
        parser.add_argument("--concurrency", type=int, default=8, help="parallel HTTP clients")
        parser.add_argument("--seed", type=int, default=None)

    def handle(self, *args, **options) -> None:
        try:
            keys = json.loads(Path(options["keys"]).read_text())
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot read keys from {options['keys']}: {exc}") from None
        if not keys:
            raise CommandError("no customer keys to send with")
        sim = Simulator(
            url=options["url"],
            keys=keys,
            big=options["big"],
            rate=options["rate"],
            duration=options["duration"],
            session_s=options["session_seconds"],
            interval_s=options["interval"],
            concurrency=options["concurrency"],
            seed=options["seed"],
            out=lambda line: self.stdout.write(line),
        )
        self.stdout.write(
            f"simulating {len(keys)} customers ({sim.big} sends 60%) at {sim.rate} sessions/s "
            f"against {options['url']}"
        )
        try:
            summary = sim.run()
        except KeyboardInterrupt:
            summary = sim.summary(0)
        self.stdout.write("sent: " + json.dumps(summary))
