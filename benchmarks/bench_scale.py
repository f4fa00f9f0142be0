#!/usr/bin/env python
"""Claim and step cost of new work with 10^3 to 10^6 runs sleeping in the queue table.

    .venv/bin/python benchmarks/bench_scale.py              # 1e3, 1e5, 1e6: ~5 minutes
    .venv/bin/python benchmarks/bench_scale.py --quick      # 1e3, 1e5, small runs: ~1 minute
    .venv/bin/python benchmarks/bench_scale.py --fill-only --levels 1e6   # the fill and the claim's plan

Target: steps/s of new work with a million sleeping runs and a hundred thousand waiting
ones queued stays within 20 % of the empty-queue figure.

It (re)creates a dedicated database (``django_workflows_bench_scale``), runs one sleeping
and one waiting run through the engine in this process (``drain``) and keeps their rows as
templates; then, level by level, clones them in SQL (``INSERT ... SELECT generate_series``)
up to ``level`` sleeping runs and ``min(level / 10, 100,000)`` waiting runs, so the queue
holds exactly what the engine itself leaves there, only more of it. After each fill:
``VACUUM ANALYZE`` and a ``CHECKPOINT`` (a steady table, and no checkpoint triggered by the
fill in the middle of a measurement; every phase starts after one). Real ``runworkers``
processes (bench_engine.py's pool) then run new work, ``--repeat`` times: 1-step runs/s
and 10-step steps/s, measured as bench_engine.py does (from the sender's commit to the last
run's end). The empty queue is measured first and again last (after a TRUNCATE), so drift
of the machine shows. Needs a superuser (CHECKPOINT; foreign-key triggers off while filling).

See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_engine  # noqa: E402

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/django_workflows_bench_scale"
TARGET_RATIO = 0.80  # steps/s of new work with the backlog / with an empty queue
WAITING_SHARE = 10  # a tenth of the level are waiting runs ...
WAITING_CAP = 100_000  # ... at most a hundred thousand
SPREAD_SECONDS = 86_400  # backlog runs started over the last day: due in 6 to 7 days
CHUNK = 100_000  # at most this many clones per transaction when filling

SLEEPER = "bench-scale-sleeper"
WAITER = "bench-scale-waiter"
# Every table a run writes to, in insertion order (foreign keys), and how a template's rows
# are found in it.
TEMPLATE_TABLES = {
    "django_workflows_event": "id IN (SELECT event_id FROM django_workflows_run WHERE id = %(run)s)",
    "django_workflows_run": "id = %(run)s",
    "django_workflows_step": "run_id = %(run)s",
    "django_workflows_attempt": "run_id = %(run)s",
    "django_workflows_queue": "run_id = %(run)s",
    "django_workflows_waiter": "run_id = %(run)s",
}


def define_backlog_functions() -> None:
    """The two functions whose runs make the backlog (this process only: workers never
    claim their items, which are due in days)."""
    import django_workflows as wf

    @wf.function(id=SLEEPER, trigger="bench.scale.sleep", retries=0)
    def sleeper(ctx: wf.Context) -> None:
        ctx.step.sleep("nap", "7d")

    @wf.function(id=WAITER, trigger="bench.scale.order", retries=0)
    def waiter(ctx: wf.Context) -> None:
        ctx.step.wait_for_event("paid", event="bench.scale.paid", match="data.order_id", timeout="7d")


# -- templates: one sleeping and one waiting run, written by the engine -----------------------


def make_templates() -> dict[str, dict]:
    """Run one sleeper and one waiter in this process until they suspend, copy their rows
    into ``bench_tpl_*`` tables, and empty the engine's tables again."""
    from django.db import connection

    import django_workflows as wf
    from django_workflows.testing import drain

    wf.send([wf.Event(name="bench.scale.sleep", data={"n": 0}),
             wf.Event(name="bench.scale.order", data={"order_id": "order-0"})])
    drain()
    facts: dict[str, dict] = {}
    with connection.cursor() as cursor:
        for kind in (SLEEPER, WAITER):
            cursor.execute(
                "SELECT r.id, r.status, r.batch_event_ids, q.lease_token FROM django_workflows_run r "
                "JOIN django_workflows_queue q ON q.run_id = r.id WHERE r.function_id = %s", [kind])
            run_id, status, batch, token = cursor.fetchone()
            assert status == "running" and batch in ([], "[]"), (kind, status, batch)  # nothing to rewrite
            facts[kind] = {"run": run_id, "lease_token": token}
        for table, where in TEMPLATE_TABLES.items():
            cursor.execute(f"DROP TABLE IF EXISTS bench_tpl_{table}")
            cursor.execute(f"CREATE TABLE bench_tpl_{table} AS SELECT ''::text AS tpl_kind, * FROM {table} LIMIT 0")
            for kind, fact in facts.items():
                cursor.execute(f"INSERT INTO bench_tpl_{table} SELECT %(kind)s, * FROM {table} WHERE {where}",
                               {"kind": kind, "run": fact["run"]})
        cursor.execute("DROP TABLE IF EXISTS bench_tpl_waitkey")
        cursor.execute("CREATE TABLE bench_tpl_waitkey AS SELECT event_name, match_field FROM django_workflows_waitkey")
        for kind in facts:
            for table in ("step", "waiter"):
                cursor.execute(f"SELECT count(*) FROM bench_tpl_django_workflows_{table} WHERE tpl_kind = %s", [kind])
                facts[kind][f"{table}s"] = cursor.fetchone()[0]
    bench_engine.reset_tables()
    return facts


