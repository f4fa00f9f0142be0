"""The worker: in-process Worker threads, runworkers --burst, log lines, claiming with
SKIP LOCKED, leases and fencing, graceful stop."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from django.core.management import call_command
from django.db import connection

import django_workflows as wf
from django_workflows import conf
from django_workflows.engine import clock, queue
from django_workflows.engine.executor import LeaseLost, Outcome
from django_workflows.engine.records import StepRecord
from django_workflows.engine.store import DatabaseCheckpointer, process_run
from django_workflows.engine.worker import Worker
from django_workflows.models import Event, QueueItem, Run, Step
from django_workflows.testing import drain

ROOT = Path(__file__).resolve().parent.parent
JOIN_TIMEOUT = 30

calls: Counter = Counter()


@pytest.fixture(autouse=True)
def _reset():
    calls.clear()


def on_postgres():
    return connection.vendor == "postgresql"


def counted(name):
    calls[name] += 1
    return name


def _join_engine_threads(timeout=5.0):
    """Wait for a stopped worker's listener to close its connection."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread.name == "wf-listener":
            thread.join(max(0.0, deadline - time.monotonic()))


@pytest.fixture
def threads_db(transactional_db, tmp_path):
    """On SQLite, move the test database to a file while worker threads use it.

    The in-memory test database is a shared-cache database: there, connections of other
    threads get "database table is locked" at once instead of waiting for the lock (the
    busy timeout does not apply to shared-cache table locks). A file database behaves as
    in production. The in-memory database is kept open and put back afterwards.
    """
    if connection.vendor != "sqlite":
        yield
        return
    connection.ensure_connection()
    path = tmp_path / "threads.sqlite3"
    target = sqlite3.connect(path)
    connection.connection.backup(target)  # the migrated, empty schema
    target.close()
    settings_dict = connection.settings_dict
    memory_name, memory_connection = settings_dict["NAME"], connection.connection
    connection.connection = None  # not closed: that would drop the in-memory database
    settings_dict["NAME"] = str(path)
    try:
        yield
    finally:
        connection.close()  # the file connection
        settings_dict["NAME"] = memory_name
        connection.connection = memory_connection


@contextmanager
def worker_in_thread(**kwargs):
    worker = Worker(**kwargs)
    thread = threading.Thread(target=worker.run, name="test-worker", daemon=True)
    thread.start()
    try:
        yield worker, thread
    finally:
        worker.stop()
        thread.join(JOIN_TIMEOUT)
        _join_engine_threads()


def run_burst(concurrency=2):
    """Worker(burst=True).run() in a thread; returns the worker once run() has returned."""
    with worker_in_thread(concurrency=concurrency, burst=True) as (worker, thread):
        thread.join(JOIN_TIMEOUT)
        assert not thread.is_alive(), "Worker(burst=True).run() did not return"
    return worker


# -- Worker in a thread ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_burst_worker_completes_the_runs_of_sent_events_and_returns(threads_db):
    @wf.function(id="wk-steps", trigger="wk.go")
    def fn(ctx):
        a = ctx.step.run("a", counted, f"a-{ctx.event.data['n']}")
        b = ctx.step.run("b", counted, f"b-{ctx.event.data['n']}")
        return [a, b]

    wf.send([wf.Event(name="wk.go", data={"n": n}) for n in range(6)])
    worker = run_burst(concurrency=2)
    runs = Run.objects.filter(function_id="wk-steps")
    assert runs.count() == 6
    assert set(runs.values_list("status", flat=True)) == {"completed"}
    assert sorted(tuple(r.output) for r in runs) == sorted((f"a-{n}", f"b-{n}") for n in range(6))
    assert all(calls[f"a-{n}"] == 1 and calls[f"b-{n}"] == 1 for n in range(6))
    assert Step.objects.filter(run__function_id="wk-steps", status="completed").count() == 12
    assert not QueueItem.objects.exclude(kind="cron").exists()
    assert worker.processed >= 7  # at least one batch of events and six runs


