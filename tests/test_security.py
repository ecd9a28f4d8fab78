"""Security properties checked across the whole app, not one view at a time.

- every page needs a login (walked from the URL patterns, so a new page is covered);
- admin-only actions refuse ops users on the server (403, nothing changed);
- CSRF on every POST, htmx included (the token from base.html's hx-headers works);
- ingest keys are stored hashed and compared in constant time;
- tenants are isolated on every API route;
- `check --deploy` passes with production settings, and no secret is in the repository.
Bad-input coverage of the ingest API is in tests/pool/test_hostile_inputs.py and
tests/pool/test_api_fuzz.py.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.apps import apps
from django.db import models
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve, reverse
from django.utils import timezone

from onboarding.models import Customer, IngestKey, hash_ingest_key
from pool.models import Payload, Session, State, WorkerCluster
from tests.conftest import payload_body, post_payload
from tests.reliability import FIGURES

pytest_plugins = ["tests.integration.conftest_reliability"]

ROOT = Path(__file__).resolve().parents[1]


# --- every route of the URLconf, with a concrete path --------------------------------

# Values for path converters and regex groups; routes only need to match, objects need
# not exist (anonymous users and CSRF failures are turned away before any lookup).
SAMPLES = {
    "slug": "acme-corp",
    "name": "shared",
    "session_pk": "1",
    "item_id": "1",
    "pk": "1",
    "id": "1",
    "session_id": "s-1",
    "object_id": "1",
    "content_type_id": "1",
    "url": "no-such-page/",
    "app_label": "pool",
}


@dataclass(frozen=True)
class Route:
    pattern: str
    path: str
    callback: Callable

    @property
    def is_api(self) -> bool:
        return self.path.startswith("/api/") or self.path == "/metrics"

    @property
    def is_admin(self) -> bool:
        return self.path.startswith("/admin/")


def _walk(patterns, prefix: str = ""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), pattern.callback


def _concrete(pattern: str) -> str:
    # A name missing from SAMPLES gets "1"; test_every_route_resolves_to_its_own_view
    # then says whether that matched.
    path = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: SAMPLES.get(m.group(1), "1"), pattern)
    path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: SAMPLES.get(m.group(1), "1"), path)
    return "/" + path.replace("^", "").replace("$", "")


ROUTES = [Route(p, _concrete(p), callback) for p, callback in _walk(get_resolver().url_patterns)]

# Reachable without a login, on purpose.
PUBLIC = {
    "/login/": "the login page",
    "/admin/login/": "the admin's login page",
    "/logout/": "logging out (POST only)",
    "/admin/logout/": "logging out of the admin",
    "/healthz": "load balancers and the Docker HEALTHCHECK; says nothing secret",
    "/api/v1/openapi.json": "the API's public description (no data)",
}
# The API answers 401 JSON (never a login page); the method each route accepts.
API_METHODS = {
    "/api/v1/sessions/s-1/payloads": "POST",
    "/api/v1/sessions/s-1": "GET",
    "/api/v1/lag": "GET",
    "/metrics": "GET",
}


def test_every_route_resolves_to_its_own_view():
    assert len(ROUTES) > 50
    for route in ROUTES:
        assert resolve(route.path).func == route.callback, route


@pytest.mark.parametrize("route", ROUTES, ids=[r.pattern for r in ROUTES])
def test_every_route_asks_anonymous_users_to_log_in(client, db, route):
    FIGURES["security"]["routes checked for login"] += 1
    if route.path in PUBLIC:
        return
    if route.is_api:
        method = API_METHODS.get(route.path, "GET")
        response = client.generic(method, route.path)
        expected = 401 if route.path in API_METHODS else 404  # the JSON catch-all
        assert response.status_code == expected
        assert response["Content-Type"] == "application/json"
        assert "error" in response.json()
        return
    response = client.get(route.path)
    if response.status_code == 405:  # a POST-only action
        response = client.post(route.path)
    login = "/admin/login/" if route.is_admin else reverse("login")
    assert response.status_code == 302, (route.path, response.status_code)
    assert response["Location"].startswith(f"{login}?next="), response["Location"]


def test_the_public_and_api_lists_name_real_routes():
    paths = {route.path for route in ROUTES}
    assert set(PUBLIC) <= paths
    assert set(API_METHODS) <= paths
    api_routes = {r.path for r in ROUTES if r.is_api} - set(PUBLIC)
    assert api_routes == set(API_METHODS) | {"/api/"}, "a new API route: cover it here"


# --- permissions on the server ---------------------------------------------------------


@dataclass(frozen=True)
class Action:
    url: Callable[[dict], str]
    data: dict
    done: Callable[[dict], bool]  # True once the action took effect


ADMIN_ONLY = {
    "resize a cluster": Action(
        lambda w: reverse("cluster-resize", args=["shared"]),
        {"workers": "7"},
        lambda w: WorkerCluster.objects.get(name="shared").desired_workers == 7,
    ),
    "pause a cluster": Action(
        lambda w: reverse("cluster-pause", args=["shared"]),
        {"paused": "1"},
        lambda w: WorkerCluster.objects.get(name="shared").paused,
    ),
    "create a cluster": Action(
        lambda w: reverse("cluster-create"),
        {"name": "evil", "desired_workers": "2"},
        lambda w: WorkerCluster.objects.filter(name="evil").exists(),
    ),
    "move a customer": Action(
        lambda w: reverse("customer-move"),
        {"customer": "acme-corp", "cluster": "big"},
        lambda w: Customer.objects.get(slug="acme-corp").cluster.name == "big",
    ),
    "weigh a customer": Action(
        lambda w: reverse("customer-weight"),
        {"customer": "acme-corp", "weight": "9"},
        lambda w: Customer.objects.get(slug="acme-corp").weight == 9,
    ),
    "retry a failed session": Action(
        lambda w: reverse("session-retry", args=["acme-corp", w["failed"].pk]),
        {},
        lambda w: Session.objects.get(pk=w["failed"].pk).state == State.READY,
    ),
    "start a checklist": Action(
        lambda w: reverse("checklist-start"),
        {"customer": "acme-corp"},
        lambda w: Customer.objects.get(slug="acme-corp").onboarded_at is not None,
    ),
}


@pytest.fixture
def world(customer_and_key) -> dict:
    customer, _ = customer_and_key
    WorkerCluster.objects.create(name="big", desired_workers=2)
    failed = Session.objects.create(
        customer=customer, external_id="f-1", state=State.FAILED, attempts=5
    )
    return {"customer": customer, "failed": failed}


@pytest.mark.parametrize("htmx", [False, True], ids=["form", "htmx"])
@pytest.mark.parametrize("name", list(ADMIN_ONLY))
def test_ops_users_get_403_for_admin_only_actions_and_nothing_changes(
    client, ops_user, world, name, htmx
):
    action = ADMIN_ONLY[name]
    client.force_login(ops_user)
    headers = {"HX-Request": "true"} if htmx else {}
    response = client.post(action.url(world), action.data, headers=headers)
    FIGURES["security"]["admin-only actions refused to ops"] += 1
    assert response.status_code == 403
    assert not action.done(world)


@pytest.mark.parametrize("name", list(ADMIN_ONLY))
def test_admins_may_do_what_ops_may_not(client, admin_user, world, name):
    """The same requests succeed for an admin: the 403s above are about permissions."""
    action = ADMIN_ONLY[name]
    client.force_login(admin_user)
    response = client.post(action.url(world), action.data)
    assert response.status_code < 400
    assert action.done(world)


def test_ops_users_cannot_use_the_django_admin(client, ops_user):
    client.force_login(ops_user)
    response = client.get("/admin/pool/workercluster/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


# --- CSRF --------------------------------------------------------------------------------


def csrf_failure(response) -> bool:
    return response.status_code == 403 and b"CSRF verification failed" in response.content


def hx_headers_token(client: Client) -> str:
    """The token as htmx sends it: from <body hx-headers='{"x-csrftoken": ...}'>."""
    page = client.get(reverse("clusters")).content.decode()
    match = re.search(r"<body hx-headers='([^']*)'", page)
    assert match, "base.html no longer sends the CSRF token with htmx requests"
    return json.loads(match.group(1))["x-csrftoken"]


CSRF_ROUTES = [r for r in ROUTES if not r.is_api]


@pytest.mark.parametrize("route", CSRF_ROUTES, ids=[r.pattern for r in CSRF_ROUTES])
def test_every_post_needs_a_csrf_token_and_htmx_sends_one(admin_user, world, route):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    FIGURES["security"]["POST routes checked for CSRF"] += 1

    refused = client.post(route.path, {}, headers={"HX-Request": "true"})
    assert csrf_failure(refused), (route.path, refused.status_code)

    token = hx_headers_token(client)
    accepted = client.post(route.path, {}, headers={"HX-Request": "true", "X-CSRFToken": token})
    assert not csrf_failure(accepted), route.path


def test_an_htmx_resize_with_the_hx_headers_token_takes_effect(admin_user, world):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    token = hx_headers_token(client)
    response = client.post(
        reverse("cluster-resize", args=["shared"]),
        {"workers": "5"},
        headers={"HX-Request": "true", "X-CSRFToken": token},
    )
    assert response.status_code == 200
    assert WorkerCluster.objects.get(name="shared").desired_workers == 5


def test_the_ingest_api_needs_no_csrf_token_because_cookies_do_not_authenticate_it(
    admin_user, customer_and_key
):
    """csrf_exempt is safe on the ingest API only because a logged-in browser's session
    cookie grants nothing there: it takes a bearer key, which a forged form cannot add."""
    _, key = customer_and_key
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert post_payload(client, None, "s-1", payload_body(0)).status_code == 401
    assert post_payload(client, key, "s-1", payload_body(0)).status_code == 202


# --- ingest keys at rest ---------------------------------------------------------------


def every_stored_text() -> list[tuple[str, str]]:
    """(table.column, value as text) for every concrete field of every row of every model."""
    texts = []
    for model in apps.get_models():
        fields = [f for f in model._meta.concrete_fields]
        for row in model.objects.values_list(*[f.attname for f in fields]):
            for field, value in zip(fields, row, strict=True):
                if value is None:
                    continue
                if isinstance(field, models.BinaryField):
                    value = bytes(value).decode("latin-1")
                texts.append((f"{model._meta.db_table}.{field.column}", str(value)))
    return texts


def test_ingest_keys_are_stored_only_as_digests(client, customer_and_key):
    customer, key = customer_and_key
    _, second = IngestKey.issue(customer=customer, label="second")
    assert post_payload(client, key, "s-1", payload_body(0)).status_code == 202
    assert post_payload(client, second, "s-2", payload_body(0)).status_code == 202

    stored = every_stored_text()
    for plain in (key, second):
        secret_part = plain.removeprefix("onr_")
        leaks = [column for column, text in stored if secret_part in text]
        assert leaks == [], f"a plain ingest key is stored in {leaks}"
    digests = set(IngestKey.objects.values_list("key_hash", flat=True))
    assert digests == {hash_ingest_key(key), hash_ingest_key(second)}
    # The prefix shown to tell keys apart is far too short to be used as a key.
    assert all(len(p) <= 12 for p in IngestKey.objects.values_list("prefix", flat=True))
    FIGURES["security"]["stored values scanned for plain keys"] += len(stored)


def test_ingest_keys_and_the_ops_token_are_compared_in_constant_time(
    client, customer_and_key, settings, monkeypatch
):
    _, key = customer_and_key
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert post_payload(client, key, "s-1", payload_body(0)).status_code == 202
    assert (hash_ingest_key(key), hash_ingest_key(key)) in calls

    calls.clear()
    settings.OPS_API_TOKEN = secrets.token_urlsafe(32)
    auth = {"Authorization": f"Bearer {settings.OPS_API_TOKEN}"}
    assert client.get(reverse("lag-api"), headers=auth).status_code == 200
    assert (settings.OPS_API_TOKEN, settings.OPS_API_TOKEN) in calls


def test_a_revoked_key_is_refused(client, customer_and_key):
    customer, key = customer_and_key
    IngestKey.objects.filter(customer=customer).update(revoked_at=timezone.now())
    assert post_payload(client, key, "s-1", payload_body(0)).status_code == 401


# --- tenants -------------------------------------------------------------------------------


def test_one_customer_cannot_read_or_write_another_customers_sessions(
    client, customer_and_key, other_customer_and_key
):
    acme, acme_key = customer_and_key
    globex, globex_key = other_customer_and_key
    assert post_payload(client, globex_key, "shared-id", payload_body(0)).status_code == 202
    assert post_payload(client, globex_key, "globex-only", payload_body(0)).status_code == 202
    auth = {"Authorization": f"Bearer {acme_key}"}

    # Reading: another tenant's session looks exactly like one that does not exist.
    theirs = client.get("/api/v1/sessions/globex-only", headers=auth)
    missing = client.get("/api/v1/sessions/never-sent", headers=auth)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"].replace("globex-only", "X") == missing.json()["error"].replace(
        "never-sent", "X"
    )

    # Writing: the same session id and payload id make Acme's own session, not a duplicate.
    response = post_payload(client, acme_key, "shared-id", payload_body(0, final=True))
    assert response.status_code == 202
    assert response.json()["status"] == "accepted"
    globex_session = Session.objects.get(customer=globex, external_id="shared-id")
    assert globex_session.payload_count == 1 and globex_session.state == State.OPEN
    assert Payload.objects.filter(session=globex_session).count() == 1
    assert Session.objects.get(customer=acme, external_id="shared-id").state == State.READY
    mine = client.get("/api/v1/sessions/shared-id", headers=auth).json()
    assert mine["state"] == State.READY and mine["payload_count"] == 1
    FIGURES["security"]["tenant isolation checks"] += 1


@pytest.mark.parametrize("path", ["/api/v1/lag", "/metrics"])
def test_an_ingest_key_opens_no_ops_api(client, customer_and_key, settings, path):
    _, key = customer_and_key
    settings.OPS_API_TOKEN = secrets.token_urlsafe(32)
    response = client.get(path, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    FIGURES["security"]["tenant isolation checks"] += 1


# --- production settings and the repository ---------------------------------------------


def production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    # As a deployment has it: none of pytest's or a developer's variables.
    keep = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR"}
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(
        {
            "DEBUG": "0",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "HTTPS": "1",
            "SECURE_PROXY_SSL_HEADER": "1",
            "ALLOWED_HOSTS": "example.com",
            "VAR_DIR": str(tmp_path),
        }
    )
    env.update(extra)
    return env


def test_check_deploy_is_clean_with_production_settings(tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=production_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key(tmp_path):
    env = production_env(tmp_path)
    del env["SECRET_KEY"]
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


SKIP_DIRS = {".git", ".venv", "var", "node_modules", "staticfiles", "__pycache__"}


def repository_files() -> list[Path]:
    """Tracked files, plus new ones not ignored (git ls-files); the work tree without
    ignored directories if git is not there."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout.decode()
        names = [name for name in listed.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        names = [
            str(path.relative_to(ROOT))
            for path in ROOT.rglob("*")
            if path.is_file() and not SKIP_DIRS & set(path.relative_to(ROOT).parts)
        ]
    return [ROOT / name for name in names if (ROOT / name).is_file()]


SECRET_PATTERNS = {
    "private key": r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY",
    "AWS access key": r"\bAKIA[0-9A-Z]{16}\b",
    "GitHub token": r"\bgh[pousr]_[A-Za-z0-9]{36,}",
    "Slack token": r"\bxox[abprs]-[A-Za-z0-9-]{10,}",
    "Slack webhook": r"hooks\.slack\.com/services/T[A-Za-z0-9]+/B[A-Za-z0-9]+/[A-Za-z0-9]{16,}",
    "Onramp ingest key": r"\bonr_[A-Za-z0-9_-]{43}\b",
}
# A literal SECRET_KEY must say it is none (the dev fallback in config/settings.py, the
# Dockerfile's build-time collectstatic, the integration tests' key).
SECRET_KEY_LITERAL = r"SECRET_KEY\s*[=:]\s*[\"']?([^\s\"'$(]{8,})"
NOT_A_SECRET = ("insecure", "not-a-secret", "tests-secret")
# user:password@ in a database URL, unless a placeholder or a ${VARIABLE}.
DB_PASSWORD = r"postgres(?:ql)?://[^:/\s@]+:([^@/\s]+)@"
SECRET_FILE_NAMES = r"(^|/)(\.env|id_rsa|id_ed25519|.*\.pem|.*\.key|.*\.p12)$"


def test_no_secret_is_in_the_repository():
    findings = []
    files = repository_files()
    assert len(files) > 50
    for path in files:
        name = str(path.relative_to(ROOT))
        if re.search(SECRET_FILE_NAMES, name):
            findings.append((name, "a secret-looking file name"))
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary: images, fixtures
        for kind, pattern in SECRET_PATTERNS.items():
            findings += [(name, kind) for _ in re.finditer(pattern, text)]
        for match in re.finditer(SECRET_KEY_LITERAL, text):
            if not any(marker in match.group(1) for marker in NOT_A_SECRET):
                findings.append((name, f"SECRET_KEY literal {match.group(1)[:6]}…"))
        for match in re.finditer(DB_PASSWORD, text):
            if not (match.group(1).startswith("${") or match.group(1).lower() == "password"):
                findings.append((name, "a password in a database URL"))
    FIGURES["security"]["repository files scanned for secrets"] += len(files)
    assert findings == []
