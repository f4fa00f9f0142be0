"""JSON text that reads back the same from SQLite and from PostgreSQL's jsonb.

jsonb keeps numbers as decimals: ``1e+20`` comes back as the integer
100000000000000000000, but ``100000000000000000000.0`` comes back as a float. So
floats are written in positional notation, always with a decimal point.
"""

from __future__ import annotations

import decimal
import json
import math
from typing import Any

_string = json.JSONEncoder(ensure_ascii=True).encode


def dumps(value: Any) -> str:
    """Like ``json.dumps(value, allow_nan=False)``, with floats that survive jsonb."""
    parts: list[str] = []
    _encode(value, parts)
    return "".join(parts)


def _encode(value: Any, out: list[str]) -> None:
    if value is None or value is True or value is False or isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, float):
        out.append(_float(value))
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, dict):
        out.append("{")
        for index, (key, item) in enumerate(value.items()):
            if index:
                out.append(",")
            out.append(_string(_key(key)))
            out.append(":")
            _encode(item, out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _float(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"Out of range float values are not JSON compliant: {value!r}")
    text = float.__repr__(value)
    if "e" in text or "E" in text:
        text = format(decimal.Decimal(text), "f")
    return text if "." in text else text + ".0"


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if key is True or key is False or key is None:
        return json.dumps(key)
    if isinstance(key, float):
        return _float(key)
    if isinstance(key, int):
        return int.__repr__(key)
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


class ExactJSONEncoder(json.JSONEncoder):
    """For ``JSONField(encoder=...)``: Django calls ``json.dumps(value, cls=...)``."""

    def encode(self, o: Any) -> str:
        return dumps(o)
