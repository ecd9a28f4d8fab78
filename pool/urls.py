from django.urls import path, re_path

from pool import api, views

urlpatterns = [
    path("api/v1/openapi.json", api.openapi, name="openapi"),
    path("api/v1/sessions/<str:session_id>/payloads", api.payload_create, name="payload-create"),
    path("api/v1/sessions/<str:session_id>", api.session_detail, name="session-detail"),
    # Anything else under /api/ answers in JSON too, never with an HTML page.
    re_path(r"^api/", api.not_found),
    path("clusters/", views.clusters, name="clusters"),
]
