"""Checklist routes (issue 6); included from config/urls.py."""

from django.urls import path

from onboarding import checklist_views as views

urlpatterns = [
    path("onboarding/", views.onboarding, name="onboarding"),
    # No trailing slash: /onboarding/start/ stays free for a customer slugged "start".
    path("onboarding/start", views.checklist_start, name="checklist-start"),
    path("onboarding/<slug:slug>/", views.checklist, name="checklist"),
    path(
        "onboarding/<slug:slug>/items/<int:item_id>/sign",
        views.item_sign,
        name="checklist-item-sign",
    ),
    path(
        "onboarding/<slug:slug>/items/<int:item_id>/unsign",
        views.item_unsign,
        name="checklist-item-unsign",
    ),
    path(
        "onboarding/<slug:slug>/items/<int:item_id>/override",
        views.item_override,
        name="checklist-item-override",
    ),
]
