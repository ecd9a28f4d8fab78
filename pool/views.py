"""Worker cluster pages."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from pool.selectors import cluster_rows


@login_required
def clusters(request: HttpRequest) -> HttpResponse:
    context = {"clusters": cluster_rows()}
    template = "pool/clusters.html#clusters" if request.htmx else "pool/clusters.html"
    return render(request, template, context)
