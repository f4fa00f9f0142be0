#!/usr/bin/env python
"""Benchmark the engine on PostgreSQL with 1, 2 and 4 ``runworkers`` processes.

    .venv/bin/python benchmarks/bench_engine.py                  # defaults: a few minutes
    .venv/bin/python benchmarks/bench_engine.py --processes 4 --repeat 1 --runs 200
    .venv/bin/python benchmarks/bench_engine.py --profile        # + one in-process profile

It (re)creates a dedicated database (``django_workflows_bench`` by default), migrates it,
and for each process count starts that many worker subprocesses, then measures, ``--repeat``
times each (the table shows medians):

- runs/s of a 1-step no-op function (``--runs`` events sent in one transaction; from the
  sender's commit to the last run's end, so event intake is included);
- steps/s of a 10-step no-op function (``--step-runs`` events);
- event-to-first-step latency with idle workers: ``--latency-events`` events sent one per
  transaction ``--latency-gap`` seconds apart; latency is the step body's ``time.time()`` at
  its start minus the sender's ``time.time()`` right after its commit.

See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/django_workflows_bench"
TARGET_STEPS_PER_S = 1000  # 10-step workflows with 4 processes
TARGET_LATENCY_P50_MS = 20  # idle worker, event commit to first step


# -- setup ------------------------------------------------------------------------------------


def worker_env(db_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": db_url,
        "DJANGO_SETTINGS_MODULE": "bench_settings",  # testproject.settings + the flags' tweaks
        "DJANGO_DEBUG": "0",  # DEBUG=True would keep a log of every query in every worker
        "WORKFLOWS_LOG_LEVEL": "WARNING",  # no log line per run started/completed
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]),
        "PYTHONUNBUFFERED": "1",
    }


def setup_django(db_url: str) -> None:
    os.environ["DATABASE_URL"] = db_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench_settings"
    os.environ["DJANGO_DEBUG"] = "0"
    os.environ.setdefault("WORKFLOWS_LOG_LEVEL", "WARNING")
    for path in (str(ROOT), str(HERE)):
        if path not in sys.path:
            sys.path.insert(0, path)
    import django

    django.setup()


def worker_main(args: argparse.Namespace) -> None:
    setup_django(args.database_url)
    import bench_workflows  # noqa: F401  (registers the benchmark's functions)
    from django.core.management import call_command

    call_command("runworkers", "--concurrency", str(args.concurrency))


def recreate_database(db_url: str) -> None:
    import psycopg
    from psycopg import sql

    url = urlparse(db_url)
    name = url.path.lstrip("/")
    if not name or name in ("postgres", "template0", "template1"):
        raise SystemExit(f"refusing to recreate database {name!r}: use a dedicated benchmark database")
    with psycopg.connect(
        host=url.hostname, port=url.port or 5432, user=url.username or "postgres",
        password=url.password or None, dbname="postgres", autocommit=True,
    ) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def migrate() -> None:
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


# -- worker processes ---------------------------------------------------------------------


class WorkerPool:
    def __init__(self, processes: int, concurrency: int, db_url: str, log_dir: Path) -> None:
        self.processes = processes
        self.concurrency = concurrency
        self.db_url = db_url
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        for n in range(self.processes):
            with open(self.log_dir / f"workers{self.processes}-{n}.log", "wb") as log:
                self.procs.append(subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--worker",
                     "--database-url", self.db_url, "--concurrency", str(self.concurrency)],
                    cwd=ROOT, env=worker_env(self.db_url), stdout=log, stderr=subprocess.STDOUT,
                ))
        wait_for(self._all_listening, 30, f"{self.processes} workers to start")

    def _all_listening(self) -> bool:
        from django.db import connection

        for proc in self.procs:
            if proc.poll() is not None:
                raise SystemExit(f"worker {proc.pid} exited with {proc.returncode}; see {self.log_dir}")
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query = %s",
                ["LISTEN django_workflows"],
            )
            return cursor.fetchone()[0] >= self.processes

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the worker processes used so far."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for proc in self.procs:
            try:
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / ticks
        return total

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def postgres_cpu_seconds() -> float:
    """User + system CPU seconds of all PostgreSQL server processes so far (this machine)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine spent busy so far (from /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# -- measurements -------------------------------------------------------------------------


def reset_tables() -> None:
    from django.apps import apps
    from django.db import connection

    tables = [m._meta.db_table for m in apps.get_app_config("django_workflows").get_models()]
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)} CASCADE")


