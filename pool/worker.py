"""What a django-q2 worker does with a batch of sessions: claim, compute, store.

Every write is a conditional UPDATE (state and claim token in the WHERE clause) so
concurrent hosts, duplicated tasks and late workers cannot apply a result twice or
resurrect a session that moved on (design.md's lifecycle).

A task carries a short batch of session ids (pool.dispatch). On PostgreSQL the batch costs
two statements, whatever its size: one claims every session and returns their payloads,
one stores every result with its stream and the customers' counters. Per session, the
database work is then a few index entries instead of two round trips and five
statements, which is most of what separates runpool from the bare processing function
(docs/benchmarks.md). Each session is still claimed and judged on its own: one that
fails, or that a new payload took back meanwhile, does not affect the others.
"""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from django.conf import settings
from django.db import DataError, IntegrityError, OperationalError, connection, transaction
from django.db.models import F
from django.utils import timezone

from onboarding.models import Customer
from pool import processing
from pool.ingest import decompress_body
from pool.models import Payload, Session, SessionStream, State

logger = logging.getLogger(__name__)

# A deadlock between two workers' counter updates (two batches touching the same
# customers in a different order) aborts one statement, which changed nothing: retry it.
DEADLOCK_RETRIES = 3


@dataclass(frozen=True)
class Outcome:
    """A computed session, waiting to be stored."""

    session_id: int
    values: dict
    stream: bytes


def session_compute(rows: list[tuple[int, bytes]]) -> tuple[processing.SessionSummary, bytes]:
    """The processing function: stored payloads (payload_id, body) → summary and the
    compressed event stream. The worker runs exactly this; so does bench_drain's
    multiprocessing.Pool baseline, over the same stored payloads held in memory."""
    bodies = [{"payload_id": pid, **decompress_body(bytes(body))} for pid, body in rows]
    summary, events = processing.summarize(bodies)
    return summary, processing.compress_stream(events)


def sessions_process(*, session_ids: list[int], host: str) -> list[str]:
    """Claim, compute and store a batch. Returns what happened to each session, in order:
    processed, superseded (taken back while we worked), skipped (not ours to claim),
    retry or failed (processing raised)."""
    worker_commits_skip_flush_wait()
    token, claimed = sessions_claim_and_load(session_ids=session_ids, host=host)
    outcomes: dict[int, str] = {}
    done: list[Outcome] = []
    for session_id in dict.fromkeys(session_ids):  # once each, in order
        if session_id not in claimed:
            outcomes[session_id] = "skipped"
            continue
        started = time.perf_counter()
        try:
            summary, stream = session_compute(claimed[session_id])
        except Exception as exc:  # a bug or poison input must end in ready/failed, not a crash
            logger.exception("processing session %s failed", session_id)
            outcomes[session_id] = session_fail(
                session_id=session_id, token=token, error=_describe(exc)
            )
            continue
        elapsed_ms = (time.perf_counter() - started) * 1000
        done.append(Outcome(session_id, result_values(summary, stream, elapsed_ms), stream))
    outcomes.update(sessions_complete(token=token, done=done))
    return [outcomes[session_id] for session_id in session_ids]


def session_process(*, session_id: int, host: str) -> str:
    """sessions_process for one session."""
    return sessions_process(session_ids=[session_id], host=host)[0]


# --- Claim ------------------------------------------------------------------------


def _claim_values(*, token: str, host: str) -> dict:
    now = timezone.now()
    return {
        "state": State.PROCESSING,
        "claim_token": token,
        "claimed_at": now,
        "lease_until": now + timedelta(seconds=settings.SESSION_LEASE_S),
        "worker_host": host,
    }


def session_claim(*, session_id: int, host: str) -> str | None:
    """queued → processing for this worker; None if another run got there first."""
    token, claimed = sessions_claim(session_ids=[session_id], host=host)
    return token if claimed else None


def sessions_claim(*, session_ids: list[int], host: str) -> tuple[str, set[int]]:
    """queued → processing, under one claim token; returns it and the ids claimed."""
    token = uuid.uuid4().hex
    with transaction.atomic():
        mine = Session.objects.filter(pk__in=session_ids, state=State.QUEUED)
        ids = set(mine.select_for_update().values_list("id", flat=True))
        Session.objects.filter(pk__in=ids).update(
            **_claim_values(token=token, host=host), attempts=F("attempts") + 1
        )
    return token, ids


