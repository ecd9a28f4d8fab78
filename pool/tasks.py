"""django-q2 task entry points: thin wrappers over services."""

from __future__ import annotations

from pool import worker_context


def process_session(session_id: int) -> str:
    from pool.services import session_process  # late import: tasks and services stay decoupled

    return session_process(session_id=session_id, host=worker_context.host_name)
