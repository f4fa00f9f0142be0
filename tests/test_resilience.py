"""Resilience (issue 7): workers that never stall, poison input isolated, the database's clock,
outages and rolling deploys. The multi-process fault tests are in tests/test_faults.py."""

from __future__ import annotations

import logging
import sys
import threading
import time
from datetime import timedelta

import pytest
from django.db import OperationalError, connection, connections
from django.utils import timezone
from test_worker import run_burst, threads_db  # noqa: F401  (fixture)

import django_workflows as wf
from django_workflows import conf
from django_workflows.engine import clock, cron, intake, queue
from django_workflows.engine.executor import CheckpointFailed, LeaseLost
from django_workflows.engine.records import error_dict
from django_workflows.engine.registry import registry_touch
from django_workflows.engine.store import DatabaseCheckpointer, load_run
from django_workflows.engine.worker import Worker
from django_workflows.functions import registry
from django_workflows.models import CronSchedule, Event, QueueItem, Run, Step, WorkerRecord
from django_workflows.testing import drain

# -- 1. a BaseException never kills a worker thread ----------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("raised", [SystemExit(3), KeyboardInterrupt(), GeneratorExit()], ids=repr)
def test_a_step_raising_a_base_exception_fails_the_step_and_the_worker_goes_on(threads_db, raised):  # noqa: F811
    @wf.function(id="rs-exit", trigger="rs.exit", retries=3)
    def exits(ctx):
        ctx.step.run("exit", lambda: (_ for _ in ()).throw(raised))

    @wf.function(id="rs-fine", trigger="rs.fine")
    def fine(ctx):
        return ctx.step.run("fine", lambda: "ok")

    wf.send([wf.Event(name="rs.exit"), *[wf.Event(name="rs.fine") for _ in range(3)]])
    run_burst(concurrency=1)  # one thread: had it died, the other runs would never run
    failed = Run.objects.get(function_id="rs-exit")
    assert failed.status == "failed"
    step = Step.objects.get(run=failed, step_id="exit")
    assert step.error["name"] == "StepAborted" and step.attempts == 1
    assert type(raised).__name__ in step.error["message"]
    assert set(Run.objects.filter(function_id="rs-fine").values_list("status", flat=True)) == {"completed"}


@pytest.mark.django_db
def test_a_handler_raising_system_exit_outside_steps_fails_the_run():
    @wf.function(id="rs-handler-exit", trigger="rs.handler")
    def exits(ctx):
        sys.exit("bye")

    wf.send("rs.handler")
    drain()
    run = Run.objects.get(function_id="rs-handler-exit")
    assert run.status == "failed" and run.error["name"] == "StepAborted"
    assert "SystemExit" in run.error["message"]


@pytest.mark.django_db(transaction=True)
def test_a_batch_that_raises_a_base_exception_is_released_and_the_thread_lives(threads_db, monkeypatch):  # noqa: F811
    @wf.function(id="rs-work", trigger="rs.work")
    def work(ctx):
        return ctx.step.run("s", lambda: "ok")

    wf.send("rs.work")
    drain(max_jobs=1)  # the event: one run item is due
    worker = Worker(concurrency=1)
    real = worker._process
    blown = []

    def explode_once(batch):
        if not blown:
            blown.append(batch)
            raise SystemExit("engine bug")
        real(batch)

    monkeypatch.setattr(worker, "_process", explode_once)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while Run.objects.get(function_id="rs-work").status != "completed" and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.stop()
    thread.join(20)
    assert blown, "the batch never ran"
    assert Run.objects.get(function_id="rs-work").status == "completed"
    assert all(t.is_alive() is False for t in worker._threads)  # stopped cleanly at the end


@pytest.mark.django_db
@pytest.mark.parametrize("error, transient", [(OperationalError("terminating connection"), True), (ValueError("bug"), False)])
def test_a_batch_that_lost_the_database_is_retried_soon_without_counting_as_a_crash(monkeypatch, error, transient):
    wf.send("rs.transient")
    (item,) = queue.claim("w", 1)
    assert item.claims == 1
    worker = Worker(concurrency=1)
    worker.id = "w"
    monkeypatch.setattr(connections["default"], "close", lambda: None)
    worker._release_failed([item], error)
    row = QueueItem.objects.get(pk=item.id)
    assert row.worker_id == ""
    if transient:  # not the item's fault: due in a second, the claim not counted
        assert row.claims == 0 and row.due_at > clock.now()
    else:  # counts towards MAX_CRASHES, due at once
        assert row.claims == 1 and row.due_at <= clock.now()


