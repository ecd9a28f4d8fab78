"""Shared actors and helpers: an ops user, an admin, an outsider, a customer with a key."""

from __future__ import annotations

import gzip
import json
import os

import pytest
from django.contrib.auth.models import Group, User

from onboarding.services import customer_create

# Playwright's sync API runs an event loop in the test thread; pytest-django's ORM calls
# from the same thread are safe here (nothing else uses that loop).
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def _user(username: str, group: str | None = None, **extra) -> User:
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