@pytest.mark.django_db(transaction=True)
def test_burst_worker_exits_while_runs_sleep_and_a_later_worker_finishes_them(threads_db):
    @wf.function(id="wk-sleepy", trigger="wk.sleepy")
    def fn(ctx):
        ctx.step.run("before", counted, "before")
        ctx.step.sleep("nap", "1h")
        return ctx.step.run("after", counted, "after")

    wf.send("wk.sleepy")
    run_burst()
    run = Run.objects.get(function_id="wk-sleepy")
    assert run.status == "running"
    assert calls == Counter({"before": 1})

    clock.advance_to(run.steps.get(step_id="nap").scheduled_at)
    run_burst()
    run.refresh_from_db()
    assert run.status == "completed"
    assert calls == Counter({"before": 1, "after": 1})


@pytest.mark.django_db(transaction=True)
def test_a_running_worker_picks_up_events_sent_while_it_runs(threads_db):
    @wf.function(id="wk-live", trigger="wk.live")
    def fn(ctx):
        return ctx.event.data["n"]

    with worker_in_thread(concurrency=2):
        wf.send("wk.live", data={"n": 1})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if Run.objects.filter(function_id="wk-live", status="completed").exists():
                break
            time.sleep(0.05)
    assert Run.objects.get(function_id="wk-live").output == 1


@pytest.mark.django_db(transaction=True)
def test_worker_logs_startup_and_each_runs_start_finish_and_failure(caplog, threads_db):
    @wf.function(id="wk-ok", trigger="wk.log")
    def ok(ctx):
        return "fine"

    @wf.function(id="wk-bad", trigger="wk.log", retries=0)
    def bad(ctx):
        raise wf.NonRetriableError("nope")

    caplog.set_level(logging.INFO, logger="django_workflows")
    wf.send("wk.log")
    worker = run_burst(concurrency=2)
    ok_run = Run.objects.get(function_id="wk-ok")
    bad_run = Run.objects.get(function_id="wk-bad")
    assert (ok_run.status, bad_run.status) == ("completed", "failed")

    messages = [r.getMessage() for r in caplog.records if r.name == "django_workflows.worker"]
    startup = [m for m in messages if m.startswith(f"worker {worker.id} started")]
    assert len(startup) == 1
    assert "2 threads" in startup[0]
    assert f"({connection.vendor})" in startup[0]
    assert f"run started: wk-ok {ok_run.id}" in messages
    assert f"run started: wk-bad {bad_run.id}" in messages
    assert any(m.startswith(f"run completed: wk-ok {ok_run.id} in ") and "last execution" in m for m in messages)
    assert any(m.startswith(f"run failed: wk-bad {bad_run.id} after ") for m in messages)
    failure = next(r for r in caplog.records if r.getMessage().startswith("run failed: wk-bad"))
    assert failure.levelno == logging.ERROR
    assert any("nothing due, exiting (--burst)" in m for m in messages)


def _listening_connections():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND query = %s",
            [connection.settings_dict["NAME"], "LISTEN django_workflows"],
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_a_returned_burst_worker_leaves_no_threads_or_listen_connection_behind(threads_db):
    worker = Worker(concurrency=2, burst=True)
    thread = threading.Thread(target=worker.run, name="test-worker", daemon=True)
    try:
        thread.start()
        thread.join(JOIN_TIMEOUT)
        assert not thread.is_alive()
        # run() returned without stop(): its helpers are gone all the same
        left = [t.name for t in threading.enumerate() if t.name.startswith("wf-")]
        assert left == []
        if on_postgres():
            assert _listening_connections() == 0
    finally:
        worker.stop()
        _join_engine_threads()


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_keeps_a_long_steps_lease_from_lapsing(settings, threads_db):
    lease = 1.2  # the heartbeat runs every lease / 3
    settings.DJANGO_WORKFLOWS = {**settings.DJANGO_WORKFLOWS, "LEASE_SECONDS": lease, "NOTIFY": False}
    started = threading.Event()
    proceed = threading.Event()

    def long_step():
        calls["long"] += 1
        started.set()
        assert proceed.wait(JOIN_TIMEOUT)
        return "long done"

    @wf.function(id="wk-heartbeat", trigger="wk.heartbeat")
    def fn(ctx):
        return ctx.step.run("long", long_step)

    wf.send("wk.heartbeat")
    stolen = []
    with worker_in_thread(concurrency=1) as (worker, thread):
        assert started.wait(JOIN_TIMEOUT)
        deadline = time.monotonic() + lease * 2.5  # well past the first lease's end
        while time.monotonic() < deadline:
            stolen.extend(queue.claim("intruder", 10))
            time.sleep(0.1)
        item = QueueItem.objects.get(run__function_id="wk-heartbeat")
        assert item.worker_id == worker.id
        proceed.set()
        wait_until = time.monotonic() + JOIN_TIMEOUT
        while not Run.objects.filter(function_id="wk-heartbeat", status="completed").exists():
            assert time.monotonic() < wait_until, "the run did not complete"
            time.sleep(0.05)
    assert stolen == []
    assert Run.objects.get(function_id="wk-heartbeat").output == "long done"
    assert calls["long"] == 1


