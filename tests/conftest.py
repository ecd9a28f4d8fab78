"""Shared actors and helpers: an ops user, an admin, an outsider, a customer with a key."""

from __future__ import annotations

import gzip
import json
import os

import pytest
from django.contrib.auth.models import Group, Permission, User

from onboarding.roles import roles_ensure
from onboarding.services import customer_create

# Playwright's sync API runs an event loop in the test thread; pytest-django's ORM calls
# from the same thread are safe here (nothing else uses that loop).
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def _user(username: str, group: str | None = None, **extra) -> User:
    # transactional tests flush every table, groups included: restore the roles first.
    roles_ensure(Group=Group, Permission=Permission)
    user = User.objects.create_user(username=username, password="pw-for-tests-1", **extra)
    if group:
        user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture
def ops_user(db) -> User:
    return _user("olivia-ops", "ops")


@pytest.fixture
def admin_user(db) -> User:
    return _user("adam-admin", "admins")


@pytest.fixture
def outsider(db) -> User:
    return _user("oscar-outsider")


@pytest.fixture
def customer_and_key(db):
    return customer_create(name="Acme Corp")


@pytest.fixture
def other_customer_and_key(db):
    return customer_create(name="Globex")


def payload_body(payload_id: int = 0, *, events=None, final: bool = False, **extra) -> dict:
    events = (
        events
        if events is not None
        else [
            {"type": 4, "data": {"href": "https://acme.test/"}, "timestamp": 1_700_000_000_000},
            {"type": 2, "data": {"node": {}}, "timestamp": 1_700_000_000_001},
            {
                "type": 3,
                "data": {"source": 2, "type": 2, "x": 5, "y": 5},
                "timestamp": 1_700_000_001_000,
            },
        ]
    )
    return {"payload_id": payload_id, "events": events, "final": final, **extra}


def post_payload(
    client,
    key: str,
    session_id: str,
    body,
    *,
    gzip_it=False,
    content_type="application/json",
    **headers,
):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    if gzip_it:
        data = gzip.compress(data)
        headers["HTTP_CONTENT_ENCODING"] = "gzip"
    if key is not None:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return client.generic(
        "POST",
        f"/api/v1/sessions/{session_id}/payloads",
        data,
        content_type=content_type,
        **headers,
    )


# --- Browser (Playwright driving Debian's Chromium) ---------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = os.path.join(os.path.dirname(__file__), "..", "var", "screenshots")


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def login_page(browser, live_server):
    """Returns login(user) -> a Playwright page logged in as that user on live_server."""
    contexts = []

    def login(user: User):
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        contexts.append(context)
        page = context.new_page()
        page.goto(f"{live_server.url}/login/")
        page.fill("#id_username", user.username)
        page.fill("#id_password", "pw-for-tests-1")
        page.click("button[type=submit]")
        page.wait_for_url(f"{live_server.url}/")
        return page

    yield login
    for context in contexts:
        context.close()


def screenshot(page, name: str) -> str:
    os.makedirs(SCREENSHOTS, exist_ok=True)
    path = os.path.join(SCREENSHOTS, f"{name}.png")
    page.screenshot(path=path, full_page=True)
    return path
