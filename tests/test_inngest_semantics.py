"""Regression tests for silent mismatches with Inngest's semantics (issue 6).

Each test here failed on the engine before the fix it names: events of one claim taking
effect out of order, failure handlers that loop, ``ctx.attempt`` that stuck, usage errors
retried for minutes, missing size limits, replays of live runs.
"""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from django.test import override_settings

import django_workflows as wf
from django_workflows.engine import clock, queue
from django_workflows.engine.intake import process_events, system_event_lineage
from django_workflows.engine.worker import process_items
from django_workflows.models import Event, QueueItem, Run, Step
from django_workflows.testing import drain

pytestmark = pytest.mark.django_db


def claim_all(worker_id: str = "w", limit: int = 1000):
    return queue.claim(worker_id, limit)


# -- 2. events of one claim take effect in the order they were received ------------------------


def define_drip(sent: list):
    @wf.function(
        id="drip", trigger="user.signup", cancel=[wf.Cancel(event="user.deleted", match="data.email")]
    )
    def drip(ctx):
        ctx.step.run("welcome", lambda: sent.append(ctx.event.data["email"]))
        ctx.step.sleep("wait", "2d")
        ctx.step.run("tips", lambda: sent.append("tips:" + ctx.event.data["email"]))

    return drip


def test_a_cancel_in_the_same_claim_as_its_trigger_cancels_the_run_worker_path():
    """The worker's intake takes both events in one batch (process_events with keep_for)."""
    sent: list = []
    define_drip(sent)
    wf.send("user.signup", data={"email": "a@example.com"})
    wf.send("user.deleted", data={"email": "a@example.com"})
    batch = claim_all()
    assert [item.kind for item in batch] == ["event", "event"]
    kept = process_events(batch, db="default", keep_for="w", keep_max=8)
    run = Run.objects.get(function_id="drip")
    assert run.status == "cancelled", "the cancel event of the same batch must cancel the run"
    for item in kept:  # the worker would run what intake kept: a cancelled run does nothing
        process_items([item], db="default")
    drain(advance_time=True)
    assert sent == []


def test_a_cancel_listed_after_its_trigger_in_one_send_cancels_it():
    sent: list = []
    define_drip(sent)
    wf.send([
        wf.Event(name="user.signup", data={"email": "b@example.com"}),
        wf.Event(name="user.deleted", data={"email": "b@example.com"}),
    ])
    drain(advance_time=True)
    assert Run.objects.get(function_id="drip").status == "cancelled"
    assert sent == []


def test_a_cancel_before_its_trigger_in_one_batch_cancels_nothing():
    sent: list = []
    define_drip(sent)
    wf.send("user.deleted", data={"email": "c@example.com"})
    wf.send("user.signup", data={"email": "c@example.com"})
    drain(advance_time=True, batch_size=50)
    assert Run.objects.get(function_id="drip").status == "completed"
    assert sent == ["c@example.com", "tips:c@example.com"]


def test_the_demo_drip_is_cancelled_when_both_events_arrive_in_one_claim():
    """The reported reproduction, on the demo's own new-user-drip function."""
    wf.send("user.signup", data={"email": "gone@example.com"})
    wf.send("user.deleted", data={"email": "gone@example.com"})
    process_items(claim_all(), db="default")
    assert Run.objects.get(function_id="new-user-drip").status == "cancelled"
    drain(advance_time=True)
    assert not Step.objects.filter(run__function_id="new-user-drip").exists()


def test_drain_takes_batches_as_a_worker_does():
    @wf.function(id="noop", trigger="noop.go")
    def noop(ctx):
        return 1

    wf.send([wf.Event(name="noop.go") for _ in range(5)])
    events = [i for i in queue.claim("peek", 100)]
    QueueItem.objects.update(worker_id="", due_at=clock.now())  # put them back
    assert len(events) == 5
    assert drain(batch_size=3) == 5 + 5  # five events (two claims), five runs
    assert set(Run.objects.values_list("status", flat=True)) == {"completed"}


