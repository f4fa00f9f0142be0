"""@wf.function: ids, names, triggers, retries, definition-time errors, the registry, autodiscovery."""

from __future__ import annotations

import pytest

import django_workflows as wf
from django_workflows.functions import registry
from django_workflows.models import Run
from django_workflows.testing import drain


def _noop(ctx):
    return None


# -- ids, names, defaults -----------------------------------------------------------------------


def test_function_with_id_name_and_string_trigger_is_registered():
    @wf.function(id="fn-basic", name="A basic function", trigger="basic.happened")
    def basic(ctx):
        return "ok"

    assert isinstance(basic, wf.Function)
    assert basic.id == "fn-basic"
    assert basic.name == "A basic function"
    assert basic.retries == 4  # the default: 5 attempts
    assert registry.get("fn-basic") is basic
    (trigger,) = basic.triggers
    assert trigger == wf.TriggerEvent(event="basic.happened")
    assert trigger.expression is None
    assert [f for f, _ in registry.triggered_by("basic.happened")] == [basic]


def test_name_defaults_to_the_id_and_the_docstring_is_kept():
    @wf.function(id="fn-unnamed", trigger="x.y")
    def unnamed(ctx):
        """Does things."""

    assert unnamed.name == "fn-unnamed"
    assert unnamed.__doc__ == "Does things."


def test_calling_a_function_calls_its_handler_directly():
    @wf.function(id="fn-callable", trigger="x.y")
    def handler(ctx):
        return ("called", ctx)

    assert handler("a-ctx") == ("called", "a-ctx")


def test_trigger_event_with_expression_is_compiled_at_definition():
    trig = wf.TriggerEvent(event="order.placed", expression="event.data.amount > 10")

    @wf.function(id="fn-expr", trigger=trig)
    def big_orders(ctx):
        return None

    (registered,) = big_orders.triggers
    assert registered.expression == "event.data.amount > 10"
    assert registered.matches({"name": "order.placed", "data": {"amount": 11}})
    assert not registered.matches({"name": "order.placed", "data": {"amount": 10}})
    assert not registered.matches({"name": "order.placed", "data": {}})  # missing field: no match


def test_a_list_of_triggers_mixing_strings_and_trigger_events():
    @wf.function(
        id="fn-many",
        trigger=["a.one", wf.TriggerEvent("a.two"), wf.TriggerEvent("a.three", expression="event.data.ok")],
    )
    def many(ctx):
        return None

    assert [t.event for t in many.triggers] == ["a.one", "a.two", "a.three"]
    assert all(isinstance(t, wf.TriggerEvent) for t in many.triggers)
    for name in ("a.one", "a.two", "a.three"):
        assert many in [f for f, _ in registry.triggered_by(name)]


def test_a_tuple_of_triggers_is_accepted_too():
    @wf.function(id="fn-tuple", trigger=("t.one", "t.two"))
    def tupled(ctx):
        return None

    assert [t.event for t in tupled.triggers] == ["t.one", "t.two"]


def test_ten_triggers_are_allowed_eleven_are_refused():
    @wf.function(id="fn-ten", trigger=[f"ten.{n}" for n in range(10)])
    def ten(ctx):
        return None

    assert len(ten.triggers) == 10

    with pytest.raises(wf.WorkflowDefinitionError, match=r"at most 10 triggers, got 11"):
        wf.function(id="fn-eleven", trigger=[f"eleven.{n}" for n in range(11)])
    with pytest.raises(wf.UnknownFunctionError):
        registry.get("fn-eleven")


def test_a_function_without_trigger_can_be_defined():
    @wf.function(id="fn-no-trigger")
    def lonely(ctx):
        return None

    assert lonely.triggers == ()


# -- definition-time errors ----------------------------------------------------------------------


def test_duplicate_id_with_a_different_handler_is_refused():
    @wf.function(id="fn-dup", trigger="dup.a")
    def first(ctx):
        return 1

    def second(ctx):
        return 2

    with pytest.raises(wf.WorkflowDefinitionError) as info:
        wf.function(id="fn-dup", trigger="dup.b")(second)
    message = str(info.value)
    assert "duplicate function id 'fn-dup'" in message
    assert "first" in message and "second" in message  # names both definitions
    assert registry.get("fn-dup") is first  # the original is kept
    assert [f for f, _ in registry.triggered_by("dup.b")] == []