def test_dead_threads_are_replaced():
    worker = Worker(concurrency=2)
    dead = threading.Thread(target=lambda: None, name="wf-worker-0")
    dead.start()
    dead.join()
    worker._threads = [dead]
    try:
        worker._replace_dead_threads()
        assert worker._threads[0] is not dead and worker._threads[0].is_alive()
    finally:
        worker._tasks.put(None)
        worker._threads[0].join(5)


# -- 2. one bad event never blocks the others ---------------------------------------------------


@pytest.mark.django_db
def test_a_poison_event_is_set_aside_and_the_good_ones_of_its_batch_start(monkeypatch):
    started = []

    @wf.function(id="rs-good", trigger="rs.event")
    def good(ctx):
        started.append(ctx.event.data["n"])

    real = intake._functions_for

    def poisoned(event):
        if event.data.get("poison"):
            raise RecursionError("maximum recursion depth exceeded")
        return real(event)

    monkeypatch.setattr(intake, "_functions_for", poisoned)
    wf.send([wf.Event(name="rs.event", data={"n": n, "poison": n == 2}) for n in range(5)])
    drain(batch_size=10)
    assert sorted(started) == [0, 1, 3, 4]
    bad = Event.objects.get(data__n=2)
    assert bad.error["name"] == "RecursionError"
    assert not QueueItem.objects.filter(event=bad).exists(), "the poison event must not be retried forever"
    assert Event.objects.exclude(pk=bad.pk).filter(error__isnull=False).count() == 0


@pytest.mark.django_db
def test_an_event_that_keeps_killing_its_worker_is_set_aside():
    wf.send("rs.crashy")
    item = QueueItem.objects.get(kind="event")
    QueueItem.objects.filter(pk=item.pk).update(claims=int(conf.get("MAX_CRASHES")))
    drain()
    event = Event.objects.get(name="rs.crashy")
    assert event.error["name"] == "WorkerCrashError"
    assert not QueueItem.objects.filter(event=event).exists()


# -- 3. values the database cannot store ---------------------------------------------------------


@pytest.mark.django_db
def test_a_lone_surrogate_in_a_step_result_fails_the_step_clearly_once():
    calls = []

    @wf.function(id="rs-surrogate", trigger="rs.surrogate", retries=2)
    def fn(ctx):
        return ctx.step.run("decode", lambda: calls.append(1) or b"caf\xe9".decode("utf-8", "surrogateescape"))

    wf.send("rs.surrogate")
    drain(advance_time=True)
    run = Run.objects.get(function_id="rs-surrogate")
    assert run.status == "failed" and calls == [1]
    step = Step.objects.get(run=run)
    assert step.error["name"] == "StepOutputError" and "lone surrogate" in step.error["message"]


@pytest.mark.django_db
def test_nul_and_surrogates_in_an_error_message_are_stored_cleaned():
    @wf.function(id="rs-nul-error", trigger="rs.nul", retries=0)
    def fn(ctx):
        ctx.step.run("s", lambda: (_ for _ in ()).throw(ValueError("bad\x00byte \udce9 here")))

    wf.send("rs.nul")
    drain()
    step = Step.objects.get(run__function_id="rs-nul-error")
    assert step.status == "failed"
    assert step.error["message"] == "bad\\x00byte \\udce9 here"
    assert "\x00" not in step.error["stack"]


def test_error_dict_bounds_huge_messages_and_stacks():
    error = error_dict(ValueError("x" * 200_000))
    assert len(error["message"]) == 50_000 and len(error["stack"]) < 60_000


def test_error_dict_survives_a_broken_str():
    class Broken(Exception):
        def __str__(self):
            raise RuntimeError("no")

    error = error_dict(Broken())
    assert error["name"] == "Broken" and "str() failed" in error["message"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: wf.send("bad\x00name"), "NUL"),
        (lambda: wf.send("ok.name", id="id\x00"), "NUL"),
        (lambda: wf.send("ok.name", data={"s": "\udce9"}), "lone surrogate"),
        (lambda: wf.send(123), "event name, a wf.Event or a list"),
        (lambda: wf.send("deep", data=_deep(5000)), "nested too deeply"),
    ],
    ids=["nul-name", "nul-id", "surrogate-data", "not-an-event", "deep-data"],
)
def test_send_refuses_what_the_database_cannot_store(call, message):
    with pytest.raises(wf.EventValidationError, match=message):
        call()
    assert not Event.objects.exists()


