"""What ``runworkers`` prints: its own console handler when the project configured none,
levels from ``--verbosity``, and JSON lines for production log pipelines.

Loggers (all under ``django_workflows``): ``.worker`` (the worker: start banner, runs
started and finished, leases, intake), ``.steps`` (a warning for every failed step
attempt), ``.engine`` (the executor), ``.functions.<id>`` (``ctx.logger``).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

ROOT = "django_workflows"
VERBOSITY_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}
PLAIN_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(verbosity: int = 1, log_format: str = "plain", *, stream: Any = None) -> None:
    """Make the ``django_workflows`` loggers print, as ``runserver`` does, unless the
    project's ``LOGGING`` already gives them (or the root logger) a handler; then only
    the level follows ``--verbosity`` (0 warnings, 1 info, 2 debug)."""
    logger = logging.getLogger(ROOT)
    logger.setLevel(VERBOSITY_LEVELS.get(verbosity, logging.DEBUG))
    ours = next((h for h in logger.handlers if getattr(h, "django_workflows_console", False)), None)
    if ours is None:
        if logger.hasHandlers():
            return
        ours = logging.StreamHandler(stream)
        ours.django_workflows_console = True  # type: ignore[attr-defined]
        logger.addHandler(ours)
        logger.propagate = False  # printed once, not again by a root handler added later
    ours.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(PLAIN_FORMAT))
