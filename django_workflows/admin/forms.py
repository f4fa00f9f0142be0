"""Form pieces the admin's pages share."""

from __future__ import annotations

import json
from typing import Any

from django import forms


def json_data(text: str) -> Any:
    """A form's JSON ``data`` field: empty is ``{}``; bad JSON is a form error saying where."""
    if not text.strip():
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise forms.ValidationError(f"data is not valid JSON: {exc}") from None
