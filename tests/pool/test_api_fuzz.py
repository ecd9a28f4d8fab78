"""Property-based fuzzing of the ingest API from its own OpenAPI document (schemathesis).

The schema is loaded from /api/v1/openapi.json through the real WSGI application, and
every generated request goes through it too (all middleware included), so the customer
and its key must be committed: `transactional_db`, not `db`. Schemathesis sends valid
and schema-violating requests; its default checks include "no 5xx", "status code is
documented", "response matches its schema", "invalid data is rejected" and "valid data
is accepted".
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from config.wsgi import application
from onboarding.services import customer_create
from pool.openapi import openapi_document

schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", application)

FUZZ_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,  # no .hypothesis/ example store in the work tree
    # The key fixture is set up once per test, not per example: that is intended here.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def ingest_key(transactional_db) -> str:
    _, key = customer_create(name="Fuzz Co")
    return key


def documented_statuses(case) -> set[int]:
    operation = openapi_document("")["paths"][case.operation.path][case.operation.method.lower()]
    return {int(status) for status in operation["responses"]}


@schema.parametrize()
@FUZZ_SETTINGS
def test_no_generated_request_gets_a_5xx_or_an_undocumented_reply(case, ingest_key):
    response = case.call_and_validate(headers={"Authorization": f"Bearer {ingest_key}"})

    assert response.status_code < 500
    assert response.status_code in documented_statuses(case)


@schema.include(method="POST").parametrize()
@FUZZ_SETTINGS
def test_every_accepted_payload_can_be_read_back_as_documented(case, ingest_key):
    auth = {"Authorization": f"Bearer {ingest_key}"}
    response = case.call_and_validate(headers=auth)
    if response.status_code not in (200, 202):
        return

    session_id = case.path_parameters["session_id"]
    read = schema["/api/v1/sessions/{session_id}"]["GET"].Case(
        path_parameters={"session_id": session_id}
    )
    detail = read.call_and_validate(headers=auth)

    assert detail.status_code == 200
    assert detail.json()["session_id"] == session_id
    assert detail.json()["state"] == response.json()["state"]
