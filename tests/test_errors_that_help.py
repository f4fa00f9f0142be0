"""Errors that say how to fix them: missing tables, events nothing listens to, step
keyword arguments, non-JSON data named by its path."""

from __future__ import annotations

import datetime
import logging

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError

import django_workflows as wf
from django_workflows import checks, events
from django_workflows.errors import NotMigratedError
from django_workflows.models import Event, Run
from django_workflows.testing import drain

pytestmark = pytest.mark.django_db


def test_step_run_passes_keyword_arguments():
    @wf.function(id="help-kwargs", trigger="help.kwargs")
    def fn(ctx):
        return ctx.step.run("add", lambda a, b=0: a + b, 1, b=2)

    wf.send("help.kwargs")
    drain()
    assert Run.objects.get(function_id="help-kwargs").output == 3


def test_non_json_data_names_the_key_path():
    with pytest.raises(wf.EventValidationError) as error:
        wf.send("help.data", data={"user": {"tags": ["a", {"created_at": datetime.date(2026, 1, 1)}]}})
    assert "data.user.tags[1].created_at is date datetime.date(2026, 1, 1)" in str(error.value)
    assert not Event.objects.exists()


def test_data_none_means_no_data():
    wf.send("help.none", data=None)
    assert Event.objects.get(name="help.none").data == {}


def test_an_event_nothing_listens_to_is_flagged_and_a_near_name_suggested(settings, caplog):
    @wf.function(id="help-welcome", trigger="accounts/user.signed_up")
    def welcome(ctx):
        return None

    settings.DEBUG = True
    caplog.set_level(logging.WARNING, logger="django_workflows")
    wf.send("accounts/user.signedup")  # the typo
    wf.send("accounts/user.signed_up")
    drain()
    typo = Event.objects.get(name="accounts/user.signedup")
    assert typo.unmatched and not Event.objects.get(name="accounts/user.signed_up").unmatched
    assert any(
        "event 'accounts/user.signedup' started no run and matched no wait or cancel rule; "
        "did you mean 'accounts/user.signed_up'" in r.getMessage()
        for r in caplog.records
    )


def test_unmatched_events_are_counted_quietly_in_production(settings, caplog):
    settings.DEBUG = False
    caplog.set_level(logging.WARNING, logger="django_workflows")
    wf.send("nobody.listens")
    drain()
    assert Event.objects.get(name="nobody.listens").unmatched
    assert not [r for r in caplog.records if "started no run" in r.getMessage()]


def test_send_without_the_tables_says_run_migrate(monkeypatch):
    def missing(*args, **kwargs):
        raise DatabaseError('relation "django_workflows_event" does not exist')

    monkeypatch.setattr(events, "_insert_rows", missing)
    with pytest.raises(NotMigratedError, match=r"run `python manage.py migrate`"):
        wf.send("help.tables")


def test_runworkers_and_check_say_run_migrate(monkeypatch):
    assert checks.unapplied_migrations("default") == []  # the test database is migrated
    assert checks.check_migrated(databases=["default"]) == []
    monkeypatch.setattr(checks, "unapplied_migrations", lambda alias: ["0012_event_unmatched"])
    with pytest.raises(CommandError, match=r"1 migration\(s\) not applied\): run `python manage.py migrate`"):
        call_command("runworkers", "--burst")
    (problem,) = checks.check_migrated(databases=["default"])
    assert problem.id == "django_workflows.E005" and "migrate" in problem.hint
