#!/usr/bin/env python
"""Flow control: what concurrency limits and throttles cost, and how exact throttles are.

    .venv/bin/python benchmarks/bench_flow_control.py                         # all three: ~2 minutes
    .venv/bin/python benchmarks/bench_flow_control.py --skip steps,throttle   # the claim figures only
    .venv/bin/python benchmarks/bench_flow_control.py --explain               # + the investigations below
    .venv/bin/python benchmarks/bench_flow_control.py --skip steps,throttle --blocked-lanes 1000 --free 5000

Uses its own PostgreSQL database (``dw_flowbench``, dropped and recreated, with
bench_engine.py's helpers) and prints the machine first. Three measurements:

1. claim: items claimed per second by ``queue.claim(worker, batch)`` in this process, with
   ``--backlog`` (100,000) due items of a lane at its concurrency limit (lane "blocked",
   limit 1, one item of it held by a worker; ``--blocked-lanes`` spreads them over that many
   such lanes, as per-key limits do) next to ``--free`` (20,000) due items without a limit,
   vs the same free items alone. Each claimed batch is deleted (as a finished run's item is)
   outside the timed claim. The setups alternate (ABBA), ``--claim-rounds`` times each.
2. steps: steps/s of a 10-step no-op function with ``concurrency=--limit`` (50) vs the same
   function without, end to end with ``--processes`` ``runworkers`` processes of
   ``--concurrency`` threads (``--step-runs`` runs sent in one transaction, as in
   bench_engine.py), alternating, ``--rounds`` times each; CPU per step from /proc.
3. throttle: ``--throttle-events`` events sent at once to a function with
   ``Throttle(limit=20, period="1s", burst=1)`` (and to one with limit 5, burst 2), same
   workers; the runs' ``started_at``: starts per 1-second bucket, the most starts in any
   sliding 1 s window (GCRA allows at most limit + burst) and the achieved rate; the queue
   is polled every 10 ms meanwhile for the runs' due times (how late runs start after them,
   and how many were put back at their start).

With a ratio below 0.8 (the target), or with ``--explain``: for 1, EXPLAIN ANALYZE of the
claim statement in both setups, and its execution time next to a what-if variant of the
statement; for 2, the claim of one lane with and without a limit in this process
(statements per claim, time) once the workers are stopped. See benchmarks/README.md,
"Flow control".
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_engine  # noqa: E402

DB_NAME = "dw_flowbench"
DEFAULT_URL = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
TARGET_RATIO = 0.8
WORKER = "flowbench"  # the worker id this process claims as
STEPS_PER_RUN = 10
FREE_EVENT, LIMITED_EVENT = "flowbench.free10", "flowbench.limited10"
# (function id, event, limit, period, burst)
THROTTLES = [
    ("flowbench-throttle-20", "flowbench.throttle20", 20, "1s", 1),
    ("flowbench-throttle-5", "flowbench.throttle5", 5, "1s", 2),
]


# -- the functions the workers run ------------------------------------------------------------


def noop() -> None:
    return None


def register_functions(limit: int) -> None:
    """Define the benchmark's functions (the workers call this before runworkers)."""
    import django_workflows as wf

    def ten_steps(ctx: wf.Context) -> None:
        for _ in range(STEPS_PER_RUN):
            ctx.step.run("noop", noop)  # noop, noop:1, ... noop:9

    wf.function(id="flowbench-free-10", trigger=FREE_EVENT, retries=0)(ten_steps)
    wf.function(id="flowbench-limited-10", trigger=LIMITED_EVENT, retries=0, concurrency=limit)(ten_steps)

    def one_step(ctx: wf.Context) -> None:
        ctx.step.run("noop", noop)

    for function_id, event, rate, period, burst in THROTTLES:
        throttle = wf.Throttle(limit=rate, period=period, burst=burst)
        wf.function(id=function_id, trigger=event, retries=0, throttle=throttle)(one_step)


def worker_main(args: argparse.Namespace) -> None:
    bench_engine.setup_django(args.database_url)
    register_functions(args.limit)
    from django.core.management import call_command

    call_command("runworkers", "--concurrency", str(args.concurrency))


