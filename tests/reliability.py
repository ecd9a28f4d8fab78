"""Reliability figures for the fault, load and security tests, and the recorder they use.

- `FIGURES` collects what the tests measured (faults survived, 5xx seen, sessions lost,
  load figures); tests/integration/conftest_reliability.py prints it as one table at the
  end of the run. docs/reliability.md keeps the table of a full run.
- `Recorder` is a session-replay recorder as a thread: it sends sessions over real HTTP
  and, like a browser SDK, resends the same payload after a 503 (honouring Retry-After,
  capped so tests stay short) or a connection error. `Traffic` is what all recorders saw.
"""

from __future__ import annotations

import http.client
import inspect
import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

FIGURES: dict = {
    "faults": [],  # (fault, outcome) for every fault test that passed its checks
    "5xx": Counter(),  # test name -> 5xx replies other than 503 during an outage
    "503_outage": Counter(),  # test name -> 503 + Retry-After replies while the database was down
    "lost": Counter(),  # test name -> accepted sessions not stored or not processed exactly once
    "load": {},  # figures of the load test
    "security": Counter(),  # checks made by tests/test_security.py
}


def fault_survived(fault: str, outcome: str) -> None:
    FIGURES["faults"].append((fault, outcome))


def hostile_inputs() -> tuple[int, int | None]:
    """(cases, 5xx seen) of tests/pool/test_hostile_inputs.py.

    Every test of that module that counts itself in TALLY is a hostile input, once per
    parametrized case. When the module ran in this session its own tally gives the 5xx
    count; otherwise the cases are counted from the module and 5xx is None (not run).
    """
    from tests.pool import test_hostile_inputs as hostile

    cases = 0
    for name, func in inspect.getmembers(hostile, inspect.isfunction):
        if not name.startswith("test_") or 'TALLY["tried"]' not in inspect.getsource(func):
            continue
        n = 1
        for mark in getattr(func, "pytestmark", []):
            if mark.name == "parametrize":
                n *= len(mark.args[1])
        cases += n
    ran = hostile.TALLY["tried"] > 0
    return (hostile.TALLY["tried"] if ran else cases), (hostile.TALLY["5xx"] if ran else None)


def summary_lines() -> list[str]:
    cases, hostile_5xx = hostile_inputs()
    hostile_note = "this run" if hostile_5xx is not None else "not run in this session"
    lines = [f"faults survived: {len(FIGURES['faults'])}"]
    lines += [f"  - {fault}: {outcome}" for fault, outcome in FIGURES["faults"]]
    lines.append(
        f"hostile inputs tried: {cases} ({hostile_note})"
        + (f", 5xx seen: {hostile_5xx}" if hostile_5xx is not None else "")
    )
    lines.append(
        f"5xx seen (other than 503 + Retry-After during an outage): {sum(FIGURES['5xx'].values())}"
    )
    lines.append(f"503 + Retry-After during outages: {sum(FIGURES['503_outage'].values())}")
    lines.append(f"sessions lost: {sum(FIGURES['lost'].values())}")
    if FIGURES["load"]:
        load = FIGURES["load"]
        lines.append(
            "load: {clients} clients for {seconds:.0f} s, {requests} requests, "
            "{rps:.0f} requests/s, p50 {p50_ms:.0f} ms, p99 {p99_ms:.0f} ms, "
            "{sessions} sessions all processed {drain_s:.0f} s after the load "
            "(1-min load average {loadavg:.1f} on {cpus} CPUs)".format(cpus=os.cpu_count(), **load)
        )
    if FIGURES["security"]:
        checks = ", ".join(f"{k}: {v}" for k, v in sorted(FIGURES["security"].items()))
        lines.append(f"security checks: {checks}")
    return lines


# --- a recorder over real HTTP ------------------------------------------------------

RETRY_AFTER_CAP_S = 1.0  # a browser SDK honours Retry-After fully; tests wait at most this
PAYLOAD_DEADLINE_S = 90.0  # a payload still refused after this long counts as given up


def session_payload(payload_id: int, *, final: bool, events: int = 12) -> bytes:
    """A small but real rrweb payload: meta, full snapshot, then clicks and scrolls."""
    t0 = 1_700_000_000_000 + payload_id * 10_000
    body = [
        {"type": 4, "data": {"href": f"https://shop.test/p/{payload_id}"}, "timestamp": t0},
        {"type": 2, "data": {"node": {"type": 0, "childNodes": []}}, "timestamp": t0 + 1},
    ]
    for i in range(events):
        source = (2, 3, 1)[i % 3]
        data = {"source": source, "x": 10 + i, "y": 20 + i}
        if source == 2:
            data["type"] = 2
        body.append({"type": 3, "data": data, "timestamp": t0 + 100 * (i + 1)})
    return json.dumps({"payload_id": payload_id, "events": body, "final": final}).encode()


