"""The checklist audit log is append-only: no page, admin or model path changes a row."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from onboarding.checklists import checklist_item_sign, checklist_start
from onboarding.models import ChecklistEvent, ChecklistTemplate

pytestmark = pytest.mark.django_db


@pytest.fixture
def event(customer_and_key, ops_user) -> ChecklistEvent:
    customer, _ = customer_and_key
    checklist = checklist_start(customer=customer)
    checklist_item_sign(item=checklist.items.get(title__startswith="Day-7"), by=ops_user, note="ok")
    return ChecklistEvent.objects.get(action="signed")


@pytest.fixture
def staff_admin(admin_user):
    admin_user.is_staff = True
    admin_user.save()
    return admin_user


def test_an_event_cannot_be_saved_again(event):
    event.note = "rewritten"
    with pytest.raises(TypeError, match="append-only"):
        event.save()
    event.refresh_from_db()
    assert event.note == "ok"


def test_an_event_cannot_be_deleted(event):
    with pytest.raises(TypeError, match="append-only"):
        event.delete()
    with pytest.raises(TypeError, match="append-only"):
        ChecklistEvent.objects.filter(pk=event.pk).delete()
    with pytest.raises(TypeError, match="append-only"):
        ChecklistEvent.objects.filter(pk=event.pk).update(note="rewritten")
    assert ChecklistEvent.objects.filter(pk=event.pk, note="ok").exists()


def test_no_role_can_hold_a_change_or_delete_permission_on_the_log():
    codenames = set(
        Permission.objects.filter(content_type__model="checklistevent").values_list(
            "codename", flat=True
        )
    )
    assert codenames == {"view_checklistevent"}


def test_the_customer_and_its_signers_cannot_be_deleted_out_from_under_the_log(event, ops_user):
    from django.db.models import ProtectedError

    with pytest.raises(ProtectedError):
        event.customer.delete()
    with pytest.raises(ProtectedError):
        ops_user.delete()


def test_the_admin_shows_the_log_read_only(client, staff_admin, event):
    client.force_login(staff_admin)
    changelist = reverse("admin:onboarding_checklistevent_changelist")
    response = client.get(changelist)
    assert response.status_code == 200 and "Day-7" in response.content.decode()
    assert 'name="action"' not in response.content.decode()  # no bulk delete action
    change = reverse("admin:onboarding_checklistevent_change", args=[event.pk])
    response = client.get(change)
    assert response.status_code == 200 and 'name="_save"' not in response.content.decode()
    assert client.post(change, {"note": "rewritten"}).status_code == 403
    delete = reverse("admin:onboarding_checklistevent_delete", args=[event.pk])
    assert client.post(delete, {"post": "yes"}).status_code == 403
    assert client.get(reverse("admin:onboarding_checklistevent_add")).status_code == 403
    event.refresh_from_db()
    assert event.note == "ok"


def test_even_a_superuser_cannot_change_the_log_in_the_admin(client, django_user_model, event):
    root = django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-1")
    client.force_login(root)
    change = reverse("admin:onboarding_checklistevent_change", args=[event.pk])
    assert client.post(change, {"note": "rewritten"}).status_code == 403
    delete = reverse("admin:onboarding_checklistevent_delete", args=[event.pk])
    assert client.post(delete, {"post": "yes"}).status_code == 403
    assert ChecklistEvent.objects.filter(pk=event.pk, note="ok").exists()


def test_running_checklists_are_read_only_in_the_admin(client, staff_admin, event):
    client.force_login(staff_admin)
    checklist = event.item.checklist
    change = reverse("admin:onboarding_checklist_change", args=[checklist.pk])
    assert client.get(change).status_code == 200
    assert client.post(change, {}).status_code == 403


def test_admins_manage_templates_in_the_admin(client, staff_admin):
    client.force_login(staff_admin)
    template = ChecklistTemplate.objects.get(is_default=True)
    change = reverse("admin:onboarding_checklisttemplate_change", args=[template.pk])
    assert client.get(change).status_code == 200
    # The default template is what onboarding starts from: it cannot be deleted.
    delete = reverse("admin:onboarding_checklisttemplate_delete", args=[template.pk])
    assert client.post(delete, {"post": "yes"}).status_code == 403
    add = client.get(reverse("admin:onboarding_checklisttemplate_add"))
    assert add.status_code == 200 and "check_name" in add.content.decode()


def test_the_page_offers_no_way_to_edit_the_log(client, staff_admin, event):
    client.force_login(staff_admin)
    html = client.get(reverse("checklist", args=[event.customer.slug])).content.decode()
    audit = html[html.index('<section id="audit"') :]
    assert "<form" not in audit and "<button" not in audit
