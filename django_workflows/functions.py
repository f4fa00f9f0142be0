"""``@wf.function``: definitions, triggers and the registry of a project's functions."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .durations import Duration, parse_duration
from .errors import UnknownFunctionError, WorkflowDefinitionError
from .expressions import Expression
from .flow_control import (
    Batch,
    Concurrency,
    Debounce,
    FlowControl,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
)
from .flow_control import build as build_flow_control

if TYPE_CHECKING:
    from .context import Context

Handler = Callable[["Context"], Any]

MAX_TRIGGERS = 10
MAX_RETRIES = 20
DEFAULT_RETRIES = 4
RESERVED_PREFIX = "workflows/"
# System events a function may trigger on (the others are emitted for one run only).
TRIGGERABLE_SYSTEM_EVENTS = frozenset(
    {"workflows/function.finished", "workflows/function.failed", "workflows/function.cancelled"}
)
SYSTEM_EVENTS = frozenset(
    {
        "workflows/function.finished",
        "workflows/function.failed",
        "workflows/function.cancelled",
        "workflows/function.invoked",
        "workflows/scheduled.timer",
    }
)
_FUNCTION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}$")


def validate_event_name(name: object, *, what: str = "event name", allow_system: bool = False) -> str:
    if not isinstance(name, str) or not name.strip():
        raise WorkflowDefinitionError(f"{what} must be a non-empty string, got {name!r}")
    if name != name.strip() or len(name) > 255:
        raise WorkflowDefinitionError(
            f"{what} {name!r} must have no surrounding spaces and at most 255 characters"
        )
    if name.startswith(RESERVED_PREFIX) and not (allow_system and name in SYSTEM_EVENTS):
        if allow_system:
            raise WorkflowDefinitionError(
                f"{what} {name!r}: the 'workflows/' prefix is reserved; "
                f"system events are {', '.join(sorted(SYSTEM_EVENTS))}"
            )
        raise WorkflowDefinitionError(
            f"{what} {name!r}: the 'workflows/' prefix is reserved for the engine's own events"
        )
    return name


@dataclass(frozen=True)
class TriggerEvent:
    """Start a run for each event named ``event`` (for which ``expression`` is true, if given)."""

    event: str
    expression: str | None = None
    compiled: Expression | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_event_name(self.event, what="TriggerEvent event", allow_system=True)
        if self.event in SYSTEM_EVENTS and self.event not in TRIGGERABLE_SYSTEM_EVENTS:
            raise WorkflowDefinitionError(
                f"TriggerEvent {self.event!r}: this system event goes to one run only "
                "(cron runs get workflows/scheduled.timer, invoked runs workflows/function.invoked); "
                "use wf.TriggerCron or ctx.step.invoke, or trigger on "
                + ", ".join(sorted(TRIGGERABLE_SYSTEM_EVENTS))
            )
        if self.expression is not None:
            compiled = Expression(self.expression, what=f"TriggerEvent({self.event!r}) expression")
            object.__setattr__(self, "compiled", compiled)

    def matches(self, payload: dict, *, function_id: str = "") -> bool:
        if self.compiled is None:
            return True
        where = f"function {function_id!r} trigger {self.event!r}"
        return self.compiled.matches({"event": payload}, where=where, event_id=payload.get("id"))


@dataclass(frozen=True)
class TriggerCron:
    """Start a run on a cron schedule; ``cron`` may start with ``TZ=Europe/Paris ``.

    ``jitter`` (a duration) delays each run by a random amount up to it.
    """

    cron: str
    jitter: Duration | None = None
    expression: str = field(default="", init=False, repr=False)
    timezone: str = field(default="UTC", init=False, repr=False)
    jitter_delta: timedelta = field(default=timedelta(0), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from croniter import croniter

        if not isinstance(self.cron, str) or not self.cron.strip():
            raise WorkflowDefinitionError(f"TriggerCron: cron must be a non-empty string, got {self.cron!r}")
        text = self.cron.strip()
        zone = "UTC"
        if text.startswith(("TZ=", "CRON_TZ=")):
            zone_part, _, text = text.partition(" ")
            zone = zone_part.split("=", 1)[1]
            try:
                from zoneinfo import ZoneInfo

                ZoneInfo(zone)
            except Exception:
                raise WorkflowDefinitionError(f"TriggerCron {self.cron!r}: unknown time zone {zone!r}") from None
        if not croniter.is_valid(text.strip()):
            raise WorkflowDefinitionError(
                f"TriggerCron {self.cron!r}: {text.strip()!r} is not a valid cron expression "
                "(five fields: minute hour day-of-month month day-of-week)"
            )
        object.__setattr__(self, "expression", text.strip())
        object.__setattr__(self, "timezone", zone)
        if self.jitter is not None:
            object.__setattr__(self, "jitter_delta", parse_duration(self.jitter, what=f"TriggerCron {self.cron!r} jitter"))


@dataclass(frozen=True)
class Cancel:
    """Cancel a run when ``event`` arrives (newer than the trigger, matching ``match``/``if_exp``)."""

    event: str
    match: str | None = None
    if_exp: str | None = None
    timeout: Duration | None = None
    compiled: Expression | None = field(default=None, init=False, repr=False, compare=False)
    timeout_delta: timedelta | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_event_name(self.event, what="Cancel event", allow_system=True)
        if self.match is not None:
            validate_match_field(self.match, what=f"Cancel({self.event!r}) match")
        if self.if_exp is not None:
            object.__setattr__(self, "compiled", Expression(self.if_exp, what=f"Cancel({self.event!r}) if_exp"))
        if self.timeout is not None:
            object.__setattr__(self, "timeout_delta", parse_duration(self.timeout, what=f"Cancel({self.event!r}) timeout"))


@dataclass(frozen=True)
class Timeouts:
    """Cancel runs that waited longer than ``start`` to start, or run longer than ``finish``."""

    start: Duration | None = None
    finish: Duration | None = None
    start_delta: timedelta | None = field(default=None, init=False, repr=False, compare=False)
    finish_delta: timedelta | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.start is None and self.finish is None:
            raise WorkflowDefinitionError("Timeouts: give start, finish or both")
        if self.start is not None:
            object.__setattr__(self, "start_delta", parse_duration(self.start, what="Timeouts start"))
        if self.finish is not None:
            object.__setattr__(self, "finish_delta", parse_duration(self.finish, what="Timeouts finish"))


_MATCH_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def validate_match_field(match: object, *, what: str) -> str:
    """``match="data.user_id"``: a dotted path into the event, compared for equality."""
    if not isinstance(match, str) or not _MATCH_FIELD.match(match):
        raise WorkflowDefinitionError(
            f"{what} must be a dotted field path such as \"data.user_id\", got {match!r}"
        )
    return match


Trigger = TriggerEvent | TriggerCron | str


def _normalize_triggers(trigger: Trigger | Iterable[Trigger] | None, function_id: str) -> tuple:
    if trigger is None:
        return ()
    single = isinstance(trigger, (str, TriggerEvent, TriggerCron))
    if not single and not isinstance(trigger, (list, tuple)):
        raise WorkflowDefinitionError(
            f"function {function_id!r}: a trigger must be an event name, a wf.TriggerEvent, "
            f"a wf.TriggerCron or a list of them, got {trigger!r}"
        )
    items = [trigger] if single else list(trigger)  # type: ignore[arg-type]
    if len(items) > MAX_TRIGGERS:
        raise WorkflowDefinitionError(
            f"function {function_id!r}: at most {MAX_TRIGGERS} triggers, got {len(items)}"
        )
    result = []
    for item in items:
        if isinstance(item, str):
            item = TriggerEvent(event=item)
        if not isinstance(item, (TriggerEvent, TriggerCron)):
            raise WorkflowDefinitionError(
                f"function {function_id!r}: a trigger must be an event name, a wf.TriggerEvent, "
                f"a wf.TriggerCron or a list of them, got {item!r}"
            )
        result.append(item)
    return tuple(result)


class Function:
    """A registered workflow function. Calling it calls the handler directly."""

    def __init__(
        self,
        handler: Handler,
        *,
        id: str,
        name: str | None,
        triggers: tuple,
        retries: int,
        cancel: tuple[Cancel, ...] = (),
        timeouts: Timeouts | None = None,
        on_failure: Function | None = None,
        flow: FlowControl | None = None,
    ) -> None:
        self.handler = handler
        self.id = id
        self.name = name or id
        self.triggers = triggers
        self.retries = retries
        self.cancel = cancel
        self.timeouts = timeouts
        self.on_failure = on_failure
        self.flow = flow or FlowControl()
        self.__doc__ = handler.__doc__
        self.__wrapped__ = handler

    @property
    def cron_triggers(self) -> tuple[TriggerCron, ...]:
        return tuple(t for t in self.triggers if isinstance(t, TriggerCron))

    @property
    def event_triggers(self) -> tuple[TriggerEvent, ...]:
        return tuple(t for t in self.triggers if isinstance(t, TriggerEvent))

    def __call__(self, ctx: Context) -> Any:
        return self.handler(ctx)

    def __repr__(self) -> str:
        return f"<Function {self.id!r}>"


def function(
    *,
    id: str,
    name: str | None = None,
    trigger: Trigger | Iterable[Trigger] | None = None,
    retries: int = DEFAULT_RETRIES,
    on_failure: Handler | None = None,
    cancel: Cancel | Iterable[Cancel] | None = None,
    timeouts: Timeouts | None = None,
    concurrency: int | Concurrency | list[int | Concurrency] | None = None,
    throttle: Throttle | None = None,
    rate_limit: RateLimit | None = None,
    debounce: Debounce | None = None,
    batch_events: Batch | None = None,
    idempotency: str | None = None,
    priority: Priority | None = None,
    singleton: Singleton | None = None,
) -> Callable[[Handler], Function]:
    """Declare a workflow function. See docs/functions-and-steps.md and docs/flow-control.md."""
    if not isinstance(id, str) or not _FUNCTION_ID.match(id):
        raise WorkflowDefinitionError(
            f"function id {id!r} must be 1-200 characters of letters, digits and . _ : / -, "
            "starting with a letter or digit"
        )
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise WorkflowDefinitionError(
            f"function {id!r}: retries must be an integer from 0 to {MAX_RETRIES}, got {retries!r}"
        )
    triggers = _normalize_triggers(trigger, id)
    cancels = _normalize_cancel(cancel, id)
    if timeouts is not None and not isinstance(timeouts, Timeouts):
        raise WorkflowDefinitionError(f"function {id!r}: timeouts must be a wf.Timeouts, got {timeouts!r}")
    if on_failure is not None and not callable(on_failure):
        raise WorkflowDefinitionError(f"function {id!r}: on_failure must be a handler taking ctx")
    flow = build_flow_control(
        id, concurrency=concurrency, throttle=throttle, rate_limit=rate_limit, debounce=debounce,
        batch_events=batch_events, idempotency=idempotency, priority=priority, singleton=singleton,
        has_cancel=bool(cancels),
    )

    def decorate(handler: Handler) -> Function:
        if not callable(handler):
            raise WorkflowDefinitionError(f"function {id!r}: the handler must be callable")
        failure_fn = None
        if on_failure is not None:
            # Like Inngest: the failure handler is a function of its own, triggered by
            # workflows/function.failed events of this function.
            failure_fn = Function(
                on_failure,
                id=f"{id}-failure",
                name=f"{name or id} (on_failure)",
                triggers=(TriggerEvent("workflows/function.failed", expression=f"event.data.function_id == {id!r}"),),
                retries=retries,
            )
        fn = Function(
            handler, id=id, name=name, triggers=triggers, retries=retries,
            cancel=cancels, timeouts=timeouts, on_failure=failure_fn, flow=flow,
        )
        registry.register(fn)
        if failure_fn is not None:
            registry.register(failure_fn)
        return fn

    return decorate


def _normalize_cancel(cancel: object, function_id: str) -> tuple[Cancel, ...]:
    if cancel is None:
        return ()
    items = [cancel] if isinstance(cancel, Cancel) else list(cancel)  # type: ignore[call-overload]
    for item in items:
        if not isinstance(item, Cancel):
            raise WorkflowDefinitionError(
                f"function {function_id!r}: cancel takes wf.Cancel(...) rules, got {item!r}"
            )
    return tuple(items)


class Registry:
    """Every function defined in the project, by id and by triggering event name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._functions: dict[str, Function] = {}
        self._by_event: dict[str, list[tuple[Function, TriggerEvent]]] = {}

    def register(self, fn: Function) -> None:
        with self._lock:
            existing = self._functions.get(fn.id)
            if existing is not None and not _same_definition(existing, fn):
                raise WorkflowDefinitionError(
                    f"duplicate function id {fn.id!r}: defined by {_where(existing)} and {_where(fn)}"
                )
            self._functions[fn.id] = fn
            self._reindex()

    def unregister(self, function_id: str) -> None:
        with self._lock:
            self._functions.pop(function_id, None)
            self._reindex()

    def _reindex(self) -> None:
        by_event: dict[str, list[tuple[Function, TriggerEvent]]] = {}
        for fn in self._functions.values():
            for trig in fn.event_triggers:
                by_event.setdefault(trig.event, []).append((fn, trig))
        self._by_event = by_event

    def get(self, function_id: str) -> Function:
        try:
            return self._functions[function_id]
        except KeyError:
            pass
        resolved = _resolve_on_demand(function_id)
        if resolved is not None:
            return resolved
        raise UnknownFunctionError(
            f"no workflow function with id {function_id!r} is registered "
            "(is its app installed, and is it defined in a workflows.py module?)"
        )

    def all(self) -> list[Function]:
        return list(self._functions.values())

    def listened(self, event_name: str) -> bool:
        """Whether any function triggers on ``event_name`` (system events are only stored then)."""
        return event_name in self._by_event

    def triggered_by(self, event_name: str) -> list[tuple[Function, TriggerEvent]]:
        return self._by_event.get(event_name, [])