def test_the_same_handler_defined_again_is_not_a_duplicate():
    # A module imported twice (test runners, autoreload) redefines the same function.
    def handler(ctx):
        return None

    wf.function(id="fn-redefined", trigger="r.one")(handler)
    again = wf.function(id="fn-redefined", trigger="r.one")(handler)
    assert registry.get("fn-redefined") is again


def test_the_workflows_error_is_an_improperly_configured():
    from django.core.exceptions import ImproperlyConfigured

    assert issubclass(wf.WorkflowDefinitionError, ImproperlyConfigured)


@pytest.mark.parametrize(
    "bad_id", ["", " spaced", "has space", "-leading-dash", "x" * 201, None, 42, "émoji"]
)
def test_bad_function_ids_are_refused(bad_id):
    with pytest.raises(wf.WorkflowDefinitionError, match="function id"):
        wf.function(id=bad_id, trigger="x.y")


@pytest.mark.parametrize(
    "bad_trigger, expected",
    [
        (42, "a trigger must be an event name"),
        ({"event": "x"}, "a trigger must be an event name"),
        ([wf.TriggerEvent("ok"), 3.5], "a trigger must be an event name"),
        ("", "must be a non-empty string"),
        ("   ", "must be a non-empty string"),
        (" padded ", "no surrounding spaces"),
        ("x" * 256, "at most 255 characters"),
        ("workflows/my.event", "reserved"),
    ],
)
def test_bad_triggers_are_refused_at_definition_time(bad_trigger, expected):
    with pytest.raises(wf.WorkflowDefinitionError, match=expected):
        wf.function(id="fn-bad-trigger", trigger=bad_trigger)(_noop)
    with pytest.raises(wf.UnknownFunctionError):
        registry.get("fn-bad-trigger")


def test_trigger_event_refuses_bad_names_itself():
    with pytest.raises(wf.WorkflowDefinitionError, match="non-empty string"):
        wf.TriggerEvent(event="")
    with pytest.raises(wf.WorkflowDefinitionError, match="non-empty string"):
        wf.TriggerEvent(event=None)  # type: ignore[arg-type]


def test_the_workflows_prefix_is_reserved_except_for_system_events():
    with pytest.raises(wf.WorkflowDefinitionError, match="'workflows/' prefix is reserved"):
        wf.TriggerEvent("workflows/custom")
    with pytest.raises(wf.WorkflowDefinitionError, match="'workflows/' prefix is reserved"):
        wf.function(id="fn-reserved", trigger="workflows/function.nope")(_noop)
    # The engine's own system events about runs' ends may be listened to.
    for system in ("workflows/function.finished", "workflows/function.failed", "workflows/function.cancelled"):
        assert wf.TriggerEvent(system).event == system
    # The ones that go to one run only are refused, with a pointer to what to use instead.
    with pytest.raises(wf.WorkflowDefinitionError, match="TriggerCron"):
        wf.TriggerEvent("workflows/scheduled.timer")
    with pytest.raises(wf.WorkflowDefinitionError, match="invoke"):
        wf.TriggerEvent("workflows/function.invoked")


@pytest.mark.parametrize(
    "expression",
    ["event.data.amount >", "event.data.amount > > 3", "(event.data", "event.data.x ==", "&&"],
)
def test_cel_expression_that_does_not_compile_is_refused_at_definition(expression):
    with pytest.raises(wf.WorkflowDefinitionError) as info:
        wf.function(id="fn-bad-cel", trigger=wf.TriggerEvent("cel.x", expression=expression))(_noop)
    assert "does not compile" in str(info.value)
    assert expression in str(info.value)


@pytest.mark.parametrize("expression", ["", "   ", 42])
def test_empty_or_non_string_expression_is_refused(expression):
    with pytest.raises(wf.WorkflowDefinitionError, match="non-empty CEL string"):
        wf.TriggerEvent("cel.y", expression=expression)


@pytest.mark.parametrize("retries", [-1, 21, 100, True, False, 1.5, "3", None])
def test_retries_outside_0_to_20_or_not_an_int_are_refused(retries):
    with pytest.raises(wf.WorkflowDefinitionError, match=r"retries must be an integer from 0 to 20"):
        wf.function(id="fn-bad-retries", trigger="r.x", retries=retries)


