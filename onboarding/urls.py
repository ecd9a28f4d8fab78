from django.urls import path

from onboarding import monitoring, views

urlpatterns = [
    path("", views.overview_page, name="overview"),
    path("api/v1/lag", monitoring.lag_api, name="lag-api"),
    path("metrics", monitoring.metrics, name="metrics"),
    path("healthz", monitoring.healthz, name="healthz"),
    path("customers/<slug:slug>/", views.customer_detail, name="customer"),
    path(
        "customers/<slug:slug>/sessions/<int:session_pk>/retry",
        views.session_retry_view,
        name="session-retry",
    ),
]
