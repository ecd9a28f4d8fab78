from django.urls import path

from onboarding import views

urlpatterns = [
    path("", views.overview, name="overview"),
    path("customers/<slug:slug>/", views.customer_detail, name="customer"),
]
