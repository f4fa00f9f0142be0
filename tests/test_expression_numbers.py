"""Numbers in CEL expressions compare as numbers (as in Inngest), failures are logged, and
``match`` keys are canonical so that 1 and 1.0 find each other."""

from __future__ import annotations

import importlib
import logging
import threading

import pytest
from celpy import celtypes
from celpy.evaluation import CELEvalError
from django.db import connection

import django_workflows as wf
from django_workflows import expressions
from django_workflows.expressions import Expression, canonical_json
from django_workflows.models import Run, Waiter
from django_workflows.testing import drain

LOGGER = "django_workflows.expressions"

EVENT = {
    "id": "evt-1",
    "name": "order.placed",
    "data": {
        "total": 100,
        "half": 2.0,
        "a": 1,
        "b": 2.5,
        "n": 2.0,
        "items": [1, 2],
        "nested": {"ids": [1, 2.0], "price": {"amount": 5}},
        "label": "1",
        "flag": True,
    },
}


@pytest.fixture(autouse=True)
def _fresh_throttle(monkeypatch):
    """Each test sees first failures logged at once, whatever other tests logged."""
    monkeypatch.setattr(expressions, "_throttle", expressions.WarningThrottle())


def evaluate(source: str):
    return Expression(source).evaluate({"event": EVENT}, where="test")


# -- operators over numbers ---------------------------------------------------------------------

CASES = [
    # equality: heterogeneous, numbers by value, other kinds simply unequal
    ("1 == 1.0", True),
    ("1.0 == 1", True),
    ("1 != 1.0", False),
    ("1u == 1.0", True),
    ("1u == 1", True),
    ("2 == 2.5", False),
    ("2 != 2.5", True),
    ("9007199254740993 == 9007199254740992.0", False),  # exact, not via float
    ('"1" == 1', False),
    ('1 == "1"', False),
    ('"1" != 1', True),
    ("event.data.label == 1", False),
    ("true == 1", False),
    ("false == 0.0", False),
    ("true != 1", True),
    ("null == 0", False),
    ("event.data.total == 100.0", True),
    ("event.data.half == 2", True),
    ("event.data.flag == true", True),
    # lists and maps compare element-wise with the same rules
    ("[1] == [1.0]", True),
    ("[1, [2]] == [1.0, [2.0]]", True),
    ('[1, "a"] == [1.0, "b"]', False),
    ("[1, 2] == [1]", False),
    ('{"a": 1} == {"a": 1.0}', True),
    ('{"a": [1]} == {"a": [1.0]}', True),
    ('{"a": 1} == {"b": 1}', False),
    ('[1] == {"a": 1}', False),
    ("event.data.nested.ids == [1.0, 2]", True),
    ("event.data.nested.price == {'amount': 5.0}", True),
    # ordering: int, uint and double compare by value
    ("event.data.total >= 99.5", True),
    ("100 > 99.5", True),
    ("99.5 < 100", True),
    ("1 <= 1.0", True),
    ("1.5 >= 2", False),
    ("2u > 1.5", True),
    ("1u < -1", False),
    ("size(event.data.items) > 1.5", True),
    ('"a" < "b"', True),
    # in: list membership with the same equality, map key membership
    ("event.data.n in [1, 2]", True),
    ("2.0 in [1, 2]", True),
    ('"2" in [1, 2]', False),
    ("1 in [true]", False),
    ("[1.0] in [[1], [2]]", True),
    ('"total" in event.data', True),
    ('"nope" in event.data', False),
    ("1.0 in {1: 'x'}", True),
    # arithmetic: int with double gives a double; same-type arithmetic unchanged
    ("event.data.a + event.data.b", 3.5),
    ("1 + 2.5 == 3.5", True),
    ("5 - 0.5", 4.5),
    ("3 * 1.5", 4.5),
    ("7 / 2.0", 3.5),
    ("7.0 / 2", 3.5),
    ("7 / 2", 3),
    ("7 % 2", 1),
    ("1u + 0.5", 1.5),
    ("event.data.total * 1.1 > 110", True),
    ('"a" + "b"', "ab"),
    ("[1] + [2.0] == [1, 2]", True),
    ('timestamp("2024-01-01T00:00:00Z") + duration("1h") > timestamp("2024-01-01T00:30:00Z")', True),
    # has() works on missing fields
    ("has(event.data.missing)", False),
    ("has(event.data.total)", True),
    ("has(event.data.missing) && event.data.missing > 1", False),
    ("!has(event.data.missing) || event.data.missing > 1", True),
]