def _scenario(seed: int) -> list[wf.Event]:
    """Random triggers, cancels and wait-resolving events over a few keys."""
    rng = random.Random(seed)
    events = []
    for _ in range(rng.randint(5, 40)):
        key = f"k{rng.randint(0, 4)}"
        name = rng.choice(["prop.start", "prop.start", "prop.cancel", "prop.answer", "prop.answer"])
        events.append(wf.Event(name=name, data={"key": key, "n": rng.randint(0, 3)}))
    return events


def define_property_functions():
    @wf.function(
        id="prop-flow",
        trigger="prop.start",
        cancel=[wf.Cancel(event="prop.cancel", match="data.key", if_exp="async.data.n >= 1")],
    )
    def prop_flow(ctx):
        answer = ctx.step.wait_for_event("answer", event="prop.answer", match="data.key", timeout="1h")
        ctx.step.run("after", lambda: None)
        return None if answer is None else answer.data["n"]


def _outcomes() -> list[tuple]:
    runs = Run.objects.filter(function_id="prop-flow").select_related("event")
    return sorted(
        (r.event.data["key"], r.event.received_at.isoformat(), r.status, repr(r.output)) for r in runs
    )


def _play(events: list[wf.Event], batch_size: int) -> list[tuple]:
    """Send the events one send() at a time (one intake per claim) and run everything."""
    for event in events:
        wf.send([event])
    # Intake goes through the worker's path: claims of batch_size, events taken together.
    while items := queue.claim("prop", batch_size):
        process_items(items, db="default")
    drain(advance_time=True, batch_size=batch_size)
    return _outcomes()


@pytest.mark.parametrize("seed", range(12))
def test_any_batch_size_ends_every_run_as_one_at_a_time(seed):
    """Property: the batch size (1..50) never changes how any run ends."""
    define_property_functions()
    events = _scenario(seed)
    sizes = random.Random(seed).sample(range(2, 51), 3)
    results = {}
    for size in [1, *sizes]:
        Run.objects.all().delete()
        Event.objects.all().delete()
        QueueItem.objects.all().delete()
        clock.reset()
        outcome = _play(events, size)
        # Compare by position: received times differ between plays, the order does not.
        results[size] = [(key, status, output) for key, _, status, output in outcome]
    one_at_a_time = results[1]
    assert one_at_a_time, "the scenario started no run"
    for size, outcome in results.items():
        assert sorted(outcome) == sorted(one_at_a_time), f"batch size {size} differs from batch size 1"


# -- 3. failure handlers never loop ------------------------------------------------------------


def test_a_failing_catch_all_failure_handler_does_not_trigger_itself():
    @wf.function(id="flaky", trigger="flaky.go", retries=0)
    def flaky(ctx):
        ctx.step.run("boom", lambda: 1 / 0)

    @wf.function(id="catch-all", trigger="workflows/function.failed", retries=0)
    def catch_all(ctx):
        ctx.step.run("alert", lambda: 1 / 0)

    wf.send("flaky.go")
    jobs = drain(advance_time=True, max_jobs=200)
    assert jobs < 50, f"{jobs} jobs: the failure handler loops"
    assert Run.objects.filter(function_id="catch-all").count() == 1


def test_two_catch_alls_that_fail_do_not_feed_each_other():
    for name in ("alert-a", "alert-b"):
        @wf.function(id=name, trigger="workflows/function.failed", retries=0)
        def alert(ctx):
            raise wf.NonRetriableError("chat is down")

    @wf.function(id="broken", trigger="broken.go", retries=0)
    def broken(ctx):
        raise wf.NonRetriableError("bug")

    wf.send("broken.go")
    assert drain(advance_time=True, max_jobs=500) < 100
    # broken fails: a and b run; a's failure starts b once, b's failure starts a once.
    assert Run.objects.filter(function_id="alert-a").count() == 2
    assert Run.objects.filter(function_id="alert-b").count() == 2


