"""ctx.step.run / sleep / sleep_until, step records, run statuses, and the context."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from functools import partial

import pytest

import django_workflows as wf
from django_workflows.engine import clock
from django_workflows.models import QueueItem, Run, Step
from django_workflows.testing import drain
from testproject.demo.models import Contact

pytestmark = pytest.mark.django_db

calls: Counter = Counter()
seen: list = []


@pytest.fixture(autouse=True)
def _reset():
    calls.clear()
    seen.clear()


def counted(name, value=None):
    calls[name] += 1
    return value if value is not None else name


def start(event="st.go", data=None):
    wf.send(event, data=data or {})


def close_to(actual, expected, tolerance=timedelta(milliseconds=50)):
    return abs(actual - expected) <= tolerance


def the_run(function_id):
    return Run.objects.get(function_id=function_id)


def steps_of(run):
    return {s.step_id: s for s in run.steps.all()}


# -- run: results --------------------------------------------------------------------------------


def test_step_result_goes_through_a_json_round_trip_on_first_run_and_replay():
    @wf.function(id="st-json", trigger="st.go")
    def fn(ctx):
        value = ctx.step.run("make", lambda: counted("make", {"t": (1, 2), 3: "int key", "n": None}))
        seen.append(value)
        ctx.step.sleep("nap", "1m")
        return value

    start()
    drain()
    first = seen[0]
    assert first == {"t": [1, 2], "3": "int key", "n": None}  # tuple -> list, int key -> str
    assert isinstance(first["t"], list)

    drain(advance_time=True)
    run = the_run("st-json")
    assert run.status == "completed"
    assert seen[1] == first  # the same value on replay
    assert run.output == first
    assert steps_of(run)["make"].output == first
    assert calls["make"] == 1


def test_a_tuple_result_is_a_list_even_the_first_time():
    @wf.function(id="st-tuple", trigger="st.go")
    def fn(ctx):
        value = ctx.step.run("pair", lambda: ("a", 1))
        return {"type": type(value).__name__, "value": value}

    start()
    drain()
    assert the_run("st-tuple").output == {"type": "list", "value": ["a", 1]}


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -3, 2.5, "text", "", [], {}, [1, [2, [3]]], {"a": {"b": None}}],
)
def test_json_values_come_back_equal(value):
    @wf.function(id="st-values", trigger="st.go")
    def fn(ctx):
        return {"v": ctx.step.run("v", lambda: value)}

    start()
    drain()
    run = the_run("st-values")
    assert run.status == "completed"
    assert run.output == {"v": value}
    assert steps_of(run)["v"].output == value


@pytest.mark.parametrize(
    "bad",
    [object(), {1, 2}, datetime(2024, 1, 1, tzinfo=dt_timezone.utc), float("nan"), float("inf"), b"bytes"],
    ids=["object", "set", "datetime", "nan", "inf", "bytes"],
)
def test_a_non_json_result_fails_the_step_at_once(bad):
    @wf.function(id="st-nonjson", trigger="st.go", retries=4)
    def fn(ctx):
        ctx.step.run("bad", lambda: counted("bad", bad))
        return "unreachable"

    start()
    drain(advance_time=True)
    run = the_run("st-nonjson")
    assert run.status == "failed"
    assert calls["bad"] == 1  # no retry
    step = steps_of(run)["bad"]
    assert step.status == "failed"
    assert step.attempts == 1
    assert "JSON" in step.error["message"]
    assert "'bad'" in step.error["message"]
    assert "JSON" in run.error["message"]


def test_a_non_json_function_result_fails_the_run_with_a_clear_error():
    @wf.function(id="st-nonjson-out", trigger="st.go", retries=0)
    def fn(ctx):
        return object()

    start()
    drain(advance_time=True)
    run = the_run("st-nonjson-out")
    assert run.status == "failed"
    assert "JSON" in run.error["message"]


def test_positional_args_and_functools_partial_for_keyword_args():
    def greet(greeting, name, *, punctuation="."):
        return f"{greeting}, {name}{punctuation}"

    @wf.function(id="st-partial", trigger="st.go")
    def fn(ctx):
        a = ctx.step.run("a", greet, "Hello", "Ada")
        b = ctx.step.run("b", partial(greet, punctuation="!"), "Hi", ctx.event.data["name"])
        return [a, b]

    start(data={"name": "Grace"})
    drain()
    assert the_run("st-partial").output == ["Hello, Ada.", "Hi, Grace!"]


def test_step_results_are_passed_to_later_steps():
    @wf.function(id="st-chain", trigger="st.go")
    def fn(ctx):
        numbers = ctx.step.run("numbers", lambda: [1, 2, 3])
        total = ctx.step.run("sum", lambda xs: sum(xs), numbers)
        ctx.step.sleep("pause", "1h")
        doubled = ctx.step.run("double", lambda t: t * 2, total)
        return {"numbers": numbers, "total": total, "doubled": doubled}

    start()
    drain(advance_time=True)
    run = the_run("st-chain")
    assert run.output == {"numbers": [1, 2, 3], "total": 6, "doubled": 12}
    assert steps_of(run)["double"].output == 12


def test_a_non_callable_step_fn_is_refused():
    @wf.function(id="st-not-callable", trigger="st.go", retries=0)
    def fn(ctx):
        ctx.step.run("x", "not callable")

    start()
    drain()
    run = the_run("st-not-callable")
    assert run.status == "failed"
    assert "fn must be callable" in run.error["message"]


def test_float_step_results_are_the_same_value_and_type_on_replay():
    values = [1e20, 2.5e300, 1.0, 0.1, -2.5, 123456789.125]

    @wf.function(id="st-floats", trigger="st.go")
    def fn(ctx):
        got = ctx.step.run("floats", lambda: values)
        seen.append(got)
        ctx.step.sleep("nap", "1s")
        return got

    start()
    drain(advance_time=True)
    first, replayed = seen
    assert first == values
    assert [type(v) for v in first] == [float] * len(values)
    assert replayed == first
    assert [type(v) for v in replayed] == [type(v) for v in first]
    assert the_run("st-floats").output == values


def test_a_step_result_with_a_nul_character_is_recorded_or_refused_at_once():
    def nul():
        calls["nul"] += 1
        return "a\x00b"

    @wf.function(id="st-nul", trigger="st.go", retries=2)
    def fn(ctx):
        return ctx.step.run("nul", nul)

    start()
    drain(advance_time=True, max_jobs=50)
    run = the_run("st-nul")
    assert calls["nul"] == 1  # recorded, or refused at once: never re-run for this
    if run.status == "completed":
        assert run.output == "a\x00b"
    else:
        assert run.status == "failed"
        step = steps_of(run)["nul"]
        assert step.attempts == 1
        assert "nul" in run.error["message"]


# -- run: memoization -------------------------------------------------------------------------------


def test_a_completed_step_never_runs_again_on_replay():
    @wf.function(id="st-memo", trigger="st.go")
    def fn(ctx):
        seen.append("handler")
        a = ctx.step.run("a", counted, "a")
        ctx.step.sleep("s1", "10m")
        b = ctx.step.run("b", counted, "b")
        ctx.step.sleep("s2", "2d")
        c = ctx.step.run("c", counted, "c")
        return [a, b, c]

    start()
    drain(advance_time=True)
    run = the_run("st-memo")
    assert run.status == "completed"
    assert run.output == ["a", "b", "c"]
    assert calls == Counter({"a": 1, "b": 1, "c": 1})
    assert seen.count("handler") == 3  # started, then resumed after each sleep
    assert all(s.attempts in (0, 1) for s in run.steps.all())


def test_a_step_that_writes_a_row_writes_it_once():
    def create(email):
        return Contact.objects.create(email=email, name="x").pk

    @wf.function(id="st-row", trigger="st.go")
    def fn(ctx):
        pk = ctx.step.run("create", create, "once@example.com")
        ctx.step.sleep("wait", "1d")
        ctx.step.sleep("wait-more", "1d")
        return pk

    start()
    drain(advance_time=True)
    run = the_run("st-row")
    assert run.status == "completed"
    assert Contact.objects.count() == 1
    assert run.output == Contact.objects.get().pk


def test_repeated_step_ids_get_numbered_suffixes_consistently_on_replay():
    @wf.function(id="st-repeat", trigger="st.go")
    def fn(ctx):
        results = []
        for n in range(3):
            results.append(ctx.step.run("item", counted, f"item-{n}"))
            ctx.step.sleep("between", "1m")
        results.append(ctx.step.run("other", counted, "other"))
        return results

    start()
    drain(advance_time=True)
    run = the_run("st-repeat")
    assert run.status == "completed"
    assert run.output == ["item-0", "item-1", "item-2", "other"]
    assert [s.step_id for s in run.steps.all()] == [
        "item", "between", "item:1", "between:1", "item:2", "between:2", "other"
    ]
    assert steps_of(run)["item:2"].output == "item-2"
    assert calls == Counter({"item-0": 1, "item-1": 1, "item-2": 1, "other": 1})


def test_automatic_suffixes_never_collide_with_an_explicit_step_id():
    @wf.function(id="st-collide", trigger="st.go")
    def fn(ctx):
        return [
            ctx.step.run("a:1", counted, "x"),
            ctx.step.run("a", counted, "y"),
            ctx.step.run("a", counted, "z"),  # must not be taken for "a:1"
        ]

    start()
    drain(advance_time=True, max_jobs=50)
    run = the_run("st-collide")
    if run.status == "failed":  # refusing the ambiguous id clearly is fine too
        assert "a:1" in run.error["message"]
        return
    assert run.status == "completed"
    assert run.output == ["x", "y", "z"]
    assert calls == Counter({"x": 1, "y": 1, "z": 1})
    outputs = {s.step_id: s.output for s in run.steps.all()}
    assert len(outputs) == 3
    assert outputs["a:1"] == "x"
    assert sorted(outputs.values()) == ["x", "y", "z"]


@pytest.mark.parametrize("bad_id", ["", None, 5, "x" * 201])
def test_bad_step_ids_are_refused(bad_id):
    @wf.function(id="st-bad-id", trigger="st.go", retries=0)
    def fn(ctx):
        ctx.step.run(bad_id, lambda: 1)

    start()
    drain()
    run = the_run("st-bad-id")
    assert run.status == "failed"
    assert "step id must be a non-empty string" in run.error["message"]


def test_changing_a_steps_kind_between_replays_fails_the_run_clearly():
    flip = {"kind": "run"}

    @wf.function(id="st-kind", trigger="st.go")
    def fn(ctx):
        if flip["kind"] == "run":
            ctx.step.run("x", lambda: 1)
        else:
            ctx.step.sleep("x", "1s")
        ctx.step.sleep("later", "1h")
        return "done"

    start()
    drain()
    flip["kind"] = "sleep"
    drain(advance_time=True)
    run = the_run("st-kind")
    assert run.status == "failed"
    assert "deterministic" in run.error["message"]


def test_a_handlers_except_exception_does_not_swallow_a_sleep():
    @wf.function(id="st-swallow", trigger="st.go")
    def fn(ctx):
        try:
            ctx.step.sleep("nap", "1h")
        except Exception:
            return "swallowed"
        return "slept"

    start()
    drain()
    assert the_run("st-swallow").status == "running"
    drain(advance_time=True)
    assert the_run("st-swallow").output == "slept"


def test_a_tuple_returned_by_the_handler_is_stored_as_a_list():
    @wf.function(id="st-tuple-out", trigger="st.go")
    def fn(ctx):
        return (1, ("a", None))

    start()
    drain()
    assert the_run("st-tuple-out").output == [1, ["a", None]]


# -- run: atomic --------------------------------------------------------------------------------------


def test_atomic_step_writes_roll_back_when_the_step_raises():
    def create_then_fail(email):
        Contact.objects.create(email=email, name="x")
        raise RuntimeError("after the write")

    @wf.function(id="st-atomic-fail", trigger="st.go", retries=1)
    def fn(ctx):
        ctx.step.run("write", create_then_fail, "rolled@example.com", atomic=True)

    start()
    drain(advance_time=True)
    run = the_run("st-atomic-fail")
    assert run.status == "failed"
    assert steps_of(run)["write"].attempts == 2
    assert Contact.objects.count() == 0


def test_non_atomic_step_writes_stay_when_the_step_raises():
    # The contrast with atomic=True: plain steps commit their writes as they go.
    def create_then_fail(email):
        Contact.objects.get_or_create(email=email, defaults={"name": "x"})
        raise RuntimeError("after the write")

    @wf.function(id="st-nonatomic-fail", trigger="st.go", retries=0)
    def fn(ctx):
        ctx.step.run("write", create_then_fail, "kept@example.com")

    start()
    drain()
    assert the_run("st-nonatomic-fail").status == "failed"
    assert Contact.objects.filter(email="kept@example.com").count() == 1


def test_atomic_step_commits_its_writes_with_its_result():
    def create(email):
        return Contact.objects.create(email=email, name="y").pk

    @wf.function(id="st-atomic-ok", trigger="st.go")
    def fn(ctx):
        pk = ctx.step.run("write", create, "ok@example.com", atomic=True)
        ctx.step.sleep("after", "1h")
        return pk

    start()
    drain(advance_time=True)
    run = the_run("st-atomic-ok")
    assert run.status == "completed"
    step = steps_of(run)["write"]
    assert step.status == "completed"
    assert step.output == Contact.objects.get(email="ok@example.com").pk == run.output


def test_atomic_step_with_a_non_json_result_rolls_back_its_writes():
    def create(email):
        return Contact.objects.create(email=email, name="z")  # a model instance: not JSON

    @wf.function(id="st-atomic-nonjson", trigger="st.go")
    def fn(ctx):
        ctx.step.run("write", create, "nonjson@example.com", atomic=True)

    start()
    drain(advance_time=True)
    run = the_run("st-atomic-nonjson")
    assert run.status == "failed"
    assert "JSON" in steps_of(run)["write"].error["message"]
    assert Contact.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_atomic_step_rolls_back_in_a_real_transaction():
    def create_then_fail(email):
        Contact.objects.create(email=email, name="x")
        raise RuntimeError("nope")

    def create(email):
        return Contact.objects.create(email=email, name="x").email

    @wf.function(id="st-atomic-real", trigger="st.go", retries=0)
    def fn(ctx):
        ok = ctx.step.run("good", create, "good@example.com", atomic=True)
        try:
            ctx.step.run("bad", create_then_fail, "bad@example.com", atomic=True)
        except wf.StepError:
            pass
        return ok

    start()
    drain()
    assert the_run("st-atomic-real").output == "good@example.com"
    assert list(Contact.objects.values_list("email", flat=True)) == ["good@example.com"]


# -- sleep --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "duration, expected",
    [
        (timedelta(minutes=7), timedelta(minutes=7)),
        ("30s", timedelta(seconds=30)),
        ("2d", timedelta(days=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1w", timedelta(weeks=1)),
        ("500ms", timedelta(milliseconds=500)),
    ],
)
def test_sleep_durations(duration, expected):
    @wf.function(id="st-sleep", trigger="st.go")
    def fn(ctx):
        ctx.step.run("before", counted, "before")
        ctx.step.sleep("nap", duration)
        return ctx.step.run("after", counted, "after")

    start()
    drain()
    run = the_run("st-sleep")
    assert run.status == "running"
    nap = steps_of(run)["nap"]
    assert nap.kind == "sleep"
    assert nap.status == "waiting"
    assert close_to(nap.scheduled_at - nap.started_at, expected)
    assert nap.ended_at is None
    assert calls["after"] == 0

    if expected > timedelta(seconds=1):
        clock.advance_to(nap.scheduled_at - timedelta(milliseconds=100))
        assert drain() == 0
        assert calls["after"] == 0

    clock.advance_to(nap.scheduled_at)
    assert drain() == 1
    run.refresh_from_db()
    assert run.status == "completed"
    nap.refresh_from_db()
    assert nap.status == "completed"
    assert nap.ended_at >= nap.scheduled_at
    assert calls == Counter({"before": 1, "after": 1})


def test_sleep_until_an_aware_datetime():
    target = clock.now() + timedelta(days=10)

    @wf.function(id="st-until", trigger="st.go")
    def fn(ctx):
        ctx.step.sleep_until("until", target)
        return clock.now().isoformat()

    start()
    drain()
    run = the_run("st-until")
    step = steps_of(run)["until"]
    assert step.kind == "sleep"
    assert step.scheduled_at == target
    assert run.status == "running"
    drain(advance_time=True)
    run.refresh_from_db()
    assert run.status == "completed"
    assert datetime.fromisoformat(run.output) >= target


def test_sleep_until_an_iso_string():
    @wf.function(id="st-until-str", trigger="st.go")
    def fn(ctx):
        ctx.step.sleep_until("until", "2100-01-01T00:00:00+00:00")

    start()
    drain()
    assert steps_of(the_run("st-until-str"))["until"].scheduled_at == datetime(2100, 1, 1, tzinfo=dt_timezone.utc)


def test_sleep_until_the_past_does_not_wait():
    @wf.function(id="st-until-past", trigger="st.go")
    def fn(ctx):
        ctx.step.sleep_until("until", clock.now() - timedelta(hours=1))
        return "done"

    start()
    drain()
    run = the_run("st-until-past")
    assert run.status == "completed"
    assert steps_of(run)["until"].status == "completed"


def test_a_zero_sleep_does_not_wait():
    @wf.function(id="st-zero", trigger="st.go")
    def fn(ctx):
        ctx.step.sleep("zero", "0s")
        return "done"

    start()
    drain()
    assert the_run("st-zero").status == "completed"


@pytest.mark.parametrize("bare", [5, 0, 2.5, True])
def test_a_bare_number_duration_is_refused_naming_the_unit_problem(bare):
    with pytest.raises(wf.WorkflowDefinitionError) as info:
        wf.parse_duration(bare)
    assert "bare number" in str(info.value)
    assert "unit" in str(info.value)

    @wf.function(id="st-bare", trigger="st.go", retries=0)
    def fn(ctx):
        ctx.step.sleep("nap", bare)

    start()
    drain(advance_time=True)
    run = the_run("st-bare")
    assert run.status == "failed"
    assert "bare number" in run.error["message"]
    assert "'nap'" in run.error["message"]
    assert not Step.objects.filter(run=run).exists()


@pytest.mark.parametrize("bad", ["", "5", "soon", "5 parsecs", "1h30", "-5s", "h1", None, [1]])
def test_unreadable_durations_are_refused(bad):
    with pytest.raises(wf.WorkflowDefinitionError):
        wf.parse_duration(bad)


def test_an_absurdly_long_duration_is_refused_clearly():
    with pytest.raises(wf.WorkflowDefinitionError, match="99999999999d"):
        wf.parse_duration("99999999999d")


def test_negative_timedelta_is_refused():
    with pytest.raises(wf.WorkflowDefinitionError, match="negative"):
        wf.parse_duration(timedelta(seconds=-1))


@pytest.mark.parametrize(
    "text, expected",
    [("30s", 30), ("2d", 172800), ("1h30m", 5400), ("1H", 3600), (" 2m ", 120), ("1d12h", 129600)],
)
def test_duration_strings(text, expected):
    assert wf.parse_duration(text) == timedelta(seconds=expected)


def test_sleep_until_a_naive_datetime_is_refused():
    @wf.function(id="st-naive", trigger="st.go", retries=0)
    def fn(ctx):
        ctx.step.sleep_until("until", datetime(2030, 1, 1, 12, 0))

    start()
    drain(advance_time=True)
    run = the_run("st-naive")
    assert run.status == "failed"
    assert "has no timezone" in run.error["message"]
    assert "'until'" in run.error["message"]


def test_sleep_until_garbage_is_refused():
    @wf.function(id="st-garbage", trigger="st.go", retries=0)
    def fn(ctx):
        ctx.step.sleep_until("until", "next tuesday")

    start()
    drain(advance_time=True)
    assert "not an ISO 8601 datetime" in the_run("st-garbage").error["message"]


# -- step rows and run statuses ------------------------------------------------------------------------


def test_step_rows_and_run_status_through_a_runs_life():
    @wf.function(id="st-life", trigger="st.go")
    def fn(ctx):
        ctx.step.run("one", counted, "one")
        ctx.step.sleep("nap", "1h")
        ctx.step.run("two", counted, "two")
        return "finished"

    t0 = clock.now()
    start()
    assert drain(max_jobs=1) == 1  # the event: the run exists and has not started
    run = the_run("st-life")
    assert run.status == "queued"
    assert run.queued_at >= t0
    assert run.started_at is None and run.ended_at is None
    assert run.output is None and run.error is None

    drain()
    run.refresh_from_db()
    assert run.status == "running"  # sleeping
    assert run.started_at >= run.queued_at
    assert run.ended_at is None
    steps = steps_of(run)
    assert list(steps) == ["one", "nap"]
    one = steps["one"]
    assert (one.kind, one.status, one.attempts, one.output, one.error) == ("run", "completed", 1, "one", None)
    assert run.started_at <= one.started_at <= one.ended_at
    nap = steps["nap"]
    assert (nap.kind, nap.status, nap.attempts) == ("sleep", "waiting", 0)
    assert nap.started_at >= one.ended_at
    assert close_to(nap.scheduled_at - nap.started_at, timedelta(hours=1))
    assert nap.ended_at is None
    item = QueueItem.objects.get(run=run)
    assert item.due_at == nap.scheduled_at

    drain(advance_time=True)
    run.refresh_from_db()
    assert run.status == "completed"
    assert run.output == "finished"
    assert run.ended_at >= nap.scheduled_at
    assert run.ended_at >= run.started_at
    steps = steps_of(run)
    assert list(steps) == ["one", "nap", "two"]
    assert steps["nap"].status == "completed"
    assert steps["nap"].ended_at >= steps["nap"].scheduled_at
    assert (steps["two"].status, steps["two"].attempts) == ("completed", 1)
    assert not QueueItem.objects.filter(run=run).exists()  # finished items are deleted


def test_a_run_without_steps_completes_in_one_go():
    @wf.function(id="st-nosteps", trigger="st.go")
    def fn(ctx):
        return {"hello": ctx.event.data["who"]}

    start(data={"who": "world"})
    assert drain() == 2  # the event, then the run
    run = the_run("st-nosteps")
    assert run.status == "completed"
    assert run.output == {"hello": "world"}
    assert run.started_at is not None and run.ended_at >= run.started_at
    assert run.steps.count() == 0


# -- the context ---------------------------------------------------------------------------------------


def test_ctx_ids_and_event_fields():
    @wf.function(id="st-ctx", trigger="st.ctx")
    def fn(ctx):
        seen.append(
            {
                "run_id": ctx.run_id,
                "function_id": ctx.function_id,
                "event": ctx.event,
                "events": list(ctx.events),
            }
        )
        return None

    ts = datetime(2024, 5, 17, 8, 30, tzinfo=dt_timezone.utc)
    wf.send("st.ctx", data={"user": 7}, id="evt-123", ts=ts)
    drain()
    run = the_run("st-ctx")
    (info,) = seen
    assert info["run_id"] == str(run.id)
    assert info["function_id"] == "st-ctx"
    event = info["event"]
    assert event.id == "evt-123"
    assert event.name == "st.ctx"
    assert event.data == {"user": 7}
    assert event.ts == ts
    assert event.ts.tzinfo is not None
    assert info["events"] == [event]


def test_ctx_event_ts_is_aware_when_not_given():
    @wf.function(id="st-ctx-ts", trigger="st.go")
    def fn(ctx):
        seen.append(ctx.event.ts)

    before = clock.now()
    start()
    drain()
    assert seen[0].tzinfo is not None
    assert seen[0] >= before


def test_ctx_attempt_is_zero_based_per_step():
    @wf.function(id="st-attempt", trigger="st.go", retries=3)
    def fn(ctx):
        def flaky():
            seen.append(("flaky", ctx.attempt))
            if ctx.attempt < 2:
                raise RuntimeError("not yet")
            return "ok"

        def steady():
            seen.append(("steady", ctx.attempt))
            return "fine"

        ctx.step.run("flaky", flaky)
        ctx.step.run("steady", steady)
        return "done"

    start()
    drain(advance_time=True)
    assert the_run("st-attempt").status == "completed"
    assert seen == [("flaky", 0), ("flaky", 1), ("flaky", 2), ("steady", 0)]


def test_ctx_logger_is_silent_while_memoized_steps_replay(caplog):
    @wf.function(id="st-log", trigger="st.go")
    def fn(ctx):
        ctx.logger.info("begin")
        ctx.step.run("one", counted, "one")
        ctx.logger.info("after one")
        ctx.step.sleep("nap", "1h")
        ctx.logger.info("after nap")
        ctx.step.run("two", counted, "two")
        ctx.logger.info("end")

    caplog.set_level(logging.INFO, logger="django_workflows")
    start()
    drain(advance_time=True)
    assert the_run("st-log").status == "completed"
    messages = [r.getMessage() for r in caplog.records if r.name == "django_workflows.functions.st-log"]
    # The handler ran twice (before and after the sleep): replayed code is silent.
    assert [m.split("] ", 1)[1] for m in messages] == ["begin", "after one", "after nap", "end"]
    run = the_run("st-log")
    assert all(m.startswith(f"[st-log {run.id}] ") for m in messages)


def test_a_log_line_before_a_sleep_appears_once(caplog):
    @wf.function(id="st-log-sleep", trigger="st.go")
    def fn(ctx):
        ctx.logger.info("before the sleep")
        ctx.step.sleep("nap", "1h")
        ctx.logger.info("after the sleep")

    caplog.set_level(logging.INFO, logger="django_workflows")
    start()
    drain(advance_time=True)
    assert the_run("st-log-sleep").status == "completed"
    messages = [r.getMessage().split("] ", 1)[1] for r in caplog.records
                if r.name == "django_workflows.functions.st-log-sleep"]
    assert messages == ["before the sleep", "after the sleep"]


def test_ctx_logger_respects_the_level(caplog):
    @wf.function(id="st-log-level", trigger="st.go")
    def fn(ctx):
        ctx.logger.debug("hidden")
        ctx.logger.warning("shown")

    caplog.set_level(logging.WARNING, logger="django_workflows")
    start()
    drain()
    messages = [r.getMessage() for r in caplog.records if r.name == "django_workflows.functions.st-log-level"]
    assert len(messages) == 1 and messages[0].endswith("shown")


def test_a_log_line_before_a_retried_step_appears_once(caplog):
    def flaky():
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise RuntimeError("not yet")
        return "ok"

    @wf.function(id="st-log-retry", trigger="st.go", retries=3)
    def fn(ctx):
        ctx.logger.info("before the flaky step")
        ctx.step.run("flaky", flaky)
        ctx.logger.info("after the flaky step")

    caplog.set_level(logging.INFO, logger="django_workflows")
    start()
    drain(advance_time=True)
    assert the_run("st-log-retry").status == "completed"
    assert calls["flaky"] == 3
    messages = [r.getMessage().split("] ", 1)[1] for r in caplog.records
                if r.name == "django_workflows.functions.st-log-retry"]
    assert messages == ["before the flaky step", "after the flaky step"]
