"""Fault tests: real ``runworkers`` processes through database outages, killed connections,
SIGKILL, SIGSTOP and skewed clocks (issue 7, "Resilience"). PostgreSQL only.

They run on a second PostgreSQL cluster that they create on a free port (and remove at the
end, also on failure), so that stopping the server or killing its backends never disturbs
the rest of the suite; the test process reads the results there with plain psycopg, and
sends events through a small subprocess (``fault_support.send``). The step bodies record
every execution over a connection of their own, before doing their work, so the tests count
executions even of a worker that died before it recorded the step
(``fault_support.workflows``). What every test checks is in ``fault_support.checks``.

Each test prints its figures (runs, re-executed step bodies, time to recover, total time;
``pytest -s``) and appends them as JSON lines to $FAULT_REPORT when that is set.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/django_workflows pytest tests/test_faults.py -s
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from fault_support import EXEC_TABLE, EXEC_TABLE_DDL, SLEEP_STEP, STEPS
from fault_support.checks import (
    RUN_TABLE,
    STEP_TABLE,
    Exec,
    FaultDB,
    Figures,
    failure_message,
    overlapping,
    probe,
    verify,
    wait_completed,
    wait_for,
    wait_ready,
)
from fault_support.cluster import Cluster, ClusterUnavailable
from fault_support.pool import ROOT, Workers

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.faults]

LEASE_SECONDS = 3.0
CONCURRENCY = 4  # threads per worker process
WORKERS = 3
TEMPLATE = "faults_template"  # migrated once; each test gets a fresh copy


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fault_cluster() -> Iterator[Cluster]:
    """The second cluster: initdb, start, a migrated template database; removed at the end."""
    try:
        cluster = Cluster.create()
    except ClusterUnavailable as exc:
        if os.environ.get("CI") == "true":  # in CI a missing PostgreSQL is a failure
            pytest.fail(f"CI: fault tests need a PostgreSQL cluster of their own: {exc}")
        pytest.skip(f"fault tests need a PostgreSQL cluster of their own: {exc}")
    try:
        cluster.create_database(TEMPLATE)
        env = {**os.environ, "DATABASE_URL": cluster.url(TEMPLATE), "DJANGO_SETTINGS_MODULE": "testproject.settings"}
        result = subprocess.run(
            [sys.executable, "testproject/manage.py", "migrate", "--noinput"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, f"migrate failed:\n{result.stdout}\n{result.stderr}"
        with cluster.connect(TEMPLATE) as conn:
            conn.execute(EXEC_TABLE_DDL)
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def fault_db(fault_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[FaultDB]:
    """A fresh copy of the migrated template for this test, dropped afterwards."""
    name = "faults_" + re.sub(r"\W+", "_", request.node.name).lower()[:50]
    fault_cluster.ensure_running()  # a failed test may have left it stopped
    fault_cluster.create_database(name, template=TEMPLATE)
    db = FaultDB(fault_cluster, name)
    try:
        yield db
    finally:
        db.close()
        fault_cluster.ensure_running()
        fault_cluster.drop_database(name)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    figs = Figures(request.node.name)
    yield figs
    figs.write()  # also when the test failed


@pytest.fixture
def workers(fault_db: FaultDB, tmp_path, figures: Figures) -> Iterator[Workers]:
    pool = Workers(fault_db.url, tmp_path, lease_seconds=LEASE_SECONDS, concurrency=CONCURRENCY)
    try:
        yield pool
    finally:
        pool.close()


def fail_if_problems(figures: Figures, workers: Workers, cluster: Cluster | None = None) -> None:
    if figures.problems:
        pytest.fail(failure_message(figures, workers, cluster), pytrace=False)


def start_ready(workers: Workers, db: FaultDB, figures: Figures, count: int = WORKERS) -> list:
    procs = workers.start(count)
    if not wait_ready(db, workers, count, figures):
        fail_if_problems(figures, workers)
    return procs


def mid_load(db: FaultDB, workers: Workers, figures: Figures, total_steps: int, fraction: float) -> int:
    """Wait until ``fraction`` of the steps are recorded, with work left; returns how many."""
    if not wait_for(lambda: db.completed_steps() >= total_steps * fraction, 60, 0.05):
        figures.problem(f"{fraction:.0%} of {total_steps} steps were not recorded within 60s before the fault")
        fail_if_problems(figures, workers)
    done = db.completed_steps()
    assert done < total_steps, "the load finished before the fault: make the steps slower"
    return done


def load_left_after_fault(db: FaultDB, figures: Figures, total_steps: int) -> None:
    """The fault must have ended while work remained, or it was not tested under load."""
    done = db.completed_steps()
    figures.extra["steps_done_at_fault_end"] = done
    if done >= total_steps:
        figures.problem(f"all {total_steps} steps were recorded before the fault ended: the load is too small")


def in_flight_during(fault_start: float, fault_end: float) -> tuple:
    """A body was in flight at a fault in [start, end] if it began before the end and its
    work had not ended a second before the start (its checkpoint may fail just after it)."""

    def rule(e: Exec) -> bool:
        return e.started < fault_end and (e.finished is None or e.finished > fault_start - 1.0)

    return rule, "a re-executed body must have begun before the fault ended and not ended before it began"


# -- 1 and 2: the database stopped in the middle of the load ------------------------------


def database_outage(
    cluster: Cluster, db: FaultDB, workers: Workers, figures: Figures, *,
    seconds: float, mode: str, runs: int, delay: float, timeout: float,
) -> None:
    start_ready(workers, db, figures)
    started = time.monotonic()
    db.send(runs, delay=delay)
    total_steps = len(STEPS) * runs
    done = mid_load(db, workers, figures, total_steps, 0.25)

    fault_start, fault_end = cluster.outage(seconds, mode)
    figures.extra.update(outage_seconds=round(fault_end - fault_start, 1), stop_mode=mode, steps_done_at_fault=done)
    load_left_after_fault(db, figures, total_steps)
    completed = wait_completed(db, workers, figures, timeout=timeout, fault_end=fault_end)
    figures.total_seconds = round(time.monotonic() - started, 2)
    if completed:
        probe(db, workers, figures)
    rule, words = in_flight_during(fault_start, fault_end)
    # One body in flight per thread at most: at most one re-execution each.
    verify(db, workers, figures, may_rerun=rule, rerun_rule=words, max_reruns=WORKERS * CONCURRENCY)
    fail_if_problems(figures, workers, cluster)


def test_database_stopped_for_5_seconds_mid_load(fault_cluster, fault_db, workers, figures):
    database_outage(fault_cluster, fault_db, workers, figures,
                    seconds=5, mode="fast", runs=120, delay=0.15, timeout=60)


def test_database_stopped_for_30_seconds_mid_load(fault_cluster, fault_db, workers, figures):
    # "immediate": the server crashes and runs crash recovery when it comes back.
    database_outage(fault_cluster, fault_db, workers, figures,
                    seconds=30, mode="immediate", runs=60, delay=0.15, timeout=90)


# -- 3: every backend of the database terminated, every 0.5 s for 5 s -----------------------


def test_backends_terminated_repeatedly(fault_cluster, fault_db, workers, figures):
    db = fault_db
    start_ready(workers, db, figures)
    started = time.monotonic()
    runs = 200
    db.send(runs, delay=0.15)
    total_steps = len(STEPS) * runs
    done = mid_load(db, workers, figures, total_steps, 0.15)

    rounds = fault_cluster.terminate_repeatedly(db.name, every=0.5, for_seconds=5)
    fault_start, fault_end = rounds[0][0], rounds[-1][0]
    figures.extra.update(
        termination_rounds=len(rounds), sessions_terminated=sum(n for _, n in rounds), steps_done_at_fault=done
    )
    load_left_after_fault(db, figures, total_steps)
    completed = wait_completed(db, workers, figures, timeout=60, fault_end=fault_end)
    figures.total_seconds = round(time.monotonic() - started, 2)
    if completed:
        probe(db, workers, figures)
    rule, words = in_flight_during(fault_start, fault_end)
    verify(db, workers, figures, may_rerun=rule, rerun_rule=words)
    fail_if_problems(figures, workers, fault_cluster)


# -- 4: a worker frozen past its lease, then resumed ---------------------------------------


def runs_between_steps(db: FaultDB, pid: int) -> list[str]:
    """Runs in which ``pid`` recorded a step and has not begun the next one (nobody has)."""
    rows = db.query(
        f"SELECT e.run_id FROM {EXEC_TABLE} e JOIN {STEP_TABLE} s ON s.run_id = e.run_id::uuid "
        "AND s.step_id = e.step_id AND s.status = 'completed' AND s.output->>'exec' = e.token "
        "WHERE e.pid = %s AND e.step_id IN ('step-0', 'step-1') AND NOT EXISTS ("
        f"SELECT 1 FROM {EXEC_TABLE} n WHERE n.run_id = e.run_id "
        "AND n.step_id = CASE e.step_id WHEN 'step-0' THEN 'step-1' ELSE 'step-2' END)",
        [pid],
    )
    return [run_id for (run_id,) in rows]


def unfinished_runs_last_touched_by(db: FaultDB, pid: int) -> dict[str, int]:
    """Unfinished runs whose latest step execution is ``pid``'s -> their completed steps."""
    rows = db.query(
        f"SELECT DISTINCT ON (e.run_id) e.run_id, e.pid FROM {EXEC_TABLE} e ORDER BY e.run_id, e.started DESC"
    )
    progress = progress_of(db, [run_id for run_id, last_pid in rows if last_pid == pid])
    return {run_id: steps for run_id, steps in progress.items() if steps is not None}


