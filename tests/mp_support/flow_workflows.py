"""Flow control functions for tests/test_flow_control_multiprocess.py, run by real ``runworkers``
processes.

Importing this module registers nothing (the test process imports it for the names below);
a worker subprocess calls ``register()`` after ``django.setup()`` and before ``runworkers``
(see ``WORKER_BOOT``), so that the test needs no change to ``mp_support.worker``.

Every step body writes a row to ``SPAN_TABLE`` when it starts and sets its end when it
ends, each in its own committed statement, both timed by the database's
``clock_timestamp()``: one clock for every process, from which the test computes how many
steps of a function (or of a key) ever executed at once, and when each run started.
"""

from __future__ import annotations

import os
import time

# Raw table, outside migrations; created and dropped by the test.
SPAN_TABLE = "fc_span"  # one row per execution of a step body: function, key, start, end

# a) concurrency
LIMIT3_FUNCTION, LIMIT3_EVENT = "fc-limit3", "fc.limit3"  # concurrency=3
KEYED_FUNCTION, KEYED_EVENT = "fc-keyed", "fc.keyed"  # Concurrency(2, key="event.data.account")
BOTH_FUNCTION, BOTH_EVENT = "fc-both", "fc.both"  # [Concurrency(3), Concurrency(1, key=account)]
LIMIT3, KEYED_LIMIT, BOTH_LIMIT, BOTH_KEYED_LIMIT = 3, 2, 3, 1

# b) throttle
THROTTLE_FUNCTION, THROTTLE_EVENT = "fc-throttle", "fc.throttle"
THROTTLE_LIMIT, THROTTLE_BURST = 10, 1  # per second

# c) singleton and idempotency: one event name triggers both functions
DUP_EVENT = "fc.dup"  # data: {"k": key, "expect": events to wait for, "hold": seconds}
IDEMPOTENT_FUNCTION = "fc-idempotent"  # idempotency="event.data.k"
SINGLETON_FUNCTION = "fc-singleton"  # Singleton(key="event.data.k", mode="skip")

# d) head-of-line
SERIAL_FUNCTION, SERIAL_EVENT = "fc-serial", "fc.serial"  # concurrency=1: the backlog
FREE_FUNCTION, FREE_EVENT = "fc-free", "fc.free"  # no limit

# ``python -c WORKER_BOOT --concurrency N``: one runworkers process knowing these functions.
WORKER_BOOT = (
    "import sys, django; django.setup(); "
    "import mp_support.flow_workflows as f; f.register(); "
    "from django.core.management import call_command; call_command('runworkers', *sys.argv[1:])"
)


def _cursor():
    from django.db import connections

    from django_workflows import conf

    return connections[conf.database()].cursor()


def span(function_id: str, run_id: str, step_id: str, key: str, delay: float) -> int:
    """A step body: record its start, sleep ``delay``, record its end (two committed writes;
    the worker runs plain steps in autocommit)."""
    with _cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {SPAN_TABLE} (function_id, run_id, step_id, key, pid, started_at) "
            "VALUES (%s, %s, %s, %s, %s, clock_timestamp()) RETURNING id",
            [function_id, run_id, step_id, key, os.getpid()],
        )
        span_id = cursor.fetchone()[0]
    if delay:
        time.sleep(delay)
    with _cursor() as cursor:
        cursor.execute(f"UPDATE {SPAN_TABLE} SET ended_at = clock_timestamp() WHERE id = %s", [span_id])
    return span_id


def hold_until_taken_in(function_id: str, run_id: str, expect: int, hold: float) -> dict:
    """The singleton's step: stay active at least ``hold`` seconds, and until ``expect``
    events of ``DUP_EVENT`` were sent and every one of them was taken in (its queue item is
    deleted by the intake transaction that admitted or refused its runs), at most 60 s.

    So every duplicate event is offered to the singleton while its run is active, whatever
    the speed of the machine."""
    from django_workflows.models import Event, QueueItem

    span_id = span(function_id, run_id, "hold", "", 0)
    started = time.monotonic()
    while time.monotonic() - started < 60:
        sent = Event.objects.filter(name=DUP_EVENT).count()
        pending = QueueItem.objects.filter(kind="event", event__name=DUP_EVENT).exists()
        if time.monotonic() - started >= hold and sent >= expect and not pending:
            break
        time.sleep(0.05)
    with _cursor() as cursor:
        cursor.execute(f"UPDATE {SPAN_TABLE} SET ended_at = clock_timestamp() WHERE id = %s", [span_id])
    return {"span": span_id, "sent": sent, "held": round(time.monotonic() - started, 3)}


def register() -> None:
    """Define the functions (in a worker process, after ``django.setup()``)."""
    import django_workflows as wf

    def two_steps(ctx: wf.Context, key: str) -> list[int]:
        delay = float(ctx.event.data.get("delay", 0))
        return [
            ctx.step.run(f"s{n}", span, ctx.function.id, ctx.run_id, f"s{n}", key, delay)
            for n in range(2)
        ]

    @wf.function(id=LIMIT3_FUNCTION, trigger=LIMIT3_EVENT, retries=0, concurrency=LIMIT3)
    def limit3(ctx: wf.Context) -> list[int]:
        return two_steps(ctx, "")

    @wf.function(
        id=KEYED_FUNCTION, trigger=KEYED_EVENT, retries=0,
        concurrency=wf.Concurrency(KEYED_LIMIT, key="event.data.account"),
    )
    def keyed(ctx: wf.Context) -> list[int]:
        return two_steps(ctx, ctx.event.data["account"])

    @wf.function(
        id=BOTH_FUNCTION, trigger=BOTH_EVENT, retries=0,
        concurrency=[BOTH_LIMIT, wf.Concurrency(BOTH_KEYED_LIMIT, key="event.data.account")],
    )
    def both(ctx: wf.Context) -> list[int]:
        return two_steps(ctx, ctx.event.data["account"])

    @wf.function(
        id=THROTTLE_FUNCTION, trigger=THROTTLE_EVENT, retries=0,
        throttle=wf.Throttle(limit=THROTTLE_LIMIT, period="1s", burst=THROTTLE_BURST),
    )
    def throttled(ctx: wf.Context) -> int:
        return ctx.step.run("start", span, ctx.function.id, ctx.run_id, "start", "", 0)

    @wf.function(id=IDEMPOTENT_FUNCTION, trigger=DUP_EVENT, retries=0, idempotency="event.data.k")
    def idempotent(ctx: wf.Context) -> int:
        return ctx.step.run("once", span, ctx.function.id, ctx.run_id, "once", ctx.event.data["k"], 0)

    @wf.function(
        id=SINGLETON_FUNCTION, trigger=DUP_EVENT, retries=0,
        singleton=wf.Singleton(key="event.data.k", mode="skip"),
    )
    def singleton(ctx: wf.Context) -> dict:
        data = ctx.event.data
        return ctx.step.run(
            "hold", hold_until_taken_in, ctx.function.id, ctx.run_id, int(data["expect"]), float(data["hold"])
        )

    @wf.function(id=SERIAL_FUNCTION, trigger=SERIAL_EVENT, retries=0, concurrency=1)
    def serial(ctx: wf.Context) -> int:
        return ctx.step.run("work", span, ctx.function.id, ctx.run_id, "work", "", 0.001)

    @wf.function(id=FREE_FUNCTION, trigger=FREE_EVENT, retries=0)
    def free(ctx: wf.Context) -> int:
        return ctx.step.run("work", span, ctx.function.id, ctx.run_id, "work", ctx.event.data["phase"], 0.001)
