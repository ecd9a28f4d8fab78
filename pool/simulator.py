"""Synthetic but realistic rrweb traffic: what `manage.py simulate` sends.

Each simulated browser session behaves like rrweb's recorder: a page load (Meta +
FullSnapshot), then batches of mouse moves, clicks, scrolls and inputs, the odd console
error and rage-click burst, one payload every ~2 s, and `final: true` on the last one
(some sessions just stop sending, as a closed tab does, and close by idleness).
"""

from __future__ import annotations

import gzip
import heapq
import http.client
import json
import random
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

PAGES = ["/", "/pricing", "/docs", "/signup", "/checkout", "/account", "/blog/launch"]


def now_ms() -> int:
    return int(time.time() * 1000)


def page_load(href: str, ts: int) -> list[dict]:
    return [
        {"type": 4, "data": {"href": href, "width": 1280, "height": 800}, "timestamp": ts},
        {
            "type": 2,
            "data": {
                "node": {"type": 0, "childNodes": [], "id": 1},
                "initialOffset": {"left": 0, "top": 0},
            },
            "timestamp": ts + 1,
        },
    ]


def activity(rng: random.Random, start: int, span_ms: int) -> list[dict]:
    """A couple of seconds of user input, timestamps ascending within [start, start+span)."""
    events = []
    for _ in range(rng.randint(3, 12)):
        ts = start + rng.randrange(max(span_ms, 1))
        kind = rng.random()
        if kind < 0.45:
            data = {
                "source": 1,
                "positions": [
                    {"x": rng.randrange(1280), "y": rng.randrange(800), "id": 5, "timeOffset": -100}
                ],
            }
        elif kind < 0.65:
            data = {
                "source": 2,
                "type": 2,
                "id": 9,
                "x": rng.randrange(1280),
                "y": rng.randrange(800),
                "pointerType": 0,
            }
        elif kind < 0.85:
            data = {"source": 3, "id": 1, "x": 0, "y": rng.randrange(4000)}
        else:
            data = {"source": 5, "text": "x" * rng.randint(1, 12), "isChecked": False, "id": 12}
        events.append({"type": 3, "data": data, "timestamp": ts})
    if rng.random() < 0.03:  # a rage-click burst: 7 clicks on one spot within 1.5 s
        x, y = rng.randrange(1280), rng.randrange(800)
        for i in range(7):
            events.append(
                {
                    "type": 3,
                    "data": {"source": 2, "type": 2, "id": 9, "x": x, "y": y},
                    "timestamp": start + i * 200,
                }
            )
    if rng.random() < 0.05:
        events.append(
            {
                "type": 6,
                "data": {
                    "plugin": "rrweb/console@1",
                    "payload": {
                        "level": "error",
                        "trace": [],
                        "payload": ['"Uncaught TypeError: x is undefined"'],
                    },
                },
                "timestamp": start + span_ms - 1,
            }
        )
    events.sort(key=lambda e: e["timestamp"])
    return events


@dataclass(order=True)
class SimSession:
    due: float
    session_id: str = field(compare=False)
    customer: str = field(compare=False)
    key: str = field(compare=False)
    payloads_left: int = field(compare=False)
    abandon: bool = field(compare=False)
    next_payload: int = field(default=0, compare=False)

    def payload(self, rng: random.Random, interval_s: float) -> dict:
        # A recorder sends what happened since its last send: the events lie in the past.
        span = int(interval_s * 1000) - 20
        ts = now_ms() - span - 10
        events: list[dict] = []
        if self.next_payload == 0 or rng.random() < 0.05:
            events += page_load(f"https://{self.customer}.example.com{rng.choice(PAGES)}", ts)
        events += activity(rng, ts + 5, span)
        body = {"payload_id": self.next_payload, "events": events}
        if self.payloads_left == 1 and not self.abandon:
            body["final"] = True
        return body


