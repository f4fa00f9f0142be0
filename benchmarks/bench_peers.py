#!/usr/bin/env python
"""Issue 12's targets: this engine against its peers, measured in one sitting, interleaved.

    .venv/bin/python benchmarks/bench_peers.py                # 3 rounds: about 8-10 minutes on 2 cores
    .venv/bin/python benchmarks/bench_peers.py --quick        # 1 round, small sizes: about 1-2 minutes
    .venv/bin/python benchmarks/bench_peers.py --only ours,celery --rounds 5 --json-out peers.json

Each round runs every selected measurement once, one at a time (never two at once: client
and server share the CPUs), in an order that rotates from round to round so that the
machine's drift spreads over all of them:

- ours: bench_engine.py with 4 ``runworkers`` processes of 8 threads, one repetition:
  1-step runs/s (event intake included), 10-step steps/s, idle wake-up latency p50/p99,
  commits per step;
- the peers' scripts (``--peers-dir``, default ../shared/bench-peers beside the project, run with their own
  venv): Celery+Redis drain, chains of 10 and latency (threads pool, 8 threads);
  Procrastinate drain (concurrency 8) and latency; DBOS 10-step workflows through a queue.

Then it prints the medians (min-max) of every figure and the targets' ratios, PASS or MISS.
Only ratios taken in the same sitting mean anything: never compare figures across runs.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_engine  # noqa: E402

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/django_workflows_bench_peers"  # not bench_engine's
DEFAULT_PEERS_DIR = HERE.parent.parent / "shared" / "bench-peers"  # ../shared/bench-peers of the project
OUR_PROCESSES = 4
OUR_THREADS = 8
LATENCY_RATE = 20.0  # events/s for every latency measurement: bench_engine's 50 ms gap

# Sizes: (default, --quick). A default round takes about 2.5-3 minutes on 2 cores.
SIZES = {
    "rounds": (3, 1),
    "runs": (3000, 500),
    "step_runs": (1000, 200),
    "peer_tasks": (None, 1000),  # None: the same as --runs
    "latency_events": (50, 30),
}

# The figures, one per row of the summary.
OURS_RUNS = "ours 1-step runs/s"
OURS_STEPS = "ours 10-step steps/s"
OURS_P50 = "ours wake-up p50 ms"
OURS_P99 = "ours wake-up p99 ms"
OURS_COMMITS = "ours commits/step"
CELERY_DRAIN = "celery drain tasks/s"
CELERY_CHAIN = "celery chain-of-10 links/s"
CELERY_P50 = "celery latency p50 ms"
CELERY_P99 = "celery latency p99 ms"
PROC_DRAIN = "procrastinate drain jobs/s"
PROC_DRAIN_WALL = "procrastinate drain jobs/s (worker wall)"
PROC_P50 = "procrastinate latency p50 ms"
PROC_P99 = "procrastinate latency p99 ms"
DBOS_STEPS = "dbos 10-step steps/s"


# -- what to run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One subprocess that prints (or writes to ``result_file``) one JSON object."""

    name: str
    system: str  # ours, celery, procrastinate, dbos: what --only / --skip also accept
    argv: list[str]
    cwd: Path
    figures: Callable[[dict], dict[str, float]]  # raises ValueError when the run is unusable
    result_file: Path | None = None


def ours_figures(raw: dict) -> dict[str, float]:
    row = raw["table"][str(OUR_PROCESSES)]
    return {
        OURS_RUNS: row["runs"]["runs_per_s"],
        OURS_STEPS: row["steps"]["steps_per_s"],
        OURS_P50: row["latency"]["p50"],
        OURS_P99: row["latency"]["p99"],
        OURS_COMMITS: row["steps"]["commits_per_step"],
    }


def expect(ok: bool, message: str) -> None:
    """A peer script that finished but did not run everything gives no figure, not a wrong one."""
    if not ok:
        raise ValueError(message)


def celery_throughput(key: str, expected: int) -> Callable[[dict], dict[str, float]]:
    def figures(raw: dict) -> dict[str, float]:
        # bench_celery.py gives up silently after 600 s and reports on what did run.
        expect(raw.get("done") == expected, f"only {raw.get('done')} of {expected} tasks ran")
        return {key: raw["tasks_per_s"]}

    return figures


def celery_latency(raw: dict) -> dict[str, float]:
    return {CELERY_P50: raw["latency_ms_p50"], CELERY_P99: raw["latency_ms_p99"]}