def progress_of(db: FaultDB, run_ids: list[str]) -> dict[str, int | None]:
    """run id -> its completed steps, or None once the run is finished."""
    if not run_ids:
        return {}
    rows = db.query(
        "SELECT r.id::text, r.status, count(s.id) FILTER (WHERE s.status = 'completed') "
        f"FROM {RUN_TABLE} r LEFT JOIN {STEP_TABLE} s ON s.run_id = r.id "
        "WHERE r.id::text = ANY(%s) GROUP BY r.id, r.status",
        [run_ids],
    )
    return {run_id: (None if status in ("completed", "failed", "cancelled") else steps) for run_id, status, steps in rows}


def test_frozen_worker_does_not_run_steps_taken_over(fault_cluster, fault_db, workers, figures):
    db = fault_db
    procs = start_ready(workers, db, figures)
    victim = procs[0]
    started = time.monotonic()
    # Steps of 0.05 s with 0.4 s of handler code between them: most of the time a run sits
    # between two steps, where a worker that lost its lease must not begin the next one.
    db.send(48, delay=0.05, gap=0.4)

    if not wait_for(lambda: len(runs_between_steps(db, victim.pid)) >= 2, 30, 0.02):
        figures.problem("the victim never had two runs between steps to freeze")
        fail_if_problems(figures, workers)
    freeze_at = workers.freeze(victim)
    time.sleep(0.3)  # statements sent just before SIGSTOP land
    held = unfinished_runs_last_touched_by(db, victim.pid)

    def taken_over() -> bool:
        if time.time() - freeze_at < LEASE_SECONDS + 1:
            return False
        now = progress_of(db, list(held))
        return all(now[run_id] is None or now[run_id] > steps for run_id, steps in held.items())

    # Frozen past its lease: until every run it was in has progressed in another worker.
    if not wait_for(taken_over, LEASE_SECONDS + 40, 0.1):
        figures.problem(f"the {len(held)} runs of the frozen worker were not taken over within {LEASE_SECONDS + 40:.0f}s")
    thaw_at = workers.thaw(victim)
    figures.extra.update(frozen_seconds=round(thaw_at - freeze_at, 1), runs_held_at_freeze=len(held))

    completed = wait_completed(db, workers, figures, timeout=60, fault_end=thaw_at)
    figures.total_seconds = round(time.monotonic() - started, 2)
    if completed:
        probe(db, workers, figures)
    by_key = verify(
        db, workers, figures,
        may_rerun=lambda e: e.pid == victim.pid and e.started < freeze_at + 0.05,
        rerun_rule="only bodies the frozen worker had begun before SIGSTOP may run again elsewhere",
        max_reruns=CONCURRENCY,
    )
    recorded = db.recorded()
    recorded_pid = {key: e.pid for key, group in by_key.items() for e in group if e.token == recorded.get(key)}
    stale = [
        f"{key} (recorded by {recorded_pid.get(key)})"
        for key, group in by_key.items()
        for e in group
        if e.pid == victim.pid and e.started >= thaw_at and recorded_pid.get(key) not in (None, victim.pid)
    ]
    figures.extra["stale_after_resume"] = len(stale)
    if stale:
        figures.problem(
            f"after SIGCONT the frozen worker ran {len(stale)} step bodies of runs another worker had "
            f"taken over: {stale[:5]}"
        )
    fail_if_problems(figures, workers)