def test_a_function_on_finished_events_does_not_retrigger_itself():
    @wf.function(id="audit", trigger="workflows/function.finished")
    def audit(ctx):
        return ctx.event.data["function_id"]

    @wf.function(id="work", trigger="work.go")
    def work(ctx):
        return "done"

    wf.send("work.go")
    assert drain(advance_time=True, max_jobs=200) < 20
    assert list(Run.objects.filter(function_id="audit").values_list("output", flat=True)) == ["work"]


def test_a_cancelled_listener_that_is_cancelled_does_not_loop():
    @wf.function(
        id="on-cancel", trigger="workflows/function.cancelled",
        cancel=[wf.Cancel(event="stop.all")],
    )
    def on_cancel(ctx):
        ctx.step.sleep("nap", "1h")

    @wf.function(id="victim", trigger="victim.go", cancel=[wf.Cancel(event="stop.all")])
    def victim(ctx):
        ctx.step.sleep("nap", "1h")

    wf.send("victim.go")
    drain()
    wf.send("stop.all")
    assert drain(advance_time=True, max_jobs=200) < 30
    assert Run.objects.filter(function_id="on-cancel").count() == 1


def test_on_failure_handler_that_fails_runs_once():
    def handler(ctx):
        raise wf.NonRetriableError("the handler fails too")

    @wf.function(id="with-handler", trigger="wh.go", retries=0, on_failure=handler)
    def fn(ctx):
        raise wf.NonRetriableError("first failure")

    wf.send("wh.go")
    drain(advance_time=True, max_jobs=100)
    assert Run.objects.get(function_id="with-handler-failure").status == "failed"


def test_lineage_of_nested_system_events():
    inner = {"name": "workflows/function.failed", "data": {"function_id": "a", "event": {"name": "x.y", "data": {}}}}
    outer = {"name": "workflows/function.finished", "data": {"function_id": "b", "event": inner}}
    assert system_event_lineage(outer) == {"a", "b"}
    assert system_event_lineage({"name": "user.signup", "data": {"function_id": "a"}}) == set()


# -- 4. ctx.attempt goes back to 0 once a step succeeds ----------------------------------------


def test_ctx_attempt_is_reset_after_a_step_succeeds():
    seen: list = []
    failures = {"n": 0}

    def flaky():
        failures["n"] += 1
        if failures["n"] < 3:
            raise RuntimeError("try again")
        return "ok"

    @wf.function(id="attempts", trigger="attempts.go")
    def fn(ctx):
        ctx.step.run("flaky", flaky)
        seen.append(("after-flaky", ctx.attempt))
        ctx.step.run("then", lambda: seen.append(("in-then", ctx.attempt)))
        return ctx.attempt

    wf.send("attempts.go")
    drain(advance_time=True)
    run = Run.objects.get(function_id="attempts")
    assert run.status == "completed" and run.output == 0
    assert ("after-flaky", 0) in seen and ("after-flaky", 2) not in seen
    assert ("in-then", 0) in seen


def test_handler_attempts_count_again_from_0_after_a_step():
    seen: list = []
    state = {"before": 0, "after": 0}

    def fn(ctx):
        if state["before"] < 1:
            state["before"] += 1
            raise RuntimeError("before the step")
        ctx.step.run("step", lambda: "ok")
        seen.append(ctx.attempt)
        if state["after"] < 1:
            state["after"] += 1
            raise RuntimeError("after the step")
        return ctx.attempt

    wf.function(id="handler-attempts", trigger="ha.go", retries=1)(fn)
    wf.send("ha.go")
    drain(advance_time=True)
    run = Run.objects.get(function_id="handler-attempts")
    # retries=1 allows one retry for the code after the step, although the code before
    # it already used its one retry.
    assert run.status == "completed", run.error
    assert run.output == 1
    assert seen[0] == 0


# -- 5. usage errors fail at once, not after minutes of retries ---------------------------------


