"""wait_for_event, send_event and invoke."""

from __future__ import annotations

from datetime import timedelta

import pytest

import django_workflows as wf
from django_workflows.engine import clock
from django_workflows.models import Event, Run, Waiter
from django_workflows.testing import drain, trigger

pytestmark = pytest.mark.django_db


def define_checkout_flow(**wait_kwargs):
    @wf.function(id="checkout-reminder", trigger="basket.created")
    def checkout_reminder(ctx):
        paid = ctx.step.wait_for_event("wait-for-payment", event="basket.paid", timeout="1d", **wait_kwargs)
        if paid is None:
            ctx.step.run("send-reminder", lambda: "reminded")
            return {"paid": False}
        return {"paid": True, "amount": paid.data["amount"], "event_name": paid.name}

    return checkout_reminder


def test_wait_resumes_on_matching_event_and_frees_the_worker():
    define_checkout_flow(match="data.cart_id")
    wf.send("basket.created", data={"cart_id": "c1"})
    wf.send("basket.created", data={"cart_id": "c2"})
    drain()
    assert Run.objects.filter(status="running").count() == 2
    assert Waiter.objects.count() == 2
    wf.send("basket.paid", data={"cart_id": "c1", "amount": 42})
    drain()
    paid = Run.objects.get(event__data__cart_id="c1")
    waiting = Run.objects.get(event__data__cart_id="c2")
    assert paid.status == "completed"
    assert paid.output == {"paid": True, "amount": 42, "event_name": "basket.paid"}
    assert waiting.status == "running"
    step = paid.steps.get(step_id="wait-for-payment")
    assert step.kind == "wait_for_event" and step.status == "completed"
    assert step.output["data"] == {"cart_id": "c1", "amount": 42}


def test_wait_times_out_with_none():
    define_checkout_flow(match="data.cart_id")
    wf.send("basket.created", data={"cart_id": "c1"})
    drain(advance_time=True)
    run = Run.objects.get()
    assert run.status == "completed" and run.output == {"paid": False}
    assert not Waiter.objects.exists()


def test_only_events_received_after_the_wait_began_match():
    define_checkout_flow(match="data.cart_id")
    wf.send("basket.paid", data={"cart_id": "c1", "amount": 1})  # before the run even exists
    wf.send("basket.created", data={"cart_id": "c1"})
    drain()
    assert Run.objects.get(function_id="checkout-reminder").status == "running"


def test_if_exp_sees_event_and_async():
    define_checkout_flow(if_exp="async.data.cart_id == event.data.cart_id && async.data.amount > 10")
    wf.send("basket.created", data={"cart_id": "c1"})
    drain()
    wf.send("basket.paid", data={"cart_id": "c1", "amount": 5})
    drain()
    assert Run.objects.get().status == "running"
    wf.send("basket.paid", data={"cart_id": "c1", "amount": 50})
    drain()
    assert Run.objects.get().output["amount"] == 50


def test_one_event_resumes_every_run_waiting_for_it():
    define_checkout_flow(match="data.cart_id")
    for _ in range(3):
        wf.send("basket.created", data={"cart_id": "shared"})
    drain()
    wf.send("basket.paid", data={"cart_id": "shared", "amount": 7})
    drain()
    assert list(Run.objects.values_list("status", flat=True)) == ["completed"] * 3


def test_wait_rejects_bad_arguments_clearly():
    @wf.function(id="bad-wait", trigger="x.bad")
    def bad_wait(ctx):
        ctx.step.wait_for_event("w", event="y", timeout=5)

    result = trigger(bad_wait, "x.bad")
    assert result.status == "failed"
    assert "bare number" in result.error["message"]


def test_send_event_step_sends_once_even_on_replay():
    @wf.function(id="fan-out", trigger="batch.start")
    def fan_out(ctx):
        ids = ctx.step.send_event("send-items", [wf.Event(name="item.process", data={"n": n}) for n in range(3)])
        ctx.step.sleep("pause", "1h")
        return ids

    wf.send("batch.start")
    drain(advance_time=True)
    run = Run.objects.get(function_id="fan-out")
    assert run.status == "completed"
    assert len(run.output) == 3
    assert Event.objects.filter(name="item.process").count() == 3
    assert sorted(str(i) for i in Event.objects.filter(name="item.process").values_list("id", flat=True)) == sorted(run.output)


def test_invoke_returns_the_invoked_runs_output():
    @wf.function(id="compute-price", trigger=[])
    def compute_price(ctx):
        return {"price": ctx.event.data["qty"] * 3}

    @wf.function(id="make-quote", trigger="quote.requested")
    def make_quote(ctx):
        result = ctx.step.invoke("price", function=compute_price, data={"qty": ctx.event.data["qty"]})
        return result["price"]

    wf.send("quote.requested", data={"qty": 4})
    drain()
    parent = Run.objects.get(function_id="make-quote")
    child = Run.objects.get(function_id="compute-price")
    assert parent.status == "completed" and parent.output == 12
    assert child.parent_run_id == parent.pk
    assert child.event.name == "workflows/function.invoked"


def test_invoke_failure_and_timeout_raise_step_error():
    @wf.function(id="always-fails", retries=0)
    def always_fails(ctx):
        raise wf.NonRetriableError("nope")

    @wf.function(id="never-ends")
    def never_ends(ctx):
        ctx.step.sleep("forever", "30d")

    @wf.function(id="caller", trigger="call.start")
    def caller(ctx):
        outcomes = []
        for target in ("always-fails", "never-ends"):
            try:
                ctx.step.invoke(f"call-{target}", function=target, timeout="1h")
                outcomes.append("ok")
            except wf.StepError as exc:
                outcomes.append(exc.error["name"])
        return outcomes

    wf.send("call.start")
    drain(advance_time=True, max_jobs=100)
    assert Run.objects.get(function_id="caller").output == ["NonRetriableError", "InvokeTimeoutError"]


def test_trigger_requires_stubs_for_waits_and_uses_them():
    checkout = define_checkout_flow(match="data.cart_id")
    with pytest.raises(wf.WorkflowDefinitionError, match="step_stubs"):
        trigger(checkout, {"name": "basket.created", "data": {"cart_id": "c"}})
    stubbed = trigger(
        checkout, {"name": "basket.created", "data": {"cart_id": "c"}},
        step_stubs={"wait-for-payment": None},
    )
    assert stubbed.output == {"paid": False}


def test_waiting_runs_are_found_by_index_not_scan(django_assert_max_num_queries):
    define_checkout_flow(match="data.cart_id")
    for n in range(30):
        wf.send("basket.created", data={"cart_id": f"c{n}"})
    drain()
    wf.send("basket.paid", data={"cart_id": "c7", "amount": 1})
    clock.advance_to(clock.now() + timedelta(seconds=1))
    with django_assert_max_num_queries(40):
        drain()
    assert Run.objects.filter(status="completed").count() == 1
