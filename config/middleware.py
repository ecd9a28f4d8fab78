"""Turn a database outage into 503 + Retry-After instead of a 500."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 5


def database_unavailable_response() -> JsonResponse:
    response = JsonResponse(
        {"error": "database unavailable, retry later", "retry_after_s": RETRY_AFTER_S},
        status=503,
    )
    response["Retry-After"] = str(RETRY_AFTER_S)
    return response


class DatabaseUnavailableMiddleware:
    """While PostgreSQL restarts, every client (recorders above all) is told to retry.

    Recorders keep the payload and resend it; nothing is lost because a payload is only
    acknowledged (202/200) after its row is committed.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, OperationalError | InterfaceError):
            logger.warning("database unavailable: %s", exception)
            return database_unavailable_response()
        return None
