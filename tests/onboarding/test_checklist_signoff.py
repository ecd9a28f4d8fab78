"""Signing off, un-signing and overriding items: who may, in place with htmx, and without JS."""

from __future__ import annotations

import pytest
from django.urls import reverse

from onboarding.checklists import checklist_item_sign, checklist_start
from onboarding.models import ChecklistEvent, ChecklistItem, CheckResult, ItemKind

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}


@pytest.fixture
def checklist(customer_and_key, admin_user):
    customer, _ = customer_and_key
    return checklist_start(customer=customer, by=admin_user)


def item(checklist, title_start: str) -> ChecklistItem:
    return checklist.items.get(title__startswith=title_start)


def url(name: str, it: ChecklistItem) -> str:
    return reverse(name, args=[it.checklist.customer.slug, it.pk])


def sign_url(it):
    return url("checklist-item-sign", it)


def test_ops_signs_an_ops_item_with_a_note(client, ops_user, checklist):
    day7 = item(checklist, "Day-7")
    client.force_login(ops_user)
    response = client.post(sign_url(day7), {"note": "Call went well"})
    assert response.status_code == 302
    assert response["Location"].endswith(f"/onboarding/acme-corp/#item-{day7.pk}")
    day7.refresh_from_db()
    assert (day7.done_how, day7.done_by, day7.note) == ("signed", ops_user, "Call went well")
    event = ChecklistEvent.objects.get(item=day7, action="signed")
    assert (event.actor, event.before, event.after, event.note) == (
        "olivia-ops",
        "open",
        "signed off by olivia-ops",
        "Call went well",
    )


def test_the_note_is_optional(client, ops_user, checklist):
    day30 = item(checklist, "Day-30")
    client.force_login(ops_user)
    assert client.post(sign_url(day30)).status_code == 302
    day30.refresh_from_db()
    assert day30.is_done and day30.note == ""


def test_ops_cannot_sign_an_admin_item(client, ops_user, checklist):
    capacity = item(checklist, "Cluster capacity")
    client.force_login(ops_user)
    response = client.post(sign_url(capacity), {"note": "looks fine"})
    assert response.status_code == 403
    capacity.refresh_from_db()
    assert not capacity.is_done
    assert not ChecklistEvent.objects.filter(item=capacity).exists()


def test_an_admin_signs_an_admin_item(client, admin_user, checklist):
    capacity = item(checklist, "Cluster capacity")
    client.force_login(admin_user)
    client.post(sign_url(capacity), {"note": "peak 900/min vs 4,000/min measured"})
    capacity.refresh_from_db()
    assert capacity.done_by == admin_user


@pytest.mark.parametrize("action", ["sign", "unsign", "override"])
def test_an_outsider_cannot_change_any_item(client, outsider, checklist, action):
    client.force_login(outsider)
    for it in checklist.items.all():
        response = client.post(url(f"checklist-item-{action}", it), {"reason": "x", "note": "x"})
        assert response.status_code == 403
    assert not ChecklistItem.objects.filter(done_at__isnull=False).exists()


def test_the_service_refuses_an_outsider_too(outsider, checklist):
    from django.core.exceptions import PermissionDenied

    with pytest.raises(PermissionDenied):
        checklist_item_sign(item=item(checklist, "Day-7"), by=outsider)


def test_anonymous_posts_are_sent_to_the_login_page(client, checklist):
    response = client.post(sign_url(item(checklist, "Day-7")))
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_signing_twice_signs_once(client, ops_user, checklist):
    day7 = item(checklist, "Day-7")
    client.force_login(ops_user)
    client.post(sign_url(day7), {"note": "first"})
    client.post(sign_url(day7), {"note": "second"})
    day7.refresh_from_db()
    assert day7.note == "first"
    assert ChecklistEvent.objects.filter(item=day7, action="signed").count() == 1


def test_automatic_items_cannot_be_signed_by_hand(client, admin_user, checklist):
    first = item(checklist, "First sessions")
    client.force_login(admin_user)
    response = client.post(sign_url(first))
    assert response.status_code == 200
    assert b"verified by the system" in response.content
    first.refresh_from_db()
    assert not first.is_done


def test_un_signing_needs_a_reason(client, ops_user, checklist):
    day7 = item(checklist, "Day-7")
    checklist_item_sign(item=day7, by=ops_user)
    client.force_login(ops_user)
    response = client.post(url("checklist-item-unsign", day7), {"reason": "  "})
    assert response.status_code == 200
    assert b"Give a reason." in response.content
    day7.refresh_from_db()
    assert day7.is_done

    response = client.post(url("checklist-item-unsign", day7), {"reason": "Customer cancelled"})
    assert response.status_code == 302
    day7.refresh_from_db()
    assert not day7.is_done and day7.done_by is None
    event = ChecklistEvent.objects.get(item=day7, action="unsigned")
    assert (event.before, event.after, event.note) == (
        "signed off by olivia-ops",
        "open",
        "Customer cancelled",
    )