# A claim that finds nothing while an item is in flight must not end a --burst worker: the
# item may make more work due (an event starts runs) and leave before the exit check.
@pytest.mark.django_db(transaction=True)
def test_a_burst_worker_does_not_exit_while_its_own_work_makes_more_work_due(threads_db, monkeypatch):
    import django_workflows.engine.worker as worker_module

    real_claim, real_intake = queue.claim, worker_module.process_events

    def slow_empty_claim(*args, **kwargs):
        got = real_claim(*args, **kwargs)
        if not got:
            time.sleep(1.0)  # a slow round trip to the database
        return got

    def slow_intake(*args, **kwargs):
        time.sleep(0.2)
        return real_intake(*args, **kwargs)

    monkeypatch.setattr(queue, "claim", slow_empty_claim)
    monkeypatch.setattr(worker_module, "process_events", slow_intake)

    @wf.function(id="wk-race", trigger="wk.race")
    def fn(ctx):
        return "ran"

    wf.send("wk.race")
    with worker_in_thread(concurrency=2, burst=True) as (worker, thread):
        thread.join(JOIN_TIMEOUT)
        assert not thread.is_alive()
    assert Run.objects.get(function_id="wk-race").status == "completed"


# -- graceful stop -----------------------------------------------------------------------------------


def define_slow_then_next(function_id: str, event: str) -> tuple[threading.Event, threading.Event]:
    """A function whose first step blocks until ``proceed`` is set; ``started`` tells it began."""
    started = threading.Event()
    proceed = threading.Event()

    def slow():
        calls["slow"] += 1
        started.set()
        assert proceed.wait(JOIN_TIMEOUT)
        return "slow done"

    @wf.function(id=function_id, trigger=event)
    def fn(ctx):
        a = ctx.step.run("slow", slow)
        b = ctx.step.run("next", counted, "next")
        return [a, b]

    return started, proceed


@pytest.mark.django_db(transaction=True)
def test_stop_lets_the_running_step_finish_and_releases_the_run_to_resume(threads_db):
    started, proceed = define_slow_then_next("wk-stop", "wk.stop")

    wf.send("wk.stop")
    with worker_in_thread(concurrency=1) as (worker, thread):
        assert started.wait(JOIN_TIMEOUT), "the worker never started the step"
        worker.stop()
        time.sleep(0.1)
        assert thread.is_alive()  # waits for the step in flight
        proceed.set()
        thread.join(JOIN_TIMEOUT)
        assert not thread.is_alive()

    run = Run.objects.get(function_id="wk-stop")
    assert run.status == "running"
    slow_step = run.steps.get(step_id="slow")
    assert (slow_step.status, slow_step.attempts, slow_step.output) == ("completed", 1, "slow done")
    assert not run.steps.filter(step_id="next").exists()  # stopped before the next step
    item = QueueItem.objects.get(run=run)
    assert item.worker_id == ""
    assert item.due_at is not None and item.due_at <= clock.now()  # released: due at once

    drain()
    run.refresh_from_db()
    assert run.status == "completed"
    assert run.output == ["slow done", "next"]
    assert calls == Counter({"slow": 1, "next": 1})


