"""Exceptions users raise, catch, or see at definition time."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ImproperlyConfigured


class WorkflowDefinitionError(ImproperlyConfigured):
    """A function, trigger, duration or expression is defined wrongly."""


class NonRetriableError(Exception):
    """Raise from a step (or a handler) to fail it at once, without retries."""


class StepAborted(NonRetriableError):
    """User code raised a BaseException (``SystemExit``, ``KeyboardInterrupt`` ...): the step
    or the run fails without retries, and the worker thread lives on."""


class RetryAfterError(Exception):
    """Raise from a step to set when its next attempt runs.

    ``retry_after`` is a duration (``timedelta`` or ``"30s"``) or an aware datetime.
    """

    def __init__(self, message: str, retry_after: timedelta | datetime | str) -> None:
        super().__init__(message)
        from .durations import parse_duration

        if isinstance(retry_after, datetime):
            if retry_after.tzinfo is None:
                raise WorkflowDefinitionError("RetryAfterError: retry_after datetime must be timezone-aware")
            self.retry_at: datetime | None = retry_after
            self.retry_after: timedelta | None = None
        else:
            self.retry_at = None
            self.retry_after = parse_duration(retry_after, what="RetryAfterError.retry_after")


class StepError(Exception):
    """A step failed for good; raised at the step's call site in the handler.

    ``error`` is the recorded error dict (``name``, ``message``, ``stack``).
    """

    def __init__(self, step_id: str, error: dict[str, Any]) -> None:
        self.step_id = step_id
        self.error = error
        super().__init__(f"step {step_id!r} failed: {error.get('name')}: {error.get('message')}")


class EventValidationError(ValueError):
    """An event passed to ``send`` is malformed."""


class UnknownFunctionError(LookupError):
    """No function with that id is registered."""


class RunNotFinishedError(ValueError):
    """A run that has not finished cannot be replayed: cancel it first."""


class NotMigratedError(ImproperlyConfigured):
    """The workflow tables do not exist (or are out of date): run ``manage.py migrate``."""


class RunRefusedError(ValueError):
    """Flow control started no run (the function is paused, rate limited, a singleton with
    an active run ...); ``name`` says which rule, as in the failed invoke step's error."""

    def __init__(self, message: str, *, name: str) -> None:
        super().__init__(message)
        self.name = name


# Errors that retrying cannot fix: a bad duration, a naive datetime, an expression that
# does not compile, an unknown function id, a malformed event. Raised from a handler or a
# step, they fail it at once with their message instead of being retried for minutes.
NON_RETRIABLE: tuple[type[Exception], ...] = (
    NonRetriableError, WorkflowDefinitionError, UnknownFunctionError, EventValidationError,
)
