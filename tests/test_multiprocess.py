"""Real ``runworkers`` processes against the test database: PostgreSQL only.

The step bodies (tests/mp_support/workflows.py) record every execution in a raw table in
its own committed statement, so these tests can count how many times each step's code ran,
including in a worker that was killed before it recorded the step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from django.db import connection
from mp_support import (
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

import django_workflows as wf
from django_workflows.models import QueueItem, Run, Step, Waiter

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
RUNS = 1_000
CONCURRENCY = 4  # threads per worker process


class Workers:
    """``runworkers`` subprocesses on the test database; all stopped by ``close``."""

    def __init__(self, db_url: str, log_dir: Path, lease_seconds: float) -> None:
        self.env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "DJANGO_SETTINGS_MODULE": "testproject.settings",
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
            "PYTHONUNBUFFERED": "1",
            "WORKFLOWS_LEASE_SECONDS": str(lease_seconds),
            "WORKFLOWS_LOG_LEVEL": "WARNING",
        }
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []

    def start(self, count: int, concurrency: int = CONCURRENCY) -> list[subprocess.Popen]:
        started = []
        for _ in range(count):
            with open(self.log_dir / f"worker-{len(self.procs)}.log", "wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "mp_support.worker", "--concurrency", str(concurrency)],
                    cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                )
            self.procs.append(proc)
            started.append(proc)
        return started

    def wait_ready(self, count: int, timeout: float = 20) -> None:
        """Wait until ``count`` workers LISTEN (each opens its listener once its threads run)."""
        name = connection.settings_dict["NAME"]

        def listening() -> bool:
            self.check_alive()
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND query = %s",
                    [name, "LISTEN django_workflows"],
                )
                return cursor.fetchone()[0] >= count

        wait_until(listening, timeout, f"{count} workers listening", self)

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None and proc.returncode not in (0, -signal.SIGKILL, -signal.SIGTERM):
                raise AssertionError(f"worker {proc.pid} died with {proc.returncode}\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for path in sorted(self.log_dir.glob("worker-*.log")):
            text = path.read_text(errors="replace")
            parts.append(f"--- {path.name} (last 3000 chars)\n{text[-3000:]}")
        return "\n".join(parts)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, workers: Workers) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            statuses = dict(Counter(Run.objects.values_list("status", flat=True)))
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}; runs by status {statuses}, "
                f"{QueueItem.objects.exclude(kind='cron').count()} queue items\n{workers.logs()}"
            )
        time.sleep(0.1)


def sql(query: str, params: list | None = None) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(query, params or [])
        return cursor.fetchall() if cursor.description else []


@pytest.fixture
def mp_tables(transactional_db) -> Iterator[None]:
    # Raw tables, outside migrations; the test database runs in autocommit here.
    drop = f"DROP TABLE IF EXISTS {EXEC_TABLE}; DROP TABLE IF EXISTS {ATOMIC_TABLE}"
    sql(drop)
    sql(f"CREATE TABLE {EXEC_TABLE} (id bigserial PRIMARY KEY, run_id text NOT NULL, "
        "step_id text NOT NULL, pid int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())")
    sql(f"CREATE TABLE {ATOMIC_TABLE} (id bigserial PRIMARY KEY, run_id text NOT NULL, pid int NOT NULL)")
    yield
    sql(drop)


@pytest.fixture
def workers(mp_tables, tmp_path, request) -> Iterator[Workers]:
    s = connection.settings_dict
    credentials = quote(s["USER"] or "postgres", safe="")
    if s["PASSWORD"]:
        credentials += ":" + quote(s["PASSWORD"], safe="")
    db_url = f"postgres://{credentials}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"
    lease = getattr(request, "param", 30)
    pool = Workers(db_url, tmp_path, lease_seconds=lease)
    try:
        yield pool
    finally:
        pool.close()


def send_steps_events(count: int, **data: object) -> None:
    wf.send([wf.Event(name=STEPS_EVENT, data=dict(data)) for _ in range(count)])


def executions() -> list[tuple[int, str, str, int]]:
    return sql(f"SELECT id, run_id, step_id, pid FROM {EXEC_TABLE} ORDER BY id")


def recorded_execs() -> dict[tuple[str, str], int]:
    """(run id, step id) -> id of the execution whose result the Step row recorded."""
    return {
        (str(run_id), step_id): output["exec"]
        for run_id, step_id, output in Step.objects.filter(
            run__function_id=STEPS_FUNCTION, step_id__startswith="step-", status="completed"
        ).values_list("run_id", "step_id", "output")
    }


def work_left() -> bool:
    # Cron schedules (the demo app has one) keep a queue item for their next tick.
    return QueueItem.objects.exclude(kind="cron").exists()


def completed_steps() -> int:
    return Step.objects.filter(status="completed").count()


# -- a) four processes, a thousand runs -------------------------------------------------------


def test_four_processes_run_every_step_exactly_once(workers):
    procs = workers.start(4)
    workers.wait_ready(4)
    started = time.monotonic()
    send_steps_events(RUNS)

    wait_until(
        lambda: Run.objects.filter(function_id=STEPS_FUNCTION, status="completed").count() == RUNS,
        timeout=90, what=f"{RUNS} completed runs", workers=workers,
    )
    elapsed = time.monotonic() - started

    assert Run.objects.filter(function_id=STEPS_FUNCTION).count() == RUNS  # intake started each once
    assert not work_left()
    rows = executions()
    per_step = Counter((run_id, step_id) for _, run_id, step_id, _ in rows)
    assert len(per_step) == 3 * RUNS
    assert {n for n in per_step.values()} == {1}, [k for k, n in per_step.items() if n > 1][:10]
    # Each recorded result is that of the (only) execution.
    assert recorded_execs() == {(run_id, step_id): exec_id for exec_id, run_id, step_id, _ in rows}
    by_pid = Counter(pid for *_, pid in rows)
    assert set(by_pid) <= {p.pid for p in procs}
    assert len(by_pid) == 4, f"not every worker took part: {by_pid}"
    print(f"\n{RUNS} runs ({3 * RUNS} steps) on 4 processes in {elapsed:.1f}s; steps by pid {dict(by_pid)}")


# -- b) SIGKILL one of them in the middle --------------------------------------------------------


@pytest.mark.parametrize("workers", [2], indirect=True)  # lease of 2 s: the takeover comes soon
def test_sigkill_loses_no_recorded_step_and_atomic_step_runs_once(workers):
    procs = workers.start(4)
    workers.wait_ready(4)
    victim = procs[0]
    total_steps = 4 * RUNS  # three plain steps and one atomic step per run
    send_steps_events(RUNS, delay=0.02, atomic=True)

    def victim_mid_step_and_work_remains() -> bool:
        done = completed_steps()
        assert done < total_steps, "all done before the kill: make the steps slower"
        if done < total_steps // 4:
            return False
        # Kill while the victim is inside a step body (begun, not recorded), if we can.
        in_flight = sql(
            f"SELECT count(*) FROM {EXEC_TABLE} e WHERE e.pid = %s AND NOT EXISTS ("
            f"SELECT 1 FROM {Step._meta.db_table} s WHERE s.run_id = e.run_id::uuid "
            "AND s.step_id = e.step_id AND s.status = 'completed')",
            [victim.pid],
        )[0][0]
        return in_flight > 0 or done >= total_steps // 2

    wait_until(victim_mid_step_and_work_remains, 30, "a quarter of the steps done", workers)
    victim.send_signal(signal.SIGKILL)
    victim.wait(5)
    done_at_kill = completed_steps()
    assert done_at_kill < total_steps

    wait_until(
        lambda: Run.objects.filter(function_id=STEPS_FUNCTION, status="completed").count() == RUNS,
        timeout=90, what=f"{RUNS} completed runs after the kill", workers=workers,
    )
    assert Run.objects.filter(function_id=STEPS_FUNCTION).count() == RUNS
    assert not Run.objects.exclude(status="completed").exists()
    assert not work_left()

    rows = executions()
    pid_of = {exec_id: pid for exec_id, *_, pid in rows}
    runs_of: dict[tuple[str, str], list[int]] = {}
    for exec_id, run_id, step_id, _ in rows:
        runs_of.setdefault((run_id, step_id), []).append(exec_id)
    assert len(runs_of) == 3 * RUNS

    recorded = recorded_execs()
    assert set(recorded) == set(runs_of)
    # A recorded step never runs again: the recorded execution is the step's last one.
    ran_after_recording = {key: ids for key, ids in runs_of.items() if recorded[key] != max(ids)}
    assert not ran_after_recording, ran_after_recording

    # At-least-once only for what was in flight in the killed worker: at most one step per
    # thread, first run by the victim and redone (and recorded) by another worker.
    duplicated = {key: ids for key, ids in runs_of.items() if len(ids) > 1}
    assert len(duplicated) <= CONCURRENCY, duplicated
    for key, ids in duplicated.items():
        assert len(ids) == 2, (key, ids)
        assert pid_of[ids[0]] == victim.pid, (key, [pid_of[i] for i in ids])
        assert pid_of[ids[1]] != victim.pid, (key, [pid_of[i] for i in ids])

    # The atomic step took effect exactly once per run, the kill notwithstanding.
    atomic_rows = Counter(run_id for (run_id,) in sql(f"SELECT run_id FROM {ATOMIC_TABLE}"))
    assert len(atomic_rows) == RUNS
    assert set(atomic_rows.values()) == {1}, [r for r, n in atomic_rows.items() if n > 1]
    assert Step.objects.filter(step_id="atomic", status="completed").count() == RUNS
    print(f"\nkilled {victim.pid} with {done_at_kill}/{total_steps} steps recorded; "
          f"{len(duplicated)} in-flight steps ran again elsewhere")


# -- c) SIGTERM during a slow step ---------------------------------------------------------------


def test_sigterm_finishes_the_slow_step_and_another_worker_completes_the_run(workers):
    procs = workers.start(2)
    workers.wait_ready(2)
    slow_seconds = 3.0
    wf.send(SLOW_EVENT, data={"seconds": slow_seconds})

    def slow_step_started() -> bool:
        return bool(sql(f"SELECT 1 FROM {EXEC_TABLE} WHERE step_id = 'slow'"))

    wait_until(slow_step_started, 20, "the slow step to start", workers)
    [(pid,)] = sql(f"SELECT pid FROM {EXEC_TABLE} WHERE step_id = 'slow'")
    [busy] = [p for p in procs if p.pid == pid]
    [other] = [p for p in procs if p is not busy]
    busy.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    # It lets the step finish (well within the 25 s grace), then exits cleanly.
    assert busy.wait(slow_seconds + 10) == 0, workers.logs()
    exited_after = time.monotonic() - signalled
    assert exited_after < slow_seconds + 5

    run = Run.objects.get(function_id=SLOW_FUNCTION)
    slow = Step.objects.get(run=run, step_id="slow")
    assert slow.status == "completed"
    assert slow.output["pid"] == busy.pid  # recorded by the worker that was stopping

    wait_until(
        lambda: Run.objects.filter(pk=run.pk, status="completed").exists(),
        timeout=15, what="the run to complete on the other worker", workers=workers,
    )
    run.refresh_from_db()
    assert run.output == {"slow_pid": busy.pid, "after_pid": other.pid}
    assert sql(f"SELECT step_id, pid FROM {EXEC_TABLE} ORDER BY id") == [
        ("slow", busy.pid), ("after", other.pid)
    ]
    assert other.poll() is None  # the other worker is still serving
    assert "released" not in (workers.log_dir / f"worker-{procs.index(busy)}.log").read_text()


# -- d) ten thousand runs waiting on match ---------------------------------------------------

WAITERS = int(os.environ.get("MP_WAITERS", "10000"))


def test_ten_thousand_waiting_runs_are_each_resumed_once(workers):
    workers.start(4)
    workers.wait_ready(4)
    started = time.monotonic()
    wf.send([wf.Event(name=WAIT_START_EVENT, data={"key": f"k{n}"}) for n in range(WAITERS)])
    wait_until(lambda: Waiter.objects.count() == WAITERS, timeout=240, what=f"{WAITERS} waiting runs", workers=workers)
    waiting_at = time.monotonic()
    assert Run.objects.filter(function_id=WAIT_FUNCTION, status="running").count() == WAITERS

    # Shuffle the order a little: every event matches exactly one run, by its key.
    keys = [f"k{n}" for n in range(WAITERS)]
    keys = keys[1::2] + keys[::2]
    wf.send([wf.Event(name=WAIT_DONE_EVENT, data={"key": key}) for key in keys])
    wait_until(
        lambda: Run.objects.filter(function_id=WAIT_FUNCTION, status="completed").count() == WAITERS,
        timeout=240, what=f"{WAITERS} resumed runs", workers=workers,
    )
    done_at = time.monotonic()

    assert not Waiter.objects.exists(), "runs left waiting"
    assert not work_left()
    outputs = list(Run.objects.filter(function_id=WAIT_FUNCTION).values_list("event__data__key", "output"))
    assert all(output["matched"] == key for key, output in outputs), "a run got another run's event"
    resumed = Counter(run_id for _, run_id, step_id, _ in executions() if step_id == "resumed")
    assert len(resumed) == WAITERS and set(resumed.values()) == {1}, "a run was resumed twice"
    waits = Step.objects.filter(run__function_id=WAIT_FUNCTION, step_id="wait-done")
    assert waits.filter(status="completed").count() == WAITERS
    print(f"\n{WAITERS} runs waiting after {waiting_at - started:.1f}s; all resumed and completed "
          f"{done_at - waiting_at:.1f}s after the matching events were sent")