@pytest.mark.django_db(transaction=True)
def test_a_step_outliving_the_shutdown_grace_is_released_for_another_worker(settings, threads_db, caplog):
    settings.DJANGO_WORKFLOWS = {**settings.DJANGO_WORKFLOWS, "SHUTDOWN_GRACE_SECONDS": 0.2}
    started, proceed = define_slow_then_next("wk-grace", "wk.grace")

    caplog.set_level(logging.INFO, logger="django_workflows")
    wf.send("wk.grace")
    with worker_in_thread(concurrency=1) as (worker, thread):
        assert started.wait(JOIN_TIMEOUT)
        worker.stop()
        thread.join(JOIN_TIMEOUT)
        assert not thread.is_alive()  # returned after the grace, the step still running
        item = QueueItem.objects.get(run__function_id="wk-grace")
        assert item.worker_id == ""
        assert item.due_at <= clock.now()
        assert any(f"worker {worker.id}: released 1 unfinished items" in r.getMessage() for r in caplog.records)
        proceed.set()
        deadline = time.monotonic() + JOIN_TIMEOUT
        while any(t.name.startswith("wf-worker-") for t in threading.enumerate()) and time.monotonic() < deadline:
            time.sleep(0.05)

    drain()
    run = Run.objects.get(function_id="wk-grace")
    assert run.status == "completed"
    assert run.output == ["slow done", "next"]
    assert calls == Counter({"slow": 1, "next": 1})


# -- runworkers ---------------------------------------------------------------------------------------


@pytest.fixture
def restore_signals():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.django_db(transaction=True)
def test_runworkers_burst_in_process_processes_due_work_and_exits(no_real_exit, caplog, threads_db):
    exits = no_real_exit

    @wf.function(id="wk-cmd", trigger="wk.cmd")
    def fn(ctx):
        return ctx.step.run("s", counted, "s")

    wf.send([wf.Event(name="wk.cmd"), wf.Event(name="wk.cmd")])
    caplog.set_level(logging.INFO, logger="django_workflows")
    with pytest.raises(SystemExit):
        call_command("runworkers", "--burst", "--concurrency", "2")
    assert exits == [0]
    assert list(Run.objects.filter(function_id="wk-cmd").values_list("status", flat=True)) == ["completed"] * 2
    assert calls["s"] == 2
    messages = [r.getMessage() for r in caplog.records]
    assert any("started: 2 threads" in m for m in messages)
    assert any("nothing due, exiting (--burst)" in m for m in messages)


@pytest.fixture
def no_real_exit(settings, monkeypatch, restore_signals):
    """runworkers ends with os._exit: turn it into SystemExit so pytest survives a test that fails."""
    import django_workflows.management.commands.runworkers as command

    settings.DJANGO_WORKFLOWS = {**settings.DJANGO_WORKFLOWS, "NOTIFY": False}
    exits = []

    def fake_exit(code):
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(command.os, "_exit", fake_exit)
    return exits


@pytest.mark.django_db(transaction=True)
def test_runworkers_refuses_zero_processes(no_real_exit, threads_db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="at least 1"):
        call_command("runworkers", "--burst", "--processes", "0")
    assert no_real_exit == []


@pytest.mark.django_db(transaction=True)
def test_runworkers_refuses_zero_concurrency(no_real_exit, threads_db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="at least 1"):
        call_command("runworkers", "--burst", "--concurrency", "0")


def _subprocess_env(extra):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "WORKFLOWS_LOG_LEVEL": "INFO",
        "EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",
    }
    env.pop("DATABASE_URL", None)
    env.update(extra)
    return env