@dataclass
class Traffic:
    """What every recorder saw, shared between their threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: Counter = field(default_factory=Counter)
    retry_after_missing: int = 0  # 503 replies without a Retry-After header
    connection_errors: int = 0
    accepted: set = field(default_factory=set)  # (session id, payload id) that got 202/200
    sessions: set = field(default_factory=set)  # session ids with at least one accepted payload
    given_up: list = field(default_factory=list)  # (session id, payload id, last status)
    latencies: list = field(default_factory=list)  # seconds, one per reply
    requests: int = 0

    def server_errors(self, *, except_503: bool) -> dict[int, int]:
        return {
            status: n
            for status, n in self.statuses.items()
            if status >= 500 and not (except_503 and status == 503)
        }


class Recorder(threading.Thread):
    """Sends sessions `<prefix>-<n>` of `payloads` payloads each (the last one final).

    Starts a new session only before `until` (a time.monotonic() deadline) and at most
    `max_sessions`, but always finishes the session it started, so every session it
    reports is complete or visibly given up.
    """

    def __init__(
        self,
        *,
        port: int,
        key: str,
        prefix: str,
        traffic: Traffic,
        until: float,
        max_sessions: int,
        payloads: int = 2,
        think_s: float = 0.0,
        events: int = 12,
    ) -> None:
        super().__init__(daemon=True, name=f"recorder-{prefix}")
        self.port, self.key, self.prefix, self.traffic = port, key, prefix, traffic
        self.until, self.max_sessions = until, max_sessions
        self.payloads, self.think_s, self.events = payloads, think_s, events
        self.stopped = threading.Event()
        self.conn: http.client.HTTPConnection | None = None

    def stop(self) -> None:
        self.stopped.set()

    def run(self) -> None:
        n = 0
        while n < self.max_sessions and time.monotonic() < self.until and not self.stopped.is_set():
            sid = f"{self.prefix}-{n}"
            for payload_id in range(self.payloads):
                final = payload_id == self.payloads - 1
                body = session_payload(payload_id, final=final, events=self.events)
                self.send(sid, payload_id, body)
            n += 1
            if self.think_s:
                self.stopped.wait(self.think_s)
        if self.conn is not None:
            self.conn.close()

    def send(self, sid: str, payload_id: int, body: bytes) -> None:
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        path = f"/api/v1/sessions/{sid}/payloads"
        deadline = time.monotonic() + PAYLOAD_DEADLINE_S
        status = None
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                self.conn.request("POST", path, body=body, headers=headers)
                reply = self.conn.getresponse()
                reply.read()
                status = reply.status
            except (OSError, http.client.HTTPException):
                # Refused, reset or timed out: the recorder keeps the payload and resends.
                with self.traffic.lock:
                    self.traffic.connection_errors += 1
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                time.sleep(0.2)
                continue
            with self.traffic.lock:
                self.traffic.requests += 1
                self.traffic.statuses[status] += 1
                self.traffic.latencies.append(time.monotonic() - started)
                if status in (200, 202):
                    self.traffic.accepted.add((sid, payload_id))
                    self.traffic.sessions.add(sid)
                    return
                if status == 503 and reply.getheader("Retry-After") is None:
                    self.traffic.retry_after_missing += 1
            if status != 503:
                break  # anything else is final for a recorder: it drops the payload
            time.sleep(min(float(reply.getheader("Retry-After") or 1), RETRY_AFTER_CAP_S))
        with self.traffic.lock:
            self.traffic.given_up.append((sid, payload_id, status))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- the one assertion every fault ends with ----------------------------------------


def assert_processed_exactly_once(
    *,
    test: str,
    customer,
    traffic: Traffic,
    max_attempts: int,
    timeout_s: float = 120,
    outage: bool = False,
) -> dict[int, int]:
    """No 5xx (during a database `outage`, only 503s with Retry-After); every payload a
    recorder saw accepted is stored; every session it started ends processed, counted
    once in Customer.processed_total, after few attempts.

    Waits up to `timeout_s` for the backlog to drain, records 5xx and sessions lost in
    FIGURES (even when it then fails), and returns the attempts histogram.
    """
    from pool.models import Payload, Session, State

    errors = traffic.server_errors(except_503=outage)
    FIGURES["5xx"][test] = sum(errors.values())
    if outage:
        FIGURES["503_outage"][test] = traffic.statuses[503]
    assert errors == {}, f"server errors: {errors}"
    assert traffic.retry_after_missing == 0, "a 503 without Retry-After"

    sessions = Session.objects.filter(customer=customer)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sessions.filter(state=State.PROCESSED).count() >= len(traffic.sessions):
            break
        time.sleep(0.5)
    stored = set(
        Payload.objects.filter(session__customer=customer).values_list(
            "session__external_id", "payload_id"
        )
    )
    processed = set(sessions.filter(state=State.PROCESSED).values_list("external_id", flat=True))
    customer.refresh_from_db()
    lost = traffic.sessions - processed
    lost |= {sid for sid, _ in traffic.accepted - stored}
    FIGURES["lost"][test] = len(lost) + abs(customer.processed_total - len(traffic.sessions))

    assert traffic.given_up == [], traffic.given_up[:10]
    assert traffic.accepted - stored == set(), "accepted payloads missing from the database"
    assert stored == traffic.accepted, "stored payloads that no recorder saw accepted"
    states = dict(Counter(sessions.values_list("state", flat=True)))
    assert lost == set(), f"{len(lost)} sessions not processed; states: {states}"
    assert set(sessions.values_list("external_id", flat=True)) == traffic.sessions
    # The counter moves in the transaction that stores a result: exactly once each.
    assert customer.processed_total == len(traffic.sessions)
    attempts = Counter(sessions.values_list("attempts", flat=True))
    assert max(attempts) <= max_attempts, f"attempts: {dict(attempts)}"
    return dict(sorted(attempts.items()))