def procrastinate_drain(raw: dict) -> dict[str, float]:
    expect(raw.get("job_status") == {"succeeded": raw["n"]}, f"job status {raw.get('job_status')}")
    # The target uses the database's first start -> last success (worker start-up left out):
    # the larger of the script's two figures, so the comparison does not flatter us.
    return {PROC_DRAIN: raw["jobs_per_s_db"], PROC_DRAIN_WALL: raw["jobs_per_s"]}


def procrastinate_latency(raw: dict) -> dict[str, float]:
    lat = raw["enqueue_to_start"]
    expect(lat["n"] == raw["n"], f"only {lat['n']} of {raw['n']} jobs started")
    return {PROC_P50: lat["p50_ms"], PROC_P99: lat["p99_ms"]}


def dbos_steps(raw: dict) -> dict[str, float]:
    expect(raw.get("measured_rows") == raw["n"], f"{raw.get('measured_rows')} of {raw['n']} workflows done")
    return {DBOS_STEPS: raw["steps_per_s"]}


def make_jobs(args: argparse.Namespace, out_dir: Path) -> list[Job]:
    """All measurements of one round, in their base order (ours first); ``out_dir`` per round."""
    peers, py = args.peers_dir, str(args.peers_python)
    c, n, lat = str(args.peer_concurrency), str(args.peer_tasks), str(args.latency_events)
    rate = str(LATENCY_RATE)
    ours_json = out_dir / "ours.json"
    jobs = [
        Job("ours", "ours", [
            sys.executable, str(HERE / "bench_engine.py"), "--processes", str(OUR_PROCESSES),
            "--concurrency", str(OUR_THREADS), "--repeat", "1", "--runs", str(args.runs),
            "--step-runs", str(args.step_runs), "--latency-events", lat,
            "--latency-gap", str(1 / LATENCY_RATE), "--timeout", str(args.timeout),
            "--database-url", args.database_url, "--json", str(ours_json),
        ], HERE.parent, ours_figures, ours_json),
        Job("celery-drain", "celery", [py, "bench_celery.py", n, "--mode", "drain", "--concurrency", c],
            peers, celery_throughput(CELERY_DRAIN, args.peer_tasks)),
        Job("celery-chain", "celery", [py, "bench_celery.py", n, "--mode", "chain", "--concurrency", c],
            peers, celery_throughput(CELERY_CHAIN, args.peer_tasks // 10 * 10)),
        Job("celery-latency", "celery",
            [py, "bench_celery.py", lat, "--mode", "latency", "--concurrency", c, "--rate", rate],
            peers, celery_latency),
        Job("procrastinate-drain", "procrastinate",
            [py, "bench_procrastinate.py", n, "--mode", "drain", "--concurrency", c],
            peers, procrastinate_drain),
        # Concurrency 1 as in the peers' README: a worker at 20 jobs/s is idle between them.
        Job("procrastinate-latency", "procrastinate",
            [py, "bench_procrastinate.py", lat, "--mode", "latency", "--rate", rate],
            peers, procrastinate_latency),
        # Polling every 0.1 s and 16 at once: the peers' tuned configuration (default 1 s).
        Job("dbos-10step", "dbos", [
            py, "bench_dbos.py", str(args.step_runs), "--steps", "10", "--mode", "queue",
            "--concurrency", "16", "--poll", "0.1", "--timeout", str(args.timeout),
        ], peers, dbos_steps),
    ]
    return [job for job in jobs if selected(job, args.only, args.skip)]


def selected(job: Job, only: set[str], skip: set[str]) -> bool:
    names = {job.name, job.system}
    return (not only or bool(names & only)) and not names & skip


def rotated(jobs: list[Job], round_index: int, rounds: int) -> list[Job]:
    """Round r starts r/rounds of the way into the list: every job gets early and late slots."""
    shift = round_index * len(jobs) // max(rounds, 1)
    return jobs[shift:] + jobs[:shift]


# -- running one ---------------------------------------------------------------------------


@dataclass
class Outcome:
    job: str
    round: int
    wall_s: float
    figures: dict[str, float] = field(default_factory=dict)
    raw: dict | None = None
    error: str = ""


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``: bench_celery.py's worker runs in a session of its own,
    so killing our child's process group would leave it running."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    for pid in [*descendants(proc.pid), proc.pid]:  # found before the parent dies and they move
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def run_job(job: Job, round_index: int, log_dir: Path, env: dict[str, str], timeout: float) -> Outcome:
    stem = log_dir / f"round{round_index}-{job.name}"
    began = time.monotonic()
    with open(f"{stem}.out", "wb") as out, open(f"{stem}.err", "wb") as err:
        proc = subprocess.Popen(job.argv, cwd=job.cwd, env=env, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc)
            return Outcome(job.name, round_index, time.monotonic() - began,
                           error=f"timed out after {timeout:g} s")
        except BaseException:  # Ctrl-C: leave no worker behind
            kill_tree(proc)
            raise
    outcome = Outcome(job.name, round_index, time.monotonic() - began)
    try:
        outcome.raw = read_result(job, stem, proc.returncode)
        outcome.figures = job.figures(outcome.raw)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
    return outcome


def read_result(job: Job, stem: Path, returncode: int) -> dict:
    if returncode != 0:
        raise ValueError(f"exited with {returncode}")
    if job.result_file is not None:
        return json.loads(job.result_file.read_text())
    lines = [ln for ln in Path(f"{stem}.out").read_text().splitlines() if ln.startswith("{")]
    if not lines:
        raise ValueError("printed no JSON line")
    return json.loads(lines[-1])


def tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").rstrip().splitlines()
    except OSError:
        return ""
    return "\n".join("      | " + line for line in text[-lines:])


def describe(outcome: Outcome) -> str:
    if outcome.error:
        return f"FAILED: {outcome.error}"
    return "; ".join(f"{name} {fmt(value)}" for name, value in outcome.figures.items())


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


# -- summary ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    label: str
    figure: str
    versus: str | None = None  # None: the figure itself; else figure / versus
    op: str = ">="
    goal: float | None = None  # None: shown for information, no verdict


TARGETS = [
    Target("1. 1-step runs/s vs Celery drain tasks/s", OURS_RUNS, CELERY_DRAIN, ">=", 1.0),
    Target("1. 1-step runs/s vs Procrastinate drain jobs/s", OURS_RUNS, PROC_DRAIN, ">=", 2.0),
    Target("2. 10-step steps/s", OURS_STEPS, None, ">=", 3000),
    Target("2. 10-step steps/s vs Celery chain links/s", OURS_STEPS, CELERY_CHAIN),
    Target("2. 10-step steps/s vs DBOS 10-step steps/s", OURS_STEPS, DBOS_STEPS),
    Target("3. wake-up p50 ms", OURS_P50, None, "<=", 5),
    Target("3. wake-up p99 ms", OURS_P99, None, "<=", 25),
    Target("3. wake-up p50 vs Celery latency p50", OURS_P50, CELERY_P50, "<="),
    Target("3. wake-up p50 vs Procrastinate latency p50", OURS_P50, PROC_P50, "<="),
    Target("4. commits/step", OURS_COMMITS, None, "<=", 0.5),
]


def by_figure(outcomes: list[Outcome]) -> dict[str, dict[int, float]]:
    """figure -> {round: value}, successful runs only."""
    table: dict[str, dict[int, float]] = {}
    for outcome in outcomes:
        for name, value in outcome.figures.items():
            table.setdefault(name, {})[outcome.round] = value
    return table


def target_values(target: Target, table: dict[str, dict[int, float]]) -> tuple[float | None, list[float]]:
    """The ratio of the medians, and the ratios round by round (both figures from that round)."""
    ours = table.get(target.figure, {})
    if target.versus is None:
        return (statistics.median(ours.values()) if ours else None), list(ours.values())
    theirs = table.get(target.versus, {})
    if not ours or not theirs:
        return None, []
    per_round = [ours[r] / theirs[r] for r in sorted(ours.keys() & theirs.keys()) if theirs[r]]
    their_median = statistics.median(theirs.values())
    return (statistics.median(ours.values()) / their_median if their_median else None), per_round


def verdict(target: Target, value: float | None) -> str:
    if value is None:
        return "missing"
    if target.goal is None:
        return "(info)"
    ok = value >= target.goal if target.op == ">=" else value <= target.goal
    return "PASS" if ok else "MISS"


def print_figures(table: dict[str, dict[int, float]], rounds: int) -> None:
    print(f"\n{'figure':<42} {'median':>9} {'min-max':>17} {'rounds':>7}")
    for name, values in table.items():
        spread = f"{fmt(min(values.values()))}-{fmt(max(values.values()))}"
        print(f"{name:<42} {fmt(statistics.median(values.values())):>9} {spread:>17} "
              f"{len(values):>4}/{rounds}")


def print_targets(table: dict[str, dict[int, float]]) -> list[dict]:
    print("\ntargets (issue 12): ratio of the medians; [min-max of the round-by-round ratios]")
    report = []
    for target in TARGETS:
        value, per_round = target_values(target, table)
        goal = "" if target.goal is None else f"{target.op} {fmt(target.goal)}"
        unit = "x" if target.versus else ""
        spread = f"[{fmt(min(per_round))}-{fmt(max(per_round))}]" if len(per_round) > 1 else ""
        shown = f"{fmt(value)}{unit}" if value is not None else "-"
        print(f"  {target.label:<46} {shown:>9} {spread:>15}  {goal:<8} {verdict(target, value)}")
        report.append({"target": target.label, "value": value, "per_round": per_round,
                       "goal": target.goal, "op": target.op, "verdict": verdict(target, value)})
    return report


NOTES = f"""
what each figure times (all on this machine, one at a time):
  ours: bench_engine.py, {OUR_PROCESSES} processes x {OUR_THREADS} threads, workers already running. runs/s:
    all events sent in one transaction, its commit -> the last run's end (intake included).
    wake-up: the sender's commit -> the step body starts, idle workers, {LATENCY_RATE:.0f} events/s;
    p99 nearest-rank (below 100 samples: the slowest). commits/step: pg_stat_database
    xact_commit per step during the 10-step measurement, everything included.
  celery: Redis broker, threads pool; tasks pre-enqueued, then one worker started; tasks/s and
    links/s from the first task's start to the last task's start (start-up and the last
    task's run left out). latency: before apply_async -> task body; p99 = sorted[int(0.99 n)].
  procrastinate: jobs pre-deferred, then one async worker; jobs/s from the first 'started' to
    the last 'succeeded' event ("worker wall": worker start -> queue empty). latency: before
    defer_async (its INSERT included) -> task body; p99 interpolated.
  dbos: one process, queue worker_concurrency 16, polling 0.1 s; workflows enqueued while it
    runs; steps/s from the first enqueue to the last completed_at."""


# -- main ---------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="1 round, small sizes (about 1-2 minutes): a check, not figures to quote")
    parser.add_argument("--rounds", type=int, help="rounds (default 3; --quick 1)")
    parser.add_argument("--runs", type=int, help="our 1-step runs per round (default 3000; --quick 500)")
    parser.add_argument("--step-runs", type=int,
                        help="10-step runs per round, ours and DBOS's (default 1000; --quick 200)")
    parser.add_argument("--peer-tasks", type=int,
                        help="tasks/jobs per Celery drain, Celery chain and Procrastinate drain run "
                             "(default: as --runs; --quick 1000)")
    parser.add_argument("--latency-events", type=int,
                        help=f"events per latency run, {LATENCY_RATE:.0f}/s (default 50; --quick 30)")
    parser.add_argument("--peer-concurrency", type=int, default=8,
                        help="Celery threads and Procrastinate drain concurrency (default 8)")
    parser.add_argument("--only", default="",
                        help="comma-separated systems (ours, celery, procrastinate, dbos) or job names "
                             "(e.g. celery-drain) to run; default all")
    parser.add_argument("--skip", default="", help="comma-separated systems or job names to leave out")
    parser.add_argument("--database-url", default=DEFAULT_URL,
                        help=f"our benchmark database, dropped and recreated each round (default {DEFAULT_URL})")
    parser.add_argument("--peers-dir", type=Path, default=DEFAULT_PEERS_DIR,
                        help=f"the peers' harness (default {DEFAULT_PEERS_DIR})")
    parser.add_argument("--peers-python", type=Path, help="its interpreter (default PEERS_DIR/.venv/bin/python)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds any one run may take (default 300)")
    parser.add_argument("--pause", type=float, default=1.0,
                        help="seconds between runs, for the previous one's leftovers to settle (default 1)")
    parser.add_argument("--json-out", type=Path, help="write every run's raw result and the summary here")
    args = parser.parse_args()
    for key, (default, quick) in SIZES.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else default)
    if args.peer_tasks is None:
        args.peer_tasks = args.runs
    args.only = set(filter(None, args.only.split(",")))
    args.skip = set(filter(None, args.skip.split(",")))
    args.peers_python = args.peers_python or args.peers_dir / ".venv" / "bin" / "python"
    return args


def peer_env() -> dict[str, str]:
    """This environment without what would point a peer's Python or Django elsewhere."""
    env = dict(os.environ)
    for key in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE", "DATABASE_URL", "VIRTUAL_ENV"):
        env.pop(key, None)
    return env


def peer_versions(python: Path, env: dict[str, str]) -> str:
    code = ("import importlib.metadata as m; print(', '.join(p + ' ' + m.version(p) for p in "
            "('celery', 'redis', 'procrastinate', 'dbos', 'psycopg')))")
    try:
        done = subprocess.run([str(python), "-c", code], env=env, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    return done.stdout.strip() or f"unknown ({done.stderr.strip()[-200:]})"


def print_machine(args: argparse.Namespace) -> None:
    """bench_engine's machine lines and background load, read through the server's own
    maintenance database (ours is recreated by every round's bench_engine.py)."""
    url = urlparse(args.database_url)._replace(path="/postgres").geturl()
    bench_engine.setup_django(url)
    from django.db import connection

    print("\n".join(bench_engine.machine_description()))
    connection.close()
    print(bench_engine.background_load_line())


def check_names(args: argparse.Namespace) -> None:
    """A misspelt --only / --skip name would silently change what the sitting compares."""
    everything = make_jobs(argparse.Namespace(**{**vars(args), "only": set(), "skip": set()}), Path())
    known = {job.name for job in everything} | {job.system for job in everything}
    unknown = (args.only | args.skip) - known
    if unknown:
        raise SystemExit(f"unknown --only/--skip name(s) {sorted(unknown)}; known: {sorted(known)}")


def drop_peers(jobs: list[Job], args: argparse.Namespace) -> list[Job]:
    if all(job.system == "ours" for job in jobs) or args.peers_python.exists():
        return jobs
    print(f"WARNING: {args.peers_python} is missing, peers left out; create it with\n"
          f"  cd {args.peers_dir} && python3 -m venv .venv && .venv/bin/pip install -r requirements.txt")
    return [job for job in jobs if job.system == "ours"]


def main() -> None:
    args = parse_args()
    env = peer_env()  # before setup_django sets Django's variables in this process
    check_names(args)
    log_dir = Path(tempfile.mkdtemp(prefix="wf-bench-peers-"))
    base = drop_peers(make_jobs(args, log_dir), args)
    if not base:
        raise SystemExit("nothing selected: check --only / --skip")
    print_machine(args)
    if any(job.system != "ours" for job in base):
        print(f"peers: {peer_versions(args.peers_python, env)}; harness {args.peers_dir}")
    print(f"{args.rounds} round(s) of: {', '.join(job.name for job in base)}; {args.runs} 1-step runs, "
          f"{args.step_runs} 10-step runs, {args.peer_tasks} peer tasks, {args.latency_events} latency "
          f"events; logs in {log_dir}", flush=True)

    names = {job.name for job in base}
    outcomes: list[Outcome] = []
    for r in range(1, args.rounds + 1):
        round_dir = log_dir / f"round{r}"
        round_dir.mkdir()
        jobs = rotated([job for job in make_jobs(args, round_dir) if job.name in names], r - 1, args.rounds)
        print(f"\n== round {r}/{args.rounds}: {', '.join(job.name for job in jobs)}", flush=True)
        for job in jobs:
            outcome = run_job(job, r, round_dir, env, args.timeout)
            outcomes.append(outcome)
            print(f"  {job.name:<22} {outcome.wall_s:5.1f} s  {describe(outcome)}", flush=True)
            if outcome.error:
                print(tail(round_dir / f"round{r}-{job.name}.err") or "      (no stderr)", flush=True)
            time.sleep(args.pause)
        save(args, outcomes, None)

    table = by_figure(outcomes)
    print_figures(table, args.rounds)
    report = print_targets(table)
    print(NOTES)
    print(load_after_line())
    save(args, outcomes, report)
    failed = [o for o in outcomes if o.error]
    print(f"\n{len(failed)} of {len(outcomes)} runs failed" + (f"; logs in {log_dir}" if failed else ""))
    if not failed:
        shutil.rmtree(log_dir, ignore_errors=True)


def load_after_line() -> str:
    """How busy the machine is right after the sitting: other work that ran alongside it shows
    here. No load average: it still counts this sitting's own threads for a minute."""
    busy0 = bench_engine.machine_busy_seconds()
    time.sleep(1)
    busy = (bench_engine.machine_busy_seconds() - busy0) / (os.cpu_count() or 1)
    warning = "  (WARNING: other work on this machine skews the figures)" if busy > 0.1 else ""
    return f"load right after the sitting: {busy:.0%} of all CPUs busy{warning}"


def save(args: argparse.Namespace, outcomes: list[Outcome], report: list[dict] | None) -> None:
    """--json-out, rewritten after every round so that an interrupted sitting keeps its runs."""
    if args.json_out is None:
        return
    args.json_out.write_text(json.dumps({
        "revision": bench_engine.git_revision(),
        "settings": {key: getattr(args, key) for key in
                     ("rounds", "runs", "step_runs", "peer_tasks", "latency_events", "peer_concurrency")},
        "runs": [o.__dict__ for o in outcomes],
        "targets": report,
    }, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
