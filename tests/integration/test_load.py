"""Bounded load on loopback: 50 recorders send sessions to gunicorn for 60 s while runpool
processes them. No 5xx, no connection error, every accepted payload stored, every session
processed exactly once. Each recorder is bounded both in time (LOAD_S) and in sessions.
"""

from __future__ import annotations

import os
import time

import pytest

from onboarding.services import customer_create
from tests.integration.conftest import wait_for, worker_processes
from tests.reliability import (
    FIGURES,
    Recorder,
    Traffic,
    assert_processed_exactly_once,
    percentile,
)

pytest_plugins = ["tests.integration.conftest_reliability"]
pytestmark = [pytest.mark.integration]

CLIENTS = 50
LOAD_S = 60
SESSIONS_PER_CLIENT = 400  # a bound; at loopback speed on 2 cores time runs out first


def test_50_recorders_for_a_minute_get_no_5xx_and_every_session_is_processed_once(
    gunicorn, runpool
):
    customer, key = customer_create(name="Load Co")
    pool = runpool("it-load")
    wait_for(lambda: len(worker_processes(pool.pid)) == 2, 30, message="2 live workers")
    traffic = Traffic()
    started = time.monotonic()
    recorders = [
        Recorder(
            port=gunicorn.port,
            key=key,
            prefix=f"c{i}",
            traffic=traffic,
            until=started + LOAD_S,
            max_sessions=SESSIONS_PER_CLIENT,
        )
        for i in range(CLIENTS)
    ]
    for recorder in recorders:
        recorder.start()
    try:
        for recorder in recorders:
            recorder.join(timeout=LOAD_S + 120 - (time.monotonic() - started))
        assert not any(r.is_alive() for r in recorders), "a recorder overran its bound"
    finally:
        for recorder in recorders:
            recorder.stop()
    elapsed = time.monotonic() - started
    load_over = time.monotonic()

    attempts = assert_processed_exactly_once(
        test="load", customer=customer, traffic=traffic, max_attempts=2, timeout_s=600
    )
    drain_s = time.monotonic() - load_over
    assert traffic.connection_errors == 0
    FIGURES["load"] = {
        "clients": CLIENTS,
        "seconds": elapsed,
        "requests": traffic.requests,
        "rps": traffic.requests / elapsed,
        "p50_ms": percentile(traffic.latencies, 0.50) * 1000,
        "p99_ms": percentile(traffic.latencies, 0.99) * 1000,
        "sessions": len(traffic.sessions),
        "drain_s": drain_s,
        "statuses": dict(traffic.statuses),
        "attempts": attempts,
        "loadavg": os.getloadavg()[0],  # the machine is shared: say how busy it was
    }
