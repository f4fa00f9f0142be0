"""pytest plugin (entry point ``pytest11``): every test starts and ends at real time.

``drain(advance_time=True)`` moves the engine's clock forward and leaves it there, so
without this a test that jumps three days ahead would make every later test run three
days in the future. pytest loads this module before Django is configured, so nothing
here imports models or reads settings at import time.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _django_workflows_reset_clock() -> Iterator[None]:
    """Put the engine's clock back to real time before and after each test."""
    from django_workflows.engine import clock  # imported late: see the module docstring

    clock.reset()  # a session- or module-scoped fixture may have moved it
    yield
    clock.reset()
