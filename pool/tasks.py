"""django-q2 task entry points: thin wrappers over pool.worker."""

from __future__ import annotations

from pool import worker_context


def process_session(session_id: int) -> str:
    from pool.worker import session_process  # late import: django-q2 imports tasks early

    return session_process(session_id=session_id, host=worker_context.host_name)


def process_sessions(session_ids: list[int]) -> list[str]:
    """A batch from the dispatcher: claimed and stored together, each session judged on
    its own (one failing or superseded session does not affect the others)."""
    from pool.worker import sessions_process

    return sessions_process(session_ids=list(session_ids), host=worker_context.host_name)