@pytest.mark.parametrize(
    "body, message",
    [
        (lambda ctx: ctx.step.sleep("s", 5), "bare number"),
        (lambda ctx: ctx.step.sleep_until("s", __import__("datetime").datetime(2030, 1, 1)), "timezone"),
        (lambda ctx: ctx.step.wait_for_event("w", event="x.y", timeout="1h", if_exp="async.data.a ==="), "does not compile"),
        (lambda ctx: ctx.step.invoke("i", function="no-such-function"), "no-such-function"),
        (lambda ctx: ctx.step.send_event("e", wf.Event(name="")), "name"),
        (lambda ctx: ctx.step.run("r", lambda: wf.parse_duration("soon")), "soon"),
    ],
    ids=["bare-number", "naive-datetime", "bad-expression", "unknown-invoke", "bad-event", "inside-a-step"],
)
def test_usage_errors_fail_the_run_at_once(body, message):
    wf.function(id="misused", trigger="misused.go", retries=4)(body)
    wf.send("misused.go")
    start = clock.now()
    drain(advance_time=True)
    run = Run.objects.get(function_id="misused")
    assert run.status == "failed"
    assert message in str(run.error)
    assert clock.now() - start < timedelta(seconds=5), "the run was retried with backoff"


# -- 6. size limits -------------------------------------------------------------------------


def test_an_oversized_event_is_refused_and_nothing_is_stored():
    with pytest.raises(wf.EventValidationError, match=r"over the limit of 524,288 bytes"):
        wf.send("big.event", data={"blob": "x" * (512 * 1024)})
    assert not Event.objects.exists()
    with override_settings(DJANGO_WORKFLOWS={"MAX_EVENT_BYTES": 100}):
        with pytest.raises(wf.EventValidationError, match="MAX_EVENT_BYTES"):
            wf.send([wf.Event(name="ok"), wf.Event(name="big", data={"b": "x" * 100})])
    assert not Event.objects.exists()


def test_an_oversized_step_output_fails_the_step_without_retries():
    calls = []

    @wf.function(id="big-output", trigger="big.output", retries=4)
    def fn(ctx):
        return ctx.step.run("huge", lambda: calls.append(1) or "x" * (4 * 1024 * 1024 + 1))

    wf.send("big.output")
    drain(advance_time=True)
    run = Run.objects.get(function_id="big-output")
    assert run.status == "failed" and calls == [1]
    step = Step.objects.get(run=run, step_id="huge")
    assert step.status == "failed" and step.attempts == 1 and step.output is None
    assert "over the limit of 4,194,304 bytes" in step.error["message"]
    assert "MAX_STEP_OUTPUT_BYTES" in step.error["message"]


def test_a_run_past_the_step_limit_fails():
    @wf.function(id="many-steps", trigger="many.steps")
    def fn(ctx):
        for n in range(30):
            try:
                ctx.step.run("s", lambda n=n: n)
            except Exception:  # the limit cannot be swallowed by the handler
                pass
        return "finished"

    with override_settings(DJANGO_WORKFLOWS={"MAX_STEPS_PER_RUN": 10}):
        wf.send("many.steps")
        drain(advance_time=True)
    run = Run.objects.get(function_id="many-steps")
    assert run.status == "failed"
    assert run.error["name"] == "StepLimitExceeded" and "10 steps" in run.error["message"]
    assert Step.objects.filter(run=run).count() == 10


# -- 7. replaying a run that has not finished is refused ---------------------------------------


def test_replaying_a_live_run_is_refused():
    @wf.function(id="sleeper", trigger="sleeper.go")
    def fn(ctx):
        ctx.step.sleep("nap", "1d")
        return "woke"

    wf.send("sleeper.go")
    drain()
    run = Run.objects.get(function_id="sleeper")
    assert run.status == "running"
    with pytest.raises(wf.RunNotFinishedError, match="cancel it first"):
        wf.replay(run.pk)
    assert Run.objects.filter(function_id="sleeper").count() == 1
    wf.cancel(run.pk)
    again = wf.replay(run.pk)
    assert again.replay_of_id == run.pk