class FlowWorkerPool(bench_engine.WorkerPool):
    """bench_engine's pool, but its processes run this script's functions."""

    def __init__(self, args: argparse.Namespace, log_dir: Path) -> None:
        super().__init__(args.processes, args.concurrency, args.database_url, log_dir)
        self.limit = args.limit

    def start(self) -> None:
        for n in range(self.processes):
            with open(self.log_dir / f"flow-workers-{n}.log", "wb") as log:
                self.procs.append(subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--worker", "--database-url", self.db_url,
                     "--concurrency", str(self.concurrency), "--limit", str(self.limit)],
                    cwd=bench_engine.ROOT, env=bench_engine.worker_env(self.db_url),
                    stdout=log, stderr=subprocess.STDOUT,
                ))
        bench_engine.wait_for(self._all_listening, 30, f"{self.processes} workers to start")


# -- 1. claims with a blocked backlog --------------------------------------------------------

QUEUE = "django_workflows_queue"
COLUMNS = "kind, step_id, due_at, worker_id, lease_token, claims, wake, function_id, lane, lane_limit, lane2, lane2_limit"


def fill_queue(free: int, blocked: int, lanes: int = 1) -> None:
    """An emptied queue with ``free`` due items of an unlimited lane and, with ``blocked``,
    that many older due items in ``lanes`` lanes of limit 1 ("blocked", or "blocked-<n>"),
    each lane with one held item: every one at its limit."""
    from django.db import connection

    lane = "'blocked'" if lanes == 1 else f"'blocked-' || mod(n, {int(lanes)})"
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {QUEUE}")
        if blocked:
            cursor.execute(
                f"INSERT INTO {QUEUE} ({COLUMNS}) "
                f"SELECT 'run', '', now() - interval '1 hour' + n * interval '1 ms', '', 0, 0, false, "
                f"'blocked', {lane}, 1, '', 0 FROM generate_series(1, %s) AS n",
                [blocked],
            )
            # Each lane's one slot is taken: a worker holds an item (due_at = its lease's end).
            cursor.execute(
                f"INSERT INTO {QUEUE} ({COLUMNS}) "
                f"SELECT 'run', '', now() + interval '1 hour', 'holder', 1, 1, false, 'blocked', {lane}, 1, '', 0 "
                "FROM generate_series(0, %s) AS n",
                [lanes - 1],
            )
        cursor.execute(
            f"INSERT INTO {QUEUE} ({COLUMNS}) "
            "SELECT 'run', '', now() - interval '1 minute' + n * interval '1 ms', '', 0, 0, false, "
            "'free', 'free', 0, '', 0 FROM generate_series(1, %s) AS n",
            [free],
        )
        cursor.execute(f"ANALYZE {QUEUE}")


def measure_claims(items: int, batch: int) -> dict:
    """Claim ``items`` free items ``batch`` at a time; only the claim calls are timed.
    Items per second of claim time, and the median claim's milliseconds (less sensitive to
    other work on the machine)."""
    from django.db import connection

    from django_workflows.engine import queue

    times: list[float] = []
    claimed = 0
    while claimed < items:
        started = time.perf_counter()
        got = queue.claim(WORKER, batch)
        times.append(time.perf_counter() - started)
        if not got:
            raise SystemExit(f"claim returned nothing after {claimed} of {items} items")
        with connection.cursor() as cursor:  # the runs finished: their items go
            cursor.execute(f"DELETE FROM {QUEUE} WHERE id = ANY(%s) RETURNING lane", [[c.id for c in got]])
            lanes = {row[0] for row in cursor.fetchall()}
        if lanes != {"free"}:
            raise SystemExit(f"a claim took items of lanes {sorted(lanes)}: the concurrency limit was not respected")
        claimed += len(got)
    return {"per_s": claimed / sum(times), "median_ms": statistics.median(times) * 1000}


