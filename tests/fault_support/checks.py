"""Reading a fault test's results (plain psycopg on the fault cluster) and checking them.

What every fault test must show, whatever the fault:

* every run completes;
* every step of every run is recorded exactly once (one completed Step row per expected
  step, no other row), and the recorded result is that of the step's *last* execution: a
  recorded step never runs again;
* a step body runs more than once only if it was in flight at the fault (each test says
  what "in flight" means for its fault, and may bound the number of re-executions);
* no run is left stuck: no queue item of the test's runs, and no event item, remains;
* the workers recover by themselves: none exits unless the test killed it, and after the
  fault every surviving worker still takes work (a probe batch of runs at the end).

Problems are collected rather than raised one by one, so that a failing test names all of
them, with its figures (``Figures``: printed, and written as JSON lines to $FAULT_REPORT).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import psycopg

from . import EXEC_TABLE, FUNCTION, SLEEP_STEP, STEPS
from .cluster import Cluster
from .pool import ROOT, TESTS, Workers

RUN_TABLE = "django_workflows_run"
STEP_TABLE = "django_workflows_step"
QUEUE_TABLE = "django_workflows_queue"
EVENT_TABLE = "django_workflows_event"


@dataclass(frozen=True)
class Exec:
    token: str
    run_id: str
    step_id: str
    pid: int
    started: float  # wall clock of the worker (real time, whatever the engine's clock says)
    finished: float | None  # None: the body's work never ended (killed) or was never recorded

    @property
    def key(self) -> tuple[str, str]:
        return self.run_id, self.step_id


@dataclass
class Figures:
    """What one fault test measured; ``problems`` is what it found wrong."""

    test: str
    runs: int = 0
    steps: int = 0
    executions: int = 0
    reexecuted: int = 0  # step-body executions beyond the first of each step
    recover_seconds: float | None = None  # end of the fault -> first step completed after it
    total_seconds: float | None = None
    extra: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def summary(self) -> str:
        recover = "-" if self.recover_seconds is None else f"{self.recover_seconds:.2f}s"
        total = "-" if self.total_seconds is None else f"{self.total_seconds:.1f}s"
        extra = ", ".join(f"{k}={v}" for k, v in self.extra.items())
        verdict = f"{len(self.problems)} problem(s)" if self.problems else "ok"
        return (
            f"[faults] {self.test}: runs={self.runs} steps={self.steps} executions={self.executions} "
            f"re-executed={self.reexecuted} recover={recover} total={total}"
            + (f" ({extra})" if extra else "") + f": {verdict}"
        )

    def write(self) -> None:
        print("\n" + self.summary())
        for text in self.problems:
            print(f"[faults]   - {text[:500]}")
        path = os.environ.get("FAULT_REPORT")
        if path:
            with open(path, "a") as out:
                out.write(json.dumps(asdict(self), default=str) + "\n")


class FaultDB:
    """One test's database on the fault cluster, read and written with plain psycopg."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.url = cluster.url(name)
        self._conn: psycopg.Connection | None = None
        self.sent = 0

    def query(self, sql: str, params: list | None = None) -> list[tuple]:
        for attempt in range(2):
            try:
                if self._conn is None or self._conn.closed or self._conn.broken:
                    self._conn = self.cluster.connect(self.name)
                cursor = self._conn.execute(sql, params or [])
                return cursor.fetchall() if cursor.description else []
            except psycopg.OperationalError:
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
        self._conn = None

    def now(self) -> float:
        """The database server's clock, as epoch seconds."""
        return float(self.query("SELECT extract(epoch FROM clock_timestamp())")[0][0])

    # -- sending ---------------------------------------------------------------------------

    def send(self, count: int, **data: object) -> None:
        """Send ``count`` events starting the test function (``wf.send`` in a subprocess)."""
        env = {
            **os.environ,
            "DATABASE_URL": self.url,
            "DJANGO_SETTINGS_MODULE": "testproject.settings",
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]),
        }
        result = subprocess.run(
            [sys.executable, "-m", "fault_support.send", str(count), json.dumps(data)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )
        if result.returncode != 0 or result.stdout.strip() != str(count):
            raise AssertionError(f"sending {count} events failed:\n{result.stdout}\n{result.stderr}")
        self.sent += count

    # -- reading ---------------------------------------------------------------------------

    def executions(self) -> list[Exec]:
        rows = self.query(
            f"SELECT token, run_id, step_id, pid, started, finished FROM {EXEC_TABLE} ORDER BY started, id"
        )
        return [Exec(*row) for row in rows]

    def runs(self) -> dict[str, tuple[str, dict | None, dict]]:
        """run id -> (status, error, trigger event data) for the test function's runs."""
        rows = self.query(
            f"SELECT r.id::text, r.status, r.error, e.data FROM {RUN_TABLE} r "
            f"LEFT JOIN {EVENT_TABLE} e ON e.id = r.event_id WHERE r.function_id = %s",
            [FUNCTION],
        )
        return {run_id: (status, error, data or {}) for run_id, status, error, data in rows}

    def steps(self) -> list[tuple]:
        """(run id, step id, kind, status, output, started_at, ended_at) of the test's runs."""
        return self.query(
            f"SELECT s.run_id::text, s.step_id, s.kind, s.status, s.output, s.started_at, s.ended_at "
            f"FROM {STEP_TABLE} s JOIN {RUN_TABLE} r ON r.id = s.run_id WHERE r.function_id = %s",
            [FUNCTION],
        )

    def recorded(self) -> dict[tuple[str, str], str | None]:
        """(run, step) -> token of the execution whose result the completed Step row holds."""
        rows = self.query(
            f"SELECT s.run_id::text, s.step_id, s.output->>'exec' FROM {STEP_TABLE} s "
            f"JOIN {RUN_TABLE} r ON r.id = s.run_id WHERE r.function_id = %s AND s.kind = 'run' "
            "AND s.status = 'completed'",
            [FUNCTION],
        )
        return {(run_id, step_id): token for run_id, step_id, token in rows}

    def completed_runs(self) -> int:
        return self.query(
            f"SELECT count(*) FROM {RUN_TABLE} WHERE function_id = %s AND status = 'completed'", [FUNCTION]
        )[0][0]

    def finished_runs(self) -> int:
        return self.query(
            f"SELECT count(*) FROM {RUN_TABLE} WHERE function_id = %s "
            "AND status IN ('completed', 'failed', 'cancelled')",
            [FUNCTION],
        )[0][0]

    def completed_steps(self) -> int:
        return self.query(f"SELECT count(*) FROM {STEP_TABLE} WHERE status = 'completed'")[0][0]

    def leftover_queue(self) -> dict[str, int]:
        """Queue items of the test's runs, and event items, still there (cron schedules aside)."""
        rows = self.query(
            f"SELECT q.kind, count(*) FROM {QUEUE_TABLE} q LEFT JOIN {RUN_TABLE} r ON r.id = q.run_id "
            "WHERE q.kind <> 'cron' AND (q.run_id IS NULL OR r.function_id = %s) GROUP BY q.kind",
            [FUNCTION],
        )
        return dict(rows)

    def listening(self) -> int:
        return self.query(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND query = 'LISTEN django_workflows'",
            [self.name],
        )[0][0]

    def in_flight(self, pid: int) -> list[tuple[str, str]]:
        """(run, step) whose body ``pid`` started and that no worker has recorded yet."""
        return self.query(
            f"SELECT e.run_id, e.step_id FROM {EXEC_TABLE} e WHERE e.pid = %s AND NOT EXISTS ("
            f"SELECT 1 FROM {STEP_TABLE} s WHERE s.run_id = e.run_id::uuid AND s.step_id = e.step_id "
            "AND s.status = 'completed')",
            [pid],
        )


# -- waiting ---------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def wait_ready(db: FaultDB, workers: Workers, count: int, figures: Figures, timeout: float = 30) -> bool:
    """Until ``count`` workers LISTEN (each opens its listener once its threads run)."""
    def ready() -> bool:
        return bool(workers.unexpected_exits()) or db.listening() >= count

    if not wait_for(ready, timeout, 0.1) or workers.unexpected_exits():
        figures.problem(
            f"{count} workers were not ready (listening) within {timeout:.0f}s; exits {workers.unexpected_exits()}"
        )
        return False
    return True


def wait_completed(
    db: FaultDB, workers: Workers, figures: Figures, *, timeout: float, fault_end: float | None = None,
    what: str = "all runs",
) -> bool:
    """Wait until every run sent so far has finished; measure recovery after ``fault_end``.

    Recovery: from ``fault_end`` (wall clock) to the first step completed after it, seen by
    polling the count of completed steps (0.1 s resolution). Returns whether all completed;
    a timeout, a failed run or the death of every worker is recorded as a problem.
    """
    baseline = db.completed_steps() if fault_end is not None else None
    deadline = time.monotonic() + timeout
    while True:
        finished = db.finished_runs()
        if baseline is not None and figures.recover_seconds is None and db.completed_steps() > baseline:
            figures.recover_seconds = round(time.time() - fault_end, 3)
        if finished >= db.sent:
            break
        if not workers.alive():
            figures.problem(f"waiting for {what}: no worker process left alive ({finished}/{db.sent} runs finished)")
            return False
        if time.monotonic() > deadline:
            statuses = dict(db.query(
                f"SELECT status, count(*) FROM {RUN_TABLE} WHERE function_id = %s GROUP BY status", [FUNCTION]
            ))
            figures.problem(
                f"timed out after {timeout:.0f}s waiting for {what}: {finished}/{db.sent} runs finished, "
                f"runs by status {statuses}, queue {db.leftover_queue()}"
            )
            return False
        time.sleep(0.1)
    completed = db.completed_runs()
    if completed < db.sent:
        figures.problem(f"{db.sent - completed} of {db.sent} runs finished without completing")
        return False
    return True


# -- the probe: every surviving worker still takes work --------------------------------------


def probe(db: FaultDB, workers: Workers, figures: Figures, *, per_worker: int = 6, timeout: float = 40) -> None:
    """Send a batch of runs after the fault and check that every surviving worker ran some.

    Runs of three 0.25 s steps, ``per_worker`` per live worker: one worker alone (four
    threads) cannot finish them before the others claim theirs, unless they take nothing.
    """
    expected = [p for p in workers.survivors_expected() if p.poll() is None]
    if not expected:
        figures.problem("probe: no worker left to probe")
        return
    before = {run_id for run_id in db.runs()}
    db.send(per_worker * len(expected), delay=0.25, probe=True)
    if not wait_completed(db, workers, figures, timeout=timeout, what="the probe runs after the fault"):
        return
    probe_runs = set(db.runs()) - before
    pids = {e.pid for e in db.executions() if e.run_id in probe_runs}
    idle = [p.pid for p in expected if p.pid not in pids]
    figures.extra["probe_runs"] = len(probe_runs)
    if idle:
        figures.problem(
            f"after the fault, worker(s) {idle} ran none of the {len(probe_runs)} probe runs "
            f"(steps ran in {sorted(pids)}): alive but not taking work"
        )


# -- checking the outcome --------------------------------------------------------------------


Rerun = Callable[[Exec], bool]


def verify(
    db: FaultDB, workers: Workers, figures: Figures, *, may_rerun: Rerun, rerun_rule: str,
    max_reruns: int | None = None,
) -> dict[tuple[str, str], list[Exec]]:
    """Check the invariants over everything the test ran; returns the executions by step.

    ``may_rerun(e)``: may the execution ``e``, which was not the step's last, have been in
    flight at the fault? (``rerun_rule`` says in words what it allows.)
    """
    runs = db.runs()
    figures.runs = len(runs)
    if len(runs) != db.sent:
        figures.problem(f"{len(runs)} runs for {db.sent} events sent: each event must start exactly one run")

    not_completed = {run_id: (status, error) for run_id, (status, error, _) in runs.items() if status != "completed"}
    if not_completed:
        examples = "; ".join(
            f"{run_id} {status}" + (f" ({(error or {}).get('name')}: {str((error or {}).get('message'))[:200]})" if error else "")
            for run_id, (status, error) in list(not_completed.items())[:5]
        )
        figures.problem(f"{len(not_completed)} runs did not complete: {examples}")

    # Recorded steps: exactly the expected ones, each completed, once.
    expected_steps = {
        run_id: set(STEPS) | ({SLEEP_STEP} if data.get("sleep") else set()) for run_id, (_, _, data) in runs.items()
    }
    recorded = db.recorded()
    rows_by_run: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for run_id, step_id, _kind, status, _output, _started, _ended in db.steps():
        rows_by_run[run_id].append((step_id, status))
    figures.steps = sum(len(rows) for rows in rows_by_run.values())
    wrong = []
    for run_id, wanted in expected_steps.items():
        rows = rows_by_run.get(run_id, [])
        ids = [step_id for step_id, _ in rows]
        completed = {step_id for step_id, status in rows if status == "completed"}
        if completed != wanted or len(ids) != len(set(ids)) or set(ids) != wanted:
            wrong.append(f"{run_id}: {sorted(rows)}")
    if wrong:
        figures.problem(f"{len(wrong)} runs do not have exactly one completed row per step: {wrong[:5]}")

    leftover = db.leftover_queue()
    if leftover:
        figures.problem(f"queue items left (stuck work): {leftover}")

    # Executions of step bodies.
    execs = db.executions()
    figures.executions = len(execs)
    by_key: dict[tuple[str, str], list[Exec]] = defaultdict(list)
    for e in execs:
        by_key[e.key].append(e)
    strangers = [key for key in by_key if key[0] not in runs or key[1] not in expected_steps[key[0]]]
    if strangers:
        figures.problem(f"executions of steps that no run has: {strangers[:5]}")
    missing = [key for key in recorded if key not in by_key]
    if missing:
        figures.problem(f"{len(missing)} steps recorded without any execution of their body: {missing[:5]}")
    not_last, unexplained, reruns = [], [], 0
    for key, group in by_key.items():
        reruns += len(group) - 1
        token = recorded.get(key)
        if token is not None and token != group[-1].token:
            tokens = [e.token for e in group]
            not_last.append(
                f"{key}: recorded execution {tokens.index(token) + 1 if token in tokens else '?'} of "
                f"{len(group)} (pids {[e.pid for e in group]})"
            )
        if any(not may_rerun(e) for e in group[:-1]):
            runs_of = ", ".join(
                f"pid {e.pid} {e.started:.2f}-{'never' if e.finished is None else f'{e.finished:.2f}'}"
                for e in group
            )
            unexplained.append(f"{key}: {runs_of}")
    figures.reexecuted = reruns
    if not_last:
        figures.problem(
            f"{len(not_last)} steps ran again after the execution that was recorded "
            f"(a recorded step must never run again): {not_last[:5]}"
        )
    if unexplained:
        figures.problem(
            f"{len(unexplained)} steps ran more than once though not in flight at the fault "
            f"({rerun_rule}); executions (pid, wall-clock start-end): {unexplained[:5]}"
        )
    if max_reruns is not None and reruns > max_reruns:
        figures.problem(f"{reruns} re-executed step bodies, more than the bound of {max_reruns} ({rerun_rule})")

    exits = workers.unexpected_exits()
    if exits:
        figures.problem(f"worker(s) exited though the test did not kill them (pid, exit code): {exits}")
    return by_key


def overlapping(by_key: dict[tuple[str, str], list[Exec]]) -> list[str]:
    """Steps whose body ran at the same time in two worker processes."""
    found = []
    for key, group in by_key.items():
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                if a.pid == b.pid:
                    continue
                a_end = a.finished if a.finished is not None else float("inf")
                b_end = b.finished if b.finished is not None else float("inf")
                if a.started < b_end and b.started < a_end:
                    found.append(f"{key}: pids {a.pid} and {b.pid}")
    return found


def failure_message(figures: Figures, workers: Workers, cluster: Cluster | None = None) -> str:
    parts = [figures.summary(), *[f"  - {p}" for p in figures.problems], workers.logs()]
    if cluster is not None:
        parts.append(cluster.server_log(1500))
    return "\n".join(parts)