# -- 2b. events taken in by another worker while a waiter is being registered ------------------


def test_a_cancel_taken_in_while_its_run_was_being_started_still_cancels(monkeypatch):
    """Another worker takes in the cancel event after the trigger's intake looked for
    waiters and before it stored the new run's cancel rule."""
    from django_workflows.engine import admission

    sent: list = []
    define_drip(sent)
    wf.send("user.signup", data={"email": "race@example.com"})
    trigger_batch = claim_all("worker-a")
    wf.send("user.deleted", data={"email": "race@example.com"})
    real_insert = admission.insert_runs

    def insert_after_the_other_worker(db, pairs, **kwargs):
        # The other worker's whole intake happens here: it finds no cancel rule yet.
        process_events(claim_all("worker-b"), db=db)
        return real_insert(db, pairs, **kwargs)

    monkeypatch.setattr(admission, "insert_runs", insert_after_the_other_worker)
    process_events(trigger_batch, db="default")
    monkeypatch.undo()
    assert Run.objects.get(function_id="drip").status == "cancelled"
    drain(advance_time=True)
    assert sent == []


def test_an_event_taken_in_while_a_wait_was_beginning_resolves_it(monkeypatch):
    from django_workflows.engine import lifecycle

    @wf.function(id="approval", trigger="doc.submitted")
    def approval(ctx):
        answer = ctx.step.wait_for_event("approved", event="doc.approved", match="data.doc", timeout="1d")
        return None if answer is None else answer.data["by"]

    wf.send("doc.submitted", data={"doc": 7})
    drain(batch_size=1, max_jobs=1)  # the trigger: the run is queued
    real_add = lifecycle.add_waiters

    def add_after_the_event(db, waiters):
        if waiters and waiters[0].kind == "wait":
            wf.send("doc.approved", data={"doc": 7, "by": "ada"})
            process_events([i for i in claim_all("worker-b") if i.kind == "event"], db=db)
        return real_add(db, waiters)

    monkeypatch.setattr(lifecycle, "add_waiters", add_after_the_event)
    drain(batch_size=1, max_jobs=1)  # the run reaches the wait; the event arrives meanwhile
    monkeypatch.undo()
    drain()
    run = Run.objects.get(function_id="approval")
    assert run.status == "completed" and run.output == "ada"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_intakes_of_a_trigger_and_its_cancel_on_postgres():
    """Two threads, two connections: the trigger's intake is inside its transaction when the
    cancel's intake starts; whichever order they commit in, the run ends cancelled."""
    import threading

    from django.db import connections

    from django_workflows.engine import intake as intake_module

    sent: list = []
    define_drip(sent)
    wf.send("user.signup", data={"email": "two@example.com"})
    trigger_batch = queue.claim("worker-a", 10)
    wf.send("user.deleted", data={"email": "two@example.com"})
    cancel_batch = queue.claim("worker-b", 10)
    paused, go_on = threading.Event(), threading.Event()
    real_take = intake_module._take

    def slow_take(db, items):
        taken = real_take(db, items)
        if threading.current_thread().name == "worker-a":
            paused.set()
            go_on.wait(10)
        return taken

    intake_module._take = slow_take
    errors: list = []

    def run(batch):
        try:
            process_events(batch, db="default")
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    try:
        a = threading.Thread(target=run, args=(trigger_batch,), name="worker-a")
        b = threading.Thread(target=run, args=(cancel_batch,), name="worker-b")
        a.start()
        assert paused.wait(10)
        b.start()
        b.join(0.5)  # without the name locks, b would finish here, before a's run exists
        go_on.set()
        a.join(10)
        b.join(10)
    finally:
        intake_module._take = real_take
    assert not errors
    assert Run.objects.get(function_id="drip").status == "cancelled"
