"""Test-only functions run by real ``runworkers`` processes (see ``mp_support.worker``).

Every step body records its execution in ``EXEC_TABLE`` in its own committed statement,
before doing anything else, so the test can count executions, including those of a worker
killed before it recorded the step. The body returns the execution's row id: the Step row's
output then tells which execution was the recorded one.
"""

from __future__ import annotations

import os
import time

from django.db import connections

import django_workflows as wf
from django_workflows import conf

from . import (
    ATOMIC_TABLE,
    EXEC_TABLE,
    SLOW_EVENT,
    SLOW_FUNCTION,
    STEPS_EVENT,
    STEPS_FUNCTION,
    WAIT_DONE_EVENT,
    WAIT_FUNCTION,
    WAIT_START_EVENT,
)


def record_execution(run_id: str, step_id: str, delay: float) -> dict:
    # Outside any transaction (the worker runs plain steps in autocommit): commits at once.
    with connections[conf.database()].cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {EXEC_TABLE} (run_id, step_id, pid) VALUES (%s, %s, %s) RETURNING id",
            [run_id, step_id, os.getpid()],
        )
        exec_id = cursor.fetchone()[0]
    if delay:
        time.sleep(delay)
    return {"exec": exec_id, "pid": os.getpid()}


def insert_atomically(run_id: str, delay: float) -> int:
    # An atomic step: this row commits with the step's recorded result, or not at all.
    with connections[conf.database()].cursor() as cursor:
        cursor.execute(f"INSERT INTO {ATOMIC_TABLE} (run_id, pid) VALUES (%s, %s)", [run_id, os.getpid()])
    if delay:
        time.sleep(delay)  # widens the window in which a kill lands inside the transaction
    return os.getpid()


@wf.function(id=STEPS_FUNCTION, trigger=STEPS_EVENT, retries=0)
def steps(ctx: wf.Context) -> dict:
    delay = float(ctx.event.data.get("delay", 0))
    execs = [
        ctx.step.run(f"step-{n}", record_execution, ctx.run_id, f"step-{n}", delay)["exec"]
        for n in range(3)
    ]
    if ctx.event.data.get("atomic"):
        ctx.step.run("atomic", insert_atomically, ctx.run_id, delay, atomic=True)
    return {"execs": execs}


@wf.function(id=SLOW_FUNCTION, trigger=SLOW_EVENT, retries=0)
def slow(ctx: wf.Context) -> dict:
    first = ctx.step.run("slow", record_execution, ctx.run_id, "slow", float(ctx.event.data["seconds"]))
    second = ctx.step.run("after", record_execution, ctx.run_id, "after", 0)
    return {"slow_pid": first["pid"], "after_pid": second["pid"]}


@wf.function(id=WAIT_FUNCTION, trigger=WAIT_START_EVENT, retries=0)
def waiter(ctx: wf.Context) -> dict:
    done = ctx.step.wait_for_event("wait-done", event=WAIT_DONE_EVENT, match="data.key", timeout="1h")
    resumed = ctx.step.run("resumed", record_execution, ctx.run_id, "resumed", 0)
    return {"matched": done.data["key"] if done else None, "exec": resumed["exec"]}
