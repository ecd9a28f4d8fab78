"""Worker cluster pages: live workers per host; admins resize, pause, create and move."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from pool import clusters as cluster_services
from pool.autoscale import cluster_resize_by_admin
from pool.capacity_views import capacity_context
from pool.forms import ClusterCreateForm, MoveForm, ResizeForm, WeightForm
from pool.models import WorkerCluster
from pool.selectors import cluster_rows, hosts, recent_changes

CHANGE = "pool.change_workercluster"


def _page(request: HttpRequest, *, status: int = 200, **extra) -> HttpResponse:
    context = {
        "clusters": cluster_rows(),
        "hosts": hosts(),
        "changes": recent_changes(),
        "create_form": extra.pop("create_form", ClusterCreateForm()),
        "all_clusters": WorkerCluster.objects.all(),
        "max_workers": settings.POOL_MAX_WORKERS,
        **extra,
    }
    if request.htmx:
        return render(request, "pool/clusters.html#live", context, status=status)
    context.update(capacity_context(request))  # the capacity section refreshes on its own
    return render(request, "pool/clusters.html", context, status=status)


@login_required
def clusters(request: HttpRequest) -> HttpResponse:
    return _page(request)


def _done(request: HttpRequest, message: str) -> HttpResponse:
    if request.htmx:
        return _page(request)
    messages.success(request, message)
    return redirect("clusters")


@require_POST
@login_required
@permission_required(CHANGE, raise_exception=True)
def cluster_resize(request: HttpRequest, name: str) -> HttpResponse:
    cluster = get_object_or_404(WorkerCluster, name=name)
    form = ResizeForm(request.POST)
    if not form.is_valid():
        return _page(request, status=400, form_errors={cluster.name: form.errors["workers"]})
    # A person's number stands: this also switches the cluster's autoscale off.
    cluster_resize_by_admin(cluster=cluster, workers=form.cleaned_data["workers"], by=request.user)
    return _done(request, f"{cluster.name}: {form.cleaned_data['workers']} workers per host.")


@require_POST
@login_required
@permission_required(CHANGE, raise_exception=True)
def cluster_pause(request: HttpRequest, name: str) -> HttpResponse:
    cluster = get_object_or_404(WorkerCluster, name=name)
    paused = request.POST.get("paused") == "1"
    cluster_services.cluster_pause(cluster=cluster, paused=paused, by=request.user)
    return _done(request, f"{cluster.name} {'paused' if paused else 'resumed'}.")


@require_POST
@login_required
@permission_required("pool.add_workercluster", raise_exception=True)
def cluster_create(request: HttpRequest) -> HttpResponse:
    form = ClusterCreateForm(request.POST)
    if not form.is_valid():
        return _page(request, status=400, create_form=form)
    cluster = cluster_services.cluster_create(
        name=form.cleaned_data["name"],
        workers=form.cleaned_data["desired_workers"],
        by=request.user,
    )
    return _done(request, f"Cluster {cluster.name} created.")


def _customer_change(request: HttpRequest, form_class, change) -> HttpResponse:
    form = form_class(request.POST)
    if not form.is_valid():
        return _page(request, status=400, move_errors=form.errors)
    return _done(request, change(form.cleaned_data))


@require_POST
@login_required
@permission_required("onboarding.change_customer", raise_exception=True)
def customer_move(request: HttpRequest) -> HttpResponse:
    def move(data) -> str:
        customer = cluster_services.customer_move(
            customer=data["customer"], cluster=data["cluster"], by=request.user
        )
        return f"{customer.name} moved to {customer.cluster.name}."

    return _customer_change(request, MoveForm, move)


@require_POST
@login_required
@permission_required("onboarding.change_customer", raise_exception=True)
def customer_weight(request: HttpRequest) -> HttpResponse:
    def reweigh(data) -> str:
        customer = cluster_services.customer_set_weight(
            customer=data["customer"], weight=data["weight"], by=request.user
        )
        return f"{customer.name} now has weight {customer.weight}."

    return _customer_change(request, WeightForm, reweigh)
