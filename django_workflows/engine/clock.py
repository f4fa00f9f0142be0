"""The engine's one clock.

Everything that decides whether work is due asks :func:`now`, so tests can move
time forward (``django_workflows.testing.drain(advance_time=True)``).
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

from django.utils import timezone

_lock = threading.Lock()
_offset = timedelta(0)


def now() -> datetime:
    return timezone.now() + _offset


def advance_to(moment: datetime) -> None:
    """Move the clock forward so that :func:`now` is at least ``moment``."""
    global _offset
    with _lock:
        gap = moment - (timezone.now() + _offset)
        if gap > timedelta(0):
            _offset += gap


def reset() -> None:
    global _offset
    with _lock:
        _offset = timedelta(0)