def send(name: str, count: int, first: int = 0) -> float:
    """Send ``count`` events in one transaction; returns time.time() right after its commit."""
    from django.db import transaction

    import django_workflows as wf

    committed: list[float] = []
    with transaction.atomic():
        # Registered before wf.send's own NOTIFY hook, so it runs first after the commit.
        transaction.on_commit(lambda: committed.append(time.time()))
        wf.send([wf.Event(name=name, data={"i": first + i}) for i in range(count)])
    return committed[0]


def send_data(name: str, data: dict) -> float:
    """Send one event with ``data``; returns time.time() right after its commit."""
    from django.db import transaction

    import django_workflows as wf

    committed: list[float] = []
    with transaction.atomic():
        transaction.on_commit(lambda: committed.append(time.time()))
        wf.send(name, data=data)
    return committed[0]


def wait_runs_done(count: int, timeout: float) -> float:
    """Wait until ``count`` runs completed; returns the last one's end as a timestamp."""
    from django.db.models import Max

    from django_workflows.models import Run

    def done() -> bool:
        failed = Run.objects.filter(status="failed").first()
        if failed is not None:
            raise SystemExit(f"run {failed.pk} failed: {failed.error}")
        return Run.objects.filter(status="completed").count() >= count

    wait_for(done, timeout, f"{count} runs to complete", interval=0.1)
    return Run.objects.aggregate(m=Max("ended_at"))["m"].timestamp()