def test_ops_cannot_un_sign_an_admin_item(client, ops_user, admin_user, checklist):
    capacity = item(checklist, "Cluster capacity")
    checklist_item_sign(item=capacity, by=admin_user)
    client.force_login(ops_user)
    response = client.post(url("checklist-item-unsign", capacity), {"reason": "oops"})
    assert response.status_code == 403
    capacity.refresh_from_db()
    assert capacity.is_done


def test_an_admin_overrides_a_failing_automatic_item_with_a_reason(client, admin_user, checklist):
    alerts = item(checklist, "Lag alert rule")
    ChecklistItem.objects.filter(pk=alerts.pk).update(check_result=CheckResult.UNKNOWN)
    client.force_login(admin_user)
    response = client.post(url("checklist-item-override", alerts), {"reason": ""})
    assert b"Give a reason." in response.content
    client.post(url("checklist-item-override", alerts), {"reason": "PagerDuty rule set up by hand"})
    alerts.refresh_from_db()
    assert (alerts.done_how, alerts.note) == ("overridden", "PagerDuty rule set up by hand")
    event = ChecklistEvent.objects.get(item=alerts, action="overridden")
    assert event.before == "cannot be verified yet"

    client.post(url("checklist-item-unsign", alerts), {"reason": "alerting has landed"})
    alerts.refresh_from_db()
    assert not alerts.is_done and alerts.check_result == CheckResult.UNKNOWN


def test_ops_cannot_override(client, ops_user, checklist):
    alerts = item(checklist, "Lag alert rule")
    client.force_login(ops_user)
    response = client.post(url("checklist-item-override", alerts), {"reason": "trust me"})
    assert response.status_code == 403


def test_manual_items_cannot_be_overridden(client, admin_user, checklist):
    client.force_login(admin_user)
    response = client.post(
        url("checklist-item-override", item(checklist, "Day-7")), {"reason": "x"}
    )
    assert response.status_code == 403


def test_an_item_of_another_customer_is_not_found(
    client, ops_user, checklist, other_customer_and_key
):
    other, _ = other_customer_and_key
    day7 = item(checklist, "Day-7")
    client.force_login(ops_user)
    response = client.post(reverse("checklist-item-sign", args=[other.slug, day7.pk]))
    assert response.status_code == 404


def test_get_is_not_allowed_on_item_actions(client, ops_user, checklist):
    client.force_login(ops_user)
    assert client.get(sign_url(item(checklist, "Day-7"))).status_code == 405


def test_signing_the_last_item_completes_the_checklist_and_un_signing_reopens_it(
    admin_user, checklist
):
    from onboarding.checklists import checklist_item_override, checklist_item_unsign

    for it in checklist.items.all():
        if it.kind == ItemKind.AUTOMATIC:
            checklist_item_override(item=it, by=admin_user, reason="verified by hand")
        else:
            checklist_item_sign(item=it, by=admin_user)
    checklist.refresh_from_db()
    assert checklist.completed_at is not None
    day30 = item(checklist, "Day-30")
    checklist_item_unsign(item=day30, by=admin_user, reason="review not held after all")
    checklist.refresh_from_db()
    assert checklist.completed_at is None
    actions = ChecklistEvent.objects.filter(customer=checklist.customer).values_list(
        "action", flat=True
    )
    assert "completed" in actions and "reopened" in actions


# --- Pages and htmx fragments ----------------------------------------------------------


def test_the_checklist_page_shows_items_forms_and_the_audit_log(client, ops_user, checklist):
    client.force_login(ops_user)
    response = client.get(reverse("checklist", args=["acme-corp"]))
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" in html and 'id="audit"' in html and "0 of 7 done" in html
    assert "Checklist started</td>" in html
    # Ops get a sign form on the two manual ops items only, and no override.
    assert html.count('class="sign"') == 2
    assert "Override…" not in html
    assert "An admin signs this item." in html


def test_an_admin_sees_sign_and_override_forms(client, admin_user, checklist):
    client.force_login(admin_user)
    html = client.get(reverse("checklist", args=["acme-corp"])).content.decode()
    assert html.count('class="sign"') == 4
    assert html.count("Override…") == 3


def test_the_checklist_page_under_htmx_returns_just_the_checklist(client, ops_user, checklist):
    client.force_login(ops_user)
    response = client.get(reverse("checklist", args=["acme-corp"]), headers=HTMX)
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="checklist">')
    assert "<html" not in html and 'id="audit"' not in html


