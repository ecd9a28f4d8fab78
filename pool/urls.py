from django.urls import path

from pool import api, views

urlpatterns = [
    path("api/v1/openapi.json", api.openapi, name="openapi"),
    path("api/v1/sessions/<str:session_id>/payloads", api.payload_create, name="payload-create"),
    path("api/v1/sessions/<str:session_id>", api.session_detail, name="session-detail"),
    path("clusters/", views.clusters, name="clusters"),
]
