from django.urls import path, re_path

from pool import api, views

urlpatterns = [
    path("api/v1/openapi.json", api.openapi, name="openapi"),
    path("api/v1/sessions/<str:session_id>/payloads", api.payload_create, name="payload-create"),
    path("api/v1/sessions/<str:session_id>", api.session_detail, name="session-detail"),
    # Anything else under /api/ answers in JSON too, never with an HTML page.
    re_path(r"^api/", api.not_found),
    path("clusters/", views.clusters, name="clusters"),
    path("clusters/new", views.cluster_create, name="cluster-create"),
    path("clusters/move", views.customer_move, name="customer-move"),
    path("clusters/weight", views.customer_weight, name="customer-weight"),
    path("clusters/<slug:name>/resize", views.cluster_resize, name="cluster-resize"),
    path("clusters/<slug:name>/pause", views.cluster_pause, name="cluster-pause"),
]
