"""The fault tests' function, run by real ``runworkers`` processes (see ``fault_support.worker``).

A run has three steps, ``step-0`` .. ``step-2``; with ``data["sleep"]`` (a duration) it
sleeps between ``step-0`` and ``step-1``; with ``data["gap"]`` the handler pauses that many
seconds between steps, outside any step (code that replays: the run sits *between* steps
most of the time, which is where a worker that lost its lease must not start the next one).

Every step body first records its execution in ``EXEC_TABLE`` over a connection of its own
(psycopg, autocommit: committed at once, whatever the engine's connection is doing), then
does its work (a short sleep), then records when the work ended. So the tests count every
execution, including those of a worker killed or frozen before it recorded the step. While
the database is away a body keeps trying to record (each execution has a token, so a
retried INSERT counts once), for at most ``RECORD_PATIENCE_SECONDS``.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

import psycopg

import django_workflows as wf

from . import EVENT, EXEC_TABLE, FUNCTION, RECORD_PATIENCE_SECONDS, SLEEP_STEP, STEPS

_local = threading.local()


def _connection() -> psycopg.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed or conn.broken:
        conn = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True, connect_timeout=3)
        _local.conn = conn
    return conn


def _write(sql: str, params: list) -> None:
    deadline = time.monotonic() + RECORD_PATIENCE_SECONDS
    while True:
        try:
            _connection().execute(sql, params)
            return
        except psycopg.Error:
            conn = getattr(_local, "conn", None)
            if conn is not None:
                try:
                    conn.close()
                except Exception:
                    pass
            _local.conn = None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def record_execution(run_id: str, step_id: str, delay: float) -> dict:
    token = uuid.uuid4().hex
    started = time.time()
    _write(
        f"INSERT INTO {EXEC_TABLE} (token, run_id, step_id, pid, started) VALUES (%s, %s, %s, %s, %s) "
        "ON CONFLICT (token) DO NOTHING",
        [token, run_id, step_id, os.getpid(), started],
    )
    if delay:
        time.sleep(delay)
    _write(f"UPDATE {EXEC_TABLE} SET finished = %s WHERE token = %s", [time.time(), token])
    return {"exec": token, "pid": os.getpid()}


@wf.function(id=FUNCTION, trigger=EVENT, retries=0)
def fault_steps(ctx: wf.Context) -> dict:
    data = ctx.event.data
    delay = float(data.get("delay", 0.1))
    gap = float(data.get("gap", 0))
    execs = []
    for n, step_id in enumerate(STEPS):
        if n == 1 and data.get("sleep"):
            ctx.step.sleep(SLEEP_STEP, data["sleep"])
        if n and gap:
            time.sleep(gap)
        execs.append(ctx.step.run(step_id, record_execution, ctx.run_id, step_id, delay)["exec"])
    return {"execs": execs}
