"""The alerts page (open alerts first, then history), the overview's banner, and
acknowledging an alert in place.

The page, its polled open-alerts region and an acknowledged row all render partials of
onboarding/alerts.html, so the page and its fragments cannot drift apart.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required, permission_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from onboarding import alerts as alerting
from onboarding.alert_models import Alert
from onboarding.models import Customer

PAGE = "onboarding/alerts.html"
ACK_PERMISSION = "onboarding.acknowledge_alert"
HISTORY_PER_PAGE = 50


@require_GET
@login_required
def alerts(request: HttpRequest) -> HttpResponse:
    slug = request.GET.get("customer", "")
    customer = Customer.objects.filter(slug=slug).first() if slug else None
    context = {
        "open_alerts": alerting.alerts_open(customer=customer),
        "customer": customer,
        "may_ack": request.user.has_perm(ACK_PERMISSION),
        "now": timezone.now(),
    }
    if request.htmx:
        # The page polls its open-alerts region; history only changes on a reload.
        return render(request, f"{PAGE}#open-alerts", context)
    page = Paginator(alerting.alerts_history(customer=customer), HISTORY_PER_PAGE).get_page(
        request.GET.get("page")
    )
    context.update(
        history=alerting.alert_history_page(alerts=list(page.object_list)),
        page=page,
        customers=Customer.objects.only("name", "slug"),
        unknown_customer=bool(slug) and customer is None,
        channels=alerting.alert_channels(),
    )
    return render(request, PAGE, context)


@require_GET
@login_required
def alerts_banner(request: HttpRequest) -> HttpResponse:
    return render(request, "onboarding/_alert_banner.html")


@require_POST
@login_required
@permission_required(ACK_PERMISSION, raise_exception=True)
def alert_acknowledge(request: HttpRequest, pk: int) -> HttpResponse:
    alert = get_object_or_404(Alert, pk=pk)
    alerting.alert_acknowledge(alert=alert, by=request.user)
    if not request.htmx:
        return redirect(f"{reverse('alerts')}#alert-{alert.pk}")
    context = {"alert": alerting.alert_get(pk=alert.pk), "may_ack": True, "now": timezone.now()}
    return render(request, f"{PAGE}#alert-row", context)