def _deep(depth: int) -> dict:
    data: dict = {}
    current = data
    for _ in range(depth):
        current["a"] = {}
        current = current["a"]
    return data


# -- 4. a failed checkpoint write is retried on a new connection --------------------------------


@pytest.mark.django_db
def test_a_transient_write_error_is_retried_on_a_new_connection(monkeypatch):
    from django_workflows.engine import store

    monkeypatch.setattr(store, "WRITE_RETRY_DELAYS", (0.0, 0.0))
    checkpointer = _checkpointer()
    attempts = []

    def write():
        attempts.append(1)
        if attempts.count(1) < 3:
            raise OperationalError("server closed the connection unexpectedly")
        return "written"

    monkeypatch.setattr(connections["default"], "close", lambda: attempts.append("closed"))
    monkeypatch.setattr(connections["default"], "in_atomic_block", False)
    assert checkpointer._retrying(write) == "written"
    assert attempts == [1, "closed", 1, "closed", 1]


@pytest.mark.django_db
def test_a_write_error_that_persists_or_is_not_transient_gives_up(monkeypatch):
    from django.db import IntegrityError

    from django_workflows.engine import store

    monkeypatch.setattr(store, "WRITE_RETRY_DELAYS", (0.0,))
    monkeypatch.setattr(connections["default"], "in_atomic_block", False)
    monkeypatch.setattr(connections["default"], "close", lambda: None)
    checkpointer = _checkpointer()
    with pytest.raises(CheckpointFailed):
        checkpointer._retrying(lambda: (_ for _ in ()).throw(OperationalError("down")))
    calls = []
    with pytest.raises(CheckpointFailed):
        checkpointer._retrying(lambda: calls.append(1) or (_ for _ in ()).throw(IntegrityError("dup")))
    assert calls == [1], "a constraint violation is not retried"


# -- 5. the lease is confirmed before a step starts after a stall --------------------------------


def _checkpointer(renewed_at=None):
    @wf.function(id="rs-lease", trigger="rs.lease")
    def fn(ctx):
        return ctx.step.run("s", lambda: "ok")

    wf.send("rs.lease")
    drain(max_jobs=1)
    (item,) = queue.claim("stalled-worker", 1)
    run, _ = load_run("default", item.run_id, clock.now())
    return DatabaseCheckpointer("default", item, run, None, lease_renewed_at=renewed_at)


@pytest.mark.django_db
def test_a_stalled_worker_does_not_start_a_step_on_a_lease_taken_over():
    long_ago = time.monotonic() - 3600
    checkpointer = _checkpointer(renewed_at=lambda: long_ago)
    checkpointer._confirmed_at = long_ago  # the worker was frozen since the claim
    clock.advance_to(clock.now() + timedelta(seconds=float(conf.get("LEASE_SECONDS")) + 1))
    (taken,) = queue.claim("other-worker", 1)  # the lease lapsed: another worker took it
    assert taken.id == checkpointer.item.id
    with pytest.raises(LeaseLost):
        checkpointer.before_new_step()


@pytest.mark.django_db
def test_a_stalled_worker_whose_lease_is_still_held_renews_it_and_goes_on():
    long_ago = time.monotonic() - 3600
    checkpointer = _checkpointer(renewed_at=lambda: long_ago)
    checkpointer._confirmed_at = long_ago
    before = QueueItem.objects.get(pk=checkpointer.item.id).due_at
    clock.advance_to(clock.now() + timedelta(seconds=5))
    checkpointer.before_new_step()  # no error: nobody took it
    assert QueueItem.objects.get(pk=checkpointer.item.id).due_at > before


@pytest.mark.django_db
def test_a_fresh_lease_costs_no_query(django_assert_num_queries):
    checkpointer = _checkpointer(renewed_at=time.monotonic)
    with django_assert_num_queries(0):
        checkpointer.before_new_step()


# -- 6. the database's clock ---------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db
@pytest.mark.parametrize("skew", [120, -120])
def test_the_engine_follows_the_database_clock_whatever_the_machines(monkeypatch, skew):
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() + timedelta(seconds=skew))
    try:
        clock.sync("default")
        with connection.cursor() as cursor:
            cursor.execute("SELECT clock_timestamp()")
            server = cursor.fetchone()[0]
        assert abs((clock.now() - server).total_seconds()) < 0.5
    finally:
        monkeypatch.setattr(timezone, "now", real_now)
        clock.sync("default")


