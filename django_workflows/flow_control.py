"""Flow control options of ``wf.function``: what they mean and how they are checked.

The options are plain frozen dataclasses, validated when they are built, so that a
wrong limit, a period outside Inngest's bounds or a key that does not compile fails
at import time with a message naming the option. ``FlowControl`` bundles a
function's options and refuses the combinations Inngest refuses.

Where each rule is enforced:

* admission (``engine/admission.py``), when a run is created: idempotency, rate limit,
  debounce, batches, singleton, throttle and the priority shift;
* the claim (``engine/queue.py``), when work is taken: concurrency, counted as the
  items of a key that workers hold (steps executing), so sleeping or waiting runs
  hold no slot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from .durations import Duration, parse_duration
from .errors import WorkflowDefinitionError
from .expressions import Expression, canonical_json

__all__ = [
    "Concurrency", "Throttle", "RateLimit", "Debounce", "Batch", "Priority", "Singleton", "FlowControl",
]

# Inngest's bounds.
PERIOD_MIN = timedelta(seconds=1)
THROTTLE_PERIOD_MAX = timedelta(days=7)
RATE_LIMIT_PERIOD_MAX = timedelta(hours=24)
DEBOUNCE_PERIOD_MAX = timedelta(days=7)
BATCH_TIMEOUT_MAX = timedelta(seconds=60)
BATCH_MAX_SIZE = 1000
PRIORITY_MAX_SECONDS = 600
MAX_CONCURRENCY_RULES = 2
IDEMPOTENCY_WINDOW = timedelta(hours=24)
# A key value longer than this is stored as a digest (it names a lane or a slot).
KEY_TEXT_MAX = 200


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise WorkflowDefinitionError(f"{what} must be an integer of at least 1, got {value!r}")
    return value


def _period(value: object, what: str, low: timedelta, high: timedelta) -> timedelta:
    delta = parse_duration(value, what=what)
    if not low <= delta <= high:
        raise WorkflowDefinitionError(f"{what} must be between {_human(low)} and {_human(high)}, got {_human(delta)}")
    return delta


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{delta.total_seconds():g}s"


def _key(value: object, what: str) -> Expression | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise WorkflowDefinitionError(f"{what} must be a CEL expression string such as \"event.data.user_id\", got {value!r}")
    return Expression(value, what=what)


def key_text(value: Any) -> str:
    """The stored text of a key's value: canonical JSON (1 and 1.0 agree), bounded."""
    text = canonical_json(value)
    if len(text) > KEY_TEXT_MAX:
        import hashlib

        text = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    return text


@dataclass(frozen=True)
class Concurrency:
    """At most ``limit`` steps of this function (per value of ``key``) execute at once.

    ``scope="env"`` shares the limit between every function using the same key.
    Sleeping, waiting and invoking runs hold no slot.
    """

    limit: int
    key: str | None = None
    scope: Literal["fn", "env"] = "fn"
    compiled: Expression | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _positive_int(self.limit, "Concurrency limit")
        if self.scope not in ("fn", "env"):
            raise WorkflowDefinitionError(f"Concurrency scope must be \"fn\" or \"env\", got {self.scope!r}")
        if self.scope == "env" and self.key is None:
            raise WorkflowDefinitionError("Concurrency(scope=\"env\") needs a key: the limit is shared by key value")
        object.__setattr__(self, "compiled", _key(self.key, "Concurrency key"))


