"""Ingest API v1 (design.md "Ingest API"): recorders authenticate with an ingest key."""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import wraps

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from onboarding.models import Customer, IngestKey, hash_ingest_key
from pool.ingest import (
    IngestError,
    check_content_type,
    check_session_id,
    decode_body,
    parse_payload,
)
from pool.models import Session
from pool.openapi import openapi_document
from pool.services import payload_store

logger = logging.getLogger(__name__)

LAST_USED_EVERY = timedelta(minutes=1)


def error(status: int, message: str) -> JsonResponse:
    response = JsonResponse({"error": message}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="onramp-ingest"'
    return response


def customer_for_key(request: HttpRequest) -> Customer:
    header = request.headers.get("Authorization", "")
    scheme, _, plain = header.partition(" ")
    if scheme.lower() != "bearer" or not plain.strip():
        raise IngestError(401, "missing ingest key: send 'Authorization: Bearer <key>'")
    plain = plain.strip()
    key = (
        IngestKey.objects.select_related("customer__cluster")
        .filter(key_hash=hash_ingest_key(plain), revoked_at__isnull=True)
        .first()
    )
    # The digest lookup finds the row; compare_digest keeps the final check constant-time.
    if key is None or not key.matches(plain):
        raise IngestError(401, "unknown or revoked ingest key")
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_EVERY:
        IngestKey.objects.filter(pk=key.pk).update(last_used_at=now)
    return key.customer


def ingest_view(methods: set[str]):
    """Method check, key auth and IngestError → JSON reply, shared by the API views."""

    def decorator(view):
        @csrf_exempt
        @wraps(view)
        def wrapper(request: HttpRequest, session_id: str) -> JsonResponse:
            if request.method not in methods:
                response = error(405, f"method {request.method} not allowed")
                response["Allow"] = ", ".join(sorted(methods))
                return response
            try:
                check_session_id(session_id)
                customer = customer_for_key(request)
                return view(request, customer, session_id)
            except IngestError as exc:
                return error(exc.status, exc.message)

        return wrapper

    return decorator


def request_body(request: HttpRequest, max_bytes: int) -> bytes:
    """At most max_bytes of the body. A chunked body (Transfer-Encoding: chunked, no
    Content-Length: fetch() with a stream, HTTP clients that compress on the fly) is
    read from the WSGI stream, which gunicorn de-chunks: Django reads only as many bytes
    as Content-Length says, so it would look empty. Bounded either way."""
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if chunked and not request.headers.get("Content-Length"):
        stream = request.META.get("wsgi.input")
        if stream is None or not request.META.get("wsgi.input_terminated"):
            raise IngestError(411, "this server needs a Content-Length with this request")
        return stream.read(max_bytes)
    return request.read(max_bytes)


@ingest_view({"POST"})
def payload_create(request: HttpRequest, customer: Customer, session_id: str) -> JsonResponse:
    limit = settings.INGEST_MAX_BYTES
    check_content_type(request.content_type or request.headers.get("Content-Type", ""))
    declared = request.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise IngestError(413, f"body exceeds {limit} bytes")
    body = request_body(request, limit + 1)
    if len(body) > limit:
        raise IngestError(413, f"body exceeds {limit} bytes")
    raw = decode_body(
        body, content_encoding=request.headers.get("Content-Encoding", ""), max_bytes=limit
    )
    payload = parse_payload(raw)
    session, stored = payload_store(
        customer=customer, session_id=session_id, payload=payload, raw=raw
    )
    return JsonResponse(
        {
            "session_id": session_id,
            "payload_id": payload.payload_id,
            "status": "accepted" if stored else "duplicate",
            "state": session.state,
        },
        status=202 if stored else 200,
    )


@ingest_view({"GET"})
def session_detail(request: HttpRequest, customer: Customer, session_id: str) -> JsonResponse:
    session = Session.objects.filter(customer=customer, external_id=session_id).first()
    if session is None:
        # Same answer for "not yours" and "does not exist": no probing across tenants.
        raise IngestError(404, f"no session {session_id!r} for this key's customer")
    return JsonResponse(session_document(session))


def session_document(session: Session) -> dict:
    def iso(value):
        return value.isoformat() if value else None

    return {
        "session_id": session.external_id,
        "state": session.state,
        "payload_count": session.payload_count,
        "created_at": iso(session.created_at),
        "last_payload_at": iso(session.last_payload_at),
        "ready_at": iso(session.ready_at),
        "processed_at": iso(session.processed_at),
        "attempts": session.attempts,
        "last_error": session.last_error or None,
        "computed": {
            "length_ms": session.length_ms,
            "active_ms": session.active_ms,
            "click_count": session.click_count,
            "rage_click_count": session.rage_click_count,
            "error_count": session.error_count,
            "event_total": session.event_total,
            "landing_page": session.landing_page or None,
            "exit_page": session.exit_page or None,
            "out_of_order": session.out_of_order,
            "excluded_reason": session.excluded_reason or None,
            "stream_bytes": session.stream_bytes,
            **{k: session.summary.get(k) for k in ("active_intervals", "rage_clicks", "pages")},
            "event_counts": session.summary.get("event_counts"),
        }
        if session.processed_at
        else None,
    }


@csrf_exempt
def not_found(request: HttpRequest) -> JsonResponse:
    return error(404, f"no API endpoint at {request.path}; see /api/v1/openapi.json")


def openapi(request: HttpRequest) -> JsonResponse:
    return JsonResponse(openapi_document(request.build_absolute_uri("/")[:-1]))
