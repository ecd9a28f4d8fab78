"""Ops dashboards: the lag overview and a customer's page."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone

from onboarding.lag import lag_rows
from onboarding.models import Customer
from pool.models import Session, State


@login_required
def overview(request: HttpRequest) -> HttpResponse:
    rows = sorted(lag_rows(now=timezone.now()), key=lambda r: (-r.rank, -r.lag_s, r.customer.name))
    context = {"rows": rows}
    template = "onboarding/overview.html#rows" if request.htmx else "onboarding/overview.html"
    return render(request, template, context)


@login_required
def customer_detail(request: HttpRequest, slug: str) -> HttpResponse:
    customer = get_object_or_404(Customer.objects.select_related("cluster"), slug=slug)
    row = lag_rows(customers=Customer.objects.filter(pk=customer.pk))[0]
    recent = Session.objects.filter(customer=customer, processed_at__isnull=False).order_by(
        "-processed_at"
    )[:25]
    failed = Session.objects.filter(customer=customer, state=State.FAILED).order_by(
        "-last_payload_at"
    )[:25]
    context = {"customer": customer, "row": row, "recent": recent, "failed": failed}
    return render(request, "onboarding/customer.html", context)