@dataclass(frozen=True)
class Throttle:
    """At most ``limit`` run starts per ``period`` (plus ``burst``), spread over the period.

    Runs over the limit wait, first in first out; none is dropped.
    """

    limit: int
    period: Duration
    key: str | None = None
    burst: int = 1
    compiled: Expression | None = field(default=None, init=False, repr=False, compare=False)
    period_delta: timedelta = field(default=timedelta(0), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _positive_int(self.limit, "Throttle limit")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 0:
            raise WorkflowDefinitionError(f"Throttle burst must be an integer of at least 0, got {self.burst!r}")
        object.__setattr__(self, "period_delta", _period(self.period, "Throttle period", PERIOD_MIN, THROTTLE_PERIOD_MAX))
        object.__setattr__(self, "compiled", _key(self.key, "Throttle key"))


@dataclass(frozen=True)
class RateLimit:
    """At most ``limit`` runs per ``period``: events over it start no run (they are kept)."""

    limit: int
    period: Duration
    key: str | None = None
    compiled: Expression | None = field(default=None, init=False, repr=False, compare=False)
    period_delta: timedelta = field(default=timedelta(0), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _positive_int(self.limit, "RateLimit limit")
        object.__setattr__(
            self, "period_delta", _period(self.period, "RateLimit period", PERIOD_MIN, RATE_LIMIT_PERIOD_MAX)
        )
        object.__setattr__(self, "compiled", _key(self.key, "RateLimit key"))


@dataclass(frozen=True)
class Debounce:
    """Start one run, with the last event, once ``period`` passes with no new event.

    Each event restarts the period; ``timeout`` (from the first event) caps the delay.
    """

    period: Duration
    key: str | None = None
    timeout: Duration | None = None
    compiled: Expression | None = field(default=None, init=False, repr=False, compare=False)
    period_delta: timedelta = field(default=timedelta(0), init=False, repr=False, compare=False)
    timeout_delta: timedelta | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        period = _period(self.period, "Debounce period", PERIOD_MIN, DEBOUNCE_PERIOD_MAX)
        object.__setattr__(self, "period_delta", period)
        if self.timeout is not None:
            timeout = _period(self.timeout, "Debounce timeout", PERIOD_MIN, DEBOUNCE_PERIOD_MAX)
            object.__setattr__(self, "timeout_delta", timeout)
        object.__setattr__(self, "compiled", _key(self.key, "Debounce key"))


@dataclass(frozen=True)
class Batch:
    """One run per batch of up to ``max_size`` events, started when full or ``timeout``
    after the batch's first event; ``ctx.events`` holds them all."""

    max_size: int
    timeout: Duration
    key: str | None = None
    compiled: Expression | None = field(default=None, init=False, repr=False, compare=False)
    timeout_delta: timedelta = field(default=timedelta(0), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _positive_int(self.max_size, "Batch max_size")
        if self.max_size > BATCH_MAX_SIZE:
            raise WorkflowDefinitionError(f"Batch max_size must be at most {BATCH_MAX_SIZE}, got {self.max_size}")
        object.__setattr__(self, "timeout_delta", _period(self.timeout, "Batch timeout", PERIOD_MIN, BATCH_TIMEOUT_MAX))
        object.__setattr__(self, "compiled", _key(self.key, "Batch key"))


@dataclass(frozen=True)
class Priority:
    """``run``: an expression giving seconds (-600..600) to move a run ahead of (positive)
    or behind (negative) the runs queued before it. It reorders a backlog only."""

    run: str
    compiled: Expression | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        compiled = _key(self.run, "Priority run")
        if compiled is None:
            raise WorkflowDefinitionError("Priority run must be a CEL expression string, got None")
        object.__setattr__(self, "compiled", compiled)


@dataclass(frozen=True)
class Singleton:
    """One active run per key: ``mode="skip"`` drops a new event while a run is active,
    ``mode="cancel"`` cancels the active run and starts the new one."""

    key: str | None = None
    mode: Literal["skip", "cancel"] = "skip"
    compiled: Expression | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in ("skip", "cancel"):
            raise WorkflowDefinitionError(f"Singleton mode must be \"skip\" or \"cancel\", got {self.mode!r}")
        object.__setattr__(self, "compiled", _key(self.key, "Singleton key"))


@dataclass(frozen=True)
class FlowControl:
    """A function's flow control options, validated together."""

    concurrency: tuple[Concurrency, ...] = ()
    throttle: Throttle | None = None
    rate_limit: RateLimit | None = None
    debounce: Debounce | None = None
    batch: Batch | None = None
    idempotency: Expression | None = None
    priority: Priority | None = None
    singleton: Singleton | None = None

    @property
    def limits_concurrency(self) -> bool:
        return bool(self.concurrency)

    @property
    def admits_in_bulk(self) -> bool:
        """True when admission needs no stored state (only paused, concurrency, priority)."""
        return not (self.throttle or self.rate_limit or self.debounce or self.batch or self.idempotency or self.singleton)


def build(
    function_id: str, *, concurrency: Any, throttle: Any, rate_limit: Any, debounce: Any, batch_events: Any,
    idempotency: Any, priority: Any, singleton: Any, has_cancel: bool,
) -> FlowControl:
    """Check the options' types and combinations; errors name the function and the option."""
    where = f"function {function_id!r}"
    rules = _concurrency_rules(concurrency, where)
    for name, value, kind in (
        ("throttle", throttle, Throttle), ("rate_limit", rate_limit, RateLimit), ("debounce", debounce, Debounce),
        ("batch_events", batch_events, Batch), ("priority", priority, Priority), ("singleton", singleton, Singleton),
    ):
        if value is not None and not isinstance(value, kind):
            raise WorkflowDefinitionError(f"{where}: {name} must be a wf.{kind.__name__}(...), got {value!r}")
    idempotency_expression = _key(idempotency, f"{where}: idempotency")
    if batch_events is not None:
        refused = [
            name for name, value in (
                ("debounce", debounce), ("idempotency", idempotency), ("rate_limit", rate_limit),
                ("cancel", has_cancel or None), ("priority", priority), ("singleton", singleton),
            ) if value is not None
        ]
        if refused:
            raise WorkflowDefinitionError(
                f"{where}: batch_events cannot be combined with {', '.join(refused)} "
                "(as in Inngest: a batch run has many trigger events, these options need one)"
            )
    if throttle is not None and (debounce is not None or batch_events is not None):
        raise WorkflowDefinitionError(
            f"{where}: throttle cannot be combined with {'debounce' if debounce is not None else 'batch_events'} "
            "here: a debounced or batched run's start is decided by its events, not by a start rate"
        )
    return FlowControl(
        concurrency=rules, throttle=throttle, rate_limit=rate_limit, debounce=debounce, batch=batch_events,
        idempotency=idempotency_expression, priority=priority, singleton=singleton,
    )


def _concurrency_rules(value: Any, where: str) -> tuple[Concurrency, ...]:
    if value is None:
        return ()
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(items) > MAX_CONCURRENCY_RULES:
        raise WorkflowDefinitionError(f"{where}: at most {MAX_CONCURRENCY_RULES} concurrency limits, got {len(items)}")
    rules = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            if item < 1:
                raise WorkflowDefinitionError(f"{where}: concurrency must be at least 1, got {item}")
            item = Concurrency(item)
        if not isinstance(item, Concurrency):
            raise WorkflowDefinitionError(
                f"{where}: concurrency must be an int, a wf.Concurrency(...) or a list of two, got {item!r}"
            )
        rules.append(item)
    if len(rules) == 2 and rules[0].key is None and rules[1].key is None and rules[0].scope == rules[1].scope:
        raise WorkflowDefinitionError(f"{where}: two concurrency limits without keys limit the same thing; keep one")
    return tuple(rules)