class Simulator:
    def __init__(
        self,
        *,
        url: str,
        keys: dict[str, str],
        big: str | None,
        rate: float,
        duration: float,
        session_s: float,
        interval_s: float = 2.0,
        concurrency: int = 8,
        seed: int | None = None,
        out=None,
    ) -> None:
        self.url = urlsplit(url)
        self.keys = keys
        self.big = big if big in keys else next(iter(keys))
        self.rate = rate
        self.duration = duration
        self.session_s = session_s
        self.interval_s = interval_s
        self.concurrency = concurrency
        self.rng = random.Random(seed)
        self.out = out
        self.replies: Counter[str] = Counter()
        self.sessions_started: Counter[str] = Counter()
        self.payloads_sent = 0
        self.bytes_sent = 0
        self.lock = threading.Lock()
        self.local = threading.local()

    def weights(self) -> list[tuple[str, float]]:
        """The big customer sends 60 % of all sessions: more than all others combined."""
        others = [c for c in self.keys if c != self.big]
        if not others:
            return [(self.big, 1.0)]
        return [(self.big, 0.6)] + [(c, 0.4 / len(others)) for c in others]

    def new_session(self, due: float) -> SimSession:
        names, weights = zip(*self.weights(), strict=True)
        customer = self.rng.choices(names, weights)[0]
        self.sessions_started[customer] += 1
        n = max(1, round(self.rng.uniform(0.5, 1.5) * self.session_s / self.interval_s))
        return SimSession(
            due=due,
            session_id=f"sim-{uuid.uuid4().hex[:16]}",
            customer=customer,
            key=self.keys[customer],
            payloads_left=n,
            abandon=self.rng.random() < 0.1,
        )

    def connection(self) -> http.client.HTTPConnection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            cls = (
                http.client.HTTPSConnection
                if self.url.scheme == "https"
                else http.client.HTTPConnection
            )
            conn = cls(self.url.hostname, self.url.port, timeout=30)
            self.local.conn = conn
        return conn

    def send(self, session: SimSession, body: dict) -> None:
        data = gzip.compress(json.dumps(body).encode(), 5)
        path = f"{self.url.path.rstrip('/')}/api/v1/sessions/{session.session_id}/payloads"
        headers = {
            "Authorization": f"Bearer {session.key}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        }
        for attempt in range(5):  # a recorder retries 503s and dropped connections
            try:
                conn = self.connection()
                conn.request("POST", path, body=data, headers=headers)
                reply = conn.getresponse()
                reply.read()
                status = reply.status
            except (OSError, http.client.HTTPException):
                self.local.conn = None
                status = "conn-error"
            if status not in (503, "conn-error"):
                break
            time.sleep(min(2**attempt * 0.25, 4))
        with self.lock:
            self.replies[str(status)] += 1
            self.payloads_sent += 1
            self.bytes_sent += len(data)

    def run(self) -> dict:
        start = time.monotonic()
        end = start + self.duration if self.duration > 0 else float("inf")
        heap: list[SimSession] = []
        next_start = start
        last_report = start
        with ThreadPoolExecutor(self.concurrency) as pool:
            while True:
                now = time.monotonic()
                while next_start <= now and now < end:
                    heapq.heappush(heap, self.new_session(next_start))
                    next_start += self.rng.expovariate(self.rate) if self.rate > 0 else float("inf")
                if not heap and now >= end:
                    break
                while heap and heap[0].due <= now:
                    session = heapq.heappop(heap)
                    pool.submit(self.send, session, session.payload(self.rng, self.interval_s))
                    session.next_payload += 1
                    session.payloads_left -= 1
                    if session.payloads_left > 0:
                        session.due = now + self.interval_s * self.rng.uniform(1.0, 1.1)
                        heapq.heappush(heap, session)
                if self.out and now - last_report >= 10:
                    self.out(self.report_line(now - start))
                    last_report = now
                time.sleep(0.01)
        return self.summary(time.monotonic() - start)

    def report_line(self, elapsed: float) -> str:
        return (
            f"[{elapsed:6.0f}s] sessions started {sum(self.sessions_started.values())}, "
            f"payloads sent {self.payloads_sent}, replies {dict(self.replies)}"
        )

    def summary(self, elapsed: float) -> dict:
        return {
            "elapsed_s": round(elapsed, 1),
            "sessions": dict(self.sessions_started),
            "payloads": self.payloads_sent,
            "bytes": self.bytes_sent,
            "replies": dict(self.replies),
        }
