"""``manage.py workflows``: every subcommand, its --json output and its errors."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

import django_workflows as wf
from django_workflows.engine import clock
from django_workflows.models import Attempt, Event, FunctionState, QueueItem, Run, Step
from django_workflows.testing import drain

pytestmark = pytest.mark.django_db

ANSI = re.compile(r"\x1b\[[0-9;]*m")
calls: dict[str, int] = {}


@pytest.fixture(autouse=True)
def _reset_calls():
    calls.clear()


def cli(*args: str, **options) -> str:
    out, err = StringIO(), StringIO()
    call_command("workflows", *args, stdout=out, stderr=err, **options)
    assert err.getvalue() == ""
    return out.getvalue()


def cli_json(*args: str):
    return json.loads(cli(*args, "--json"))


def cli_error(*args: str) -> str:
    with pytest.raises(CommandError) as info:
        cli(*args)
    return str(info.value)


def fails_first(name: str, times: int = 1, value: object = "ok"):
    """A callable that raises ValueError ``times`` times, then returns ``value``."""

    def call():
        calls[name] = calls.get(name, 0) + 1
        if calls[name] <= times:
            raise ValueError(f"{name} boom {calls[name]}")
        return value

    return call


def define_basic():
    @wf.function(id="cli-basic", trigger="cli.basic")
    def basic(ctx):
        first = ctx.step.run("first", lambda: {"n": ctx.event.data.get("n", 0)})
        return ctx.step.run("second", lambda: first["n"] + 1)

    return basic


def define_sleeper():
    @wf.function(id="cli-sleeper", trigger="cli.sleep")
    def sleeper(ctx):
        ctx.step.run("before", lambda: "b")
        ctx.step.sleep("a-day", "1d")
        return ctx.step.run("after", lambda: "done")

    return sleeper


def define_broken():
    @wf.function(id="cli-broken", trigger="cli.broken", retries=0)
    def broken(ctx):
        ctx.step.run("fine", lambda: 1)
        ctx.step.run("doomed", fails_first("doomed", times=99))

    return broken


def only_run(function_id: str) -> Run:
    return Run.objects.get(function_id=function_id)


def started(event: str, function_id: str, data: dict | None = None) -> Run:
    wf.send(event, data=data or {})
    drain()
    return Run.objects.filter(function_id=function_id).order_by("-queued_at").first()


# -- the command itself -------------------------------------------------------------------------


def test_a_subcommand_is_required_and_unknown_ones_are_refused():
    with pytest.raises(CommandError, match="required: SUBCOMMAND|required: subcommand"):
        call_command("workflows", stdout=StringIO())
    with pytest.raises(CommandError, match="invalid choice: 'explode'"):
        call_command("workflows", "explode", stdout=StringIO())


def test_djangos_options_may_follow_the_subcommand():
    define_basic()
    assert "cli-basic" in cli("functions", "--no-color")
    assert "cli-basic" in cli("functions", "-v", "2", "--skip-checks")
    assert "cli-basic" in cli("functions", verbosity=0)


def test_colour_only_when_asked_or_on_a_terminal_and_columns_stay_aligned():
    define_basic()
    define_broken()
    wf.send("cli.basic")
    wf.send("cli.broken")
    drain()
    plain = cli("runs")
    assert "\x1b[" not in plain  # not a terminal: no colour
    coloured = cli("runs", "--force-color")
    assert "\x1b[" in coloured
    assert ANSI.sub("", coloured) == plain  # the same columns, colour added after padding
    header, *rows = plain.splitlines()
    status_at = header.index("STATUS")
    assert {row[status_at:].split()[0] for row in rows} == {"completed", "failed"}


def test_every_subcommand_takes_json():
    for name in ("functions", "send", "runs", "show", "replay", "cancel", "pause", "resume", "wake", "prune"):
        from django_workflows.management.commands.workflows import Command

        parser = Command().create_parser("manage.py", "workflows")
        sub = next(a for a in parser._actions if a.dest == "subcommand").choices[name]
        assert "--json" in {o for a in sub._actions for o in a.option_strings}, name


# -- functions ----------------------------------------------------------------------------------


def test_functions_lists_triggers_options_and_paused_state():
    @wf.function(
        id="cli-listed", name="Listed one",
        trigger=[wf.TriggerEvent("cli.listed", expression="event.data.n > 1"), wf.TriggerCron("0 9 * * *")],
        retries=2, concurrency=3,
    )
    def listed(ctx):
        return 1

    define_basic()
    wf.pause("cli-listed")
    out = cli("functions")
    header = out.splitlines()[0]
    assert header.split() == ["FUNCTION", "STATE", "RETRIES", "TRIGGERS", "OPTIONS"]
    line = next(row for row in out.splitlines() if row.startswith("cli-listed "))
    assert "paused" in line and " 2 " in line
    assert "cli.listed if event.data.n > 1, cron 0 9 * * *" in line
    assert "concurrency 3" in line and "name 'Listed one'" in line
    assert re.search(r"^cli-basic\s+active\s+4\s+cli\.basic", out, re.MULTILINE)
    # Columns line up: each row's state starts under the header's STATE.
    at = header.index("STATE")
    assert all(row[at:].split()[0] in ("active", "paused") for row in out.splitlines()[1:])


def test_functions_json():
    @wf.function(id="cli-json-fn", trigger=["cli.a", wf.TriggerCron("TZ=Europe/Paris 0 8 * * *")], retries=1)
    def fn(ctx):
        return 1

    data = {item["id"]: item for item in cli_json("functions")}
    assert data["cli-json-fn"] == {
        "id": "cli-json-fn",
        "name": "cli-json-fn",
        "triggers": [{"event": "cli.a", "expression": None}, {"cron": "TZ=Europe/Paris 0 8 * * *", "jitter": None}],
        "paused": False,
        "paused_changed_at": None,
        "retries": 1,
        "flow_control": [],
        "on_failure": None,
    }
    wf.pause("cli-json-fn")
    assert {item["id"]: item for item in cli_json("functions")}["cli-json-fn"]["paused"] is True


# -- send ---------------------------------------------------------------------------------------


def test_send_stores_the_event_with_its_id_and_ts_and_its_run_starts():
    define_basic()
    out = cli("send", "cli.basic", "--data", '{"n": 41}', "--id", "order-7", "--ts", "2025-01-02T03:04:05+00:00")
    event = Event.objects.get(name="cli.basic")
    assert f"Sent cli.basic (event {event.pk})" in out
    assert "cli-basic" in out
    assert event.data == {"n": 41} and event.dedup_id == "order-7"
    assert event.ts == datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt_timezone.utc)
    drain()
    assert only_run("cli-basic").output == 42


def test_send_json_and_ts_forms():
    define_basic()
    data = cli_json("send", "cli.basic", "--ts", "1735787045000")
    event = Event.objects.get(pk=data["ids"][0])
    assert data == {"ids": [str(event.pk)], "name": "cli.basic", "functions": ["cli-basic"], "paused": []}
    assert event.ts == datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt_timezone.utc)
    assert event.data == {}
    naive = cli_json("send", "cli.basic", "--ts", "2025-01-02 03:04:05")
    assert Event.objects.get(pk=naive["ids"][0]).ts == timezone.make_aware(datetime(2025, 1, 2, 3, 4, 5))
    wf.pause("cli-basic")
    assert cli_json("send", "cli.basic")["paused"] == ["cli-basic"]
    assert "cli-basic (paused: starts no run)" in cli("send", "cli.basic")


def test_send_reads_data_from_a_file(tmp_path):
    define_basic()
    path = tmp_path / "event.json"
    path.write_text('{"n": 9}')
    cli("send", "cli.basic", "--data", f"@{path}")
    assert Event.objects.get().data == {"n": 9}
    assert "cannot read" in cli_error("send", "cli.basic", "--data", f"@{tmp_path / 'missing.json'}")


def test_send_errors_name_the_problem():
    message = cli_error("send", "cli.x", "--data", '{"n": 1,}')
    assert "--data is not valid JSON" in message and "line 1 column 9" in message
    assert "must be a JSON object" in cli_error("send", "cli.x", "--data", "[1, 2]")
    assert "got an array" in cli_error("send", "cli.x", "--data", "[1, 2]")
    assert "got a string" in cli_error("send", "cli.x", "--data", '"text"')
    assert "not a date-time" in cli_error("send", "cli.x", "--ts", "yesterday")
    assert "reserved" in cli_error("send", "workflows/mine")
    assert "event not sent" in cli_error("send", "cli.x", "--id", "")
    assert not Event.objects.exists()


def test_send_warns_when_no_function_listens_and_suggests_close_names():
    define_basic()
    out = cli("send", "cli.basik")
    assert "No registered function triggers on 'cli.basik'" in out
    assert "Did you mean: cli.basic?" in out
    assert cli_json("send", "cli.basik")["functions"] == []


# -- runs ---------------------------------------------------------------------------------------


def test_runs_lists_recent_runs_with_filters_and_limit():
    define_basic()
    define_sleeper()
    define_broken()
    wf.send("cli.basic")
    wf.send("cli.sleep")
    wf.send("cli.broken")
    drain()
    out = cli("runs")
    header, *rows = out.splitlines()
    assert header.split() == ["RUN", "FUNCTION", "STATUS", "TRIGGER", "QUEUED", "DURATION", "DETAIL"]
    assert len(rows) == 3
    by_function = {row.split()[1]: row for row in rows}
    assert "completed" in by_function["cli-basic"]
    assert "sleep 'a-day' until" in by_function["cli-sleeper"] and "so far" in by_function["cli-sleeper"]
    assert "StepError" in by_function["cli-broken"]
    assert str(only_run("cli-broken").pk) in by_function["cli-broken"]

    failed = cli("runs", "--status", "failed").splitlines()[1:]
    assert [row.split()[1] for row in failed] == ["cli-broken"]
    only = cli("runs", "--function", "cli-sleeper").splitlines()[1:]
    assert [row.split()[1] for row in only] == ["cli-sleeper"]
    assert len(cli("runs", "--limit", "2").splitlines()) == 3
    assert cli("runs", "--function", "cli-basic", "--status", "failed") == "No runs match.\n"


def test_runs_json():
    define_basic()
    define_sleeper()
    wf.send("cli.basic", data={"n": 1})
    drain()
    wf.send("cli.sleep")
    drain()
    data = cli_json("runs")
    assert [item["function_id"] for item in data] == ["cli-sleeper", "cli-basic"]  # newest first
    sleeper, basic = data
    run = only_run("cli-basic")
    assert basic["id"] == str(run.pk) and basic["status"] == "completed" and basic["output"] == 2
    assert basic["event_name"] == "cli.basic" and basic["event_id"] == str(run.event_id)
    assert basic["duration_seconds"] >= 0 and basic["detail"] == ""
    assert sleeper["status"] == "running" and sleeper["ended_at"] is None
    assert sleeper["detail"].startswith("sleep 'a-day' until")
    assert cli_json("runs", "--status", "queued") == []


def test_runs_errors():
    define_basic()
    assert cli("runs") == "No runs yet.\n"
    assert "Did you mean: cli-basic?" in cli_error("runs", "--function", "cli-basik")
    assert "unknown function 'zzz'" in cli_error("runs", "--function", "zzz")
    assert "invalid choice" in cli_error("runs", "--status", "sleeping")
    assert "--limit must be at least 1" in cli_error("runs", "--limit", "0")


def test_runs_of_a_function_no_longer_registered_still_list():
    define_basic()
    wf.send("cli.basic")
    drain()
    from django_workflows.functions import registry

    registry.unregister("cli-basic")
    assert "cli-basic" in cli("runs", "--function", "cli-basic")


# -- show ---------------------------------------------------------------------------------------


def define_eventful():
    state = {"handler": 0}

    @wf.function(id="cli-eventful", trigger="cli.eventful", retries=3)
    def eventful(ctx):
        ctx.step.run("prepare", lambda: {"rows": list(range(40))})
        state["handler"] += 1
        if state["handler"] == 1:
            raise RuntimeError("between steps")
        ctx.step.sleep("nap", "1h")
        return ctx.step.run("call-api", fails_first("call-api", times=2, value={"ok": True}))

    return eventful


def test_show_prints_the_run_and_a_timeline_of_steps_and_attempts():
    define_eventful()
    wf.send("cli.eventful", data={"who": "ada"})
    drain(advance_time=True)
    run = only_run("cli-eventful")
    assert run.status == "completed"
    out = cli("show", str(run.pk))
    assert out.splitlines()[0] == f"Run {run.pk}  cli-eventful  completed"
    assert 'cli.eventful  event ' in out and '{"who": "ada"}' in out
    assert re.search(r'^  output +\{"ok": true\}$', out, re.MULTILINE)
    table = out[out.index("STEP") :].splitlines()
    assert table[0].split() == ["STEP", "KIND", "STATUS", "ATTEMPTS", "START", "END", "DURATION", "DETAIL"]
    labels = [line.split()[0] for line in table[1:]]
    assert labels == ["prepare", "(handler)", "nap", "call-api", "#1", "#2", "#3"]
    lines = {line.split()[0]: line for line in table[1:]}
    assert "run" in lines["prepare"] and "completed" in lines["prepare"] and '{"rows": [0, 1, 2' in lines["prepare"]
    assert "…" in lines["prepare"]  # the output is summarized
    assert "retrying" in lines["(handler)"] and "RuntimeError: between steps" in lines["(handler)"]
    assert "sleep" in lines["nap"] and "+1h 00m" in lines["nap"]  # ended an hour after the run was queued
    assert re.search(r"call-api\s+run\s+completed\s+3\s+\+1h", lines["call-api"])
    assert "retrying" in lines["#1"] and "ValueError: call-api boom 1" in lines["#1"]
    assert "ValueError: call-api boom 2" in lines["#2"]
    assert "completed" in lines["#3"]
    assert "Stack of" not in out
    verbose = cli("show", str(run.pk), "-v", "2")
    assert "Stack of call-api attempt #1: ValueError: call-api boom 1" in verbose
    assert "Traceback" in verbose or "File " in verbose


def test_show_json_has_steps_with_their_attempt_history():
    define_eventful()
    wf.send("cli.eventful")
    drain(advance_time=True)
    run = only_run("cli-eventful")
    data = cli_json("show", str(run.pk))
    assert data["id"] == str(run.pk) and data["status"] == "completed" and data["output"] == {"ok": True}
    assert data["event"]["name"] == "cli.eventful" and data["event"]["data"] == {}
    steps = {step["step_id"]: step for step in data["steps"]}
    assert list(steps) == ["prepare", "nap", "call-api"]
    api = steps["call-api"]
    assert api["kind"] == "run" and api["status"] == "completed" and api["attempts"] == 3
    assert [(a["number"], a["outcome"]) for a in api["attempt_history"]] == [(1, "retrying"), (2, "retrying"), (3, "completed")]
    assert api["attempt_history"][0]["error"]["message"] == "call-api boom 1"
    assert api["start_offset_seconds"] >= 3600 and api["duration_seconds"] >= 0
    assert steps["nap"]["kind"] == "sleep" and 3600 <= steps["nap"]["end_offset_seconds"] < 3700
    assert [(a["number"], a["outcome"], a["error"]["name"]) for a in data["handler_attempts"]] == [(1, "retrying", "RuntimeError")]
    assert len(Attempt.objects.filter(run=run)) == 1 + 1 + 3  # prepare, the handler, call-api x3


def test_show_a_failed_run_and_a_sleeping_one():
    define_broken()
    define_sleeper()
    broken = started("cli.broken", "cli-broken")
    out = cli("show", str(broken.pk))
    assert "failed" in out.splitlines()[0]
    assert re.search(r"^  error +StepError: step 'doomed' failed", out, re.MULTILINE)
    assert re.search(r"doomed\s+run\s+failed\s+1", out)
    assert "ValueError: doomed boom 1" in out
    sleeper = started("cli.sleep", "cli-sleeper")
    out = cli("show", str(sleeper.pk))
    assert "running" in out.splitlines()[0]
    assert "sleep 'a-day' until" in out and "(in 23h 59m)" in out
    assert f"`manage.py workflows wake {sleeper.pk}`" in out
    assert re.search(r"a-day\s+sleep\s+waiting", out)
    data = cli_json("show", str(sleeper.pk))
    assert data["next_due_at"] is not None and data["steps"][-1]["status"] == "waiting"


def test_show_errors():
    missing = uuid.uuid4()
    assert f"unknown run id {missing}" in cli_error("show", str(missing))
    assert "'abc' is not a run id" in cli_error("show", "abc")
    assert "required: RUN_ID" in cli_error("show")


# -- replay -------------------------------------------------------------------------------------


def test_replay_a_finished_run_and_from_a_step():
    define_basic()
    run = started("cli.basic", "cli-basic", data={"n": 5})
    out = cli("replay", str(run.pk))
    new = Run.objects.exclude(pk=run.pk).get()
    assert f"Replayed run {run.pk} as new run {new.pk} (queued)" in out
    assert new.replay_of_id == run.pk
    drain()
    new.refresh_from_db()
    assert new.status == "completed" and new.output == 6

    data = cli_json("replay", str(run.pk), "--from-step", "second")
    partial = Run.objects.get(pk=data["run_id"])
    assert data == {"run_id": str(partial.pk), "replay_of": str(run.pk), "from_step": "second", "status": "queued"}
    assert list(Step.objects.filter(run=partial).values_list("step_id", flat=True)) == ["first"]  # kept
    drain()
    partial.refresh_from_db()
    assert partial.output == 6
    assert re.search(rf"^  first .* kept from run {run.pk}: {{\"n\": 5}}$", cli("show", str(partial.pk)), re.MULTILINE)


def test_verbosity_0_prints_only_what_a_script_needs():
    define_basic()
    event_id = cli("send", "cli.basic", "-v", "0").strip()
    assert Event.objects.get().pk == uuid.UUID(event_id)
    drain()
    run = only_run("cli-basic")
    new_id = cli("replay", str(run.pk), "-v", "0").strip()
    assert Run.objects.get(pk=new_id).replay_of_id == run.pk
    assert cli("cancel", new_id, "-v", "0") == ""
    assert cli("pause", "cli-basic", "-v", "0") == ""
    assert "cli-basic" in cli("runs", "-v", "0")  # listings print whatever the verbosity


def test_replay_errors():
    define_basic()
    define_sleeper()
    sleeping = started("cli.sleep", "cli-sleeper")
    message = cli_error("replay", str(sleeping.pk))
    assert "only finished runs can be replayed" in message and f"workflows cancel {sleeping.pk}" in message
    done = started("cli.basic", "cli-basic")
    assert "has no step 'nope'" in cli_error("replay", str(done.pk), "--from-step", "nope")
    wf.pause("cli-basic")
    message = cli_error("replay", str(done.pk))
    assert "replay refused (FunctionPaused)" in message and "is paused" in message
    assert "unknown run id" in cli_error("replay", str(uuid.uuid4()))
    assert Run.objects.count() == 2  # nothing was started


# -- cancel -------------------------------------------------------------------------------------


def test_cancel_a_sleeping_run_then_refuse_to_cancel_it_again():
    define_sleeper()
    run = started("cli.sleep", "cli-sleeper")
    out = cli("cancel", str(run.pk))
    assert f"Cancelled run {run.pk} (cli-sleeper)" in out
    run.refresh_from_db()
    assert run.status == "cancelled" and not QueueItem.objects.filter(run=run).exists()
    assert "already ended (cancelled" in cli_error("cancel", str(run.pk))
    assert "unknown run id" in cli_error("cancel", str(uuid.uuid4()))


def test_cancel_json():
    define_sleeper()
    run = started("cli.sleep", "cli-sleeper")
    assert cli_json("cancel", str(run.pk)) == {"run_id": str(run.pk), "cancelled": True, "status": "cancelled"}


# -- pause, resume ------------------------------------------------------------------------------


def test_pause_and_resume():
    define_basic()
    out = cli("pause", "cli-basic")
    assert "Paused cli-basic" in out
    assert FunctionState.objects.get(function_id="cli-basic").paused
    assert "was already paused" in cli("pause", "cli-basic")
    wf.send("cli.basic")
    drain()
    assert not Run.objects.exists()  # paused: the event starts no run
    out = cli("resume", "cli-basic")
    assert "Resumed cli-basic" in out and "wf.replay_events('cli-basic'" in out
    assert not FunctionState.objects.get(function_id="cli-basic").paused
    assert "was already active" in cli("resume", "cli-basic")


def test_pause_and_resume_json_and_errors():
    define_basic()
    assert cli_json("pause", "cli-basic") == {"function": "cli-basic", "paused": True, "changed": True}
    assert cli_json("pause", "cli-basic") == {"function": "cli-basic", "paused": True, "changed": False}
    assert cli_json("resume", "cli-basic") == {"function": "cli-basic", "paused": False, "changed": True}
    message = cli_error("pause", "cli-basik")
    assert "unknown function 'cli-basik'" in message and "Did you mean: cli-basic?" in message
    assert "workflows functions` lists them" in cli_error("resume", "nothing-like-it")


# -- wake ---------------------------------------------------------------------------------------


def test_wake_ends_a_sleep_now():
    define_sleeper()
    wf.send("cli.sleep")
    drain()
    run = only_run("cli-sleeper")
    assert run.status == "running"
    assert drain() == 0  # sleeping for a day
    out = cli("wake", str(run.pk))
    assert f"Woke run {run.pk}: sleep 'a-day'" in out
    drain()  # no advance_time: the clock stays at real time
    run.refresh_from_db()
    assert run.status == "completed" and run.output == "done"
    nap = Step.objects.get(run=run, step_id="a-day")
    assert nap.status == "completed" and nap.ended_at - nap.started_at < timedelta(minutes=1)
    assert abs(clock.now() - timezone.now()) < timedelta(seconds=5)
    assert "already ended (completed)" in cli_error("wake", str(run.pk))


def test_wake_ends_a_step_retry_backoff():
    @wf.function(id="cli-flaky", trigger="cli.flaky", retries=3)
    def flaky(ctx):
        return ctx.step.run("call", fails_first("call"))

    run = started("cli.flaky", "cli-flaky")
    step = Step.objects.get(run=run, step_id="call")
    assert step.status == "retrying" and step.scheduled_at > clock.now()
    data = cli_json("wake", str(run.pk))
    assert data["woken"] is True and data["handler_retry"] is False
    assert [(s["step_id"], s["kind"], s["status"]) for s in data["steps"]] == [("call", "run", "retrying")]
    drain()
    run.refresh_from_db()
    assert run.status == "completed" and run.output == "ok"


def test_wake_ends_a_handler_retry_backoff():
    state = {"n": 0}

    @wf.function(id="cli-handler", trigger="cli.handler", retries=3)
    def handler(ctx):
        ctx.step.run("one", lambda: 1)
        state["n"] += 1
        if state["n"] == 1:
            raise RuntimeError("outside steps")
        return "after"

    run = started("cli.handler", "cli-handler")
    assert run.attempts == 1 and drain() == 0
    out = cli("wake", str(run.pk))
    assert "the retry of its handler" in out
    drain()
    run.refresh_from_db()
    assert run.status == "completed" and run.output == "after"


def test_wake_ends_a_parallel_branch_retry():
    @wf.function(id="cli-branches", trigger="cli.branches", retries=3)
    def branches(ctx):
        left, right = ctx.group.parallel(
            (lambda: ctx.step.run("left", lambda: "L"), lambda: ctx.step.run("right", fails_first("right", value="R")))
        )
        return left + right

    run = started("cli.branches", "cli-branches")
    assert Step.objects.get(run=run, step_id="right").status == "retrying"
    assert drain() == 0
    cli("wake", str(run.pk))
    drain()
    run.refresh_from_db()
    assert run.status == "completed" and run.output == "LR"


def test_wake_does_not_end_a_wait_for_event():
    @wf.function(id="cli-waiter", trigger="cli.wait")
    def waiter(ctx):
        return ctx.step.wait_for_event("approval", event="cli.approved", timeout="1d")

    run = started("cli.wait", "cli-waiter")
    message = cli_error("wake", str(run.pk))
    assert "wake does not end a wait_for_event" in message
    assert "'cli.approved'" in message and "workflows send cli.approved" in message
    assert Step.objects.get(run=run, step_id="approval").scheduled_at > clock.now() + timedelta(hours=23)
    assert drain() == 0


def test_wake_errors():
    assert "unknown run id" in cli_error("wake", str(uuid.uuid4()))
    assert "is not a run id" in cli_error("wake", "12")


def test_wake_does_not_start_a_run_delayed_by_its_event_ts():
    define_basic()
    later = (clock.now() + timedelta(hours=1)).isoformat()
    cli("send", "cli.basic", "--ts", later)
    drain()
    run = only_run("cli-basic")
    assert run.status == "queued"
    message = cli_error("wake", str(run.pk))
    assert "it is queued and starts at" in message and "wake ends only sleeps and retry backoffs" in message
    assert drain() == 0


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_wake_notifies_a_listening_worker_once_committed():
    import psycopg
    from django.db import connections

    from django_workflows.engine import wakeup

    define_sleeper()
    run = started("cli.sleep", "cli-sleeper")
    params = connections["default"].get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    with psycopg.connect(**params, autocommit=True) as listener:
        listener.execute(f"LISTEN {wakeup.CHANNEL}")
        cli("wake", str(run.pk))
        assert [n.channel for n in listener.notifies(timeout=5, stop_after=1)] == [wakeup.CHANNEL]
    drain()
    run.refresh_from_db()
    assert run.status == "completed"


# -- prune --------------------------------------------------------------------------------------


def test_prune_deletes_past_retention_until_nothing_is_left():
    define_basic()
    define_broken()
    for n in range(3):
        wf.send("cli.basic", data={"n": n})
    wf.send("cli.broken")
    wf.send("cli.nobody.listens")
    drain()
    assert cli("prune").startswith("Nothing to prune.")
    clock.advance_to(clock.now() + timedelta(days=8))  # past RETENTION_DAYS, not FAILED_RETENTION_DAYS
    # Every event goes but the failed run's trigger (system events no run needs included).
    expected_events = Event.objects.exclude(name="cli.broken").count()
    assert expected_events >= 4
    out = cli("prune", "--batch", "1", "-v", "2")
    assert "batch 1: 1 runs" in out and "batch 3: 1 runs (3 so far)" in out
    assert f"Pruned 3 runs (with their steps and attempts) and {expected_events} events." in out
    assert "kept 7 days after they end, failed runs 30 days" in out
    assert list(Run.objects.values_list("function_id", flat=True)) == ["cli-broken"]
    assert list(Event.objects.values_list("name", flat=True)) == ["cli.broken"]
    assert not Step.objects.exclude(run__function_id="cli-broken").exists()

    clock.advance_to(clock.now() + timedelta(days=30))
    data = cli_json("prune")
    assert data == {"runs": 1, "events": 1, "batches": 2, "retention_days": 7.0, "failed_retention_days": 30.0}
    assert not Run.objects.exists() and not Event.objects.exists()


def test_prune_json_when_nothing_expired_and_bad_batch():
    assert cli_json("prune") == {"runs": 0, "events": 0, "batches": 1, "retention_days": 7.0, "failed_retention_days": 30.0}
    assert "--batch must be at least 1" in cli_error("prune", "--batch", "0")
