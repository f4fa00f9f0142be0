"""The engine's hot statements are prepared once per connection and keep one plan on
PostgreSQL (engine/queries.py); PREPARED_STATEMENTS=False sends them as plain text."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

import django_workflows as wf
from django_workflows.engine import queue
from django_workflows.testing import drain

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def fresh_connection():
    connection.close()  # a connection this test's settings apply to from its start
    yield
    connection.close()


def prepared_statements() -> list[tuple[str, int, int]]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")
        return cursor.fetchall()


def claim_and_run(count: int) -> None:
    @wf.function(id="prep-fn", trigger="prep.go")
    def fn(ctx):
        return ctx.step.run("one", lambda: 1)

    for _ in range(count):
        wf.send("prep.go")
        assert drain() >= 2  # the event, then its run


def test_the_claim_is_prepared_once_and_keeps_one_plan(fresh_connection):
    claim_and_run(6)
    claims = [row for row in prepared_statements() if "WITH RECURSIVE lanes" in row[0]]
    assert len(claims) == 1, prepared_statements()
    _, generic, custom = claims[0]
    assert custom == 0 and generic >= 6
    with connection.cursor() as cursor:
        cursor.execute("SHOW plan_cache_mode")
        assert cursor.fetchone()[0] == "force_generic_plan"
        cursor.execute("SHOW jit")  # a generic plan's cost would have it compile every claim
        assert cursor.fetchone()[0] == "off"


def test_statements_show_in_djangos_query_log_while_it_logs(fresh_connection):
    wf.send("nothing.listens")
    with CaptureQueriesContext(connection) as captured:
        queue.claim("w", 1)
    assert any("FOR UPDATE SKIP LOCKED" in q["sql"] for q in captured.captured_queries)


def test_without_prepared_statements_nothing_is_prepared(fresh_connection, settings):
    settings.DJANGO_WORKFLOWS = {"PREPARED_STATEMENTS": False}
    claim_and_run(2)
    assert prepared_statements() == []
    with connection.cursor() as cursor:
        cursor.execute("SHOW plan_cache_mode")
        assert cursor.fetchone()[0] == "auto"
