"""``@wf.function``: definitions, triggers and the registry of a project's functions."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import UnknownFunctionError, WorkflowDefinitionError
from .expressions import Expression

if TYPE_CHECKING:
    from .context import Context

Handler = Callable[["Context"], Any]

MAX_TRIGGERS = 10
MAX_RETRIES = 20
DEFAULT_RETRIES = 4
RESERVED_PREFIX = "workflows/"
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
        if self.expression is not None:
            compiled = Expression(self.expression, what=f"TriggerEvent({self.event!r}) expression")
            object.__setattr__(self, "compiled", compiled)

    def matches(self, payload: dict) -> bool:
        return self.compiled is None or self.compiled.matches(event=payload)


Trigger = TriggerEvent | str


def _normalize_triggers(trigger: Trigger | Iterable[Trigger] | None, function_id: str) -> tuple:
    if trigger is None:
        return ()
    items = [trigger] if isinstance(trigger, (str, TriggerEvent)) else list(trigger)  # type: ignore[arg-type]
    if len(items) > MAX_TRIGGERS:
        raise WorkflowDefinitionError(
            f"function {function_id!r}: at most {MAX_TRIGGERS} triggers, got {len(items)}"
        )
    result = []
    for item in items:
        if isinstance(item, str):
            item = TriggerEvent(event=item)
        if not isinstance(item, TriggerEvent):
            raise WorkflowDefinitionError(
                f"function {function_id!r}: a trigger must be an event name, a wf.TriggerEvent "
                f"or a list of them, got {item!r}"
            )
        result.append(item)
    return tuple(result)


class Function:
    """A registered workflow function. Calling it calls the handler directly."""

    def __init__(
        self, handler: Handler, *, id: str, name: str | None, triggers: tuple, retries: int
    ) -> None:
        self.handler = handler
        self.id = id
        self.name = name or id
        self.triggers = triggers
        self.retries = retries
        self.__doc__ = handler.__doc__
        self.__wrapped__ = handler

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
) -> Callable[[Handler], Function]:
    """Declare a workflow function. See docs/functions-and-steps.md."""
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

    def decorate(handler: Handler) -> Function:
        if not callable(handler):
            raise WorkflowDefinitionError(f"function {id!r}: the handler must be callable")
        fn = Function(handler, id=id, name=name, triggers=triggers, retries=retries)
        registry.register(fn)
        return fn

    return decorate


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
            raise UnknownFunctionError(
                f"no workflow function with id {function_id!r} is registered "
                "(is its app installed, and is it defined in a workflows.py module?)"
            ) from None

    def all(self) -> list[Function]:
        return list(self._functions.values())

    def triggered_by(self, event_name: str) -> list[tuple[Function, TriggerEvent]]:
        return self._by_event.get(event_name, [])


def _where(fn: Function) -> str:
    return f"{fn.handler.__module__}.{fn.handler.__qualname__}"


def _same_definition(a: Function, b: Function) -> bool:
    # The same module imported again (e.g. by a test runner) redefines, it does not duplicate.
    return _where(a) == _where(b)


registry = Registry()


def resolve(fn_or_id: Function | str) -> Function:
    return fn_or_id if isinstance(fn_or_id, Function) else registry.get(fn_or_id)