def explain_claim(batch: int, sql: str | None = None) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the claim statement as queue.claim runs it (rolled back)."""
    from django.db import connection, transaction

    from django_workflows.engine import clock, queries, queue

    now = clock.now()
    params = {"limit": batch, "worker": WORKER, "lease_end": now + queue.lease_duration(), "now": now,
              "reserve": True, "after": "", "scan": queue.LIMITED_LANES_PER_CLAIM}
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + (sql or queries.CLAIM_POSTGRES), params)
            plan = [row[0] for row in cursor.fetchall()]
        transaction.set_rollback(True)
    return plan


# What-if (--explain): the claim's UPDATE finds the chosen rows by id through the primary key
# whatever the planner thinks ``chosen`` holds (it estimates 100 lanes x limit rows).
UPDATE_JOIN = "FROM chosen WHERE q.id = chosen.id"
UPDATE_BY_IDS = "WHERE q.id = ANY(ARRAY(SELECT id FROM chosen))"


def explain_summary(batch: int) -> str:
    """Median execution time of 9 EXPLAIN ANALYZEs, and how the UPDATE finds its rows, for
    the engine's claim statement and the what-if variant."""
    from django_workflows.engine import queries

    parts = []
    variant = queries.CLAIM_POSTGRES.replace(UPDATE_JOIN, UPDATE_BY_IDS)
    for name, sql in (("engine", queries.CLAIM_POSTGRES), ("what-if ANY(ARRAY(...))", variant)):
        if sql == queries.CLAIM_POSTGRES and name != "engine":
            continue  # the engine's statement changed: no what-if
        plans = [explain_claim(batch, sql) for _ in range(9)]
        ms = statistics.median(
            float(line.split()[2]) for plan in plans for line in plan if line.startswith("Execution Time"))
        seq = any("Seq Scan on django_workflows_queue" in line for line in plans[0])
        parts.append(f"{name}: {ms:.3f} ms{' (Seq Scan of the queue)' if seq else ''}")
    return "; ".join(parts)


def run_claims(args: argparse.Namespace) -> dict:
    batches = [int(b) for b in args.batches.split(",")]
    setups = {"none": 0, "backlog": args.backlog}
    results: dict[tuple[int, str], list[dict]] = {(b, s): [] for b in batches for s in setups}
    print(f"== 1. claims/s of {args.free:,} unlimited items: without vs with {args.backlog:,} due items "
          f"blocked behind a concurrency limit ({args.blocked_lanes:,} lane(s) of limit 1, each with 1 "
          f"item held); {args.claim_rounds} rounds, alternating", flush=True)
    for rnd in range(args.claim_rounds):
        line = []
        for batch in batches:
            order = list(setups) if rnd % 2 == 0 else list(reversed(setups))  # ABBA: drift cancels
            for setup in order:
                fill_queue(args.free, setups[setup], args.blocked_lanes)
                result = measure_claims(args.free, batch)
                results[(batch, setup)].append(result)
                line.append(f"batch {batch} {setup}: {result['per_s']:,.0f}/s ({result['median_ms']:.2f} ms)")
        print(f"  round {rnd + 1}: " + "; ".join(line), flush=True)
    summary = {}
    print(f"\n{'batch':>5} | {'no backlog: items/s':>19} | {'median ms':>9} | {'blocked backlog: items/s':>24} | "
          f"{'median ms':>9} | {'ratio items/s':>13} | {'ratio by median claim':>21}")
    for batch in batches:
        base, loaded = results[(batch, "none")], results[(batch, "backlog")]
        base_rate = statistics.median(r["per_s"] for r in base)
        loaded_rate = statistics.median(r["per_s"] for r in loaded)
        base_ms = statistics.median(r["median_ms"] for r in base)
        loaded_ms = statistics.median(r["median_ms"] for r in loaded)
        summary[batch] = loaded_rate / base_rate
        print(f"{batch:>5} | {base_rate:>19,.0f} | {base_ms:>9.3f} | {loaded_rate:>24,.0f} | {loaded_ms:>9.3f} | "
              f"{loaded_rate / base_rate:>13.2f} | {base_ms / loaded_ms:>21.2f}")
    print("items/s: items claimed / time spent in queue.claim, median of the rounds; median ms: the median\n"
          "claim's time, median of the rounds; ratios: with the backlog / without (1.00: no cost).")
    for batch, ratio in summary.items():
        print(f"target: claims/s with the blocked backlog >= {TARGET_RATIO} x without (batch {batch}): "
              f"{ratio:.2f}, {bench_engine.verdict(ratio >= TARGET_RATIO)}")
    if args.explain or any(ratio < TARGET_RATIO for ratio in summary.values()):
        for setup, blocked in setups.items():
            fill_queue(args.free, blocked, args.blocked_lanes)
            print(f"\nEXPLAIN ANALYZE of CLAIM_POSTGRES, batch {batches[-1]}, setup {setup!r}:")
            print("\n".join(explain_claim(batches[-1])))
            for batch in batches:
                print(f"  setup {setup!r}, claim of {batch}, EXPLAIN ANALYZE execution, median of 9: "
                      + explain_summary(batch))
    print(flush=True)
    return summary


