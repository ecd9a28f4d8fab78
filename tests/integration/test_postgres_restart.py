"""PostgreSQL restarts while recorders send and runpool processes: clients see 503s with
Retry-After (never a 500), nothing acknowledged is lost, nothing is processed twice, and
gunicorn and runpool carry on without anyone restarting them.

This stops the machine's PostgreSQL for a few seconds: everyone using it at that moment
sees the outage too. The downtime is kept short and PostgreSQL is started again in a
`finally`, whatever happens.
"""

from __future__ import annotations

import http.client
import shutil
import subprocess
import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.utils import timezone

from onboarding.services import customer_create
from pool.models import PoolHost, Session, State
from tests.integration.conftest import wait_for, worker_processes
from tests.integration.test_faults import processed_since, start_recorders, stop_recorders
from tests.reliability import Traffic, assert_processed_exactly_once, fault_survived

pytest_plugins = ["tests.integration.conftest_reliability"]
pytestmark = [pytest.mark.integration]

DOWN_S = 3  # seconds between stop and start: a short outage, for everyone's sake


def pg_cluster() -> tuple[str, str]:
    """(version, name) of the local cluster serving the test database, or skip."""
    if connection.vendor != "postgresql":
        pytest.skip("restarts PostgreSQL; this run uses SQLite")
    if not shutil.which("pg_ctlcluster") or not shutil.which("pg_lsclusters"):
        pytest.skip("needs Debian's pg_ctlcluster to restart the local PostgreSQL")
    port = str(connection.settings_dict.get("PORT") or 5432)
    listing = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True)
    for line in listing.stdout.splitlines():
        version, name, cluster_port, *_ = line.split()
        if cluster_port == port:
            return version, name
    pytest.skip(f"no local PostgreSQL cluster on port {port}")


def pg_ctl(version: str, name: str, action: str) -> None:
    args = ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, action]
    if action == "stop":
        args += ["-m", "fast"]
    subprocess.run(args, check=True, timeout=60, capture_output=True)


def pg_ready() -> bool:
    port = str(connection.settings_dict.get("PORT") or 5432)
    args = ["pg_isready", "-h", "127.0.0.1", "-p", port, "-q"]
    return subprocess.run(args, timeout=10).returncode == 0


class HealthProbe(threading.Thread):
    """Polls /healthz like a load balancer, counting (status, has Retry-After)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.seen: Counter = Counter()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/healthz")
                reply = conn.getresponse()
                reply.read()
                conn.close()
                self.seen[(reply.status, reply.getheader("Retry-After") is not None)] += 1
            except (OSError, http.client.HTTPException):
                self.seen[("connection error", False)] += 1


def test_a_postgresql_restart_costs_clients_503s_and_loses_nothing(gunicorn, runpool):
    version, name = pg_cluster()
    customer, key = customer_create(name="Restart Co")
    pool = runpool("it-pg")
    wait_for(lambda: len(worker_processes(pool.pid)) == 2, 30, message="2 live workers")
    traffic = Traffic()
    probe = HealthProbe(gunicorn.port)
    probe.start()
    recorders = start_recorders(gunicorn.port, key, traffic, n=4, think_s=0.05)
    try:
        wait_for(lambda: processed_since(customer, timezone.now() - timedelta(hours=1)) >= 30, 60)
        before = Counter(traffic.statuses)
        try:
            pg_ctl(version, name, "stop")
            stopped_at = time.monotonic()
            time.sleep(DOWN_S)
        finally:
            pg_ctl(version, name, "start")  # always, even if stopping failed halfway
            wait_for(pg_ready, 60, 0.2, "PostgreSQL to accept connections again")
        outage_s = time.monotonic() - stopped_at
        connections.close_all()  # this process's own connection died with the server
        back_at = timezone.now()
        during = traffic.statuses - before
        # Nobody restarts gunicorn or runpool: both reconnect on their own.
        wait_for(
            lambda: processed_since(customer, back_at) >= 30,
            90,
            message="runpool to process sessions again",
        )
        wait_for(
            lambda: PoolHost.objects.filter(name="it-pg", seen_at__gt=back_at).exists(),
            30,
            message="a heartbeat after the restart",
        )
    finally:
        stop_recorders(recorders)
        probe.stopped.set()
        probe.join(15)
        connections.close_all()

    attempts = assert_processed_exactly_once(
        test="PostgreSQL restart", customer=customer, traffic=traffic, max_attempts=3, outage=True
    )
    assert during[503] > 0, f"no client saw the outage: {dict(during)}"
    assert (503, True) in probe.seen and (503, False) not in probe.seen, dict(probe.seen)
    assert not [s for s, _ in probe.seen if isinstance(s, int) and s >= 500 and s != 503]
    assert Session.objects.filter(customer=customer, state=State.FAILED).count() == 0
    fault_survived(
        f"PostgreSQL stopped for {DOWN_S} s and started again",
        f"down {outage_s:.0f} s, {during[503]} ingest replies 503 + Retry-After, "
        f"{traffic.connection_errors} connection errors, 0 other 5xx, "
        f"{len(traffic.sessions)} sessions, attempts {attempts}",
    )
