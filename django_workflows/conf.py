"""Settings: one ``DJANGO_WORKFLOWS`` dict, every key optional."""

from __future__ import annotations

from typing import Any

from django.conf import settings

DEFAULTS: dict[str, Any] = {
    # Database alias that holds the workflow tables (see "Workers and deployment").
    "DATABASE": "default",
    # Seconds a claimed item stays leased without a heartbeat before another worker may take it.
    "LEASE_SECONDS": 30.0,
    # Longest sleep of an idle worker between polls (LISTEN/NOTIFY wakes it sooner on PostgreSQL).
    "POLL_INTERVAL": 1.0,
    # Seconds a stopping worker lets in-flight steps finish before releasing them.
    "SHUTDOWN_GRACE_SECONDS": 25.0,
    # Threads per worker process when runworkers gets no --concurrency.
    "CONCURRENCY": 8,
    # Days finished (completed/cancelled) runs are kept; failed runs are kept FAILED_RETENTION_DAYS.
    "RETENTION_DAYS": 7,
    "FAILED_RETENTION_DAYS": 30,
    # A run whose worker died this many times in a row is failed instead of retried again.
    "MAX_CRASHES": 10,
    # NOTIFY after commit to wake idle workers at once (PostgreSQL only).
    "NOTIFY": True,
    # Prepare the engine's hot statements on the server (PostgreSQL): planned once per
    # connection instead of at every claim and step. False behind PgBouncer in transaction
    # pooling mode before 1.21 (or without max_prepared_statements).
    "PREPARED_STATEMENTS": True,
    # Seconds a starting worker waits for an unreachable database before it gives up.
    "STARTUP_TIMEOUT": 600.0,
    # Limits, with Inngest's defaults. Over a limit: a clear error, and nothing is stored.
    "MAX_EVENT_BYTES": 524_288,  # 512 KiB: one event's JSON (name, data, id)
    "MAX_STEP_OUTPUT_BYTES": 4_194_304,  # 4 MiB: one step's (or a run's) JSON output
    "MAX_STEPS_PER_RUN": 1000,
    "MAX_EVENTS_PER_REQUEST": 5000,  # events in one POST to the REST API (413 over it)
}


def get(name: str) -> Any:
    user = getattr(settings, "DJANGO_WORKFLOWS", None) or {}
    return user.get(name, DEFAULTS[name])


def database() -> str:
    return get("DATABASE")
