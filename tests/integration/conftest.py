"""Real processes for integration tests: gunicorn on a loopback port and runpool.

Subprocesses reach the test database through DATABASE_URL built from pytest-django's
test settings (PostgreSQL's test_<name> database, or SQLite's test file in var/).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from django.db import connection

from pool.runner import is_worker_title, process_title

ROOT = Path(__file__).resolve().parents[2]
LOGS = ROOT / "var" / "test-logs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_database_url() -> str:
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    user = s.get("USER") or "postgres"
    host = s.get("HOST") or "127.0.0.1"
    port = s.get("PORT") or 5432
    return f"postgres://{user}@{host}:{port}/{s['NAME']}"


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=subprocess_database_url(),
        HTTPS="0",
        SECRET_KEY="integration-tests-secret-key-0123456789-abcdefghijklmnop",
        SESSION_LEASE_S="5",
        SESSION_QUEUED_TIMEOUT_S="5",
        POOL_HEARTBEAT_S="1",
        LOG_LEVEL="INFO",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Proc:
    def __init__(self, name: str, args: list[str], env: dict[str, str]) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"{name}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                for child in psutil.Process(self.pid).children(recursive=True):
                    child.kill()
                self.popen.kill()
                self.popen.wait(10)
        self.log.close()
        return self.popen.returncode

    def tail(self, n: int = 40) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text().splitlines()[-n:])


def wait_for(predicate, timeout: float, interval: float = 0.2, message: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}")


@pytest.fixture
def gunicorn(transactional_db):
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "gunicorn",
        "config.wsgi",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "2",
        "--timeout",
        "30",
    ]
    proc = Proc(f"gunicorn-{port}", args, subprocess_env())
    proc.url = f"http://127.0.0.1:{port}"
    proc.port = port

    def up() -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/login/")
            return conn.getresponse().status == 200
        except OSError:
            return False

    wait_for(up, 30, message="gunicorn to answer")
    yield proc
    proc.stop()


@pytest.fixture
def runpool(transactional_db):
    """start(host="it-1", **env) -> Proc; every runpool started is stopped at teardown."""
    procs: list[Proc] = []

    def start(host: str = "it-1", **env: str) -> Proc:
        args = [sys.executable, "manage.py", "runpool", "--host", host]
        proc = Proc(f"runpool-{host}", args, subprocess_env(**env))
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


def worker_processes(runpool_pid: int) -> list[psutil.Process]:
    """django-q2 worker processes below a runpool, found through the OS by their titles."""
    try:
        children = psutil.Process(runpool_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [proc for proc in children if is_worker_title(process_title(proc))]


def post_json(url: str, path: str, key: str, body: dict, conn=None) -> tuple[int, dict]:
    parts = url.split(":")
    conn = conn or http.client.HTTPConnection("127.0.0.1", int(parts[-1]), timeout=30)
    conn.request(
        "POST",
        path,
        body=json.dumps(body),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    reply = conn.getresponse()
    return reply.status, json.loads(reply.read() or b"{}")
