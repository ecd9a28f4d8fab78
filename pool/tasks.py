"""django-q2 task entry points: thin wrappers over services."""

from __future__ import annotations

from pool import worker_context


def process_session(session_id: int) -> str:
    from pool.services import session_process  # late import: tasks and services stay decoupled

    return session_process(session_id=session_id, host=worker_context.host_name)


def process_sessions(session_ids: list[int]) -> list[str]:
    """A batch from the dispatcher: each session is claimed, processed and stored on its
    own (one failing or superseded session does not affect the others)."""
    from pool.services import session_process

    return [
        session_process(session_id=session_id, host=worker_context.host_name)
        for session_id in session_ids
    ]
