"""django-q2's ORM broker, woken by PostgreSQL NOTIFY instead of polling.

A pusher that finds its queue empty sleeps (django-q2's `poll`) before it looks again.
While a backlog drains, the dispatcher refills a queue the moment it is half empty, and
the pusher was often asleep right then: its workers sat idle for up to a poll each
refill (about a quarter of runpool's time in bench_drain). On PostgreSQL the dispatcher
sends a NOTIFY with the queue's name when it commits new tasks (pool.dispatch), and an
idle pusher LISTENs for it and wakes at once. Other databases keep django-q2's sleep.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from time import monotonic, sleep

import psycopg
from django.db import DatabaseError, connections
from django.utils import timezone
from django_q.brokers.orm import ORM
from django_q.conf import Conf
from django_q.models import OrmQ

logger = logging.getLogger(__name__)

CHANNEL = "onramp_tasks"
TABLE = OrmQ._meta.db_table


def notify_tasks(queue: str) -> None:
    """Wake the pushers of `queue` once the current transaction commits (PostgreSQL
    delivers a NOTIFY at commit, and drops it on rollback)."""
    connection = connections[Conf.ORM]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, queue])


class NotifiedORM(ORM):
    def dequeue(self):
        connection = connections[Conf.ORM]
        if connection.vendor != "postgresql":
            return super().dequeue()
        try:
            return self._take_or_wait(connection)
        except (DatabaseError, psycopg.Error):
            # PostgreSQL restarting: django-q2's pusher would stop for 10 s and exit.
            # Drop the connection and look again after a poll.
            logger.warning("broker: database unavailable, retrying", exc_info=True)
            connection.close()
            sleep(Conf.POLL)
            return None

    def _take_or_wait(self, connection) -> list[tuple[int, str]] | None:
        self.get_connection()  # drops a stale connection, as django-q2 does
        raw = self._listening(connection)
        tasks = self._take()
        if tasks:
            # Drop the wake-ups buffered meanwhile (psycopg keeps them until read): the
            # pusher looks again before it waits anyway.
            for _ in raw.notifies(timeout=0):
                pass
            return tasks
        # Wake-ups that came while we looked are kept by psycopg and returned first:
        # none is lost between the look and the wait. It still looks every poll: a task
        # can also come back without a NOTIFY (django-q2 redelivers one whose `retry`
        # expired), and a generation told to stop checks for that between looks.
        deadline = monotonic() + Conf.POLL
        while (left := deadline - monotonic()) > 0:
            for notify in raw.notifies(timeout=left, stop_after=1):
                if notify.payload == self.list_key:
                    return None  # django-q2's pusher calls dequeue again at once
        return None

    def _take(self) -> list[tuple[int, str]]:
        """django-q2's ORM dequeue in one statement, oldest task first, without its
        sleep on an empty queue. Taking a task moves its lock to now + retry, as
        django-q2 does (a task not acknowledged by then is delivered again); SKIP
        LOCKED lets two pushers of a queue take different tasks."""
        now = timezone.now()
        sql = f"""
            UPDATE {TABLE} SET lock = %s WHERE id IN (
                SELECT id FROM {TABLE} WHERE key = %s AND lock < %s
                ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED
            ) RETURNING id, payload
        """
        with connections[Conf.ORM].cursor() as cursor:
            cursor.execute(
                sql, [now + timedelta(seconds=Conf.RETRY), self.list_key, now, Conf.BULK]
            )
            return sorted(cursor.fetchall())

    def acknowledge(self, task_id) -> None:
        connection = connections[Conf.ORM]
        if connection.vendor != "postgresql":
            return super().acknowledge(task_id)
        self.get_connection()  # drops a stale connection, as django-q2 does
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {TABLE} WHERE id = %s", [task_id])

    @staticmethod
    def _listening(connection):
        """The raw psycopg connection, LISTENing (again, after a reconnect)."""
        connection.ensure_connection()
        raw = connection.connection
        if not getattr(raw, "onramp_listening", False):
            with connection.cursor() as cursor:
                cursor.execute(f"LISTEN {CHANNEL}")
            raw.onramp_listening = True
        return raw
