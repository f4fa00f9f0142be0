"""CEL expressions (``key``, ``expression``, ``if_exp`` ...) compiled with cel-python.

cel-python refuses to compare an int with a double (``100 >= 99.5`` is an error), but
Inngest's CEL (cel-go, with heterogeneous equality) compares numbers as numbers. JSON
does not keep the difference either (a sender's ``1.0`` may arrive as ``1``), so the
comparison, membership and arithmetic operators are replaced here: numbers compare by
value, other kinds are simply unequal. Evaluation failures are logged as (throttled)
warnings, as a filter that silently never matches is hard to diagnose.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from functools import wraps
from typing import Any

import celpy
from celpy import celtypes
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError, base_functions

from .errors import WorkflowDefinitionError

logger = logging.getLogger(__name__)
_env = celpy.Environment()

WARNING_INTERVAL = 60.0  # seconds between two warnings for one (where, source)
WARNING_KEYS = 1_000  # (where, source) pairs whose throttle state is kept


# -- operators --------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    # Plain floats count: cel-python's double arithmetic returns them. BoolType is an int
    # subclass, but true is never the number 1.
    return isinstance(value, (int, float)) and not isinstance(value, (bool, celtypes.BoolType))


def _plain_number(value: Any) -> int | float:
    # Python compares int with float exactly (2**53 + 1 != 2.0**53), as cel-go does.
    return float(value) if isinstance(value, float) else int(value)


def _kind(value: Any) -> object:
    """What CEL compares with what: a double and an int are both numbers."""
    if _is_number(value):
        return "number"
    if isinstance(value, celtypes.BoolType):  # an int subclass, not a bool one
        return bool
    for kind in (bool, str, bytes, list, dict):
        if isinstance(value, kind):
            return kind
    return type(value)


_JSON_KINDS = {"number", bool, str, bytes, list, dict}


def _cel_operator(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Errors pass through; a Python exception becomes a CEL error value, so that
    ``||`` and ``&&`` can still absorb it as CEL says."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(function)
        def operator(left: Any, right: Any) -> Any:
            for value in (left, right):
                if isinstance(value, CELEvalError):
                    return value
            try:
                return function(left, right)
            except Exception as exc:  # operators are pure: any failure is the expression's
                return CELEvalError(
                    f"{name} applied to ({_type_name(left)}, {_type_name(right)}): {exc}", exc.__class__, exc.args
                )

        return operator

    return decorate


def _type_name(value: Any) -> str:
    return type(value).__name__


def equal(left: Any, right: Any) -> bool:
    """CEL heterogeneous equality: numbers by value, containers element-wise, any other
    mix of kinds unequal (never an error)."""
    if _is_number(left) and _is_number(right):
        return _plain_number(left) == _plain_number(right)
    if _kind(left) != _kind(right):
        return False
    if isinstance(left, list):
        return len(left) == len(right) and all(equal(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, dict):
        return _maps_equal(left, right)
    try:
        return bool(left == right)
    except TypeError:
        return False


def _maps_equal(left: dict, right: dict) -> bool:
    if len(left) != len(right):
        return False
    for key, value in left.items():
        found, other = _map_get(right, key)
        if not found or not equal(value, other):
            return False
    return True


def _map_get(mapping: dict, key: Any) -> tuple[bool, Any]:
    # JSON maps have string keys: a dict lookup then finds them; a numeric key (``{1: 'x'}``)
    # may equal a key of another numeric type, found by scanning.
    if isinstance(key, str) and dict.__contains__(mapping, key):
        return True, dict.__getitem__(mapping, key)
    for candidate, value in mapping.items():
        if not isinstance(candidate, str) and equal(candidate, key):
            return True, value
    return False, None


def _ordering(name: str, compare: Callable[[Any, Any], bool]) -> Callable[[Any, Any], Any]:
    base = base_functions[name]

    @_cel_operator(name)
    def ordered(left: Any, right: Any) -> Any:
        if _is_number(left) and _is_number(right):
            return celtypes.BoolType(compare(_plain_number(left), _plain_number(right)))
        if _kind(left) != _kind(right):
            # cel-python would order a bool against an int (both Python ints): CEL does not.
            raise TypeError("no such overload")
        return base(left, right)

    return ordered


def _arithmetic(name: str) -> Callable[[Any, Any], Any]:
    base = base_functions[name]

    @_cel_operator(name)
    def arithmetic(left: Any, right: Any) -> Any:
        if _is_number(left) and _is_number(right) and (isinstance(left, float) or isinstance(right, float)):
            # int with double gives a double; int with uint stays cel-python's.
            left, right = celtypes.DoubleType(left), celtypes.DoubleType(right)
        elif {_kind(left), _kind(right)} <= _JSON_KINDS and _kind(left) != _kind(right):
            # Say so plainly, rather than cel-python's message about NotImplemented; other
            # kinds (a timestamp plus a duration) are cel-python's to judge.
            raise TypeError("no such overload")
        result = base(left, right)
        # cel-python's double arithmetic returns plain floats, which its own operators refuse.
        return celtypes.DoubleType(result) if type(result) is float else result

    return arithmetic


@_cel_operator("_==_")
def _eq(left: Any, right: Any) -> celtypes.BoolType:
    return celtypes.BoolType(equal(left, right))


@_cel_operator("_!=_")
def _ne(left: Any, right: Any) -> celtypes.BoolType:
    return celtypes.BoolType(not equal(left, right))


@_cel_operator("_in_")
def _in(item: Any, container: Any) -> Any:
    if isinstance(container, dict):
        return celtypes.BoolType(_map_get(container, item)[0])
    if isinstance(container, list):
        return celtypes.BoolType(any(equal(item, element) for element in container))
    return base_functions["_in_"](item, container)


OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "_==_": _eq,
    "_!=_": _ne,
    "_<_": _ordering("_<_", lambda a, b: a < b),
    "_<=_": _ordering("_<=_", lambda a, b: a <= b),
    "_>_": _ordering("_>_", lambda a, b: a > b),
    "_>=_": _ordering("_>=_", lambda a, b: a >= b),
    "_in_": _in,
    "_+_": _arithmetic("_+_"),
    "_-_": _arithmetic("_-_"),
    "_*_": _arithmetic("_*_"),
    "_/_": _arithmetic("_/_"),
    "_%_": _arithmetic("_%_"),
}


# -- warnings ---------------------------------------------------------------------------------


class WarningThrottle:
    """At most one warning per ``interval`` seconds per key; the first one at once.

    Keeps the ``max_keys`` most recently failing keys, so a stream of distinct
    expressions cannot grow it without bound.
    """

    def __init__(
        self,
        *,
        interval: float = WARNING_INTERVAL,
        max_keys: int = WARNING_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self.clock = clock
        self._lock = threading.Lock()
        self._state: OrderedDict[Hashable, list] = OrderedDict()  # key -> [logged_at, suppressed]

    def admit(self, key: Hashable) -> int | None:
        """None to stay silent; otherwise log now, mentioning this many suppressed failures."""
        now = self.clock()
        with self._lock:
            state = self._state.get(key)
            if state is None:
                self._state[key] = [now, 0]
                if len(self._state) > self.max_keys:
                    self._state.popitem(last=False)
                return 0
            self._state.move_to_end(key)
            if now - state[0] < self.interval:
                state[1] += 1
                return None
            suppressed = state[1]
            state[:] = [now, 0]
            return suppressed

    def __len__(self) -> int:
        return len(self._state)


_throttle = WarningThrottle()


def _describe(error: BaseException) -> str:
    if isinstance(error, CELEvalError) and error.args:
        text = str(error.args[0])
        detail = error.args[2] if len(error.args) > 2 else None
        if isinstance(detail, tuple) and detail:
            extra = "; ".join(str(part) for part in detail)
            text += "" if extra in text else f" ({extra})"
        return text
    return f"{type(error).__name__}: {error}"


# -- expressions ------------------------------------------------------------------------------


class Expression:
    """A compiled CEL expression; compile errors are raised at definition time."""

    def __init__(self, source: str, *, what: str = "expression") -> None:
        if not isinstance(source, str) or not source.strip():
            raise WorkflowDefinitionError(f"{what} must be a non-empty CEL string, got {source!r}")
        self.source = source
        try:
            self._program = _env.program(_env.compile(source), functions=OPERATORS)
        except CELParseError as exc:
            raise WorkflowDefinitionError(f"{what} {source!r} does not compile: {exc}") from None
        except Exception as exc:  # cel-python raises a few other kinds for bad programs
            raise WorkflowDefinitionError(f"{what} {source!r} does not compile: {exc}") from None

    def evaluate(self, variables: dict, *, where: str = "", event_id: object = None) -> Any:
        """Evaluate over JSON-like variables (``{"event": ..., "async": ...}``); returns a
        plain Python value, or ``None`` when evaluation fails (a missing field, a type
        error ...), which is logged as a throttled warning naming ``where``."""
        ok, result = self._evaluate(variables)
        if not ok:
            self._warn(where, event_id, f"could not be evaluated: {result}")
            return None
        return result

    def matches(self, variables: dict, *, where: str = "", event_id: object = None) -> bool:
        """True only if the expression evaluates to ``true``; failures count as no match."""
        ok, result = self._evaluate(variables)
        if not ok:
            self._warn(where, event_id, f"could not be evaluated: {result}; counted as no match")
            return False
        if not isinstance(result, bool):
            self._warn(where, event_id, f"evaluated to {result!r}, not a boolean; counted as no match")
            return False
        return result

    def _evaluate(self, variables: dict) -> tuple[bool, Any]:
        """(True, value) or (False, a description of the error)."""
        try:
            activation = {name: celpy.json_to_cel(value) for name, value in variables.items()}
            result = self._program.evaluate(activation)
        except Exception as exc:  # CELEvalError is raised; RecursionError from absurd nesting ...
            return False, _describe(exc)
        if isinstance(result, CELEvalError):
            return False, _describe(result)
        return True, _to_python(result)

    def _warn(self, where: str, event_id: object, problem: str) -> None:
        suppressed = _throttle.admit((where, self.source))
        if suppressed is None:
            return
        note = f" ({suppressed} similar failures suppressed)" if suppressed else ""
        logger.warning(
            "%s: CEL expression %r %s (event %s)%s", where or "expression", self.source, problem, event_id, note
        )

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


def _to_python(value: Any) -> Any:
    if isinstance(value, celtypes.BoolType):
        return bool(value)
    if isinstance(value, (celtypes.IntType, celtypes.UintType)):
        return int(value)
    if isinstance(value, celtypes.DoubleType):
        return float(value)
    if isinstance(value, celtypes.StringType):
        return str(value)
    if isinstance(value, celtypes.MapType):
        return {_to_python(k): _to_python(v) for k, v in value.items()}
    if isinstance(value, celtypes.ListType):
        return [_to_python(v) for v in value]
    return value


# -- canonical match keys ---------------------------------------------------------------------


def canonical_json(value: Any) -> str:
    """The JSON text that indexes ``match="data.user_id"`` waiters.

    Numbers are normalized so that equal numbers give equal text (``1``, ``1.0``), as the
    ``==`` they stand for compares numbers by value; booleans stay apart from 1 and 0.
    """
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"))


def _canonical(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else value
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    return value