@pytest.mark.postgres
@pytest.mark.django_db
def test_send_stamps_events_with_the_database_clock(monkeypatch):
    real_now = timezone.now
    monkeypatch.setattr(clock, "_synced_at", None)
    monkeypatch.setattr(timezone, "now", lambda: real_now() + timedelta(minutes=2))
    try:
        wf.send("rs.clock")
    finally:
        monkeypatch.setattr(timezone, "now", real_now)
        clock.sync("default")
    item = QueueItem.objects.get(kind="event")
    assert abs((item.due_at - real_now()).total_seconds()) < 1, "a web server 2 minutes ahead delays events"


# -- 7. a worker starts while the database is down -----------------------------------------------


@pytest.mark.django_db
def test_a_starting_worker_waits_for_the_database(monkeypatch, caplog, settings):
    settings.DJANGO_WORKFLOWS = {**settings.DJANGO_WORKFLOWS, "STARTUP_TIMEOUT": 30}
    # The worker closes its broken connection; here that would end the test's transaction.
    monkeypatch.setattr(connections["default"], "close", lambda: None)
    real = cron.sync_schedules
    failures = []

    def down_twice(db):
        if len(failures) < 2:
            failures.append(1)
            raise OperationalError("connection refused\nIs the server running?")
        return real(db)

    monkeypatch.setattr(cron, "sync_schedules", down_twice)
    monkeypatch.setattr(Worker, "_claim_loop", lambda self: None)
    worker = Worker(concurrency=1)
    with caplog.at_level(logging.WARNING, logger="django_workflows.worker"):
        started = time.monotonic()
        worker.run()
    assert failures == [1, 1]
    lines = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(lines) == 2 and all("retrying in" in line and "\n" not in line for line in lines)
    assert all(not r.exc_info for r in caplog.records), "one line per attempt, no traceback"
    assert time.monotonic() - started < 10


@pytest.mark.django_db
def test_a_starting_worker_gives_up_after_startup_timeout(monkeypatch, settings):
    settings.DJANGO_WORKFLOWS = {**settings.DJANGO_WORKFLOWS, "STARTUP_TIMEOUT": 0.6}
    monkeypatch.setattr(connections["default"], "close", lambda: None)
    monkeypatch.setattr(cron, "sync_schedules", lambda db: (_ for _ in ()).throw(OperationalError("down")))
    from django_workflows.engine.worker import DatabaseUnavailable

    with pytest.raises(DatabaseUnavailable, match="still unreachable after STARTUP_TIMEOUT"):
        Worker(concurrency=1).run()


# -- 8. rolling deploys: schedules of other live workers are kept --------------------------------


@pytest.mark.django_db
def test_a_schedule_another_live_worker_defines_is_kept(settings):
    CronSchedule.objects.create(function_id="newer-code-fn", cron="*/5 * * * *", created_at=clock.now())
    WorkerRecord.objects.create(
        id="newer-worker", started_at=clock.now(), last_seen_at=clock.now(),
        functions=["newer-code-fn"], schedules=[["newer-code-fn", "*/5 * * * *"]],
    )
    cron.sync_schedules("default")
    assert CronSchedule.objects.filter(function_id="newer-code-fn").exists()
    # Once that worker is gone (not heard of for three leases), the schedule goes too.
    WorkerRecord.objects.filter(pk="newer-worker").update(last_seen_at=clock.now() - timedelta(hours=1))
    cron.sync_schedules("default")
    assert not CronSchedule.objects.filter(function_id="newer-code-fn").exists()


@pytest.mark.django_db
def test_a_cron_item_of_a_schedule_this_worker_does_not_know_is_left_for_others():
    schedule = CronSchedule.objects.create(function_id="other-fn", cron="* * * * *", created_at=clock.now())
    QueueItem.objects.create(kind="cron", schedule=schedule, due_at=clock.now())
    drain()
    item = QueueItem.objects.get(schedule=schedule)
    assert item.due_at > clock.now() and CronSchedule.objects.filter(pk=schedule.pk).exists()


@pytest.mark.django_db
def test_workers_record_what_they_define():
    @wf.function(id="rs-nightly", trigger=wf.TriggerCron("0 3 * * *"))
    def nightly(ctx):
        return None

    registry_touch("default", "w-1", started=True)
    record = WorkerRecord.objects.get(pk="w-1")
    assert "rs-nightly" in record.functions and ["rs-nightly", "0 3 * * *"] in record.schedules
    registry.unregister("rs-nightly")