# -- 2. steps/s with and without a concurrency limit -----------------------------------------


def run_steps(args: argparse.Namespace, pool: FlowWorkerPool) -> float:
    print(f"== 2. steps/s of {args.step_runs} runs x {STEPS_PER_RUN} no-op steps, concurrency={args.limit} vs "
          f"none; {args.processes} runworkers x {args.concurrency} threads; {args.rounds} rounds, alternating",
          flush=True)
    events = {"none": FREE_EVENT, "limited": LIMITED_EVENT}
    results: dict[str, list[dict]] = {kind: [] for kind in events}
    for rnd in range(args.rounds):
        order = list(events) if rnd % 2 == 0 else list(reversed(events))
        for kind in order:
            results[kind].append(bench_engine.measure_throughput(
                pool, events[kind], args.step_runs, STEPS_PER_RUN, args.timeout))
        print(f"  round {rnd + 1}: " + "; ".join(
            f"{kind} {results[kind][-1]['steps_per_s']:.0f} steps/s" for kind in events), flush=True)
    base = statistics.median(r["steps_per_s"] for r in results["none"])
    limited = statistics.median(r["steps_per_s"] for r in results["limited"])
    steps = args.step_runs * STEPS_PER_RUN
    for kind, label in (("none", "no limit"), ("limited", f"concurrency={args.limit}")):
        rs = results[kind]
        print(f"  {label:>15}: {statistics.median(r['steps_per_s'] for r in rs):5.0f} steps/s; CPU ms per step: "
              f"workers {statistics.median(r['worker_cpu'] for r in rs) * 1000 / steps:.2f}, PostgreSQL "
              f"{statistics.median(r['postgres_cpu'] for r in rs) * 1000 / steps:.2f}, whole machine "
              f"{statistics.median(r['machine_cpu'] for r in rs) * 1000 / steps:.2f}")
    print(f"  ratio {limited / base:.2f} (medians of {args.rounds} rounds)")
    print(f"target: steps/s with concurrency={args.limit} >= {TARGET_RATIO} x without: {limited / base:.2f}, "
          f"{bench_engine.verdict(limited / base >= TARGET_RATIO)}\n", flush=True)
    return limited / base


def claim_path_costs(args: argparse.Namespace) -> None:
    """Why a limited function's steps cost more: claims of one lane with and without a
    limit, in this process (no workers): 2,000 due items, 15 of the lane held (the other
    threads' runs), claims of 1 (a worker whose thread just finished) and of 8; statements
    per claim, median claim time, and EXPLAIN ANALYZE of the limited lane's statement."""
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from django_workflows.engine import clock, queries, queue

    def fill(limit: int) -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"TRUNCATE {QUEUE}")
            cursor.execute(
                f"INSERT INTO {QUEUE} ({COLUMNS}) SELECT 'run', '', now() - interval '1 minute' + n * interval '1 ms', "
                "'', 0, 0, false, 'fn', 'fn', %s, '', 0 FROM generate_series(1, 2000) AS n", [limit])
            cursor.execute(
                f"INSERT INTO {QUEUE} ({COLUMNS}) SELECT 'run', '', now() + interval '1 hour', 'holder', 1, 1, false, "
                "'fn', 'fn', %s, '', 0 FROM generate_series(1, 15)", [limit])
            cursor.execute(f"ANALYZE {QUEUE}")

    print(f"== 2, why: the claim path, in this process (workers stopped): one lane, 2,000 due items, 15 held; limit {args.limit} vs none")
    results: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for _ in range(3):
        for batch in (1, 8):
            for limit in (0, args.limit):
                fill(limit)
                times: list[float] = []
                connection.queries_log.clear()  # it keeps 9,000 statements; CaptureQueriesContext slices it
                with CaptureQueriesContext(connection) as captured:
                    for _ in range(200):
                        started = time.perf_counter()
                        got = queue.claim(WORKER, batch)
                        times.append(time.perf_counter() - started)
                        with connection.cursor() as cursor:
                            cursor.execute(f"DELETE FROM {QUEUE} WHERE id = ANY(%s)", [[c.id for c in got]])
                statements = sum(1 for q in captured.captured_queries if not q["sql"].startswith("DELETE"))
                results.setdefault((batch, limit), []).append((statistics.median(times) * 1000, statements / 200))
    for (batch, limit), rs in results.items():
        print(f"    claim of {batch}, {'limit ' + str(limit) if limit else 'no limit':>9}: median "
              f"{statistics.median(r[0] for r in rs):.3f} ms, {statistics.median(r[1] for r in rs):.1f} statements "
              "(BEGIN and COMMIT included)")
    fill(args.limit)
    now = clock.now()
    params = {"limit": 1, "worker": WORKER, "lease_end": now + queue.lease_duration(), "now": now,
              "lanes": ["fn"], "limits": [args.limit], "lanes2": []}
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + queries.CLAIM_LIMITED_POSTGRES, params)
            plan = [row[0] for row in cursor.fetchall()]
        transaction.set_rollback(True)
    print("  EXPLAIN ANALYZE of CLAIM_LIMITED_POSTGRES (claim of 1), last lines:")
    print("\n".join("    " + line for line in plan[-3:]))
    print(flush=True)


