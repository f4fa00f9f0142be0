"""Waking idle workers: NOTIFY after commit on PostgreSQL, polling everywhere.

NOTIFY is only a hint. It is sent after the transaction that made work due has
committed (never inside a user's transaction: every NOTIFY takes a cluster-wide
lock at commit), once per transaction however many events it sent.
"""

from __future__ import annotations

import logging
import threading

from django.db import connections, transaction

from .. import conf
from .records import one_line

logger = logging.getLogger("django_workflows.worker")

CHANNEL = "django_workflows"


def notify(db: str) -> None:
    """Send the wake-up hint now (call outside any transaction)."""
    connection = connections[db]
    if connection.vendor != "postgresql" or not conf.get("NOTIFY"):
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [CHANNEL])
    except Exception:  # a lost hint only costs latency: workers poll
        logger.debug("NOTIFY failed", exc_info=True)


def notify_on_commit(db: str) -> None:
    """Send the hint once the current transaction commits; coalesced per transaction."""
    connection = connections[db]
    if connection.vendor != "postgresql" or not conf.get("NOTIFY"):
        return
    if not connection.in_atomic_block:
        notify(db)
        return
    marker = getattr(connection, "_workflows_notify_pending", None)
    if marker is not None and marker in [entry[1] for entry in connection.run_on_commit]:
        return

    def send() -> None:
        notify(db)

    connection._workflows_notify_pending = send  # type: ignore[attr-defined]
    transaction.on_commit(send, using=db)


class Listener(threading.Thread):
    """LISTENs on its own connection and sets ``wake`` on each notification."""

    def __init__(self, db: str, wake: threading.Event, stopping: threading.Event) -> None:
        super().__init__(name="wf-listener", daemon=True)
        self.db = db
        self.wake = wake
        self.stopping = stopping

    def run(self) -> None:
        params = connections[self.db].get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        backoff = 0.5
        while not self.stopping.is_set():
            try:
                import psycopg  # only here: projects on SQLite need no libpq

                with psycopg.connect(**params, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    backoff = 0.5
                    while not self.stopping.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self.wake.set()
            except Exception as exc:
                # One line per attempt (an outage is not a bug); polling covers the gap, and
                # a short cap gets instant wake-ups back soon after the database returns.
                logger.warning("LISTEN connection failed (%s); retrying in %.1fs", one_line(exc), backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 5)
