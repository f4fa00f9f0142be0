"""CEL expressions (``key``, ``expression``, ``if_exp`` ...) compiled with cel-python."""

from __future__ import annotations

import logging
from typing import Any

import celpy
from celpy.celparser import CELParseError

from .errors import WorkflowDefinitionError

logger = logging.getLogger(__name__)
_env = celpy.Environment()


class Expression:
    """A compiled CEL expression; compile errors are raised at definition time."""

    def __init__(self, source: str, *, what: str = "expression") -> None:
        if not isinstance(source, str) or not source.strip():
            raise WorkflowDefinitionError(f"{what} must be a non-empty CEL string, got {source!r}")
        self.source = source
        try:
            self._program = _env.program(_env.compile(source))
        except CELParseError as exc:
            raise WorkflowDefinitionError(f"{what} {source!r} does not compile: {exc}") from None
        except Exception as exc:  # cel-python raises a few other kinds for bad programs
            raise WorkflowDefinitionError(f"{what} {source!r} does not compile: {exc}") from None

    def evaluate(self, **variables: Any) -> Any:
        """Evaluate over JSON-like variables; returns a plain Python value.

        A missing field or a type error evaluates to ``None`` (logged at debug), so a
        filter that cannot apply simply does not match.
        """
        activation = {name: celpy.json_to_cel(value) for name, value in variables.items()}
        try:
            result = self._program.evaluate(activation)
        except Exception as exc:
            logger.debug("expression %r failed to evaluate: %s", self.source, exc)
            return None
        if isinstance(result, celpy.evaluation.CELEvalError):
            logger.debug("expression %r evaluated to an error: %s", self.source, result)
            return None
        return _to_python(result)

    def matches(self, **variables: Any) -> bool:
        return self.evaluate(**variables) is True

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


def _to_python(value: Any) -> Any:
    if isinstance(value, celpy.celtypes.BoolType):
        return bool(value)
    if isinstance(value, (celpy.celtypes.IntType, celpy.celtypes.UintType)):
        return int(value)
    if isinstance(value, celpy.celtypes.DoubleType):
        return float(value)
    if isinstance(value, celpy.celtypes.StringType):
        return str(value)
    if isinstance(value, celpy.celtypes.MapType):
        return {_to_python(k): _to_python(v) for k, v in value.items()}
    if isinstance(value, celpy.celtypes.ListType):
        return [_to_python(v) for v in value]
    if value is None or isinstance(value, celpy.celtypes.NullType if hasattr(celpy.celtypes, "NullType") else type(None)):
        return None
    return value
