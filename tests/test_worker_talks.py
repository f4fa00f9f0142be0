"""A worker that says what it does: its console output, the start banner, a warning per
failed step attempt, whole-run durations, and a two-stage Ctrl-C."""

from __future__ import annotations

import io
import json
import logging
import signal
import time

import pytest
from mp_support import EXEC_TABLE, SLOW_EVENT
from test_multiprocess import mp_tables, sql, wait_until, workers  # noqa: F401  (fixtures)

import django_workflows as wf
from django_workflows import logs
from django_workflows.management.commands.runworkers import banner
from django_workflows.models import QueueItem, Run
from django_workflows.testing import drain


@pytest.fixture
def fresh_logging(monkeypatch):
    """The django_workflows logger as a project without LOGGING has it: no handler
    anywhere. Call it in the test body: pytest adds its capture handlers per phase."""
    logger = logging.getLogger(logs.ROOT)

    def isolate() -> logging.Logger:
        monkeypatch.setattr(logger, "handlers", [])
        monkeypatch.setattr(logging.getLogger(), "handlers", [])
        monkeypatch.setattr(logger, "propagate", True)
        monkeypatch.setattr(logger, "level", logger.level)
        return logger

    return isolate


def test_runworkers_prints_when_the_project_configured_no_logging(fresh_logging):
    fresh_logging()
    out = io.StringIO()
    logs.configure(1, stream=out)
    logging.getLogger("django_workflows.worker").info("run started: x")
    logging.getLogger("django_workflows.worker").debug("not at verbosity 1")
    assert "INFO    django_workflows.worker: run started: x" in out.getvalue()
    assert "not at verbosity 1" not in out.getvalue()
    logs.configure(0, stream=out)  # --verbosity 0: warnings only
    logging.getLogger("django_workflows.worker").info("quiet now")
    assert "quiet now" not in out.getvalue()


def test_json_lines_for_log_pipelines(fresh_logging):
    fresh_logging()
    out = io.StringIO()
    logs.configure(1, "json", stream=out)
    logging.getLogger("django_workflows.steps").warning("step %r failed", "charge")
    entry = json.loads(out.getvalue().strip().splitlines()[-1])
    assert entry["level"] == "WARNING" and entry["logger"] == "django_workflows.steps"
    assert entry["message"] == "step 'charge' failed" and entry["time"].endswith("+00:00")


def test_a_project_logging_config_is_respected(fresh_logging):
    logger = fresh_logging()
    mine = logging.StreamHandler(io.StringIO())
    logger.addHandler(mine)
    logs.configure(2)
    assert logger.handlers == [mine], "runworkers adds no handler of its own then"
    assert logger.level == logging.DEBUG


@pytest.mark.django_db
def test_the_start_banner_names_the_database_and_the_functions(caplog):
    @wf.function(id="banner-welcome", trigger="user.signup")
    def welcome(ctx):
        return None

    @wf.function(id="banner-nightly", trigger=wf.TriggerCron("0 3 * * *"))
    def nightly(ctx):
        return None

    caplog.set_level(logging.INFO, logger="django_workflows")
    banner(processes=2, concurrency=8)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith(f"django-workflows {wf.__version__}: 2 processes x 8 threads, database 'default'")
    assert "  banner-welcome: event user.signup" in lines
    assert "  banner-nightly: cron 0 3 * * *" in lines


@pytest.mark.django_db
def test_every_failed_step_attempt_is_a_warning(caplog):
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionError("smtp refused")
        return "sent"

    @wf.function(id="talk-mail", trigger="talk.mail", retries=3)
    def mail(ctx):
        return ctx.step.run("send-email", flaky)

    caplog.set_level(logging.INFO, logger="django_workflows")
    wf.send("talk.mail")
    drain(advance_time=True)
    run = Run.objects.get(function_id="talk-mail")
    warnings = [r for r in caplog.records if r.name == "django_workflows.steps"]
    assert [r.levelno for r in warnings] == [logging.WARNING, logging.WARNING]
    first = warnings[0].getMessage()
    assert first.startswith(f"function talk-mail run {run.pk}: step 'send-email' failed (attempt 1 of 4): ")
    assert "ConnectionError: smtp refused; retrying at " in first
    assert "(attempt 2 of 4)" in warnings[1].getMessage()
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith("run completed: talk-mail")]
    # The run's whole duration (its retries' backoff included), not the last execution's.
    assert len(done) == 1 and "last execution" in done[0], done
    assert not done[0].startswith(f"run completed: talk-mail {run.pk} in 0"), "the whole run took minutes (backoff)"


@pytest.mark.postgres
@pytest.mark.slow
def test_ctrl_c_says_what_it_waits_for_and_a_second_one_stops_at_once(workers):  # noqa: F811
    (proc,) = workers.start(1, concurrency=1)
    workers.wait_ready(1)
    wf.send(SLOW_EVENT, data={"seconds": 30})
    run_id = None

    def step_running() -> bool:
        nonlocal run_id
        rows = sql(f"SELECT run_id FROM {EXEC_TABLE}")
        run_id = rows[0][0] if rows else None
        return run_id is not None

    wait_until(step_running, 20, "the slow step to start", workers)
    proc.send_signal(signal.SIGINT)
    log = workers.log_dir / "worker-0.log"
    wait_until(lambda: "press Ctrl-C again to stop now" in log.read_text(), 10, "the first Ctrl-C's message", workers)
    assert "SIGINT: waiting up to " in log.read_text()
    assert f"run {run_id}" in log.read_text()
    stopped_at = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(10)
    assert time.monotonic() - stopped_at < 5, "the second Ctrl-C stops at once"
    assert "SIGINT again: stopping now; 1 unfinished items released" in log.read_text()
    item = QueueItem.objects.get(run_id=run_id, kind="run")
    assert item.worker_id == "", "released: another worker takes it now, not when the lease lapses"
