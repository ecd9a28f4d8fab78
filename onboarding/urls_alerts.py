"""Alert routes (issue 7); included from config/urls.py."""

from django.urls import path

from onboarding import alert_views as views

urlpatterns = [
    path("alerts/", views.alerts, name="alerts"),
    path("alerts/banner", views.alerts_banner, name="alerts-banner"),
    path("alerts/<int:pk>/acknowledge", views.alert_acknowledge, name="alert-acknowledge"),
]
