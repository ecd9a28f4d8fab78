"""Ops dashboards: the lag overview and a customer's page."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from onboarding.alerts import open_alerts_by_customer
from onboarding.dashboards import SORTS, WINDOWS, customer_charts, overview
from onboarding.lag import lag_rows
from onboarding.models import Customer
from pool.capacity import customer_advice
from pool.models import Session, State
from pool.services import session_retry


@login_required
def overview_page(request: HttpRequest) -> HttpResponse:
    sort = request.GET.get("sort", "status")
    sort = sort if sort in SORTS else "status"
    query = request.GET.get("q", "").strip()[:100]
    rows, summary = overview(now=timezone.now(), sort=sort, query=query)
    context = {
        "rows": rows,
        "summary": summary,
        "sort": sort,
        "q": query,
        "alerts": open_alerts_by_customer(),
    }
    template = "onboarding/overview.html#live" if request.htmx else "onboarding/overview.html"
    return render(request, template, context)


@login_required
def customer_detail(request: HttpRequest, slug: str) -> HttpResponse:
    customer = get_object_or_404(Customer.objects.select_related("cluster"), slug=slug)
    window = request.GET.get("window", "1h")
    window = window if window in WINDOWS else "1h"
    now = timezone.now()
    row = lag_rows(now=now, customers=Customer.objects.filter(pk=customer.pk))[0]
    context = {
        "customer": customer,
        "row": row,
        "window": window,
        "windows": list(WINDOWS),
        "charts": customer_charts(customer=customer, window=window, now=now),
        "advice": customer_advice(customer=customer, now=now) if row.status != "OK" else None,
        "recent": Session.objects.filter(customer=customer, processed_at__isnull=False).order_by(
            "-processed_at"
        )[:25],
        "failed": Session.objects.filter(customer=customer, state=State.FAILED).order_by(
            "-last_payload_at"
        )[:50],
    }
    template = "onboarding/customer.html#live" if request.htmx else "onboarding/customer.html"
    return render(request, template, context)


@require_POST
@login_required
@permission_required("pool.change_session", raise_exception=True)
def session_retry_view(request: HttpRequest, slug: str, session_pk: int) -> HttpResponse:
    session = get_object_or_404(Session, pk=session_pk, customer__slug=slug)
    if session_retry(session=session):
        messages.success(request, f"Session {session.external_id} is ready to be processed again.")
    else:
        messages.info(request, f"Session {session.external_id} is no longer failed.")
    return redirect("customer", slug=slug)
