"""The engine's one clock: the database's, as seen from this process.

Everything that decides whether work is due or a lease has lapsed asks :func:`now`.
Worker machines' clocks drift: one 2 minutes ahead would wake other runs' sleeps early,
one behind would take over leases that are still held. So the engine follows the
database server's clock: :func:`sync` measures how far it is from this process's clock
(one ``SELECT clock_timestamp()``), workers re-measure it with every heartbeat, and
``wf.send`` re-measures it when the last measure is a minute old. SQLite runs on the
same machine as its workers: there the process's clock is the database's.

Tests move the clock forward on top of that (``drain(advance_time=True)``).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta

from django.db import connections
from django.utils import timezone

logger = logging.getLogger("django_workflows.worker")

_lock = threading.Lock()
_offset = timedelta(0)  # tests: how far drain(advance_time=True) moved the clock
_skew = timedelta(0)  # the database's clock minus this process's clock
_synced_at: float | None = None  # time.monotonic() of the last measure
RESYNC_SECONDS = 60.0
# A measure whose round trip took longer than this is too blurred to replace an earlier one.
MAX_ROUND_TRIP = timedelta(milliseconds=20)


def now() -> datetime:
    return timezone.now() + _skew + _offset


def sync(db: str, *, max_age: float | None = None) -> timedelta:
    """Measure the database's clock against this process's; returns the skew.

    With ``max_age``, measure only if the last measure is older than that (seconds).
    """
    global _skew, _synced_at
    connection = connections[db]
    if connection.vendor != "postgresql":
        return _skew
    if max_age is not None and _synced_at is not None and time.monotonic() - _synced_at < max_age:
        return _skew
    connection.ensure_connection()  # connecting first: its time is no part of the round trip
    before = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        server = cursor.fetchone()[0]
    after = timezone.now()
    # The measure is off by at most half the round trip: keep a blurred one only if there
    # is none yet.
    if after - before > MAX_ROUND_TRIP and _synced_at is not None:
        return _skew
    skew = server - (before + (after - before) / 2)
    with _lock:
        if abs(skew - _skew) > timedelta(seconds=1):
            logger.info("following the database's clock: it is %+.3fs from this machine's", skew.total_seconds())
        _skew, _synced_at = skew, time.monotonic()
    return skew


def advance_to(moment: datetime) -> None:
    """Move the clock forward so that :func:`now` is at least ``moment``."""
    global _offset
    with _lock:
        gap = moment - now()
        if gap > timedelta(0):
            _offset += gap


def reset() -> None:
    """Undo :func:`advance_to` (the database clock's skew is kept)."""
    global _offset
    with _lock:
        _offset = timedelta(0)
