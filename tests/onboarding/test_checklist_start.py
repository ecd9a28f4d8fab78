"""Starting a checklist: from the default template, with due dates; overdue items first."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from onboarding.checklists import checklist_rows, checklist_start
from onboarding.models import (
    Checklist,
    ChecklistEvent,
    ChecklistItem,
    ChecklistTemplate,
    ItemKind,
    Signer,
)
from onboarding.services import customer_create, customer_mark_onboarded

pytestmark = pytest.mark.django_db


def test_the_default_template_holds_the_incidents_lessons():
    template = ChecklistTemplate.objects.get(is_default=True)
    items = list(template.items.order_by("position"))
    assert [(i.kind, i.check_name, i.signer) for i in items] == [
        (ItemKind.AUTOMATIC, "first_sessions_processed", Signer.OPS),
        (ItemKind.AUTOMATIC, "lag_within_warn_24h", Signer.OPS),
        (ItemKind.AUTOMATIC, "lag_alert_channel", Signer.OPS),
        (ItemKind.MANUAL, "", Signer.ADMIN),
        (ItemKind.MANUAL, "", Signer.ADMIN),
        (ItemKind.MANUAL, "", Signer.OPS),
        (ItemKind.MANUAL, "", Signer.OPS),
    ]
    titles = [i.title for i in items]
    assert "Cluster capacity reviewed" in titles
    assert "Dedicated cluster decided" in titles
    assert items[5].due_days == 7 and items[6].due_days == 30
    assert all(i.guidance for i in items)


def test_a_large_customer_gets_a_checklist_with_due_dates_from_its_onboarding():
    customer, _ = customer_create(name="MegaShop", large=True)
    checklist = customer.checklist
    assert checklist.started_at == customer.onboarded_at
    template = ChecklistTemplate.objects.get(is_default=True)
    due = {t.title: t.due_days for t in template.items.all()}
    items = list(checklist.items.all())
    assert len(items) == 7
    for item in items:
        assert item.due_at == customer.onboarded_at + timedelta(days=due[item.title])
    assert ChecklistEvent.objects.filter(customer=customer, action="started").count() == 1


def test_a_small_customer_gets_no_checklist():
    customer, _ = customer_create(name="Tiny")
    assert not Checklist.objects.filter(customer=customer).exists()


def test_customer_add_large_starts_the_checklist():
    call_command("customer_add", "Initech", "--large", stdout=open("/dev/null", "w"))
    assert ChecklistItem.objects.filter(checklist__customer__name="Initech").count() == 7


def test_marking_onboarded_twice_keeps_one_checklist(customer_and_key, admin_user):
    customer, _ = customer_and_key
    first = customer_mark_onboarded(customer=customer, by=admin_user)
    second = customer_mark_onboarded(customer=customer, by=admin_user)
    assert first.pk == second.pk
    customer.refresh_from_db()
    assert customer.large and customer.onboarded_at == first.started_at
    assert first.started_by == admin_user
    actions = list(
        ChecklistEvent.objects.filter(customer=customer)
        .order_by("id")
        .values_list("action", "actor")
    )
    assert actions == [("onboarded", "adam-admin"), ("started", "adam-admin")]


def test_editing_the_template_later_leaves_running_checklists_alone(customer_and_key):
    customer, _ = customer_and_key
    checklist = checklist_start(customer=customer)
    ChecklistTemplate.objects.get(is_default=True).items.update(title="renamed")
    assert "renamed" not in {i.title for i in checklist.items.all()}


def test_a_lost_default_template_is_recreated_rather_than_failing(customer_and_key):
    customer, _ = customer_and_key
    ChecklistTemplate.objects.update(is_default=False)
    checklist = checklist_start(customer=customer)
    assert checklist.items.count() == 7
    assert ChecklistTemplate.objects.filter(is_default=True).count() == 1


def test_items_past_their_due_date_are_overdue_until_done(customer_and_key):
    customer, _ = customer_and_key
    started = timezone.now() - timedelta(days=8)
    checklist = checklist_start(customer=customer, started_at=started)
    overdue = {i.title for i in checklist.overdue_items()}
    # Due after 1, 3, 1, 3, 7 and 7 days are past; the day-30 review is not.
    assert len(overdue) == 6 and "Day-30 review" not in overdue
    day7 = checklist.items.get(title="Day-7 check-in with the customer")
    assert day7.is_overdue
    ChecklistItem.objects.filter(pk=day7.pk).update(done_at=timezone.now(), done_how="signed")
    day7.refresh_from_db()
    assert not day7.is_overdue


def test_the_onboarding_list_puts_checklists_with_overdue_items_first():
    now = timezone.now()
    fresh, _ = customer_create(name="Fresh")
    late, _ = customer_create(name="Late")
    later, _ = customer_create(name="Later still")
    checklist_start(customer=fresh, started_at=now - timedelta(hours=1))
    checklist_start(customer=late, started_at=now - timedelta(days=2))
    checklist_start(customer=later, started_at=now - timedelta(days=10))
    rows = checklist_rows(now=now)
    assert [r.customer.name for r in rows] == ["Later still", "Late", "Fresh"]
    assert rows[2].overdue == [] and rows[2].upcoming is not None
    assert len(rows[1].overdue) == 2  # the two 1-day items


def test_completed_checklists_are_not_listed_as_open(customer_and_key):
    customer, _ = customer_and_key
    checklist = checklist_start(customer=customer)
    Checklist.objects.filter(pk=checklist.pk).update(completed_at=timezone.now())
    assert checklist_rows(now=timezone.now()) == []