def test_signing_under_htmx_returns_the_item_with_progress_and_log_out_of_band(
    client, ops_user, checklist
):
    day7 = item(checklist, "Day-7")
    client.force_login(ops_user)
    response = client.post(sign_url(day7), {"note": "done"}, headers=HTMX)
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith(f'<li id="item-{day7.pk}" class="item done"')
    assert '<div id="progress" class="progress-block" hx-swap-oob="true">' in html
    assert "1 of 7 done" in html and 'style="width: 14%"' in html
    assert '<section id="audit" hx-swap-oob="true">' in html and "Signed off: Day-7" in html
    assert "<html" not in html and "<header" not in html


def test_a_rejected_htmx_form_comes_back_open_with_its_error(client, ops_user, checklist):
    day7 = item(checklist, "Day-7")
    checklist_item_sign(item=day7, by=ops_user)
    client.force_login(ops_user)
    response = client.post(url("checklist-item-unsign", day7), {"reason": ""}, headers=HTMX)
    html = response.content.decode()
    assert response.status_code == 200
    assert "<details open>" in html and "Give a reason." in html


def test_the_onboarding_page_lists_open_checklists(client, ops_user, checklist):
    client.force_login(ops_user)
    response = client.get(reverse("onboarding"))
    html = response.content.decode()
    assert response.status_code == 200 and "Acme Corp" in html and "0 of 7" in html
    assert "Mark a customer onboarded" not in html  # ops may not start checklists
    partial = client.get(reverse("onboarding"), headers=HTMX).content.decode()
    assert partial.lstrip().startswith('<tbody id="checklist-rows"') and "Acme Corp" in partial


def test_an_admin_marks_a_customer_onboarded_from_the_onboarding_page(
    client, admin_user, other_customer_and_key
):
    other, _ = other_customer_and_key
    client.force_login(admin_user)
    html = client.get(reverse("onboarding")).content.decode()
    assert f'<option value="{other.slug}">' in html
    response = client.post(reverse("checklist-start"), {"customer": other.slug})
    assert response.status_code == 302 and response["Location"] == f"/onboarding/{other.slug}/"
    other.refresh_from_db()
    assert other.onboarded_at is not None and other.checklist.items.count() == 7


def test_ops_cannot_mark_a_customer_onboarded(client, ops_user, other_customer_and_key):
    other, _ = other_customer_and_key
    client.force_login(ops_user)
    response = client.post(reverse("checklist-start"), {"customer": other.slug})
    assert response.status_code == 403
    other.refresh_from_db()
    assert other.onboarded_at is None


def test_starting_an_unknown_customer_is_a_bad_request(client, admin_user):
    client.force_login(admin_user)
    response = client.post(reverse("checklist-start"), {"customer": "nobody"})
    assert response.status_code == 400


def test_the_customer_fragment_shows_progress_or_the_start_button(
    rf, ops_user, admin_user, checklist, other_customer_and_key
):
    from django.template.loader import render_to_string

    request = rf.get("/")
    request.user = ops_user
    html = render_to_string(
        "onboarding/_customer_checklist.html", {"customer": checklist.customer}, request=request
    )
    assert "0 of 7 done" in html and "Day-30 review" in html and "/onboarding/acme-corp/" in html

    other, _ = other_customer_and_key
    html = render_to_string(
        "onboarding/_customer_checklist.html", {"customer": other}, request=request
    )
    assert "Mark onboarded" not in html
    request.user = admin_user
    html = render_to_string(
        "onboarding/_customer_checklist.html", {"customer": other}, request=request
    )
    assert "Mark onboarded" in html and 'name="csrfmiddlewaretoken"' in html


def test_the_nav_links_to_the_onboarding_page(client, ops_user):
    client.force_login(ops_user)
    html = client.get(reverse("onboarding")).content.decode()
    assert '<a href="/onboarding/" class="active">Onboarding</a>' in html


def test_pages_need_a_login(client, checklist):
    for path in [reverse("onboarding"), reverse("checklist", args=["acme-corp"])]:
        response = client.get(path)
        assert response.status_code == 302 and "/login/" in response["Location"]


def test_a_customer_without_a_checklist_offers_admins_to_start_one(
    client, ops_user, admin_user, other_customer_and_key
):
    other, _ = other_customer_and_key
    page = reverse("checklist", args=[other.slug])
    client.force_login(ops_user)
    html = client.get(page).content.decode()
    assert "has no onboarding checklist yet" in html and "Mark onboarded" not in html
    client.force_login(admin_user)
    html = client.get(page).content.decode()
    assert "Mark onboarded and start the checklist" in html