# -- 10. large sends ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_large_send_stores_every_event_exactly_and_in_order():
    from django_workflows.events import COPY_THRESHOLD

    count = COPY_THRESHOLD + 100  # PostgreSQL takes these through COPY
    ids = wf.send([
        wf.Event(name="rs.bulk", data={"n": n, "x": 0.1, "big": 1e20, "s": "é\\\"'\t"}, id=f"k{n}")
        for n in range(count)
    ])
    assert len(ids) == len(set(ids)) == count
    events = list(Event.objects.filter(name="rs.bulk").order_by("received_at"))
    assert [str(e.pk) for e in events] == ids
    assert [e.data["n"] for e in events] == list(range(count))
    assert events[0].data == {"n": 0, "x": 0.1, "big": 1e20, "s": "é\\\"'\t"}
    assert isinstance(events[0].data["big"], float) and events[5].dedup_id == "k5"
    assert QueueItem.objects.filter(kind="event", event__name="rs.bulk").count() == count


# -- 9. fair claiming ----------------------------------------------------------------------------


def _backlog(function_id: str, count: int, due, kind: str = "run") -> None:
    QueueItem.objects.bulk_create(
        [QueueItem(kind=kind, function_id=function_id, lane=function_id, due_at=due) for _ in range(count)]
    )


@pytest.mark.django_db
@pytest.mark.parametrize("flood_kind, flood_function", [("run", "flooded"), ("event", "")], ids=["runs", "events"])
def test_a_backlog_of_one_function_does_not_delay_another(flood_kind, flood_function):
    now = clock.now()
    _backlog(flood_function, 500, now - timedelta(minutes=5), kind=flood_kind)
    _backlog("other", 1, now)
    claimed = queue.claim("w", 4)
    assert len(claimed) == 4
    other = QueueItem.objects.get(function_id="other")
    assert other.pk in {item.id for item in claimed}, "the other function waited behind the backlog"


@pytest.mark.django_db
def test_functions_take_turns_in_a_claim():
    now = clock.now()
    for name in ("a", "b", "c"):
        _backlog(name, 10, now - timedelta(seconds=1))
    claimed = queue.claim("w", 6)
    functions = sorted(QueueItem.objects.filter(pk__in=[i.id for i in claimed]).values_list("function_id", flat=True))
    assert functions == ["a", "a", "b", "b", "c", "c"]


@pytest.mark.django_db
def test_a_lapsed_lease_is_taken_over_before_the_backlog():
    now = clock.now()
    _backlog("flooded", 500, now - timedelta(minutes=5))
    lapsed = QueueItem.objects.create(
        kind="run", function_id="crashed", due_at=now - timedelta(seconds=1), worker_id="dead-worker", lease_token=3
    )
    (first,) = queue.claim("w", 1)
    assert first.id == lapsed.pk and first.token == 4
    leased = QueueItem.objects.create(kind="run", function_id="busy", due_at=now + timedelta(seconds=30), worker_id="alive")
    assert leased.pk not in {i.id for i in queue.claim("w", 1000)}, "a lease still running is never claimed"


# -- 7b. the supervisor does not restart dying children in a storm ------------------------------


@pytest.mark.slow
def test_runworkers_processes_backs_off_when_children_keep_dying():
    import re
    import signal
    import subprocess

    from test_worker import ROOT, _subprocess_env

    env = _subprocess_env({
        # Nothing listens there: each child waits STARTUP_TIMEOUT for the database, then exits 1.
        "DATABASE_URL": "postgres://postgres@127.0.0.1:9/nowhere",
        "WORKFLOWS_STARTUP_TIMEOUT": "1.2",
    })
    proc = subprocess.Popen(
        [sys.executable, "testproject/manage.py", "runworkers", "--processes", "2", "--concurrency", "1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    pattern = re.compile(r"died \(exit code 1\) after \d+s; starting another in (\d+)s")
    deadline = time.monotonic() + 90
    for line in proc.stdout:  # until four children have died (or the deadline)
        lines.append(line)
        if sum(1 for seen in lines if pattern.search(seen)) >= 4 or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    output = "".join(lines) + proc.communicate(timeout=30)[0]
    delays = [int(d) for d in pattern.findall(output)]
    assert len(delays) >= 4, output
    # Children that die young are restarted 1 s, then 2 s, 4 s, 8 s ... later.
    assert delays[:4] == sorted(delays[:4]) and delays[3] >= 4, f"restarts did not back off: {delays}"
    assert "the database is unreachable" in output and "retrying in" in output
    assert "Traceback" not in output, "one line per failure, no tracebacks"
