"""In Chromium, against a real runpool: an admin resizes a cluster and watches it apply."""

from __future__ import annotations

import signal

import pytest
from django.db import connection

from pool.models import ClusterChange, ClusterHeartbeat, WorkerCluster
from tests.integration import conftest as integration
from tests.integration.conftest import runpool, wait_for, worker_processes

__all__ = ["runpool"]  # the fixture, imported for pytest

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def test_an_admin_resizes_the_shared_cluster_and_sees_the_live_workers_follow(
    transactional_db, live_server, login_page, admin_user, customer_and_key, runpool
):
    from playwright.sync_api import expect

    # The live server thread, this test and the runpool subprocess share one database: the
    # subprocess's DATABASE_URL names the test database, and its heartbeat shows up here.
    assert integration.subprocess_database_url().endswith(connection.settings_dict["NAME"])
    assert WorkerCluster.objects.get(name="shared").desired_workers == 2
    pool = runpool("it-resize")
    wait_for(lambda: len(worker_processes(pool.pid)) == 2, 30, message="2 live workers")
    wait_for(
        lambda: ClusterHeartbeat.objects.filter(
            host__name="it-resize", cluster__name="shared", live_workers=2
        ).exists(),
        15,
        message="runpool's first heartbeat",
    )

    page = login_page(admin_user)
    page.set_default_timeout(10_000)
    page.goto(f"{live_server.url}/clusters/")
    section = page.locator("section[data-cluster=shared]")
    host_live = section.locator("tr[data-host=it-resize] td.host-live")
    expect(host_live).to_have_text("2")
    page.evaluate("window.notReloaded = true")  # gone if anything reloaded the page

    section.locator("input.workers-input").fill("3")
    section.get_by_role("button", name="Apply").click()

    expect(section.locator("b.desired")).to_have_text("3")
    assert WorkerCluster.objects.get(name="shared").desired_workers == 3
    change = ClusterChange.objects.get(cluster__name="shared")
    assert (change.by, change.field, change.before, change.after) == (
        admin_user,
        "desired_workers",
        "2",
        "3",
    )
    # runpool starts a 3-worker generation and drains the old one; the page polls every 2 s.
    expect(host_live).to_have_text("3", timeout=30_000)
    wait_for(lambda: len(worker_processes(pool.pid)) == 3, 30, message="3 worker processes")
    expect(section.locator(".badge")).to_have_text("running", timeout=10_000)
    expect(host_live).to_have_text("3")
    assert len(worker_processes(pool.pid)) == 3
    assert page.evaluate("window.notReloaded") is True
    assert pool.stop(signal.SIGTERM, timeout=60) == 0, pool.tail()