def sessions_claim_and_load(
    *, session_ids: list[int], host: str
) -> tuple[str, dict[int, list[tuple[int, bytes]]]]:
    """sessions_claim, then each claimed session's payloads (payload_id, body) in
    payload_id order. On PostgreSQL both are one statement."""
    if connection.vendor != "postgresql":
        token, ids = sessions_claim(session_ids=session_ids, host=host)
        loaded: dict[int, list[tuple[int, bytes]]] = {sid: [] for sid in ids}
        rows = Payload.objects.filter(session_id__in=ids).order_by("session_id", "payload_id")
        for sid, pid, body in rows.values_list("session_id", "payload_id", "body"):
            loaded[sid].append((pid, body))
        return token, loaded
    token = uuid.uuid4().hex
    assignments, params = _sql_assignments(Session, _claim_values(token=token, host=host))
    sql = f"""
        WITH claimed AS (
            UPDATE {Session._meta.db_table} SET {assignments}, attempts = attempts + 1
            WHERE id = ANY(%s) AND state = %s RETURNING id
        )
        SELECT claimed.id, p.payload_id, p.body FROM claimed
        LEFT JOIN {Payload._meta.db_table} p ON p.session_id = claimed.id
        ORDER BY claimed.id, p.payload_id
    """
    with binary_cursor() as cursor:
        cursor.execute(sql, [*params, list(session_ids), State.QUEUED])
        rows = cursor.fetchall()
    loaded = {}
    for sid, pid, body in rows:
        payloads = loaded.setdefault(sid, [])
        if pid is not None:
            payloads.append((pid, body))
    return token, loaded


@contextmanager
def binary_cursor():
    """A psycopg cursor binding parameters on the server, with binary results: payloads
    and streams travel as bytes. Django's cursor inlines parameters client-side, so a
    21 KB stream became a 42 KB hex literal for PostgreSQL to parse, and payloads came
    back hex-encoded. Errors still come out as Django's (DataError, IntegrityError…)."""
    connection.ensure_connection()
    with connection.wrap_database_errors:
        cursor = psycopg.Cursor(connection.connection)
        cursor.format = psycopg.pq.Format.BINARY
        with cursor:
            yield cursor


def worker_commits_skip_flush_wait() -> None:
    """Let this connection's commits return before PostgreSQL has flushed them to disk
    (synchronous_commit=off, set once per connection).

    Safe for a worker's writes: losing the last few (a PostgreSQL crash, never an
    application one) leaves the session queued or processing, where the queued timeout,
    the lease reaper or the broker's redelivery picks it up again, and the result and
    its counter are one transaction, so nothing is applied twice. The task's
    acknowledgement, a normal commit made after them, flushes them anyway. It saves a
    disk-flush wait (~1.5 ms measured here) per write, during which a worker would
    otherwise sit idle.
    """
    if connection.vendor != "postgresql":
        return
    connection.ensure_connection()
    raw = connection.connection
    if not getattr(raw, "onramp_async_commit", False):
        with connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit TO off")
        raw.onramp_async_commit = True


# --- Store --------------------------------------------------------------------------


def result_values(
    summary: processing.SessionSummary, stream: bytes, elapsed_ms: float
) -> dict[str, object]:
    """The session's columns once processed."""
    return {
        "state": State.PROCESSED,
        "processed_at": timezone.now(),
        "processing_ms": elapsed_ms,
        "claim_token": "",
        "last_error": "",
        "length_ms": summary.length_ms,
        "active_ms": summary.active_ms,
        "click_count": summary.click_count,
        "rage_click_count": len(summary.rage_clicks),
        "error_count": summary.error_count,
        "event_total": summary.event_total,
        "landing_page": _text(summary.landing_page),
        "exit_page": _text(summary.exit_page),
        "out_of_order": summary.out_of_order,
        "excluded_reason": summary.excluded_reason,
        "summary": _summary_document(summary),
        "stream_bytes": len(stream),
    }


def sessions_complete(*, token: str, done: list[Outcome]) -> dict[int, str]:
    """processing → processed for each computed session whose claim is still ours, with
    its stream and its customer's counter, all or nothing. processed or superseded, by
    session id. A value the database refuses fails that session alone."""
    if not done:
        return {}
    if connection.vendor == "postgresql":
        try:
            stored = _sessions_complete_postgresql(token=token, done=done)
        except (DataError, IntegrityError) as exc:
            if len(done) == 1:
                return {done[0].session_id: _fail_refused(token, done[0], exc)}
            # Find the session the database refuses, one at a time.
            outcomes: dict[int, str] = {}
            for outcome in done:
                outcomes.update(sessions_complete(token=token, done=[outcome]))
            return outcomes
        return {o.session_id: "processed" if o.session_id in stored else "superseded" for o in done}
    outcomes = {}
    for outcome in done:
        try:
            outcomes[outcome.session_id] = _session_complete_orm(token=token, outcome=outcome)
        except (DataError, IntegrityError) as exc:
            outcomes[outcome.session_id] = _fail_refused(token, outcome, exc)
    return outcomes


def _fail_refused(token: str, outcome: Outcome, exc: Exception) -> str:
    """A value the database refuses is this session's own problem: retry or fail it."""
    logger.error("storing the result of session %s failed: %s", outcome.session_id, exc)
    return session_fail(session_id=outcome.session_id, token=token, error=_describe(exc))


