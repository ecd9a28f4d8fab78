"""In Chromium: an ops user signs an item in place and the progress bar moves."""

from __future__ import annotations

import importlib
import re
import sys
from datetime import timedelta

import pytest
from django.conf import settings
from django.template import engines
from django.utils import timezone

from onboarding.checklists import checklist_checks_evaluate, checklist_item_sign, checklist_start
from pool.models import Session
from pool.worker import session_process
from tests.conftest import payload_body, post_payload, screenshot

OPS_CHECKLIST_PERMISSIONS = ["sign_ops_item", "view_checklist", "view_checklistitem"]


@pytest.fixture(autouse=True)
def ops_may_sign(transactional_db):
    """Transactional tests flush every table, and the fixtures restore the groups from
    onboarding.roles, which does not list the checklist permissions of migration 0005
    yet: grant them again (a no-op once it does)."""
    from django.contrib.auth.models import Group, Permission

    ops, _ = Group.objects.get_or_create(name="ops")
    ops.permissions.add(
        *Permission.objects.filter(
            content_type__app_label="onboarding", codename__in=OPS_CHECKLIST_PERMISSIONS
        )
    )


@pytest.mark.browser
def test_an_ops_user_signs_an_item_and_the_progress_bar_moves(
    transactional_db,
    live_server,
    login_page,
    client,
    monkeypatch,
    ops_user,
    admin_user,
    customer_and_key,
):
    from playwright.sync_api import expect

    customer, key = customer_and_key
    # The pages and their template tags import it: load them before hiding it.
    importlib.import_module(settings.ROOT_URLCONF)
    engines.all()
    monkeypatch.setitem(sys.modules, "onboarding.alerts", None)  # alerting not there yet
    checklist = checklist_start(customer=customer, started_at=timezone.now() - timedelta(days=4))
    post_payload(client, key, "first", payload_body(final=True))
    Session.objects.filter(external_id="first").update(state="queued")
    session_process(session_id=Session.objects.get(external_id="first").pk, host="test")
    checklist_checks_evaluate(now=timezone.now())
    checklist_item_sign(
        item=checklist.items.get(title="Cluster capacity reviewed"),
        by=admin_user,
        note="Projected peak 900 sessions/min; shared cluster measured 4,200/min.",
    )

    page = login_page(ops_user)
    page.goto(f"{live_server.url}/onboarding/")
    expect(page.locator("#checklist-rows")).to_contain_text("2 of 7")
    screenshot(page, "onboarding")
    page.get_by_role("link", name="Acme Corp").click()

    progress = page.locator("#progress")
    expect(progress).to_contain_text("2 of 7 done")
    expect(progress.locator(".bar > span")).to_have_attribute("style", "width: 29%")
    expect(page.locator("li.item.overdue")).to_have_count(2)
    page.evaluate("window.notReloaded = true")  # gone if the form post reloaded the page

    item = page.locator("li.item", has_text="Day-7 check-in")
    item.get_by_label("Note for Day-7 check-in with the customer").fill(
        "Replays look right to them"
    )
    item.get_by_role("button", name="Sign off").click()

    expect(progress).to_contain_text("3 of 7 done")
    expect(progress.locator(".bar > span")).to_have_attribute("style", "width: 43%")
    expect(item).to_have_class(re.compile(r"\bdone\b"))
    expect(item).to_contain_text("Signed off by olivia-ops")
    expect(page.locator("#audit tbody tr").first).to_contain_text("Signed off: Day-7 check-in")
    assert page.evaluate("window.notReloaded") is True
    # Ops may not sign the admin's items: no form is offered there.
    admin_item = page.locator("li.item", has_text="Dedicated cluster decided")
    expect(admin_item.get_by_role("button", name="Sign off")).to_have_count(0)
    screenshot(page, "checklist")


@pytest.mark.browser
def test_signing_works_without_javascript(
    transactional_db,
    live_server,
    browser,
    ops_user,
    customer_and_key,
):
    from playwright.sync_api import expect

    customer, _ = customer_and_key
    checklist_start(customer=customer)
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(f"{live_server.url}/login/")
        page.fill("#id_username", ops_user.username)
        page.fill("#id_password", "pw-for-tests-1")
        page.click("button[type=submit]")
        page.wait_for_url(f"{live_server.url}/")
        page.goto(f"{live_server.url}/onboarding/{customer.slug}/")
        item = page.locator("li.item", has_text="Day-30 review")
        item.get_by_role("button", name="Sign off").click()
        expect(page.locator("#progress")).to_contain_text("1 of 7 done")
        expect(page.locator("li.item", has_text="Day-30 review")).to_have_class(re.compile("done"))
        assert page.url.endswith(f"/onboarding/{customer.slug}/#item-{item_id(customer)}")
    finally:
        context.close()


def item_id(customer) -> int:
    return customer.checklist.items.get(title="Day-30 review").pk