# -- 3. throttle accuracy --------------------------------------------------------------------


def run_throttle(args: argparse.Namespace, pool: FlowWorkerPool) -> None:
    from django.db import connection

    from django_workflows.models import Run

    counts = [int(n) for n in args.throttle_events.split(",")]
    for (function_id, event, limit, period, burst), count in zip(THROTTLES, counts, strict=False):
        print(f"== 3. throttle limit={limit} period={period} burst={burst}: {count} events sent at once, "
              f"{args.processes} runworkers x {args.concurrency} threads", flush=True)
        bench_engine.reset_tables()
        time.sleep(0.3)
        sent = bench_engine.send(event, count)
        # The runs' due times as long as their items wait unclaimed, polled every 10 ms until
        # every run has completed: the first seen is admission's schedule; a later one, a
        # run put back at its start (the start-time throttle check found it early).
        due: dict[str, float] = {}
        last_due: dict[str, float] = {}
        deadline = time.monotonic() + count / limit + args.timeout
        while True:
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT run_id, due_at FROM {QUEUE} WHERE kind = 'run' AND worker_id = ''")
                for run_id, due_at in cursor.fetchall():
                    due.setdefault(str(run_id), due_at.timestamp())
                    last_due[str(run_id)] = due_at.timestamp()
            if Run.objects.filter(function_id=function_id, status="completed").count() >= count:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {count} throttled runs")
            time.sleep(0.01)
        runs = [
            (str(pk), queued_at.timestamp(), started_at.timestamp())
            for pk, queued_at, started_at in Run.objects.filter(function_id=function_id).values_list(
                "pk", "queued_at", "started_at")
        ]
        report_throttle(runs, due, sent, limit, burst)
        moved = sorted((last_due[pk] - due[pk]) * 1000 for pk in due if last_due[pk] - due[pk] > 0.0005)
        print(f"  runs put back at their start (due time moved later while queued): {len(moved)} of {count}"
              + (f"; moved by median {statistics.median(moved):.1f} ms, max {moved[-1]:.1f} ms" if moved else "")
              + "\n", flush=True)


def densest_window(times: list[float], width: float) -> tuple[int, float]:
    """The most of ``times`` (sorted) in any window [t, t + width), and where it starts."""
    densest, at, j = 0, times[0], 0
    for i, t in enumerate(times):
        while j < len(times) and times[j] < t + width:
            j += 1
        if j - i > densest:
            densest, at = j - i, t
    return densest, at