def _session_complete_orm(*, token: str, outcome: Outcome) -> str:
    session_id = outcome.session_id
    with transaction.atomic():
        mine = Session.objects.filter(pk=session_id, state=State.PROCESSING, claim_token=token)
        if not mine.update(**outcome.values):
            return "superseded"
        SessionStream.objects.update_or_create(
            session_id=session_id, defaults={"data": outcome.stream}
        )
        customer_id = Session.objects.values_list("customer_id", flat=True).get(pk=session_id)
        Customer.objects.filter(pk=customer_id).update(processed_total=F("processed_total") + 1)
    return "processed"


def _sessions_complete_postgresql(*, token: str, done: list[Outcome]) -> set[int]:
    """The writes of a whole batch as one statement (data-modifying CTEs over a VALUES
    list): atomic by itself and one round trip. Returns the ids stored."""
    fields = [Session._meta.get_field(name) for name in done[0].values]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    assignments = ", ".join(
        f"{connection.ops.quote_name(f.column)} = v.{connection.ops.quote_name(f.column)}"
        for f in fields
    )
    # VALUES takes its column types from the first row; cast there.
    first = ", ".join(
        ["%s::bigint", "%s::bytea", *(f"%s::{f.db_type(connection)}" for f in fields)]
    )
    rest = ", ".join(["%s"] * (len(fields) + 2))
    rows = ", ".join([f"({first})", *[f"({rest})"] * (len(done) - 1)])
    params: list = []
    for outcome in done:
        params += [outcome.session_id, outcome.stream]
        params += [f.get_db_prep_save(outcome.values[f.name], connection) for f in fields]
    sql = f"""
        WITH v (id, stream, {columns}) AS (VALUES {rows}),
        done AS (
            UPDATE {Session._meta.db_table} s SET {assignments} FROM v
            WHERE s.id = v.id AND s.state = %s AND s.claim_token = %s
            RETURNING s.id, s.customer_id
        ), streams AS (
            INSERT INTO {SessionStream._meta.db_table} (session_id, data)
            SELECT done.id, v.stream FROM done JOIN v ON v.id = done.id
            ON CONFLICT (session_id) DO UPDATE SET data = EXCLUDED.data
        ), counters AS (
            UPDATE {Customer._meta.db_table} c SET processed_total = processed_total + d.n
            FROM (SELECT customer_id, count(*) AS n FROM done GROUP BY customer_id) d
            WHERE c.id = d.customer_id
        )
        SELECT id FROM done
    """
    params += [State.PROCESSING, token]
    for attempt in range(DEADLOCK_RETRIES + 1):
        try:
            # Inside a caller's transaction, a savepoint keeps a refused value from
            # aborting it, as the ORM path's block does.
            with transaction.atomic() if connection.in_atomic_block else nullcontext():
                with binary_cursor() as cursor:
                    cursor.execute(sql, params)
                    return {row[0] for row in cursor.fetchall()}
        except OperationalError as exc:
            if attempt == DEADLOCK_RETRIES or not _is_deadlock(exc):
                raise
            logger.warning("deadlock storing a batch of %d sessions, retrying", len(done))
    raise AssertionError("unreachable")


def _is_deadlock(exc: OperationalError) -> bool:
    return getattr(exc.__cause__, "sqlstate", None) == "40P01"


def _sql_assignments(model, values: dict) -> tuple[str, list]:
    """`col = %s, …` and its parameters, prepared by the model's fields as the ORM would."""
    fields = [model._meta.get_field(name) for name in values]
    assignments = ", ".join(f"{connection.ops.quote_name(f.column)} = %s" for f in fields)
    return assignments, [f.get_db_prep_save(values[f.name], connection) for f in fields]


def session_fail(*, session_id: int, token: str, error: str) -> str:
    """After an error: back to ready for another attempt, or failed at the limit."""
    mine = Session.objects.filter(pk=session_id, state=State.PROCESSING, claim_token=token)
    if mine.filter(attempts__gte=settings.SESSION_MAX_ATTEMPTS).update(
        state=State.FAILED, claim_token="", last_error=error
    ):
        return "failed"
    if mine.update(state=State.READY, claim_token="", last_error=error):
        return "retry"
    return "superseded"


def _text(value: str) -> str:
    # PostgreSQL text and jsonb refuse NUL characters, which a recorder can send in an href.
    return value.replace("\x00", "\ufffd")


def _summary_document(summary: processing.SessionSummary) -> dict:
    """summary.as_dict() for the jsonb column: its only strings that come from the
    recorder are the pages, which must lose their NULs (walking the whole document to
    find strings cost ~0.05 ms per session)."""
    document = summary.as_dict()
    for key in ("landing_page", "exit_page", "excluded_reason"):
        document[key] = _text(document[key])
    document["pages"] = [_text(page) for page in document["pages"]]
    return document


def _describe(exc: BaseException) -> str:
    frames = traceback.format_exception(exc)
    return ("".join(frames))[-4000:]