# -- cloning the templates in SQL -------------------------------------------------------------

SHIFT = f"make_interval(secs => mod(n, {SPREAD_SECONDS}))"  # this clone started that much earlier


def uuid7_sql(seed: str) -> str:
    """A time-ordered id (UUIDv7 layout, as ids.new_id makes) for clone ``n``: the template
    run's start shifted like the clone's timestamps, and md5 bits instead of random ones."""
    moment = f"(%(base)s::timestamptz - {SHIFT})"
    digest = f"md5({seed} || ':' || %(kind)s || ':' || n)"
    return (f"(lpad(to_hex((extract(epoch FROM {moment}) * 1000)::bigint), 12, '0') || '7' "
            f"|| substr({digest}, 1, 3) || '8' || substr({digest}, 4, 15))::uuid")


RUN_ID = uuid7_sql("'run'")
EVENT_ID = uuid7_sql("'event'")
# Each clone's own trigger data: waiters match on data.order_id, so each needs its own value.
DATA = {SLEEPER: "jsonb_build_object('n', n)", WAITER: "jsonb_build_object('order_id', 'order-' || n)"}


def overrides(table: str, kind: str) -> dict[str, str]:
    """Columns of ``table`` that differ between clones; every other column is copied from
    the template (timestamps shifted)."""
    data = DATA[kind]
    return {
        "django_workflows_event": {"id": EVENT_ID, "data": data},
        "django_workflows_run": {"id": RUN_ID, "event_id": EVENT_ID},
        "django_workflows_waiter": {
            "run_id": RUN_ID,
            "match_value": "'\"order-' || n || '\"'",  # lifecycle.match_key's JSON text
            "trigger": (f"t.trigger || jsonb_build_object('id', ({EVENT_ID})::text, 'data', {data}, "
                        f"'ts', (t.trigger->>'ts')::bigint - mod(n, {SPREAD_SECONDS}) * 1000)"),
        },
    }.get(table, {"run_id": RUN_ID})