def report_throttle(runs: list[tuple[str, float, float]], due: dict[str, float], sent: float, limit: int,
                    burst: int) -> None:
    """Starts per second, the densest 1 s window of starts (and of due times), the rate, and
    how late each run started after the time admission gave it."""
    period = 1.0
    starts = sorted(started for _, _, started in runs)
    first, n = starts[0], len(starts)
    buckets = [0] * (int((starts[-1] - first) // period) + 1)
    for t in starts:
        buckets[int((t - first) // period)] += 1
    densest, at = densest_window(starts, period)
    # A run never seen waiting was due when admitted (intake kept it or it was claimed at once).
    dues = {pk: due.get(pk, queued) for pk, queued, _ in runs}
    due_densest, _ = densest_window(sorted(dues.values()), period)
    lags = sorted((started - dues[pk]) * 1000 for pk, _, started in runs)
    burst_lags = [(started - dues[pk]) * 1000 for pk, _, started in runs if pk not in due]
    span = starts[-1] - first
    steady = (n - 1 - burst) / span if span > 0 else float("inf")
    print(f"  first start {(first - sent) * 1000:.0f} ms after the send's commit; last {span:.2f} s after the first")
    print(f"  starts per 1 s bucket from the first start: {buckets}")
    print(f"  most starts in any sliding 1 s window: {densest} (window at +{at - first:.3f} s); limit + burst = "
          f"{limit + burst}: {bench_engine.verdict(densest <= limit + burst)}")
    print(f"  the same over the due times admission gave the runs: {due_densest}")
    print(f"  achieved rate after the burst: {steady:.2f} starts/s ((n - 1 - burst) / (last - first)), "
          f"configured {limit / period:.2f}/s: {steady / (limit / period):.3f} x; "
          f"overall n / (last - first): {n / span:.2f}/s")
    print(f"  start - due time (ms): median {statistics.median(lags):.1f}, p90 "
          f"{lags[int(0.9 * (n - 1))]:.1f}, max {lags[-1]:.1f}; runs due at admission (never seen waiting): "
          f"{len(burst_lags)}, their start - admission (ms): {', '.join(f'{lag:.1f}' for lag in sorted(burst_lags)[:6])}"
          f"{' ...' if len(burst_lags) > 6 else ''}")
    gaps = [(b - a) * 1000 for a, b in zip(starts, starts[1:], strict=False)]
    print(f"  gaps between consecutive starts (ms): median {statistics.median(gaps):.1f}, "
          f"min {min(gaps):.1f}, max {max(gaps):.1f} (exact: {period / limit * 1000:.0f})", flush=True)


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=DEFAULT_URL, help=f"dropped and recreated (default {DEFAULT_URL})")
    parser.add_argument("--skip", default="", help="comma-separated: claim,steps,throttle")
    parser.add_argument("--backlog", type=int, default=100_000, help="blocked items (default 100,000)")
    parser.add_argument("--blocked-lanes", type=int, default=1,
                        help="lanes the backlog is spread over, each at its limit (default 1)")
    parser.add_argument("--free", type=int, default=20_000, help="unlimited items to claim (default 20,000)")
    parser.add_argument("--batches", default="8,32", help="claim sizes (default 8,32)")
    parser.add_argument("--claim-rounds", type=int, default=5, help="rounds of each claim setup (default 5)")
    parser.add_argument("--explain", action="store_true", help="print the claim's EXPLAIN ANALYZE in any case")
    parser.add_argument("--processes", type=int, default=2, help="runworkers processes (default 2)")
    parser.add_argument("--concurrency", type=int, default=8, help="threads per process (default 8)")
    parser.add_argument("--limit", type=int, default=50, help="the limited function's concurrency (default 50)")
    parser.add_argument("--step-runs", type=int, default=300, help="10-step runs per measurement (default 300)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of each steps/s measurement (default 6)")
    parser.add_argument("--throttle-events", default="200,60",
                        help="events for the limit-20 and limit-5 throttles (default 200,60)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds any one measurement may take")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return

    began = time.monotonic()
    bench_engine.recreate_database(args.database_url)
    bench_engine.setup_django(args.database_url)
    bench_engine.migrate()
    register_functions(args.limit)
    skip = set(filter(None, args.skip.split(",")))
    print("\n".join(bench_engine.machine_description()))
    print(bench_engine.background_load_line())
    print(f"started {datetime.now().isoformat(timespec='seconds')}\n", flush=True)

    if "claim" not in skip:
        run_claims(args)
    ratio = None
    if not {"steps", "throttle"} <= skip:
        log_dir = Path(tempfile.mkdtemp(prefix="wf-flowbench-"))
        pool = FlowWorkerPool(args, log_dir)
        try:
            pool.start()
            if "steps" not in skip:
                ratio = run_steps(args, pool)
            if "throttle" not in skip:
                run_throttle(args, pool)
        finally:
            pool.stop()
        shutil.rmtree(log_dir, ignore_errors=True)
    if ratio is not None and (args.explain or ratio < TARGET_RATIO):
        claim_path_costs(args)  # with the workers stopped: they would claim these items too
    print(f"total {time.monotonic() - began:.0f} s")
    from django.db import connection

    connection.close()


if __name__ == "__main__":
    main()
