"""Capacity fragments: the advisor and autoscale settings on the clusters page, the advice
on a lagging customer's page, and the admin actions behind their buttons."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from onboarding.models import Customer
from pool.autoscale import autoscale_update, cluster_resize_by_admin
from pool.capacity import ADVISOR_WITHIN_S, capacity_page, customer_advice
from pool.models import ClusterAutoscale, WorkerCluster

CHANGE = "pool.change_workercluster"
WITHIN_CHOICES = [(900, "15 minutes"), (1800, "30 minutes"), (3600, "1 hour"), (14400, "4 hours")]


class ApplyForm(forms.Form):
    """The number the advisor showed: applying re-validates it, it does not re-advise (the
    admin gets what they read, even if the figures moved since)."""

    customer = forms.SlugField(required=False)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Built per form: POOL_MAX_WORKERS is a setting and tests override it.
        self.fields["workers"] = forms.IntegerField(
            min_value=1, max_value=settings.POOL_MAX_WORKERS
        )


class AutoscaleForm(forms.ModelForm):
    class Meta:
        model = ClusterAutoscale
        fields = ["enabled", "min_workers", "max_workers", "target_lag_s"]

    def clean(self) -> dict:
        data = super().clean()
        low, high = data.get("min_workers"), data.get("max_workers")
        if low is not None and high is not None:
            if low < 1:
                self.add_error("min_workers", "At least 1.")
            elif high < low:
                self.add_error("max_workers", "At least the minimum.")
            elif high > settings.POOL_MAX_WORKERS:
                self.add_error("max_workers", f"At most {settings.POOL_MAX_WORKERS}.")
        if data.get("target_lag_s") is not None and data["target_lag_s"] < 1:
            self.add_error("target_lag_s", "At least 1 second.")
        return data


def _within(request: HttpRequest) -> int:
    try:
        value = int(request.GET.get("within", ADVISOR_WITHIN_S))
    except ValueError:
        return ADVISOR_WITHIN_S
    return value if value in dict(WITHIN_CHOICES) else ADVISOR_WITHIN_S


def capacity_context(request: HttpRequest) -> dict:
    """What templates/pool/_capacity.html needs, for the clusters page's full render."""
    return {
        "capacity": capacity_page(now=timezone.now(), within_s=_within(request)),
        "within_choices": WITHIN_CHOICES,
    }


def _capacity(request: HttpRequest, *, status: int = 200, **extra) -> HttpResponse:
    context = {**capacity_context(request), **extra}
    return render(request, "pool/_capacity.html", context, status=status)


def _advice(request: HttpRequest, customer: Customer) -> HttpResponse:
    context = {
        "customer": customer,
        "advice": customer_advice(customer=customer, now=timezone.now()),
    }
    return render(request, "pool/_advice.html", context)


@login_required
def capacity_fragment(request: HttpRequest) -> HttpResponse:
    return _capacity(request)


@login_required
def advice_fragment(request: HttpRequest, slug: str) -> HttpResponse:
    return _advice(request, get_object_or_404(Customer, slug=slug))


def _back(request: HttpRequest, message: str, *, error: bool = False) -> HttpResponse:
    (messages.error if error else messages.success)(request, message)
    target = request.POST.get("next", "")
    if url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return redirect(target)
    return redirect("clusters")


@require_POST
@login_required
@permission_required(CHANGE, raise_exception=True)
def advice_apply(request: HttpRequest, name: str) -> HttpResponse:
    """One click on the advisor's button: the normal audited resize, by this admin (which
    switches autoscale off, as any manual resize does)."""
    cluster = get_object_or_404(WorkerCluster, name=name)
    form = ApplyForm(request.POST)
    if not form.is_valid():
        problem = " ".join(form.errors.get("workers", ["Invalid number of workers."]))
        if request.htmx:
            return HttpResponse(problem, status=400)
        return _back(request, f"{cluster.name}: {problem}", error=True)
    workers = form.cleaned_data["workers"]
    cluster_resize_by_admin(cluster=cluster, workers=workers, by=request.user)
    if request.htmx:
        slug = form.cleaned_data["customer"]
        if slug:
            return _advice(request, get_object_or_404(Customer, slug=slug))
        return _capacity(request)
    return _back(request, f"{cluster.name}: {workers} workers per host.")


@require_POST
@login_required
@permission_required(CHANGE, raise_exception=True)
def autoscale_settings(request: HttpRequest, name: str) -> HttpResponse:
    cluster = get_object_or_404(WorkerCluster, name=name)
    instance = ClusterAutoscale.objects.filter(cluster=cluster).first()
    form = AutoscaleForm(request.POST, instance=instance or ClusterAutoscale(cluster=cluster))
    if not form.is_valid():
        if request.htmx:
            return _capacity(request, status=400, autoscale_errors={cluster.name: form.errors})
        problems = " ".join(e for errors in form.errors.values() for e in errors)
        return _back(request, f"{cluster.name} autoscale not changed: {problems}", error=True)
    data = form.cleaned_data
    autoscale_update(
        cluster=cluster,
        enabled=data["enabled"],
        min_workers=data["min_workers"],
        max_workers=data["max_workers"],
        target_lag_s=data["target_lag_s"],
        by=request.user,
    )
    if request.htmx:
        return _capacity(request)
    state = "on" if data["enabled"] else "off"
    return _back(request, f"{cluster.name}: autoscale {state}.")