@pytest.mark.parametrize("retries", [0, 1, 20])
def test_retries_0_to_20_are_accepted(retries):
    fn = wf.function(id=f"fn-retries-{retries}", trigger="r.y", retries=retries)(_noop)
    assert fn.retries == retries


def test_a_non_callable_handler_is_refused():
    with pytest.raises(wf.WorkflowDefinitionError, match="callable"):
        wf.function(id="fn-not-callable", trigger="x.y")("not a function")


# -- registry and autodiscovery ---------------------------------------------------------------------


def test_demo_functions_are_autodiscovered():
    invite = registry.get("invite-waiting-list")
    assert invite.handler.__module__ == "testproject.demo.workflows"
    assert invite.retries == 4
    assert [t.event for t in invite.triggers] == ["invite.users"]
    drip = registry.get("new-user-drip")
    assert drip.name == "New user drip campaign"
    assert [t.event for t in drip.triggers] == ["user.signup"]
    assert registry.get("import-contacts-csv").triggers == (wf.TriggerEvent("contacts.csv.uploaded"),)


def test_unknown_function_id_raises_a_clear_error():
    with pytest.raises(wf.UnknownFunctionError, match="no workflow function with id 'no-such-fn'"):
        registry.get("no-such-fn")


@pytest.mark.django_db
def test_every_trigger_of_a_list_starts_the_function():
    @wf.function(id="fn-two-triggers", trigger=["multi.a", wf.TriggerEvent("multi.b")])
    def two(ctx):
        return ctx.event.name

    wf.send("multi.a", data={})
    wf.send("multi.b", data={})
    wf.send("multi.c", data={})
    drain()
    assert sorted(Run.objects.filter(function_id="fn-two-triggers").values_list("output", flat=True)) == [
        "multi.a", "multi.b"
    ]


@pytest.mark.django_db
def test_one_event_matching_two_triggers_of_a_function_starts_one_run():
    @wf.function(
        id="fn-overlap",
        trigger=[wf.TriggerEvent("ov.x"), wf.TriggerEvent("ov.x", expression="event.data.n > 1")],
    )
    def overlap(ctx):
        return ctx.event.data["n"]

    wf.send("ov.x", data={"n": 5})
    drain()
    assert Run.objects.filter(function_id="fn-overlap").count() == 1


@pytest.mark.django_db
def test_function_defined_with_a_system_event_trigger_runs_on_it():
    @wf.function(
        id="fn-watch-finished",
        trigger=wf.TriggerEvent("workflows/function.finished", expression="event.data.function_id == 'fn-watched'"),
    )
    def watcher(ctx):
        return ctx.event.data["result"]

    @wf.function(id="fn-watched", trigger="watched.go")
    def watched(ctx):
        return {"v": 1}

    wf.send("watched.go")
    drain()
    assert Run.objects.get(function_id="fn-watch-finished").output == {"v": 1}


@pytest.mark.django_db
def test_a_run_of_an_unknown_function_is_held_then_runs_where_it_is_defined():
    """A rolling deploy: a worker without the function holds the run, visibly, and does not
    fail it; once a worker defines the function again, it runs."""

    @wf.function(id="fn-gone", trigger="gone.go")
    def gone(ctx):
        return "ran"

    wf.send("gone.go")
    assert drain(max_jobs=1) == 1  # the run is queued
    definition = registry.get("fn-gone")
    registry.unregister("fn-gone")
    drain()
    run = Run.objects.get(function_id="fn-gone")
    assert run.status != "failed"
    assert "waiting for a worker that defines function 'fn-gone'" in run.status_detail
    assert run.held_since is not None
    registry.register(definition)
    drain(advance_time=True)
    run.refresh_from_db()
    assert run.status == "completed" and run.output == "ran"
    assert run.status_detail == "" and run.held_since is None


@pytest.mark.django_db
def test_a_run_of_a_function_gone_for_a_day_fails_clearly():
    @wf.function(id="fn-gone", trigger="gone.go")
    def gone(ctx):
        return "ran"

    wf.send("gone.go")
    assert drain(max_jobs=1) == 1
    registry.unregister("fn-gone")
    drain(advance_time=True, max_jobs=2000)
    run = Run.objects.get(function_id="fn-gone")
    assert run.status == "failed"
    assert run.error["name"] == "UnknownFunctionError"
    assert "'fn-gone'" in run.error["message"] and "1 day" in run.error["message"]
