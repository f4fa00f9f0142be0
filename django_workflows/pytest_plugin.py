"""pytest plugin (entry point ``pytest11``): every test starts and ends at real time, and
two fixtures: ``workflows_drain`` (run due work, time travel on) and ``workflows_send``
(send an event and run what it starts).

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


@pytest.fixture
def workflows_drain():
    """``drain`` with time travel: ``workflows_drain()`` runs every due job, sleeps and retry
    backoffs passing instantly, and returns how many ran (``drain(advance_time=True)``).
    Pass ``advance_time=False`` to run only what is due now."""
    from django_workflows.testing import drain

    def run(advance_time: bool = True, **kwargs: object) -> int:
        return drain(advance_time=advance_time, **kwargs)  # type: ignore[arg-type]

    return run


@pytest.fixture
def workflows_send(workflows_drain):
    """Send an event and run what it starts: ``workflows_send("user.signup", {"id": 1})``
    returns the runs it started (newest last), each finished or parked on a wait."""

    def send(name: str, data: dict | None = None, *, advance_time: bool = True, **kwargs: object) -> list:
        import django_workflows as wf
        from django_workflows.models import Run

        ids = wf.send(name, data=data, **kwargs)  # type: ignore[arg-type]
        workflows_drain(advance_time=advance_time)
        return list(Run.objects.filter(event_id__in=ids).order_by("queued_at"))

    return send
