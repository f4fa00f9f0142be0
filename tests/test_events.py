"""wf.send: ids, the caller's transaction, deduplication, delayed events, fan-out, filters, bad input."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.db import transaction

import django_workflows as wf
from django_workflows.engine import clock
from django_workflows.models import Event, QueueItem, Run, Step
from django_workflows.testing import drain

pytestmark = pytest.mark.django_db



class Boom(Exception):
    pass


@pytest.fixture
def echo():
    """A function on ``ev.echo`` that returns what it saw of its event."""

    @wf.function(id="ev-echo", trigger="ev.echo")
    def echo_fn(ctx):
        return {
            "id": ctx.event.id,
            "name": ctx.event.name,
            "data": ctx.event.data,
            "ts": ctx.event.ts.isoformat(),
        }

    return echo_fn


def runs(function_id="ev-echo"):
    return Run.objects.filter(function_id=function_id)


# -- send ---------------------------------------------------------------------------------------


def test_send_returns_the_stored_event_id(echo):
    before = clock.now()
    ids = wf.send("ev.echo", data={"a": 1, "nested": {"b": [1, 2]}})
    after = clock.now()
    assert isinstance(ids, list) and len(ids) == 1
    assert all(isinstance(i, str) for i in ids)
    event = Event.objects.get()
    assert str(event.id) == ids[0]
    uuid.UUID(ids[0])
    assert event.name == "ev.echo"
    assert event.data == {"a": 1, "nested": {"b": [1, 2]}}
    assert event.ts.tzinfo is not None
    assert before <= event.ts <= after
    assert before <= event.received_at <= after
    assert Run.objects.count() == 0  # nothing runs on the caller's path


def test_send_without_data_stores_an_empty_dict(echo):
    wf.send("ev.echo")
    assert Event.objects.get().data == {}


def test_send_a_list_of_events_returns_their_ids_in_order(echo):
    later = clock.now() + timedelta(minutes=5)
    ids = wf.send(
        [
            wf.Event(name="ev.echo", data={"n": 1}),
            wf.Event(name="ev.other", data={"n": 2}, id="key-2"),
            wf.Event(name="ev.echo", data={"n": 3}, ts=later),
        ]
    )
    assert len(ids) == 3 and len(set(ids)) == 3
    stored = {str(e.id): e for e in Event.objects.all()}
    assert [stored[i].data["n"] for i in ids] == [1, 2, 3]
    assert [stored[i].name for i in ids] == ["ev.echo", "ev.other", "ev.echo"]
    assert stored[ids[1]].dedup_id == "key-2"
    assert stored[ids[2]].ts == later


def test_send_a_single_event_object(echo):
    (event_id,) = wf.send(wf.Event(name="ev.echo", data={"x": True}))
    assert Event.objects.get(pk=event_id).data == {"x": True}


def test_send_an_empty_list_stores_nothing():
    assert wf.send([]) == []
    assert Event.objects.count() == 0


def test_handler_sees_the_event(echo):
    (event_id,) = wf.send("ev.echo", data={"k": "v"})
    drain()
    run = runs().get()
    assert run.status == "completed"
    assert str(run.event_id) == event_id
    assert run.output["id"] == event_id  # no sender id: the stored event's id
    assert run.output["name"] == "ev.echo"
    assert run.output["data"] == {"k": "v"}
    assert datetime.fromisoformat(run.output["ts"]) == Event.objects.get().ts


def test_handler_sees_the_senders_id_when_given(echo):
    wf.send("ev.echo", data={}, id="my-key")
    drain()
    assert runs().get().output["id"] == "my-key"


def test_an_event_nobody_listens_to_is_stored_and_starts_nothing():
    wf.send("ev.nobody", data={"x": 1})
    assert drain() == 1
    assert Event.objects.filter(name="ev.nobody").count() == 1
    assert Run.objects.count() == 0
    assert QueueItem.objects.count() == 0


# -- the caller's transaction --------------------------------------------------------------------


def test_send_inside_a_rolled_back_atomic_block_leaves_nothing(echo):
    with pytest.raises(Boom), transaction.atomic():
        wf.send("ev.echo", data={"n": 1})
        assert Event.objects.count() == 1  # visible inside the transaction
        raise Boom
    assert Event.objects.count() == 0
    assert QueueItem.objects.count() == 0
    assert drain() == 0
    assert Run.objects.count() == 0


def test_send_inside_a_committed_atomic_block_starts_runs(echo):
    with transaction.atomic():
        wf.send("ev.echo", data={"n": 1})
    drain()
    assert runs().get().status == "completed"


@pytest.mark.django_db(transaction=True)
def test_send_in_a_real_transaction_that_rolls_back_starts_no_run(echo):
    with pytest.raises(Boom), transaction.atomic():
        ids = wf.send("ev.echo", data={"n": 1})
        raise Boom
    assert not Event.objects.filter(pk=ids[0]).exists()
    assert Event.objects.count() == 0
    assert drain(advance_time=True) == 0
    assert Run.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_send_in_a_real_transaction_that_commits_starts_a_run(echo):
    with transaction.atomic():
        wf.send("ev.echo", data={"n": 2})
        Event.objects.get()  # inside the transaction
    drain()
    assert runs().get().output["data"] == {"n": 2}


@pytest.mark.django_db(transaction=True)
def test_send_outside_a_transaction_commits_on_its_own(echo):
    wf.send([wf.Event(name="ev.echo", data={"n": 1}), wf.Event(name="ev.echo", data={"n": 2})])
    assert Event.objects.count() == 2
    drain()
    assert runs().filter(status="completed").count() == 2


@pytest.mark.django_db(transaction=True)
def test_send_of_a_list_is_all_or_nothing_with_the_callers_rollback(echo):
    with pytest.raises(Boom), transaction.atomic():
        wf.send("ev.echo", data={"n": 1})
        wf.send([wf.Event(name="ev.echo", data={"n": 2}), wf.Event(name="ev.echo", data={"n": 3})])
        raise Boom
    assert Event.objects.count() == 0
    assert drain() == 0


# -- deduplication by id ----------------------------------------------------------------------------


def test_an_id_seen_in_the_last_24_hours_is_stored_but_triggers_nothing(echo):
    first = wf.send("ev.echo", data={"n": 1}, id="order-1")
    drain()
    second = wf.send("ev.echo", data={"n": 2}, id="order-1")
    drain()
    assert first != second
    assert Event.objects.filter(dedup_id="order-1").count() == 2  # both stored
    run = runs().get()  # one run only, from the first event
    assert str(run.event_id) == first[0]
    assert run.output["data"] == {"n": 1}


def test_duplicate_ids_sent_together_trigger_once(echo):
    wf.send([wf.Event(name="ev.echo", data={"n": n}, id="same") for n in range(3)])
    drain()
    assert Event.objects.count() == 3
    assert runs().count() == 1


def test_different_ids_and_no_ids_are_not_deduplicated(echo):
    wf.send([
        wf.Event(name="ev.echo", id="a"), wf.Event(name="ev.echo", id="b"),
        wf.Event(name="ev.echo"), wf.Event(name="ev.echo"),
    ])
    drain()
    assert runs().count() == 4


def test_dedup_applies_across_event_names(echo):
    @wf.function(id="ev-other", trigger="ev.other")
    def other(ctx):
        return None

    wf.send("ev.echo", id="shared-key")
    wf.send("ev.other", id="shared-key")
    drain()
    assert runs().count() == 1
    assert runs("ev-other").count() == 0


def test_an_id_seen_more_than_24_hours_ago_triggers_again(echo):
    wf.send("ev.echo", data={"n": 1}, id="daily")
    drain()
    start = clock.now()

    clock.advance_to(start + timedelta(hours=23, minutes=59))
    wf.send("ev.echo", data={"n": 2}, id="daily")
    drain()
    assert runs().count() == 1

    clock.advance_to(start + timedelta(hours=24, seconds=5))
    wf.send("ev.echo", data={"n": 3}, id="daily")
    drain()
    assert sorted(r.output["data"]["n"] for r in runs()) == [1, 3]

    # The window restarts from the event that triggered again.
    wf.send("ev.echo", data={"n": 4}, id="daily")
    drain()
    assert runs().count() == 2


# -- delayed events -------------------------------------------------------------------------------


def test_a_future_ts_delays_the_runs_it_starts(echo):
    when = clock.now() + timedelta(hours=2)
    wf.send("ev.echo", data={"n": 1}, ts=when)
    assert drain() == 1  # the event is taken in; its run is not due yet
    run = runs().get()
    assert run.status == "queued"
    assert run.started_at is None
    assert drain() == 0
    assert runs().get().status == "queued"

    clock.advance_to(when - timedelta(seconds=5))
    assert drain() == 0

    assert drain(advance_time=True) == 1
    run.refresh_from_db()
    assert run.status == "completed"
    assert run.started_at >= when
    assert clock.now() >= when


def test_a_past_ts_runs_at_once(echo):
    past = clock.now() - timedelta(days=3)
    wf.send("ev.echo", data={}, ts=past)
    drain()
    run = runs().get()
    assert run.status == "completed"
    assert datetime.fromisoformat(run.output["ts"]) == past


def test_a_delayed_event_does_not_hold_back_others(echo):
    wf.send("ev.echo", data={"n": "later"}, ts=clock.now() + timedelta(days=1))
    wf.send("ev.echo", data={"n": "now"})
    drain()
    assert [r.output["data"]["n"] for r in runs().filter(status="completed")] == ["now"]


# -- fan-out and filters ----------------------------------------------------------------------------


def test_one_event_starts_a_run_of_every_matching_function():
    seen = []

    @wf.function(id="fan-a", trigger="fan.out")
    def fan_a(ctx):
        seen.append("a")
        return "a"

    @wf.function(id="fan-b", trigger=["other.event", "fan.out"])
    def fan_b(ctx):
        seen.append("b")
        return "b"

    @wf.function(id="fan-c", trigger=wf.TriggerEvent("fan.out", expression="event.data.vip == true"))
    def fan_c(ctx):
        seen.append("c")
        return "c"

    @wf.function(id="fan-d", trigger="fan.elsewhere")
    def fan_d(ctx):
        seen.append("d")

    (event_id,) = wf.send("fan.out", data={"vip": True})
    drain()
    assert sorted(seen) == ["a", "b", "c"]
    started = Run.objects.filter(event_id=event_id)
    assert sorted(started.values_list("function_id", flat=True)) == ["fan-a", "fan-b", "fan-c"]
    assert set(started.values_list("status", flat=True)) == {"completed"}


@pytest.mark.parametrize(
    "expression, data, starts",
    [
        ("event.data.amount > 10", {"amount": 11}, True),
        ("event.data.amount > 10", {"amount": 10}, False),
        ("event.data.amount > 10", {"amount": 10.5}, True),
        ("event.data.amount > 10", {}, False),  # missing field: no match, no crash
        ("event.data.amount > 10", {"amount": "lots"}, False),  # type error: no match
        ("event.data.plan == 'pro' && event.data.seats >= 5", {"plan": "pro", "seats": 5}, True),
        ("event.data.plan == 'pro' && event.data.seats >= 5", {"plan": "free", "seats": 9}, False),
        ("event.name == 'flt.order'", {}, True),
        ("'a' in event.data.tags", {"tags": ["b", "a"]}, True),
        ("has(event.data.coupon)", {"coupon": None}, True),
        ("has(event.data.coupon)", {}, False),
    ],
)
def test_trigger_expression_filters_events(expression, data, starts):
    @wf.function(id="flt", trigger=wf.TriggerEvent("flt.order", expression=expression))
    def filtered(ctx):
        return ctx.event.data

    wf.send("flt.order", data=data)
    drain()
    assert Run.objects.filter(function_id="flt").count() == (1 if starts else 0)


def test_an_expression_filter_only_applies_to_its_own_trigger():
    @wf.function(
        id="flt-two",
        trigger=[wf.TriggerEvent("flt.a", expression="event.data.n > 1"), "flt.b"],
    )
    def two(ctx):
        return ctx.event.name

    wf.send([
        wf.Event(name="flt.a", data={"n": 0}),
        wf.Event(name="flt.a", data={"n": 2}),
        wf.Event(name="flt.b", data={"n": 0}),
    ])
    drain()
    assert sorted(Run.objects.values_list("output", flat=True)) == ["flt.a", "flt.b"]


def test_an_expression_can_read_the_events_ts_and_id():
    @wf.function(id="flt-ts", trigger=wf.TriggerEvent("flt.ts", expression="event.ts > 0 && event.id != ''"))
    def ts_fn(ctx):
        return None

    wf.send("flt.ts")
    drain()
    assert Run.objects.filter(function_id="flt-ts").count() == 1


# -- malformed events ---------------------------------------------------------------------------------


def _nothing_stored():
    return Event.objects.count() == 0 and QueueItem.objects.count() == 0 and Run.objects.count() == 0


NAIVE = datetime(2030, 1, 1, 12, 0)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"event": "x.y", "data": [1, 2]}, "data must be a dict, got list"),
        ({"event": "x.y", "data": "text"}, "data must be a dict, got str"),
        ({"event": "x.y", "data": {"when": datetime(2020, 1, 1, tzinfo=dt_timezone.utc)}}, "data is not JSON"),
        ({"event": "x.y", "data": {"obj": object()}}, "data is not JSON"),
        ({"event": "x.y", "data": {"n": float("nan")}}, "data is not JSON"),
        ({"event": "x.y", "data": {"s": {1, 2}}}, "data is not JSON"),
        ({"event": "x.y", "data": {}, "ts": NAIVE}, "ts must be a timezone-aware datetime"),
        ({"event": "x.y", "data": {}, "ts": "2030-01-01T00:00:00Z"}, "ts must be a timezone-aware datetime"),
        ({"event": "", "data": {}}, "must be a non-empty string"),
        ({"event": "  ", "data": {}}, "must be a non-empty string"),
        ({"event": " x.y", "data": {}}, "no surrounding spaces"),
        ({"event": "x" * 256, "data": {}}, "at most 255 characters"),
        ({"event": "workflows/custom", "data": {}}, "'workflows/' prefix is reserved"),
        ({"event": "workflows/function.failed", "data": {}}, "'workflows/' prefix is reserved"),
        ({"event": "x.y", "data": {}, "id": ""}, "id must be a non-empty string"),
        ({"event": "x.y", "data": {}, "id": 12}, "id must be a non-empty string"),
        ({"event": "x.y", "data": {}, "id": "k" * 256}, "id must be a non-empty string"),
        ({"event": 42}, "send\\(\\) takes an event name"),
        ({"event": {"name": "x.y"}}, "send\\(\\) takes an event name"),
    ],
)
def test_malformed_events_are_refused_and_nothing_is_stored(kwargs, expected):
    with pytest.raises(wf.EventValidationError, match=expected):
        wf.send(**kwargs)
    assert _nothing_stored()


def test_data_with_a_nul_character_is_stored_or_refused_clearly(echo):
    try:
        with transaction.atomic():
            ids = wf.send("ev.echo", data={"s": "a\x00b"})
    except wf.EventValidationError as exc:
        assert "data" in str(exc)
        assert _nothing_stored()
        return
    assert Event.objects.get(pk=ids[0]).data == {"s": "a\x00b"}


def test_event_validation_error_is_a_value_error():
    assert issubclass(wf.EventValidationError, ValueError)


def test_a_bad_event_in_a_list_refuses_the_whole_list_and_names_it(echo):
    with pytest.raises(wf.EventValidationError, match=r"event #2 'ev.echo': data must be a dict"):
        wf.send([
            wf.Event(name="ev.echo", data={"ok": 1}),
            wf.Event(name="ev.echo", data=["bad"]),  # type: ignore[arg-type]
            wf.Event(name="ev.echo", data={"ok": 3}),
        ])
    assert _nothing_stored()


def test_a_list_with_something_else_than_events_is_refused():
    with pytest.raises(wf.EventValidationError, match=r"event #2: expected a wf.Event, got dict"):
        wf.send([wf.Event(name="a.b"), {"name": "a.b"}])  # type: ignore[list-item]
    assert _nothing_stored()


def test_data_id_and_ts_go_with_a_name_not_with_event_objects():
    with pytest.raises(wf.EventValidationError, match="set them on each wf.Event"):
        wf.send(wf.Event(name="a.b"), data={"x": 1})
    with pytest.raises(wf.EventValidationError, match="set them on each wf.Event"):
        wf.send([wf.Event(name="a.b")], id="k")
    assert _nothing_stored()


def test_a_malformed_event_leaves_earlier_rows_untouched(echo):
    wf.send("ev.echo", data={"keep": True})
    with pytest.raises(wf.EventValidationError):
        wf.send("ev.echo", data={"bad": object()})
    assert list(Event.objects.values_list("data", flat=True)) == [{"keep": True}]
    drain()
    assert runs().get().status == "completed"
    assert Step.objects.count() == 0
