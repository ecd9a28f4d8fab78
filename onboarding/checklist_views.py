"""Post-onboarding checklist pages: every open checklist, and one customer's checklist.

Item forms post normally and redirect back; with htmx they swap the item in place and
update the progress bar and the audit log out of band, from partials of the same
template so the page and the fragments cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable

from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied
from django.forms import Form
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from onboarding import checklists
from onboarding.forms import ReasonForm, SignForm, StartForm
from onboarding.models import Checklist, ChecklistItem, Customer
from onboarding.services import customer_mark_onboarded

PAGE = "onboarding/checklist.html"


@login_required
def onboarding(request: HttpRequest) -> HttpResponse:
    return _onboarding_page(request, StartForm())


def _onboarding_page(
    request: HttpRequest, start_form: StartForm, status: int = 200
) -> HttpResponse:
    now = timezone.now()
    may_start = request.user.has_perm(checklists.START_PERMISSION)
    context = {
        "rows": checklists.checklist_rows(now=now),
        "completed": checklists.checklists_completed(),
        "not_onboarded": checklists.customers_not_onboarded() if may_start else [],
        "start_form": start_form,
        "now": now,
    }
    template = "onboarding/onboarding.html#rows" if request.htmx else "onboarding/onboarding.html"
    return render(request, template, context, status=status)


@require_POST
@login_required
@permission_required(checklists.START_PERMISSION, raise_exception=True)
def checklist_start(request: HttpRequest) -> HttpResponse:
    form = StartForm(request.POST)
    if not form.is_valid():
        return _onboarding_page(request, form, status=400)
    customer = form.cleaned_data["customer"]
    customer_mark_onboarded(customer=customer, by=request.user)
    return redirect("checklist", slug=customer.slug)


@login_required
def checklist(request: HttpRequest, slug: str) -> HttpResponse:
    customer = get_object_or_404(Customer, slug=slug)
    template = f"{PAGE}#checklist" if request.htmx else PAGE
    return render(request, template, _checklist_context(request, customer))


def _checklist_context(
    request: HttpRequest,
    customer: Customer,
    *,
    failed: ChecklistItem | None = None,
    form: Form | None = None,
    action: str = "",
) -> dict:
    checklist = Checklist.objects.filter(customer=customer).first()
    items = []
    if checklist is not None:
        items = checklists.checklist_items_for(checklist=checklist, user=request.user)
        for item in items:
            # Re-show a rejected form open, with its errors, on the item it was for.
            item.form = form if failed is not None and item.pk == failed.pk else None
            item.open_action = action if item.form is not None else ""
    return {
        "customer": customer,
        "checklist": checklist,
        "items": items,
        "events": checklists.checklist_events(customer=customer),
        "may_start": request.user.has_perm(checklists.START_PERMISSION),
        "now": timezone.now(),
    }


# --- Item actions --------------------------------------------------------------------


def _item_action(
    request: HttpRequest,
    slug: str,
    item_id: int,
    *,
    action: str,
    allowed: Callable[..., bool],
    form_class: type[Form],
    apply: Callable[[ChecklistItem, dict], object],
) -> HttpResponse:
    """Steps: find the item; 403 unless allowed; validate; apply the service; answer with
    the item's partial (htmx) or a redirect back to it (plain form post)."""
    item = get_object_or_404(
        ChecklistItem.objects.select_related("checklist__customer"),
        pk=item_id,
        checklist__customer__slug=slug,
    )
    if not allowed(user=request.user, item=item):
        return HttpResponseForbidden("You may not do that to this item.")
    form = form_class(request.POST)
    if form.is_valid():
        try:
            apply(item, form.cleaned_data)
        except checklists.ChecklistError as exc:
            form.add_error(None, str(exc))
        except PermissionDenied:
            return HttpResponseForbidden("You may not do that to this item.")
    customer = item.checklist.customer
    if form.is_valid() and not request.htmx:
        return redirect(reverse("checklist", args=[customer.slug]) + f"#item-{item.pk}")
    failed = None if form.is_valid() else item
    context = _checklist_context(request, customer, failed=failed, form=form, action=action)
    if not request.htmx:
        return render(request, PAGE, context)
    context["item"] = next(i for i in context["items"] if i.pk == item.pk)
    context["oob"] = True
    return render(request, f"{PAGE}#item-swap", context)


@require_POST
@login_required
def item_sign(request: HttpRequest, slug: str, item_id: int) -> HttpResponse:
    return _item_action(
        request,
        slug,
        item_id,
        action="sign",
        allowed=checklists.item_may_sign,
        form_class=SignForm,
        apply=lambda item, data: checklists.checklist_item_sign(
            item=item, by=request.user, note=data["note"]
        ),
    )


@require_POST
@login_required
def item_unsign(request: HttpRequest, slug: str, item_id: int) -> HttpResponse:
    return _item_action(
        request,
        slug,
        item_id,
        action="unsign",
        allowed=checklists.item_may_withdraw,
        form_class=ReasonForm,
        apply=lambda item, data: checklists.checklist_item_unsign(
            item=item, by=request.user, reason=data["reason"]
        ),
    )


@require_POST
@login_required
def item_override(request: HttpRequest, slug: str, item_id: int) -> HttpResponse:
    return _item_action(
        request,
        slug,
        item_id,
        action="override",
        allowed=checklists.item_may_override,
        form_class=ReasonForm,
        apply=lambda item, data: checklists.checklist_item_override(
            item=item, by=request.user, reason=data["reason"]
        ),
    )
