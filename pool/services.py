"""Writes on sessions outside the worker: ingest, runpool's housekeeping, admin actions.

Each transition is a conditional UPDATE (state in the WHERE clause), so it cannot undo
one made concurrently; what a worker does with a claimed session is in pool.worker.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from onboarding.models import Customer
from pool.ingest import IngestPayload, compress_body
from pool.models import Payload, Session, State

logger = logging.getLogger(__name__)


# --- Ingest --------------------------------------------------------------------


def payload_store(
    *, customer: Customer, session_id: str, payload: IngestPayload, raw: bytes
) -> tuple[Session, bool]:
    """Store one payload; returns (session, stored). stored=False means a duplicate id.

    A payload (re)opens its session whatever its state: a queued or processing run
    then fails its conditional write and the session is processed again with the new
    events, as design.md's lifecycle asks.
    """
    now = timezone.now()
    with transaction.atomic():
        session, _ = Session.objects.get_or_create(
            customer=customer, external_id=session_id, defaults={"last_payload_at": now}
        )
        try:
            with transaction.atomic():
                Payload.objects.create(
                    session=session,
                    payload_id=payload.payload_id,
                    body=compress_body(raw),
                    event_count=len(payload.events),
                    raw_bytes=payload.raw_bytes,
                    final=payload.final,
                    received_at=now,
                )
        except IntegrityError:
            return session, False
        state = State.READY if payload.final else State.OPEN
        Session.objects.filter(pk=session.pk).update(
            state=state,
            ready_at=now if payload.final else None,
            last_payload_at=now,
            payload_count=F("payload_count") + 1,
            bytes_received=F("bytes_received") + payload.raw_bytes,
            claim_token="",
            attempts=0,
        )
        session.state = state
    return session, True


# --- Housekeeping done by runpool ------------------------------------------------


def sessions_close_idle(*, now: datetime) -> int:
    """Open sessions without a payload for SESSION_IDLE_S become ready.

    ready_at is when the session went idle, not when runpool noticed, so lag stays
    truthful even if no runpool was running at that moment.
    """
    idle = timedelta(seconds=settings.SESSION_IDLE_S)
    return Session.objects.filter(state=State.OPEN, last_payload_at__lt=now - idle).update(
        state=State.READY, ready_at=F("last_payload_at") + idle
    )


def sessions_reap(*, now: datetime) -> dict[str, int]:
    """Return abandoned work to ready; give up after SESSION_MAX_ATTEMPTS.

    - processing with an expired lease: the worker died or its host vanished;
    - queued for longer than SESSION_QUEUED_TIMEOUT_S: the broker lost the task.
    """
    max_attempts = settings.SESSION_MAX_ATTEMPTS
    expired = Session.objects.filter(state=State.PROCESSING, lease_until__lt=now)
    failed = expired.filter(attempts__gte=max_attempts).update(
        state=State.FAILED,
        claim_token="",
        last_error="lease expired: the worker stopped while processing (attempt limit reached)",
    )
    retried = expired.filter(attempts__lt=max_attempts).update(
        state=State.READY,
        claim_token="",
        last_error="lease expired: the worker stopped while processing",
    )
    stale_after = timedelta(seconds=settings.SESSION_QUEUED_TIMEOUT_S)
    requeued = Session.objects.filter(state=State.QUEUED, queued_at__lt=now - stale_after).update(
        state=State.READY
    )
    return {"failed": failed, "retried": retried, "requeued": requeued}


# --- Admin actions -----------------------------------------------------------------


def session_retry(*, session: Session) -> bool:
    """An admin sends a failed session back to ready with fresh attempts."""
    return bool(
        Session.objects.filter(pk=session.pk, state=State.FAILED).update(
            state=State.READY, ready_at=timezone.now(), attempts=0
        )
    )
