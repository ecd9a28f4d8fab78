"""`python manage.py bench_ingest`: payloads/s through gunicorn, and its CPU per payload.

Starts gunicorn (as the Procfile does: sync workers, 3 by default) on a free loopback
port and POSTs realistic payloads from client threads over keep-alive connections:
each session is several payloads of a real rrweb recording's events, gzip-compressed
to about 20 KB each, the last one final. Measured: payloads/s over the run, and the CPU
seconds the gunicorn process tree and the database backends used per payload (psutil,
before/after). The client's own CPU is not counted, but it shares the machine.
"""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import sys
import threading
import time

from django.core.management.base import BaseCommand, CommandError

from onboarding.models import IngestKey
from pool import benchmarks as b
from pool.models import Payload

KEY = "bench-ingest-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def payload_bodies(recording: str, *, per_session: int, target_kb: int) -> list[bytes]:
    """per_session gzip bodies of at least target_kb KiB each, cut from one recording's
    events in order (replayed with later timestamps when the recording runs out)."""
    events = iter(_replayed(b.recording_payloads(recording)))
    bodies = []
    for payload_id in range(per_session):
        chunk = [next(events)]
        while _gzip_size(chunk) < target_kb * 1024:
            chunk.append(next(events))
        doc = {"payload_id": payload_id, "events": chunk, "final": payload_id == per_session - 1}
        bodies.append(gzip.compress(json.dumps(doc).encode(), 6))
    return bodies


def _replayed(payloads: list[dict]):
    events = [e for p in payloads for e in p["events"]]
    span = events[-1]["timestamp"] - events[0]["timestamp"] + 1000
    offset = 0
    while True:
        for event in events:
            yield {**event, "timestamp": event["timestamp"] + offset}
        offset += span


def _gzip_size(events: list[dict]) -> int:
    return len(gzip.compress(json.dumps({"events": events}).encode(), 6))


class Client(threading.Thread):
    """Sends whole sessions (every payload, in order) over one keep-alive connection."""

    def __init__(self, port: int, key: str, bodies: list[bytes], name: str, deadline: float):
        super().__init__(daemon=True)
        self.port, self.key, self.bodies, self.prefix = port, key, bodies, name
        self.deadline = deadline
        self.sent = 0
        self.errors: list[int] = []

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {
            "Authorization": f"Bearer {self.key}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        }
        session = 0
        while time.monotonic() < self.deadline:
            for body in self.bodies:
                path = f"/api/v1/sessions/{self.prefix}-{session}/payloads"
                conn.request("POST", path, body=body, headers=headers)
                reply = conn.getresponse()
                reply.read()
                if reply.status != 202:
                    self.errors.append(reply.status)
                self.sent += 1
            session += 1
        conn.close()


class Command(BaseCommand):
    help = "Ingest throughput through gunicorn on loopback, and server CPU per payload."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--seconds", type=float, default=20)
        parser.add_argument("--gunicorn-workers", type=int, default=3)
        parser.add_argument("--clients", type=int, default=4)
        parser.add_argument("--payloads-per-session", type=int, default=5)
        parser.add_argument("--payload-kb", type=int, default=20, help="gzip size of a payload")
        parser.add_argument("--recording", default="demoit-react-hooks")

    def handle(self, *args, **opts) -> None:
        b.require_postgresql()
        bodies = payload_bodies(
            opts["recording"],
            per_session=opts["payloads_per_session"],
            target_kb=opts["payload_kb"],
        )
        sizes = [len(body) / 1024 for body in bodies]
        _, customer = b.bench_setup(name="ingest", workers=1)  # paused: nothing processes
        _, key = IngestKey.issue(customer=customer, label=KEY)
        port = free_port()
        server = self.start_gunicorn(port, opts["gunicorn_workers"])
        try:
            self.wait_up(port, key, bodies[0], server)
            self.say(
                f"bench_ingest: gunicorn {opts['gunicorn_workers']} workers, "
                f"{opts['clients']} clients, payloads of {min(sizes):.1f}-{max(sizes):.1f} KiB "
                f"gzip, {len(bodies)} per session; {b.load_average()}"
            )
            meter = b.CpuMeter(server.pid)
            meter.begin()
            deadline = time.monotonic() + opts["seconds"]
            clients = [Client(port, key, bodies, f"c{i}", deadline) for i in range(opts["clients"])]
            started = time.monotonic()
            for client in clients:
                client.start()
            while any(c.is_alive() for c in clients):
                time.sleep(0.5)
                meter.sample()
            elapsed = time.monotonic() - started
            meter.sample()
        finally:
            server.stop(timeout=30)
        sent = sum(c.sent for c in clients)
        errors = [e for c in clients for e in c.errors]
        stored = Payload.objects.filter(session__customer=customer).count()
        b.bench_cleanup(name="ingest")
        if errors:
            raise CommandError(f"{len(errors)} requests failed: {sorted(set(errors))}")
        roles = meter.by_role()
        web_cpu = sum(cpu for role, cpu in roles.items() if role != "postgres backends")
        db_cpu = roles.get("postgres backends", 0.0)
        self.say(
            f"  {sent} payloads ({stored} stored) in {elapsed:.1f} s; "
            f"database backends {db_cpu / sent * 1000:.2f} ms CPU per payload; {b.load_average()}"
        )
        self.say(
            f"ingest: {sent / elapsed:.1f} payloads/s, gunicorn CPU {web_cpu / sent * 1000:.2f} ms "
            f"per payload (~{sum(sizes) / len(sizes):.0f} KiB gzip payloads; no target, "
            f"{sent / elapsed * 86400 / 1e6:.1f} M payloads/day)"
        )

    def start_gunicorn(self, port: int, workers: int) -> b.Subprocess:
        args = [
            sys.executable,
            "-m",
            "gunicorn",
            "config.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--timeout",
            "30",
        ]
        return b.start_subprocess(f"gunicorn-{port}", args, b.bench_env(HTTPS="0"))

    def wait_up(self, port: int, key: str, body: bytes, server: b.Subprocess) -> None:
        """Until gunicorn answers; also warms every worker up (imports, connections)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if server.popen.poll() is not None:
                raise CommandError(f"gunicorn exited; see {server.log_path}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/healthz")
                conn.getresponse().read()
                break
            except OSError:
                time.sleep(0.3)
        else:
            raise CommandError(f"gunicorn did not answer; see {server.log_path}")
        headers = {
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        }
        for i in range(20):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request(
                "POST", f"/api/v1/sessions/warmup-{i}/payloads", body=body, headers=headers
            )
            conn.getresponse().read()
            conn.close()

    def say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()