def _where(fn: Function) -> str:
    return f"{fn.handler.__module__}.{fn.handler.__qualname__}"


def _same_definition(a: Function, b: Function) -> bool:
    # The same module imported again (e.g. by a test runner) redefines, it does not duplicate.
    return _where(a) == _where(b) and a.id == b.id


registry = Registry()

# Extension point: functions defined on demand, not in a workflows.py module. An id prefix ->
# the dotted path of ``resolve(function_id) -> Function | None``, which registers the function
# it returns (or raises UnknownFunctionError saying why it cannot). ``registry.get`` asks it for
# an unknown id with that prefix, so a worker can run such a function before anything in its
# process imported it. "task:" ids are django.tasks tasks (django_workflows.tasks).
ON_DEMAND: dict[str, str] = {"task:": "django_workflows.tasks.resolve_function"}


def _resolve_on_demand(function_id: str) -> Function | None:
    for prefix, path in ON_DEMAND.items():
        if function_id.startswith(prefix):
            from django.utils.module_loading import import_string

            try:
                resolver = import_string(path)
            except ImportError as exc:
                raise UnknownFunctionError(f"function {function_id!r}: cannot import {path} ({exc})") from None
            return resolver(function_id)
    return None


def resolve(fn_or_id: Function | str) -> Function:
    return fn_or_id if isinstance(fn_or_id, Function) else registry.get(fn_or_id)