def clone_sql(cursor: Any, table: str, kind: str) -> str:
    """INSERT ... SELECT of the template's rows of ``table``, once per ``n`` in a range."""
    cursor.execute(
        "SELECT column_name, data_type, is_identity FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position", [table])
    special = overrides(table, kind)
    columns, values = [], []
    for name, data_type, is_identity in cursor.fetchall():
        if is_identity == "YES":
            continue  # a fresh serial id
        columns.append(name)
        if name in special:
            values.append(special[name])
        elif data_type == "timestamp with time zone":
            values.append(f"t.{name} - {SHIFT}")  # due_at, scheduled_at, expires_at... move together
        else:
            values.append(f"t.{name}")
    return (f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(values)} "
            f"FROM bench_tpl_{table} t CROSS JOIN generate_series(%(first)s, %(last)s) AS g(n) "
            f"WHERE t.tpl_kind = %(kind)s")


@dataclass
class Backlog:
    """How many clones of each template the database holds."""

    facts: dict[str, dict]
    counts: dict[str, int] = field(default_factory=lambda: {SLEEPER: 0, WAITER: 0})
    base: dict[str, object] = field(default_factory=dict)

    def grow(self, kind: str, target: int) -> None:
        from django.db import connection

        first, last = self.counts[kind] + 1, target
        if last < first:
            return
        with connection.cursor() as cursor:
            if kind not in self.base:
                cursor.execute("SELECT queued_at FROM bench_tpl_django_workflows_run WHERE tpl_kind = %s", [kind])
                self.base[kind] = cursor.fetchone()[0]
            statements = [clone_sql(cursor, table, kind) for table in TEMPLATE_TABLES]
            cursor.execute("INSERT INTO django_workflows_waitkey (event_name, match_field) "
                           "SELECT event_name, match_field FROM bench_tpl_waitkey ON CONFLICT DO NOTHING")
        # Chunks on as many connections as there are cores: index maintenance is the cost,
        # and PostgreSQL does it in each inserting backend.
        jobs = os.cpu_count() or 1
        size = min(CHUNK, max(1_000, -(-(last - first + 1) // jobs)))
        chunks = [{"first": start, "last": min(start + size - 1, last), "kind": kind, "base": self.base[kind]}
                  for start in range(first, last + 1, size)]
        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(lambda params: insert_chunk(statements, params), chunks))
        self.counts[kind] = target


def insert_chunk(statements: list[str], params: dict) -> None:
    """One chunk of clones in one transaction, on this thread's own connection."""
    from django.db import connection, transaction

    try:
        with transaction.atomic(), connection.cursor() as cursor:
            # Foreign-key triggers off (a third of the fill's time): these are clones of rows
            # that passed them, with ids made consistently; check_backlog() joins them all.
            cursor.execute("SET LOCAL session_replication_role = replica")
            for sql in statements:
                cursor.execute(sql, params)
    finally:
        connection.close()


def waiting_for(level: int) -> int:
    return min(level // WAITING_SHARE, WAITING_CAP)


def fill(backlog: Backlog, level: int) -> dict[str, float]:
    """Grow the backlog to ``level`` sleeping runs and its share of waiting ones; vacuum,
    analyze and checkpoint. Returns the seconds each part took."""
    from django.db import connection

    started = time.perf_counter()
    backlog.grow(SLEEPER, level)
    backlog.grow(WAITER, waiting_for(level))
    inserted = time.perf_counter()
    with connection.cursor() as cursor:
        # As a table that has been there a while: visibility map set, hint bits written,
        # statistics current. Autovacuum would otherwise do it during the measurements.
        cursor.execute("VACUUM ANALYZE")
    vacuumed = time.perf_counter()
    checkpoint()  # the fill's WAL must not trigger one during the measurements
    return {"insert": inserted - started, "vacuum": vacuumed - inserted,
            "checkpoint": time.perf_counter() - vacuumed}


def checkpoint() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CHECKPOINT")


# -- what the backlog looks like ----------------------------------------------------------


def mb(size: int) -> str:
    return f"{size / 2**20:,.0f} MB"


def table_facts() -> dict[str, object]:
    """Rows and sizes of the queue table and its indexes, and the other big tables' sizes."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*), pg_relation_size('django_workflows_queue'), "
                       "pg_indexes_size('django_workflows_queue') FROM django_workflows_queue")
        rows, table_size, index_size = cursor.fetchone()
        cursor.execute(
            "SELECT indexrelname, pg_relation_size(indexrelid) FROM pg_stat_user_indexes "
            "WHERE relname = 'django_workflows_queue' ORDER BY 2 DESC")
        indexes = cursor.fetchall()
        cursor.execute(
            "SELECT relname, pg_total_relation_size(relid) FROM pg_stat_user_tables "
            "WHERE relname LIKE 'django_workflows_%' AND relname <> 'django_workflows_queue' "
            "ORDER BY 2 DESC LIMIT 4")
        others = cursor.fetchall()
    return {"rows": rows, "table": table_size, "indexes": index_size, "index_list": indexes, "others": others}


def describe_tables(facts: dict) -> list[str]:
    return [
        f"    queue: {facts['rows']:,} rows, table {mb(facts['table'])}, indexes {mb(facts['indexes'])} ("
        + (", ".join(f"{name} {mb(size)}" for name, size in facts["index_list"] if size >= 2**19)
           or "each < 1 MB") + ")",
        "    with their indexes: " + ", ".join(
            f"{name.removeprefix('django_workflows_')} {mb(size)}" for name, size in facts["others"]),
    ]


def check_backlog(backlog: Backlog) -> str:
    """That every clone is whole (its queue item, run, event, step and waiter join up) and
    that no sleeping or waiting run was touched: still queued, not due, never claimed again
    (its lease token as the engine left it), its run running and its step waiting until the
    item's due time. Returns a line for the report; raises if anything is off."""
    from django.db import connection

    problems = []
    with connection.cursor() as cursor:
        for kind, fact in backlog.facts.items():
            cursor.execute(CHECK_SQL, {"kind": kind, "token": fact["lease_token"]})
            found = cursor.fetchone()
            count = backlog.counts[kind]
            expected = (count, 0, count * fact["steps"], count * fact["waiters"])
            if found != expected:
                problems.append(f"{kind}: queued, touched, whole steps, whole waiters {found} != {expected}")
    if problems:
        raise SystemExit("backlog disturbed: " + "; ".join(problems))
    return (f"    backlog whole and untouched: {backlog.counts[SLEEPER]:,} sleeping and {backlog.counts[WAITER]:,} "
            "waiting runs still queued, not due, not claimed since they suspended")


CHECK_SQL = """
SELECT
    (SELECT count(*) FROM django_workflows_queue WHERE function_id = %(kind)s),
    (SELECT count(*) FROM django_workflows_queue WHERE function_id = %(kind)s
       AND (worker_id <> '' OR lease_token <> %(token)s OR claims <> 0 OR due_at IS NULL OR due_at <= now())),
    (SELECT count(*) FROM django_workflows_queue q
       JOIN django_workflows_run r ON r.id = q.run_id
       JOIN django_workflows_event e ON e.id = r.event_id
       JOIN django_workflows_step s ON s.run_id = r.id
     WHERE q.function_id = %(kind)s AND r.status = 'running' AND s.status = 'waiting' AND s.scheduled_at = q.due_at),
    (SELECT count(*) FROM django_workflows_waiter w JOIN django_workflows_run r ON r.id = w.run_id
     WHERE r.function_id = %(kind)s AND w.expires_at = (SELECT due_at FROM django_workflows_queue WHERE run_id = r.id))
"""


# -- claim cost, in this process --------------------------------------------------------------


def insert_due_items(count: int) -> None:
    """Due items of one extra lane (rolled back by the caller: workers never see them)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO django_workflows_queue (kind, function_id, step_id, due_at, worker_id, lease_token, "
            "claims, wake, lane, lane_limit, lane2, lane2_limit) SELECT 'run', 'bench-probe', '', "
            "now() - interval '1 second', '', 0, 0, false, 'bench-probe', 0, '', 0 FROM generate_series(1, %s)",
            [count])


def claim_costs(claims: int) -> tuple[float, float]:
    """Median ms of an idle claim of 8 (nothing due: what idle workers poll with), and of a
    claim of 8 due items (in a transaction that is rolled back, so workers see none)."""
    from django.db import transaction

    from django_workflows.engine import queue

    idle = []
    for _ in range(claims):
        began = time.perf_counter()
        items = queue.claim("bench-probe", 8)
        idle.append(time.perf_counter() - began)
        queue.release("bench-probe", [item.id for item in items])  # none, unless work was due
    busy = []
    with transaction.atomic():
        insert_due_items(claims * 8)
        for _ in range(claims):
            began = time.perf_counter()
            queue.claim("bench-probe", 8)
            busy.append(time.perf_counter() - began)
        transaction.set_rollback(True)
    return statistics.median(idle) * 1000, statistics.median(busy) * 1000


def explain_claim() -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the claim statement, 8 of 200 due items, rolled back."""
    from datetime import timedelta

    from django.db import connection, transaction

    from django_workflows.engine import clock, queries, queue

    now = clock.now()
    params = {"limit": 8, "worker": "bench-explain", "lease_end": now + timedelta(seconds=30), "now": now,
              "after": "", "scan": queue.LIMITED_LANES_PER_CLAIM, "reserve": True}
    with transaction.atomic(), connection.cursor() as cursor:
        insert_due_items(200)
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + queries.CLAIM_POSTGRES, params)
        plan = [row[0] for row in cursor.fetchall()]
        transaction.set_rollback(True)
    return plan


# -- new work through real workers --------------------------------------------------------

NEW_WORK_FUNCTIONS = ["bench-noop-1", "bench-noop-10"]


def clear_new_work() -> None:
    """Delete the previous measurement's runs, steps and events (the backlog stays)."""
    from bench_workflows import NOOP1_EVENT, NOOP10_EVENT
    from django.db import connection, transaction

    runs = "SELECT id FROM django_workflows_run WHERE function_id = ANY(%(fns)s)"
    params = {"fns": NEW_WORK_FUNCTIONS, "names": [NOOP1_EVENT, NOOP10_EVENT]}
    with transaction.atomic(), connection.cursor() as cursor:
        for table in ("attempt", "step", "queue", "waiter"):
            cursor.execute(f"DELETE FROM django_workflows_{table} WHERE run_id IN ({runs})", params)
        cursor.execute("DELETE FROM django_workflows_run WHERE function_id = ANY(%(fns)s)", params)
        cursor.execute("DELETE FROM django_workflows_queue WHERE event_id IN "
                       "(SELECT id FROM django_workflows_event WHERE name = ANY(%(names)s))", params)
        cursor.execute("DELETE FROM django_workflows_event WHERE name = ANY(%(names)s)", params)


def measure(event: str, runs: int, steps_per_run: int, timeout: float) -> dict[str, float]:
    """Send ``runs`` events at once; steps per second from the sender's commit to the last
    run's end, and how busy the whole machine was meanwhile (other work included)."""
    clear_new_work()
    time.sleep(0.3)
    busy0 = bench_engine.machine_busy_seconds()
    started = bench_engine.send(event, runs)
    ended = bench_engine.wait_runs_done(runs, timeout)  # only new work ever completes
    busy = bench_engine.machine_busy_seconds() - busy0
    elapsed = ended - started
    return {"per_s": runs * steps_per_run / elapsed, "cpu": busy / (elapsed * (os.cpu_count() or 1))}


@dataclass
class Phase:
    """One column of the report: a backlog size and its measurements."""

    name: str
    sleeping: int
    waiting: int
    runs: list[float] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)
    queue_rows: int = 0
    queue_mb: str = "-"
    fill_s: float | None = None
    claim_idle_ms: float | None = None
    claim_ms: float | None = None


def run_phase(phase: Phase, args: argparse.Namespace) -> None:
    from bench_workflows import NOOP1_EVENT, NOOP10_EVENT, STEPS_PER_RUN

    checkpoint()  # every phase starts just after one (full-page writes alike)
    phase.claim_idle_ms, phase.claim_ms = claim_costs(args.claims)
    print(f"    claim of 8, median: {phase.claim_idle_ms:.2f} ms with nothing due, "
          f"{phase.claim_ms:.2f} ms with due items", flush=True)
    for rep in range(args.repeat):
        one = measure(NOOP1_EVENT, args.runs, 1, args.timeout)
        ten = measure(NOOP10_EVENT, args.step_runs, STEPS_PER_RUN, args.timeout)
        phase.runs.append(one["per_s"])
        phase.steps.append(ten["per_s"])
        print(f"    repetition {rep + 1}: {one['per_s']:,.0f} runs/s, {ten['per_s']:,.0f} steps/s "
              f"(CPU {ten['cpu']:.0%} busy, load average {os.getloadavg()[0]:.1f})", flush=True)
    clear_new_work()


# -- report -------------------------------------------------------------------------------


def print_report(phases: list[Phase], args: argparse.Namespace) -> bool:
    empties = [p for p in phases if p.sleeping == 0]
    base_steps = statistics.median([v for p in empties for v in p.steps])
    base_runs = statistics.median([v for p in empties for v in p.runs])
    columns = [("backlog", 34), ("queue rows", 10), ("queue+idx", 9), ("fill s", 6), ("claim ms idle/8", 15),
               ("1-step runs/s", 13), ("ratio", 5), ("10-step steps/s", 15), ("ratio", 5), ("target", 6)]
    print()
    print(" | ".join(f"{name:>{width}}" for name, width in columns))
    print("-|-".join("-" * width for _, width in columns))
    met = True
    for p in phases:
        steps, runs = statistics.median(p.steps), statistics.median(p.runs)
        ratio = steps / base_steps
        verdict = "-" if p.sleeping == 0 else ("PASS" if ratio >= TARGET_RATIO else "MISS")
        met = met and verdict != "MISS"
        fill_s = "-" if p.fill_s is None else f"{p.fill_s:.0f}"
        values = [p.name, f"{p.queue_rows:,}", p.queue_mb, fill_s, f"{p.claim_idle_ms:.2f} / {p.claim_ms:.2f}",
                  f"{runs:,.0f}", f"{runs / base_runs:.2f}", f"{steps:,.0f}", f"{ratio:.2f}", verdict]
        print(" | ".join(f"{v:>{w}}" for v, (_, w) in zip(values, columns, strict=True)))
    print(f"""
medians of {args.repeat} repetitions; ratios to the empty queue's median over both empty phases
({base_runs:,.0f} runs/s, {base_steps:,.0f} steps/s). Each repetition: {args.runs} 1-step runs, then
{args.step_runs} runs of 10 steps, sent in one transaction; from the sender's commit to the last
run's end. claim ms: this process's median over {args.claims} claims of 8, idle (nothing due)
and of due items (rolled back). queue+idx: the queue table and its indexes. fill s: cloning
the level's new rows, VACUUM ANALYZE and CHECKPOINT.
target: 10-step steps/s with the backlog >= {TARGET_RATIO:.2f} x the empty queue's: \
{'MET' if met else 'MISSED'}""")
    return met


def parse_levels(text: str) -> list[int]:
    return sorted({int(float(part)) for part in text.split(",") if part.strip()})


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=DEFAULT_URL,
                        help=f"benchmark database, dropped and recreated (default {DEFAULT_URL})")
    parser.add_argument("--levels", default="1e3,1e5,1e6",
                        help="sleeping runs per level; waiting runs are a tenth, at most 100,000 (default 1e3,1e5,1e6)")
    parser.add_argument("--processes", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--concurrency", type=int, default=8, help="threads per worker process (default 8)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per level (default 3)")
    parser.add_argument("--runs", type=int, default=500, help="1-step runs per repetition (default 500)")
    parser.add_argument("--step-runs", type=int, default=200, help="10-step runs per repetition (default 200)")
    parser.add_argument("--claims", type=int, default=200, help="in-process claims timed per level (default 200)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds any one measurement may take")
    parser.add_argument("--explain", action="store_true",
                        help="print EXPLAIN (ANALYZE, BUFFERS) of the claim at every level (default: the largest)")
    parser.add_argument("--fill-only", action="store_true",
                        help="fill the levels and report fill times, sizes and the claim's plan; no workers")
    parser.add_argument("--quick", action="store_true",
                        help="levels 1e3,1e5, 2 repetitions of 200 1-step and 100 10-step runs (~1 minute)")
    args = parser.parse_args()
    if args.quick:
        args.levels, args.repeat, args.runs, args.step_runs, args.claims = "1e3,1e5", 2, 200, 100, 100
    return args


def empty_phase(name: str) -> Phase:
    phase = Phase(name, 0, 0)
    facts = table_facts()
    phase.queue_rows, phase.queue_mb = facts["rows"], mb(facts["table"] + facts["indexes"])
    print(f"\n== {name}: no backlog ({phase.queue_rows} queue rows)", flush=True)
    return phase


def fill_phase(backlog: Backlog, level: int, show_plan: bool) -> Phase:
    phase = Phase(f"{level:,} sleeping + {waiting_for(level):,} waiting", level, waiting_for(level))
    times = fill(backlog, level)
    facts = table_facts()
    phase.queue_rows, phase.queue_mb = facts["rows"], mb(facts["table"] + facts["indexes"])
    phase.fill_s = sum(times.values())
    print(f"\n== {phase.name}: filled in {times['insert']:.1f}s (+ VACUUM ANALYZE {times['vacuum']:.1f}s, "
          f"CHECKPOINT {times['checkpoint']:.1f}s)", flush=True)
    print("\n".join(describe_tables(facts)))
    if show_plan:
        print("    EXPLAIN (ANALYZE, BUFFERS) of the claim of 8 (200 items of another lane due):")
        print("\n".join(f"      {line}" for line in explain_claim()))
    return phase


def main() -> None:
    args = parse_args()
    levels = parse_levels(args.levels)
    bench_engine.recreate_database(args.database_url)
    bench_engine.setup_django(args.database_url)
    bench_engine.migrate()
    import bench_workflows  # noqa: F401  (the new work's functions, for this process's checks)
    from django.db import connection

    define_backlog_functions()
    print("\n".join(bench_engine.machine_description()))
    print(bench_engine.background_load_line())
    print(f"levels: {', '.join(f'{lv:,}' for lv in levels)} sleeping runs (+ a tenth waiting, at most "
          f"{WAITING_CAP:,}); {args.processes} worker processes of {args.concurrency} threads; "
          f"{args.repeat} repetitions of {args.runs} 1-step and {args.step_runs} 10-step runs", flush=True)
    backlog = Backlog(make_templates())
    if args.fill_only:
        for level in levels:
            fill_phase(backlog, level, show_plan=args.explain or level == levels[-1])
            print(check_backlog(backlog))
        connection.close()
        return
    log_dir = Path(tempfile.mkdtemp(prefix="wf-bench-scale-"))
    pool = bench_engine.WorkerPool(args.processes, args.concurrency, args.database_url, log_dir)
    phases = []
    try:
        pool.start()
        phases.append(empty_phase("empty (before)"))
        run_phase(phases[-1], args)
        for level in levels:
            phases.append(fill_phase(backlog, level, show_plan=args.explain or level == levels[-1]))
            run_phase(phases[-1], args)
            print(check_backlog(backlog), flush=True)
        bench_engine.reset_tables()  # the backlog goes: the same workers, an empty queue again
        phases.append(empty_phase("empty (after)"))
        run_phase(phases[-1], args)
    finally:
        pool.stop()
    print_report(phases, args)
    connection.close()
    shutil.rmtree(log_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