# -- 5: twenty SIGKILLs, each worker replaced -----------------------------------------------

KILLS = 20


def test_twenty_sigkills_with_replacements(fault_cluster, fault_db, workers, figures):
    db = fault_db
    start_ready(workers, db, figures)
    started = time.monotonic()
    runs = 240
    db.send(runs, delay=0.2)
    total_steps = len(STEPS) * runs
    mid_load(db, workers, figures, total_steps, 0.05)

    def next_victim(timeout: float = 30):
        """The live worker with the most step bodies in flight, among those that began any."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = {pid for (pid,) in db.query(f"SELECT DISTINCT pid FROM {EXEC_TABLE}")}
            candidates = [p for p in workers.alive() if p.pid in pids]
            if candidates:
                return max(candidates, key=lambda p: len(db.in_flight(p.pid)))
            time.sleep(0.1)
        return None

    last_kill, first_kill = None, time.time()
    for _ in range(KILLS):
        victim = next_victim()
        if victim is None:
            figures.problem(f"after {len(workers.killed)} kills no worker was running steps for 30s")
            break
        last_kill, _replacement = workers.kill_and_replace(victim)
        time.sleep(0.5)
    kills = len(workers.killed)
    figures.extra.update(kills=kills, kill_phase_seconds=round((last_kill or first_kill) - first_kill, 1))
    if last_kill is not None:
        load_left_after_fault(db, figures, total_steps)
    completed = wait_completed(db, workers, figures, timeout=90, fault_end=last_kill)
    figures.total_seconds = round(time.monotonic() - started, 2)
    if completed:
        probe(db, workers, figures)
    verify(
        db, workers, figures,
        may_rerun=lambda e: e.pid in workers.killed and e.started <= workers.killed[e.pid],
        rerun_rule="only bodies in flight in a worker when it was killed may run again",
        max_reruns=kills * CONCURRENCY,
    )
    fail_if_problems(figures, workers)


# -- 6: a worker started while the database is down -----------------------------------------


def test_worker_started_while_database_is_down(fault_cluster, fault_db, workers, figures):
    db = fault_db
    started = time.monotonic()
    db.send(40, delay=0.05)  # work waiting for the worker
    fault_cluster.stop("fast")
    fault_start = time.time()
    [worker] = workers.start(1)
    exited = wait_for(lambda: worker.poll() is not None, 5.0, 0.1)
    time.sleep(max(0.0, 5.0 - (time.time() - fault_start)))
    fault_cluster.start()
    fault_end = time.time()
    figures.extra["down_seconds"] = round(fault_end - fault_start, 1)
    if exited:
        figures.problem(f"the worker exited with code {worker.returncode} while the database was down")
    completed = wait_completed(db, workers, figures, timeout=60, fault_end=fault_end)
    figures.total_seconds = round(time.monotonic() - started, 2)
    if completed:
        probe(db, workers, figures)
    verify(
        db, workers, figures, may_rerun=lambda e: False,
        rerun_rule="nothing was in flight: the worker started while the database was down",
    )
    fail_if_problems(figures, workers, fault_cluster)


# -- 7: clocks skewed by +120 s and -120 s ---------------------------------------------------

SKEW = 120.0
NAP_SECONDS = 2.0


def test_skewed_worker_clocks(fault_cluster, fault_db, workers, figures):
    """One worker's clock 2 minutes ahead, one's 2 minutes behind, one right. Due times and
    leases must not depend on which worker looks: no sleep ends early, no step body runs on
    two workers at once (nor twice at all: there is no other fault)."""
    db = fault_db
    workers.start(1, skew=SKEW)
    workers.start(1, skew=-SKEW)
    workers.start(1)
    if not wait_ready(db, workers, 3, figures):
        fail_if_problems(figures, workers)
    started = time.monotonic()
    db.send(40, delay=0.1, sleep=f"{NAP_SECONDS:g}s")
    completed = wait_completed(db, workers, figures, timeout=60)
    figures.total_seconds = round(time.monotonic() - started, 2)
    if completed:
        probe(db, workers, figures)
    by_key = verify(
        db, workers, figures, may_rerun=lambda e: False,
        rerun_rule="no worker died or lost its connection: every body runs once",
    )

    concurrent = overlapping(by_key)
    figures.extra["concurrent_executions"] = len(concurrent)
    if concurrent:
        figures.problem(f"{len(concurrent)} step bodies ran on two workers at the same time: {concurrent[:5]}")

    # Real time, from the step bodies' own clocks: the sleep began after step-0's work ended
    # and ended before step-1's first execution began.
    recorded = db.recorded()
    sleeping = {run_id for run_id, (_, _, data) in db.runs().items() if data.get("sleep")}
    naps, early = [], []
    for (run_id, step_id), group in by_key.items():
        if step_id != "step-1" or run_id not in sleeping:
            continue
        step0 = next((e for e in by_key.get((run_id, "step-0"), []) if e.token == recorded.get((run_id, "step-0"))), None)
        if step0 is None or step0.finished is None:
            continue
        nap = group[0].started - step0.finished
        naps.append(nap)
        if nap < NAP_SECONDS:
            early.append(f"run {run_id}: step-1 began {nap:.2f}s after step-0 ended")
    # As the engine recorded it (its clocks): the sleep step's ended_at - started_at.
    recorded_naps = [
        (ended - began).total_seconds()
        for _, step_id, _, status, _, began, ended in db.steps()
        if step_id == SLEEP_STEP and status == "completed" and began and ended
    ]
    figures.extra.update(
        naps=len(naps), early_wakes=len(early),
        shortest_nap_real=round(min(naps), 2) if naps else None,
        nap_recorded_min=round(min(recorded_naps), 2) if recorded_naps else None,
        nap_recorded_max=round(max(recorded_naps), 2) if recorded_naps else None,
    )
    if early:
        figures.problem(f"{len(early)} of {len(naps)} {NAP_SECONDS:g}s sleeps ended early (real time): {early[:5]}")
    fail_if_problems(figures, workers)
