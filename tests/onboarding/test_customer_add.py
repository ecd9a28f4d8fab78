"""`manage.py customer_add`: a customer, its cluster and a working ingest key in one step."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from onboarding.models import Customer, IngestKey, hash_ingest_key
from pool.models import Session, WorkerCluster
from tests.conftest import payload_body, post_payload

pytestmark = pytest.mark.django_db


def customer_add(*args: str) -> list[str]:
    out = StringIO()
    call_command("customer_add", *args, stdout=out)
    return out.getvalue().splitlines()


def test_it_creates_a_large_customer_and_its_cluster():
    customer_add("Acme", "--large", "--cluster", "big")

    customer = Customer.objects.get(name="Acme")
    assert customer.slug == "acme"
    assert customer.large
    assert customer.onboarded_at is not None
    assert customer.cluster == WorkerCluster.objects.get(name="big")


def test_it_prints_the_plain_key_alone_on_the_last_line():
    lines = customer_add("Acme", "--large", "--cluster", "big")

    key = lines[-1]
    assert key == key.strip() and " " not in key
    assert key.startswith("onr_")
    assert IngestKey.objects.get(customer__name="Acme").key_hash == hash_ingest_key(key)
    assert "Acme" in lines[0] and "big" in lines[0]


def test_the_printed_key_authenticates_against_the_api(client):
    key = customer_add("Acme", "--large", "--cluster", "big")[-1]

    response = post_payload(client, key, "first-session", payload_body(0))

    assert response.status_code == 202
    assert Session.objects.get(external_id="first-session").customer.name == "Acme"
    detail = client.get("/api/v1/sessions/first-session", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert detail.status_code == 200


def test_a_duplicate_name_is_a_command_error():
    customer_add("Acme", "--large", "--cluster", "big")

    with pytest.raises(CommandError, match="already exists"):
        customer_add("Acme")

    assert Customer.objects.filter(name="Acme").count() == 1
    assert IngestKey.objects.count() == 1


def test_a_name_with_the_same_slug_is_a_command_error_too():
    customer_add("Acme")

    with pytest.raises(CommandError):
        customer_add("ACME")

    assert Customer.objects.count() == 1


def test_without_options_it_joins_the_shared_cluster_and_is_not_onboarded_yet():
    customer_add("Initech")
    customer_add("Umbrella")

    initech = Customer.objects.get(name="Initech")
    assert initech.cluster.name == "shared"
    assert not initech.large
    assert initech.onboarded_at is None
    assert Customer.objects.get(name="Umbrella").cluster == initech.cluster
    assert WorkerCluster.objects.filter(name="shared").count() == 1


def test_each_customer_gets_its_own_key():
    first = customer_add("Initech")[-1]
    second = customer_add("Umbrella")[-1]

    assert first != second
