"""In Chromium: an ops user acknowledges an open alert in place."""

from __future__ import annotations

import pytest

from onboarding.alerts import alerts_evaluate
from onboarding.models import Alert
from tests.conftest import screenshot
from tests.onboarding.test_alerts_evaluation import (
    GRACE,
    T0,
    WARN,
    backlog,
    global_rule_set,
    ops_mail,
    seconds,
)


@pytest.mark.browser
def test_an_ops_user_acknowledges_an_alert_without_leaving_the_page(
    transactional_db, live_server, login_page, ops_user, customer_and_key
):
    global_rule_set()
    ops_mail()
    backlog(customer_and_key[0], ready_at=T0)
    alerts_evaluate(now=T0 + seconds(WARN + GRACE))
    alert = Alert.objects.get()

    page = login_page(ops_user)
    page.click("header.top >> text=Alerts")
    page.wait_for_url(f"{live_server.url}/alerts/")
    row = page.locator(f"#alert-{alert.pk}")
    assert "WARN" in row.inner_text() and "Acme Corp" in row.inner_text()
    screenshot(page, "alerts-open")

    page.evaluate("window.__marker = 'same page'")
    row.get_by_role("button", name="Acknowledge").click()
    page.locator(f"#alert-{alert.pk}.acked").wait_for()
    assert "by olivia-ops" in page.locator(f"#alert-{alert.pk}").inner_text()
    assert page.evaluate("window.__marker") == "same page"  # swapped in place, no reload
    screenshot(page, "alerts-acknowledged")
    alert.refresh_from_db()
    assert alert.acknowledged_by == ops_user