def commits_so_far() -> int:
    """Transactions committed in the benchmark database so far (every autocommit statement is one)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        return cursor.fetchone()[0]


def measure_throughput(pool: WorkerPool, event: str, runs: int, steps_per_run: int, timeout: float) -> dict:
    reset_tables()
    time.sleep(0.3)
    commits0 = commits_so_far()
    cpu0, pg0, busy0 = pool.cpu_seconds(), postgres_cpu_seconds(), machine_busy_seconds()
    started = send(event, runs)
    ended = wait_runs_done(runs, timeout)
    cpu1, pg1, busy1 = pool.cpu_seconds(), postgres_cpu_seconds(), machine_busy_seconds()
    time.sleep(0.6)  # the statistics collector reports with a delay of up to 500 ms
    commits = commits_so_far() - commits0
    elapsed = ended - started
    return {
        "elapsed": elapsed,
        "runs_per_s": runs / elapsed,
        "steps_per_s": runs * steps_per_run / elapsed,
        "worker_cpu": cpu1 - cpu0,
        "postgres_cpu": pg1 - pg0,
        "commits_per_step": commits / (runs * steps_per_run),
        "machine_cpu": busy1 - busy0,
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]  # nearest rank


def measure_latency(pool: WorkerPool, events: int, gap: float, timeout: float) -> dict:
    from bench_workflows import LATENCY_EVENT

    from django_workflows.models import Step

    reset_tables()
    time.sleep(1.5)  # let the workers' polling back off to its longest interval: truly idle
    committed: dict[int, float] = {}
    for i in range(events):
        began = time.monotonic()
        committed[i] = send(LATENCY_EVENT, 1, first=i)
        time.sleep(max(0.0, gap - (time.monotonic() - began)))
    wait_runs_done(events, timeout)
    latencies, to_intake, to_run, to_step = [], [], [], []
    for data, stamp, queued_at, started_at in Step.objects.filter(step_id="stamp").values_list(
        "run__event__data", "output", "run__queued_at", "run__started_at"
    ):
        commit = committed[data["i"]]
        latencies.append((stamp - commit) * 1000)
        # Where the time goes: commit -> intake (Run.queued_at, taken as intake begins)
        # -> the run's handler starts (Run.started_at) -> the step body starts.
        to_intake.append((queued_at.timestamp() - commit) * 1000)
        to_run.append((started_at.timestamp() - queued_at.timestamp()) * 1000)
        to_step.append((stamp - started_at.timestamp()) * 1000)
    return {
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "intake_p50": percentile(to_intake, 50),
        "run_p50": percentile(to_run, 50),
        "step_p50": percentile(to_step, 50),
    }


def median_of(results: list[dict]) -> dict:
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


# -- profile ------------------------------------------------------------------------------


def profile_in_process(runs: int) -> None:
    """Run 10-step runs in this process, one thread, like one worker thread does; show
    where the time goes (cProfile) and which SQL statements each run costs."""
    import cProfile
    import pstats
    import re
    from collections import Counter

    from bench_workflows import NOOP10_EVENT, STEPS_PER_RUN
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from django_workflows.engine import queue
    from django_workflows.engine.worker import process_items

    reset_tables()
    send(NOOP10_EVENT, runs)
    profiler = cProfile.Profile()
    started = time.perf_counter()
    with CaptureQueriesContext(connection) as captured:
        profiler.enable()
        while items := queue.claim("profile", 1):
            process_items(items, db="default")
        profiler.disable()
    elapsed = time.perf_counter() - started
    steps = runs * STEPS_PER_RUN
    print(f"\n== in-process profile: {runs} runs of {STEPS_PER_RUN} no-op steps, one thread, "
          f"cProfile and query capture on")
    print(f"{steps / elapsed:.0f} steps/s ({elapsed * 1000 / steps:.2f} ms per step with profiling); "
          f"{len(captured.captured_queries)} queries = {len(captured.captured_queries) / runs:.1f} per run")
    shapes: Counter[str] = Counter()
    sql_time: Counter[str] = Counter()
    for query in captured.captured_queries:
        shape = re.sub(r"'[^']*'|\b\d+(\.\d+)?\b", "?", query["sql"])
        shape = re.sub(r"\s+", " ", shape)[:110]
        shapes[shape] += 1
        sql_time[shape] += float(query["time"])
    print("statements per run (count/run, total ms as seen by the client):")
    for shape, count in shapes.most_common(15):
        print(f"  {count / runs:5.1f}  {sql_time[shape] * 1000:7.0f} ms  {shape}")
    stats = pstats.Stats(profiler)
    print("engine functions by cumulative time:")
    stats.sort_stats("cumulative").print_stats(r"django_workflows/", 16)
    print("all functions by own time (psycopg's wait is time spent waiting for PostgreSQL):")
    stats.sort_stats("tottime").print_stats(10)


# -- report -------------------------------------------------------------------------------


def read_rss_kb(pid: int) -> int | None:
    """A process's resident set size in kB (VmRSS), or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (shared with soak.py)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def git_revision() -> str:
    """``git describe`` of the checkout the benchmark runs (``-dirty`` with local changes)."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_description() -> list[str]:
    from django import get_version
    from django.db import connection

    cpu = cpu_model()
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg_version = cursor.fetchone()[0]
        cursor.execute(
            "SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM pg_settings "
            "WHERE name IN ('fsync', 'synchronous_commit', 'shared_buffers', 'max_connections')"
        )
        pg_settings = cursor.fetchone()[0]
    return [
        f"django-workflows at {git_revision()}",
        f"CPU: {cpu}, {os.cpu_count()} cores; {platform.system()} {platform.release()}",
        f"Python {platform.python_version()}, Django {get_version()}, PostgreSQL {pg_version} "
        f"({pg_settings}), same machine, TCP on 127.0.0.1",
    ]


def background_load_line() -> str:
    """How busy the machine is before a benchmark starts (one second's sample), to print."""
    busy0 = machine_busy_seconds()
    time.sleep(1)
    background = (machine_busy_seconds() - busy0) / (os.cpu_count() or 1)
    warning = "  (WARNING: other work on this machine skews the figures)" if background > 0.1 else ""
    return (f"background load before starting: {background:.0%} of all CPUs busy, load average "
            f"{os.getloadavg()[0]:.1f}{warning}")


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=DEFAULT_URL,
                        help=f"benchmark database, dropped and recreated (default {DEFAULT_URL})")
    parser.add_argument("--processes", default="1,2,4", help="worker process counts to compare (default 1,2,4)")
    parser.add_argument("--concurrency", type=int, default=8, help="threads per worker process (default 8)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of each measurement (default 3)")
    parser.add_argument("--runs", type=int, default=500, help="runs of the 1-step function (default 500)")
    parser.add_argument("--step-runs", type=int, default=300, help="runs of the 10-step function (default 300)")
    parser.add_argument("--latency-events", type=int, default=50, help="events for the latency test (default 50)")
    parser.add_argument("--latency-gap", type=float, default=0.05, help="seconds between them (default 0.05)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds any one measurement may take")
    parser.add_argument("--skip", default="", help="comma-separated: runs,steps,latency")
    parser.add_argument("--server-side-binding", action="store_true",
                        help="experiment: psycopg server-side binding (prepared statements)")
    parser.add_argument("--pg-options", default="",
                        help='experiment: libpq options for all connections, e.g. "-c synchronous_commit=off"')
    parser.add_argument("--pg-host", default="",
                        help="experiment: connect workers through this Unix socket directory, e.g. /var/run/postgresql")
    parser.add_argument("--profile", action="store_true", help="also profile one worker thread in-process")
    parser.add_argument("--profile-runs", type=int, default=100, help="10-step runs to profile (default 100)")
    parser.add_argument("--json", metavar="PATH", default="",
                        help="also write the table of medians as JSON to PATH (bench_peers.py reads it)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.server_side_binding:
        os.environ["BENCH_SERVER_SIDE_BINDING"] = "1"
    if args.pg_options:
        os.environ["BENCH_PG_OPTIONS"] = args.pg_options
    if args.pg_host:
        os.environ["BENCH_PG_HOST"] = args.pg_host
    if args.worker:
        worker_main(args)
        return

    recreate_database(args.database_url)
    setup_django(args.database_url)
    migrate()
    import bench_workflows
    from django.db import connection

    skip = set(filter(None, args.skip.split(",")))
    counts = [int(n) for n in args.processes.split(",")]
    log_dir = Path(tempfile.mkdtemp(prefix="wf-bench-"))
    print("\n".join(machine_description()))
    print(background_load_line())
    print(f"workers: {args.concurrency} threads per process; {args.repeat} repetitions, medians shown; "
          f"{args.runs} 1-step runs, {args.step_runs} x {bench_workflows.STEPS_PER_RUN}-step runs, "
          f"{args.latency_events} latency events {args.latency_gap * 1000:.0f} ms apart", flush=True)
    if args.server_side_binding or args.pg_options or args.pg_host:
        print(f"EXPERIMENT: server-side binding {args.server_side_binding}, "
              f"pg options {args.pg_options!r}, pg host {args.pg_host or 'as in the URL'}", flush=True)
    print(flush=True)

    table: dict[int, dict[str, dict]] = {}
    for processes in counts:
        pool = WorkerPool(processes, args.concurrency, args.database_url, log_dir)
        try:
            pool.start()
            results: dict[str, list[dict]] = {"runs": [], "steps": [], "latency": []}
            for rep in range(args.repeat):
                if "runs" not in skip:
                    results["runs"].append(measure_throughput(
                        pool, bench_workflows.NOOP1_EVENT, args.runs, 1, args.timeout))
                if "steps" not in skip:
                    results["steps"].append(measure_throughput(
                        pool, bench_workflows.NOOP10_EVENT, args.step_runs, bench_workflows.STEPS_PER_RUN,
                        args.timeout))
                if "latency" not in skip:
                    results["latency"].append(
                        measure_latency(pool, args.latency_events, args.latency_gap, args.timeout))
                print(f"  {processes} process(es), repetition {rep + 1}: " + "; ".join(
                    _brief(kind, r[-1]) for kind, r in results.items() if r), flush=True)
            table[processes] = {kind: median_of(r) for kind, r in results.items() if r}
        finally:
            pool.stop()

    print_table(table, args)
    if args.json:
        write_json(table, args)
    if args.profile:
        profile_in_process(args.profile_runs)
    connection.close()
    shutil.rmtree(log_dir, ignore_errors=True)


def _brief(kind: str, r: dict) -> str:
    if kind == "runs":
        return f"{r['runs_per_s']:.0f} runs/s"
    if kind == "steps":
        return f"{r['steps_per_s']:.0f} steps/s"
    return f"latency p50 {r['p50']:.1f} ms p99 {r['p99']:.1f} ms"


def write_json(table: dict[int, dict[str, dict]], args: argparse.Namespace) -> None:
    """The medians by process count ("runs", "steps", "latency" as in the table), for scripts."""
    settings = {key: getattr(args, key) for key in (
        "concurrency", "repeat", "runs", "step_runs", "latency_events", "latency_gap")}
    Path(args.json).write_text(json.dumps({
        "revision": git_revision(), "settings": settings,
        "table": {str(processes): r for processes, r in table.items()},
    }, indent=1) + "\n")


def print_table(table: dict[int, dict[str, dict]], args: argparse.Namespace) -> None:
    ncpu = os.cpu_count() or 1
    columns = [
        ("processes", 9), ("1-step runs/s", 13), ("10-step steps/s", 15), ("vs 1 proc", 9),
        ("latency p50 ms", 14), ("p99 ms", 7), ("p50 split ms", 18),
        ("commits/step", 12), ("CPU busy", 8), ("workers/PG share", 16),
    ]
    print()
    print(" | ".join(f"{name:>{width}}" for name, width in columns))
    print("-|-".join("-" * width for _, width in columns))
    base = table[min(table)].get("steps", {}).get("steps_per_s")
    for processes, r in table.items():
        runs, steps, lat = r.get("runs"), r.get("steps"), r.get("latency")
        values = [
            str(processes),
            f"{runs['runs_per_s']:.0f}" if runs else "-",
            f"{steps['steps_per_s']:.0f}" if steps else "-",
            f"{steps['steps_per_s'] / base:.2f}x" if steps and base else "-",
            f"{lat['p50']:.1f}" if lat else "-",
            f"{lat['p99']:.1f}" if lat else "-",
            f"{lat['intake_p50']:.1f}/{lat['run_p50']:.1f}/{lat['step_p50']:.1f}" if lat else "-",
            f"{steps['commits_per_step']:.2f}" if steps else "-",
            f"{steps['machine_cpu'] / (steps['elapsed'] * ncpu):.0%}" if steps else "-",
            f"{steps['worker_cpu'] / steps['machine_cpu']:.0%} / "
            f"{steps['postgres_cpu'] / steps['machine_cpu']:.0%}" if steps else "-",
        ]
        print(" | ".join(f"{value:>{width}}" for value, (_, width) in zip(values, columns, strict=True)))
    print(f"""
latency: sender's commit to the step body's start, idle workers; p99 is the nearest-rank
  99th percentile of {args.latency_events} samples per repetition (below 100 samples: the slowest).
p50 split: commit -> intake begins (Run.queued_at) / -> handler starts (Run.started_at) /
  -> step body starts; medians of each part, so they need not add up to the p50.
commits/step: transactions committed in the database per step of the 10-step function, all
  included (intake, claims, polling, heartbeats); PostgreSQL's xact_commit counter.
CPU busy: all CPUs of the machine during the 10-step measurement; workers/PG share: the
  worker processes' and the PostgreSQL server's parts of that busy time.""")
    four = table.get(4, {})
    if "steps" in four:
        value = four["steps"]["steps_per_s"]
        print(f"target: 10-step workflows >= {TARGET_STEPS_PER_S} steps/s with 4 processes: "
              f"{value:.0f} steps/s, {verdict(value >= TARGET_STEPS_PER_S)}")
    for processes, r in table.items():
        if "latency" in r:
            value = r["latency"]["p50"]
            print(f"target: idle worker starts a run within {TARGET_LATENCY_P50_MS} ms p50 of the event's "
                  f"commit ({processes} process(es)): {value:.1f} ms, {verdict(value <= TARGET_LATENCY_P50_MS)}")


if __name__ == "__main__":
    main()