@pytest.mark.parametrize("source, expected", CASES)
def test_numbers_compare_as_numbers(source, expected, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    result = evaluate(source)
    assert result == expected and type(result) is type(expected)
    assert not caplog.records  # none of these is an error


ERRORS = [
    "event.data.missing == 1",
    "event.data.total.cents > 1",
    '"a" < 1',
    "true < 1",
    '1 + "a"',
    "1 / 0",
    "7 % 2.0",
    "[1] < [2]",
]


@pytest.mark.parametrize("source", ERRORS)
def test_evaluation_errors_give_none_and_a_warning(source, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert Expression(source).evaluate({"event": EVENT}, where="function 'f' trigger", event_id="evt-1") is None
    assert not Expression(source).matches({"event": EVENT}, where="another place", event_id="evt-1")
    (first, second) = caplog.records
    assert first.levelno == logging.WARNING and first.name == LOGGER
    assert "function 'f' trigger" in first.getMessage()
    assert source in first.getMessage() and "evt-1" in first.getMessage()
    assert "another place" in second.getMessage()


def test_errors_inside_operators_stay_cel_errors():
    less = expressions.OPERATORS["_<_"]
    assert isinstance(less(celtypes.StringType("a"), celtypes.IntType(1)), CELEvalError)
    assert isinstance(expressions.OPERATORS["_/_"](celtypes.IntType(1), celtypes.IntType(0)), CELEvalError)
    error = CELEvalError("earlier")
    assert expressions.OPERATORS["_==_"](error, celtypes.IntType(1)) is error
    # so CEL's logical operators can still absorb them
    assert evaluate('true || "a" < 1') is True
    assert evaluate('false && "a" < 1') is False
    assert evaluate("event.data.missing > 1 || true") is True


def test_absurdly_deep_data_is_a_warning_not_a_crash(caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    deep: dict = {}
    for _ in range(50_000):
        deep = {"x": deep}
    assert not Expression("has(event.data.x)").matches({"event": {"data": deep}}, where="deep")
    assert "deep" in caplog.records[0].getMessage()


def test_matches_warns_about_a_non_boolean_result(caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert Expression("event.data.total / 20").matches({"event": EVENT}, where="w") is False
    assert "evaluated to 5, not a boolean" in caplog.records[0].getMessage()
    assert Expression("event.data.total > 20").matches({"event": EVENT}, where="w") is True
    assert len(caplog.records) == 1


def test_evaluate_returns_plain_python_values():
    assert evaluate("event.data.nested") == {"ids": [1, 2.0], "price": {"amount": 5}}
    assert evaluate("event.data.flag") is True
    assert Expression("event.data.x").evaluate({"event": {"data": {"x": None}}}) is None


# -- warning throttle ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failures_are_throttled_per_place_and_expression(monkeypatch, caplog):
    clock = FakeClock()
    monkeypatch.setattr(expressions, "_throttle", expressions.WarningThrottle(clock=clock))
    caplog.set_level(logging.WARNING, logger=LOGGER)
    failing = Expression("event.data.missing > 1")

    def fail(where: str = "trigger of f") -> None:
        assert failing.matches({"event": EVENT}, where=where, event_id="e") is False

    fail()
    assert len(caplog.records) == 1 and "suppressed" not in caplog.records[0].getMessage()
    for _ in range(3):
        clock.now += 10
        fail()
    assert len(caplog.records) == 1
    fail("trigger of g")  # another place logs at once
    assert len(caplog.records) == 2
    clock.now += 31  # 61 s after the first warning
    fail()
    assert len(caplog.records) == 3
    assert "(3 similar failures suppressed)" in caplog.records[2].getMessage()
    clock.now += 61
    fail()
    assert len(caplog.records) == 4 and "suppressed" not in caplog.records[3].getMessage()


def test_throttle_state_is_bounded_and_thread_safe():
    clock = FakeClock()
    throttle = expressions.WarningThrottle(clock=clock, max_keys=3)
    for n in range(10):
        assert throttle.admit(("where", str(n))) == 0
    assert len(throttle) == 3
    admitted = []

    def hammer() -> None:
        for _ in range(1000):
            admitted.append(throttle.admit(("shared", "x")))

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [value for value in admitted if value is not None] == [0]
    clock.now += 60
    assert throttle.admit(("shared", "x")) == 7999


# -- canonical match keys -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, text",
    [
        (1, "1"),
        (1.0, "1"),
        (1.00, "1"),
        (-0.0, "0"),
        (1e20, "100000000000000000000"),
        (1.5, "1.5"),
        (0.1, "0.1"),
        (True, "true"),
        (False, "false"),
        (None, "null"),
        ("1", '"1"'),
        ("é", '"\\u00e9"'),  # as json.dumps wrote it before: existing rows keep their text
        ([1.0, [2.0, True]], "[1,[2,true]]"),
        ({"b": 1.0, "a": {"d": [3.0], "c": 0.5}}, '{"a":{"c":0.5,"d":[3]},"b":1}'),
        (12345678901234567890, "12345678901234567890"),
    ],
)
def test_canonical_json(value, text):
    assert canonical_json(value) == text


def test_canonical_json_keeps_bools_apart_from_numbers():
    assert canonical_json(True) != canonical_json(1)
    assert canonical_json(False) != canonical_json(0.0)
    assert canonical_json([1, 1.0]) == canonical_json([1.0, 1])
    assert canonical_json({"a": 1}) == canonical_json({"a": 1.0})


@pytest.mark.django_db
def test_migration_rewrites_match_values_to_canonical_text():
    from django.apps import apps

    migration = importlib.import_module("django_workflows.migrations.0004_canonical_match_values")
    define_waiting_flow(match="data.id")
    for n in range(4):
        wf.send("mig.start", data={"id": n})
    drain()
    rows = list(Waiter.objects.order_by("pk"))
    # Text that is no JSON is left alone (PostgreSQL refuses the "\0missing" marker's NUL).
    not_json = "!missing" if connection.vendor == "postgresql" else "\0missing"
    old = ["1.0", '{"a":2.0,"b":[1.0,true]}', not_json, '"x"']
    for row, value in zip(rows, old, strict=True):
        Waiter.objects.filter(pk=row.pk).update(match_value=value)
    migration.canonicalize_match_values(apps, None)
    new = list(Waiter.objects.order_by("pk").values_list("match_value", flat=True))
    assert new == ["1", '{"a":2,"b":[1,true]}', not_json, '"x"']


def define_waiting_flow(**wait_kwargs):
    @wf.function(id="num-wait", trigger="mig.start")
    def num_wait(ctx):
        got = ctx.step.wait_for_event("wait", event="mig.done", timeout="1d", **wait_kwargs)
        return None if got is None else got.data

    return num_wait


# -- end to end through the engine --------------------------------------------------------------

@pytest.mark.django_db
def test_trigger_expression_compares_an_int_with_a_double():
    @wf.function(id="big-orders", trigger=wf.TriggerEvent("num.order", expression="event.data.total >= 99.5"))
    def big_orders(ctx):
        return ctx.event.data["total"]

    wf.send("num.order", data={"total": 100})
    wf.send("num.order", data={"total": 99})
    drain(advance_time=True)
    assert list(Run.objects.filter(function_id="big-orders").values_list("output", flat=True)) == [100]


@pytest.mark.django_db
def test_wait_if_exp_compares_an_int_with_a_double():
    define_waiting_flow(if_exp="async.data.amount >= event.data.total")
    wf.send("mig.start", data={"total": 49.99})
    drain()
    wf.send("mig.done", data={"amount": 49})
    drain()
    assert Run.objects.get().status == "running"
    wf.send("mig.done", data={"amount": 50})
    drain()
    run = Run.objects.get()
    assert run.status == "completed" and run.output == {"amount": 50}


@pytest.mark.django_db
@pytest.mark.parametrize("trigger_id, incoming_id", [(1, 1.0), (1.0, 1), (2.0, 2.0)])
def test_wait_match_finds_an_int_with_a_double(trigger_id, incoming_id):
    define_waiting_flow(match="data.id")
    wf.send("mig.start", data={"id": trigger_id})
    drain()
    wf.send("mig.done", data={"id": True})  # a bool is not the number 1
    wf.send("mig.done", data={"id": "1"})  # nor is a string
    drain()
    assert Run.objects.get().status == "running"
    wf.send("mig.done", data={"id": incoming_id, "n": "match"})
    drain()
    run = Run.objects.get()
    assert run.status == "completed" and run.output == {"id": incoming_id, "n": "match"}


@pytest.mark.django_db
def test_cancel_match_finds_an_int_with_a_double():
    @wf.function(id="num-cancel", trigger="num.set", cancel=[wf.Cancel(event="num.unset", match="data.id")])
    def cancellable(ctx):
        ctx.step.sleep("wait", "1d")
        return "finished"

    wf.send("num.set", data={"id": 7})
    wf.send("num.set", data={"id": 8})
    drain()
    wf.send("num.unset", data={"id": 7.0})
    drain(advance_time=True)
    statuses = dict(Run.objects.values_list("event__data__id", "status"))
    assert statuses == {7: "cancelled", 8: "completed"}


@pytest.mark.django_db
def test_cancel_runs_if_exp_compares_numbers():
    @wf.function(id="num-many", trigger="num.many")
    def many(ctx):
        ctx.step.sleep("wait", "1d")

    for total in (99, 99.5, 100, 250.25):
        wf.send("num.many", data={"total": total})
    drain()
    assert wf.cancel_runs("num-many", if_exp="event.data.total >= 99.5") == 3
    cancelled = Run.objects.filter(status="cancelled").values_list("event__data__total", flat=True)
    assert sorted(cancelled) == [99.5, 100, 250.25]


@pytest.mark.django_db
def test_a_failing_trigger_expression_is_logged_as_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)

    @wf.function(id="needs-total", trigger=wf.TriggerEvent("num.partial", expression="event.data.total > 10"))
    def needs_total(ctx):
        return None

    wf.send("num.partial", data={"subtotal": 50}, id="order-77")
    drain()
    assert not Run.objects.filter(function_id="needs-total").exists()
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert "function 'needs-total' trigger 'num.partial'" in message
    assert "event.data.total > 10" in message and "order-77" in message
    assert "total" in message  # the error names the missing field