def _manage(env, *args, timeout=60):
    return subprocess.run(
        [sys.executable, str(ROOT / "testproject" / "manage.py"), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def _python(env, code, timeout=60):
    script = "import django; django.setup()\n" + code
    return subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_runworkers_burst_subprocess_on_postgres():
    settings_dict = connection.settings_dict
    url = (
        f"postgres://{settings_dict['USER'] or 'postgres'}@{settings_dict['HOST'] or '127.0.0.1'}:"
        f"{settings_dict['PORT'] or 5432}/{settings_dict['NAME']}"
    )
    wf.send("invite.users", data={"from": "2023-03-20"})
    wf.send("user.signup", data={"email": "new@example.com", "plan": "free"})  # sleeps 2 days
    result = _manage(_subprocess_env({"DATABASE_URL": url}), "runworkers", "--burst", "--concurrency", "2")
    assert result.returncode == 0, result.stderr
    assert "started: 2 threads, database 'default' (postgresql)" in result.stderr
    assert "nothing due, exiting (--burst)" in result.stderr
    invite = Run.objects.get(function_id="invite-waiting-list")
    assert invite.status == "completed"
    assert invite.output == {"message": "Invited 0 users"}
    assert f"run completed: invite-waiting-list {invite.id}" in result.stderr
    drip = Run.objects.get(function_id="new-user-drip")
    assert drip.status == "running"  # asleep: burst does not wait for it
    assert drip.steps.get(step_id="send-welcome").status == "completed"
    assert drip.steps.get(step_id="wait-2-days").status == "waiting"


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_runworkers_processes_spawns_workers_that_share_the_work():
    settings_dict = connection.settings_dict
    url = (
        f"postgres://{settings_dict['USER'] or 'postgres'}@{settings_dict['HOST'] or '127.0.0.1'}:"
        f"{settings_dict['PORT'] or 5432}/{settings_dict['NAME']}"
    )
    csv = "email,name\nada@example.com,Ada\n"
    wf.send([wf.Event(name="contacts.csv.uploaded", data={"csv": csv, "uploaded_by": "o@example.com"})] * 40)
    result = _manage(
        _subprocess_env({"DATABASE_URL": url}), "runworkers", "--processes", "2", "--concurrency", "2", "--burst"
    )
    assert result.returncode == 0, result.stderr
    assert "runworkers: starting 2 processes of 2 threads" in result.stderr
    assert result.stderr.count("nothing due, exiting (--burst)") == 2
    assert "runworkers: all worker processes stopped" in result.stderr
    assert Run.objects.filter(function_id="import-contacts-csv", status="completed").count() == 40
    pids = {line.split("worker ", 1)[1].split(":")[1] for line in result.stderr.splitlines() if " started: 2 threads" in line}
    assert len(pids) == 2, result.stderr


@pytest.mark.slow
@pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")), reason="SQLite-only; runs in the SQLite session")
def test_runworkers_burst_subprocess_on_a_sqlite_file(tmp_path):
    env = _subprocess_env({"SQLITE_PATH": str(tmp_path / "db.sqlite3")})
    migrated = _manage(env, "migrate", "-v", "0")
    assert migrated.returncode == 0, migrated.stderr
    sent = _python(
        env,
        "import django_workflows as wf\n"
        "wf.send('invite.users', data={'from': '2023-03-20'})\n"
        "wf.send('user.signup', data={'email': 'new@example.com', 'plan': 'pro'})\n",
    )
    assert sent.returncode == 0, sent.stderr

    result = _manage(env, "runworkers", "--burst", "--concurrency", "2")
    assert result.returncode == 0, result.stderr
    assert "started: 2 threads, database 'default' (sqlite), polling" in result.stderr
    assert "nothing due, exiting (--burst)" in result.stderr

    checked = _python(
        env,
        "import json\n"
        "from django_workflows.models import Run\n"
        "print(json.dumps({r.function_id: [r.status, r.output] for r in Run.objects.all()}))\n",
    )
    assert checked.returncode == 0, checked.stderr
    runs = json.loads(checked.stdout.strip().splitlines()[-1])
    assert runs["invite-waiting-list"] == ["completed", {"message": "Invited 0 users"}]
    assert runs["new-user-drip"] == ["running", None]


# -- claiming ---------------------------------------------------------------------------------------------


def _queue_events(n, name="wk.unheard"):
    wf.send([wf.Event(name=name, data={"n": i}) for i in range(n)])
    return sorted(QueueItem.objects.filter(kind="event").values_list("id", flat=True))


@pytest.mark.django_db
def test_claim_takes_due_items_once_under_a_lease():
    ids = _queue_events(3)
    first = queue.claim("worker-a", 2)
    assert [c.id for c in first] == ids[:2]
    assert all(c.kind == "event" and c.token == 1 and c.claims == 1 for c in first)
    second = queue.claim("worker-b", 5)
    assert [c.id for c in second] == ids[2:]
    assert queue.claim("worker-c", 5) == []
    leased = QueueItem.objects.get(pk=ids[0])
    assert leased.worker_id == "worker-a"
    lease = timedelta(seconds=float(conf.get("LEASE_SECONDS")))
    assert abs((leased.due_at - clock.now() - lease).total_seconds()) < 2
    assert queue.claim("worker-a", 0) == []


@pytest.mark.django_db
def test_future_items_are_not_claimed_until_due():
    wf.send("wk.unheard")
    item = QueueItem.objects.get()
    item.due_at = clock.now() + timedelta(minutes=10)
    item.save()
    assert queue.claim("w", 10) == []
    clock.advance_to(item.due_at)
    assert [c.id for c in queue.claim("w", 10)] == [item.id]


@pytest.mark.django_db
def test_a_parked_item_is_never_claimed():
    wf.send("wk.unheard")
    QueueItem.objects.update(due_at=None)
    clock.advance_to(clock.now() + timedelta(days=365))
    assert queue.claim("w", 10) == []


@pytest.mark.django_db(transaction=True)
def test_concurrent_claims_never_take_the_same_item(threads_db):
    ids = _queue_events(40)
    taken: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def claimer(name):
        try:
            while True:
                got = queue.claim(name, 3)
                if not got:
                    return
                with lock:
                    taken.extend(c.id for c in got)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=claimer, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert not errors, errors
    assert sorted(taken) == ids  # every item once, none twice


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_claim_skips_items_locked_by_another_transaction_on_postgres():
    ids = _queue_events(3)
    locked = ids[0]
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    with psycopg.connect(**params) as other:
        with other.transaction():
            other.execute(f"SELECT id FROM {queue.TABLE} WHERE id = %s FOR UPDATE", [locked])
            with connection.cursor() as cursor:
                cursor.execute("SET lock_timeout = '3s'")  # without SKIP LOCKED the claim would block
            try:
                claimed = queue.claim("w", 10)
            finally:
                with connection.cursor() as cursor:
                    cursor.execute("RESET lock_timeout")
            assert [c.id for c in claimed] == ids[1:]
            assert QueueItem.objects.get(pk=locked).worker_id == ""
        # the other transaction ended: the row is claimable
        assert [c.id for c in queue.claim("w", 10)] == [locked]


@pytest.mark.postgres
@pytest.mark.django_db
def test_the_postgres_claim_statement_uses_skip_locked():
    from django.test.utils import CaptureQueriesContext

    _queue_events(1)
    with CaptureQueriesContext(connection) as captured:
        assert len(queue.claim("w", 1)) == 1
    sql = " ".join(q["sql"] for q in captured.captured_queries).upper()
    assert "FOR UPDATE SKIP LOCKED" in sql
    assert "RETURNING" in sql


# -- leases and fencing -----------------------------------------------------------------------------------


@pytest.fixture
def leased_run():
    """A run whose item was claimed by a worker that then died."""

    def step_body():
        calls["step"] += 1
        return "done"

    @wf.function(id="wk-lease", trigger="wk.lease")
    def fn(ctx):
        return ctx.step.run("step", step_body)

    wf.send("wk.lease")
    assert drain(max_jobs=1) == 1  # the event: the run's item is due
    (dead,) = queue.claim("dead-worker", 1)
    assert dead.kind == "run"
    return dead


def _lease():
    return timedelta(seconds=float(conf.get("LEASE_SECONDS")))


@pytest.mark.django_db
def test_an_item_of_a_dead_worker_is_claimable_again_only_after_the_lease(leased_run):
    dead = leased_run
    claimed_at = clock.now()
    assert queue.claim("alive", 5) == []
    clock.advance_to(claimed_at + _lease() - timedelta(seconds=1))
    assert queue.claim("alive", 5) == []
    clock.advance_to(claimed_at + _lease() + timedelta(seconds=1))
    (alive,) = queue.claim("alive", 5)
    assert alive.id == dead.id
    assert alive.run_id == dead.run_id
    assert alive.token == dead.token + 1
    assert alive.claims == dead.claims + 1
    assert QueueItem.objects.get(pk=alive.id).worker_id == "alive"

    assert process_run(alive, db=conf.database()) is Outcome.COMPLETED
    run = Run.objects.get(function_id="wk-lease")
    assert run.status == "completed" and run.output == "done"
    assert calls["step"] == 1


@pytest.mark.django_db
def test_heartbeat_extends_only_the_holders_lease(leased_run):
    item = leased_run
    before = QueueItem.objects.get(pk=item.id).due_at
    clock.advance_to(clock.now() + timedelta(seconds=10))
    assert queue.heartbeat("someone-else", [item.id]) == set()
    assert QueueItem.objects.get(pk=item.id).due_at == before
    assert queue.heartbeat("dead-worker", [item.id]) == {item.id}
    extended = QueueItem.objects.get(pk=item.id).due_at
    assert extended > before
    assert abs((extended - clock.now() - _lease()).total_seconds()) < 2
    # so the lease does not lapse at its first end
    clock.advance_to(before + timedelta(seconds=1))
    assert queue.claim("alive", 5) == []


@pytest.mark.django_db
def test_release_makes_an_item_due_at_once(leased_run):
    item = leased_run
    assert queue.release("someone-else", [item.id]) == 0
    assert queue.claim("alive", 5) == []
    assert queue.release("dead-worker", [item.id]) == 1
    (again,) = queue.claim("alive", 5)
    assert again.id == item.id


# transaction=True: a refused fenced write rolls back its own transaction, which inside a
# test's enclosing transaction would poison that transaction.
@pytest.mark.django_db(transaction=True)
def test_a_stale_workers_fenced_writes_after_takeover_record_nothing(leased_run):
    dead = leased_run
    db = conf.database()
    clock.advance_to(clock.now() + _lease() + timedelta(seconds=1))
    (alive,) = queue.claim("alive", 1)
    assert alive.token > dead.token
    run = Run.objects.get(function_id="wk-lease")

    stale = DatabaseCheckpointer(db, dead, run, None)
    record = StepRecord("step", "run", "completed", output="stale", attempts=1,
                        started_at=clock.now(), ended_at=clock.now())
    with pytest.raises(LeaseLost):
        stale.record_step(record)
    assert not Step.objects.exists()
    with pytest.raises(LeaseLost):
        stale.complete("stale output")
    with pytest.raises(LeaseLost):
        stale.fail({"name": "X", "message": "stale", "stack": ""})
    run.refresh_from_db()
    assert run.status in ("queued", "running")
    assert run.output is None and run.error is None
    item = QueueItem.objects.get(pk=alive.id)
    assert (item.worker_id, item.lease_token) == ("alive", alive.token)

    # The stale worker running the whole run: its step's result is not recorded.
    assert process_run(dead, db=db) is Outcome.LOST
    assert not Step.objects.exists()
    run.refresh_from_db()
    assert run.output is None

    # The new holder runs it for real.
    assert process_run(alive, db=db) is Outcome.COMPLETED
    run.refresh_from_db()
    assert (run.status, run.output) == ("completed", "done")
    step = Step.objects.get()
    assert (step.step_id, step.attempts, step.output) == ("step", 1, "done")
    assert not QueueItem.objects.filter(pk=alive.id).exists()


@pytest.mark.django_db(transaction=True)
def test_a_stale_event_item_starts_no_runs_after_takeover():
    @wf.function(id="wk-stale-event", trigger="wk.stale")
    def fn(ctx):
        return "ran"

    wf.send("wk.stale")
    (dead,) = queue.claim("dead-worker", 1)
    clock.advance_to(clock.now() + _lease() + timedelta(seconds=1))
    (alive,) = queue.claim("alive", 1)
    from django_workflows.engine.intake import process_events

    process_events([dead], db=conf.database())
    assert Run.objects.count() == 0
    process_events([alive], db=conf.database())
    assert Run.objects.count() == 1
    assert Event.objects.count() == 1
