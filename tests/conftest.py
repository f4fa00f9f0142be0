"""Shared fixtures. The database is SQLite unless DATABASE_URL points at PostgreSQL."""

from __future__ import annotations

import pytest
from django.conf import settings

from django_workflows.engine import clock
from django_workflows.functions import registry

POSTGRES_HINT = (
    "needs PostgreSQL: run `bin/test` (runs SQLite and PostgreSQL), or "
    "DATABASE_URL=postgres://postgres@127.0.0.1:5432/django_workflows pytest"
)


def on_postgres() -> bool:
    return settings.DATABASES["default"]["ENGINE"].endswith("postgresql")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if on_postgres():
        return
    skip = pytest.mark.skip(reason=POSTGRES_HINT)
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config: pytest.Config) -> str:
    db = settings.DATABASES["default"]
    return f"django-workflows tests on {db['ENGINE'].rsplit('.', 1)[-1]} ({db.get('HOST') or db['NAME']})"


@pytest.fixture(autouse=True)
def _clean_engine_state():
    """Each test starts at real time with only the project's own functions registered."""
    clock.reset()
    saved = dict(registry._functions)
    yield
    clock.reset()
    registry._functions = saved
    registry._reindex()
