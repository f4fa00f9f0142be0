"""Retry backoff: 15s, 30s, 1m, 2m, 5m, 10m, 20m, 40m, 1h20m, then 2h, with jitter."""

from __future__ import annotations

import random
from datetime import timedelta

_TABLE = (15, 30, 60, 120, 300, 600, 1200, 2400, 4800)
_CAP = 7200


def retry_delay(failed_attempts: int) -> timedelta:
    """Delay before the next attempt after ``failed_attempts`` (1-based) failures.

    Jitter adds up to 20% so that many runs failing together do not retry together.
    """
    index = max(failed_attempts, 1) - 1
    base = _TABLE[index] if index < len(_TABLE) else _CAP
    return timedelta(seconds=min(base, _CAP) * (1 + random.random() * 0.2))
