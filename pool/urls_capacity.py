from django.urls import path

from pool import capacity_views

urlpatterns = [
    path("clusters/capacity", capacity_views.capacity_fragment, name="capacity"),
    path("clusters/<slug:name>/advice/apply", capacity_views.advice_apply, name="capacity-apply"),
    path("clusters/<slug:name>/autoscale", capacity_views.autoscale_settings, name="autoscale"),
    path("customers/<slug:slug>/advice", capacity_views.advice_fragment, name="customer-advice"),
]
