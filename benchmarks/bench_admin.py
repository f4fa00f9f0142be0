#!/usr/bin/env python
"""The admin (the run console) on a big history: 1,000,000 runs of 5 steps on PostgreSQL.

    .venv/bin/python benchmarks/bench_admin.py                   # 1,000,000 runs: ~1.5 minutes
    .venv/bin/python benchmarks/bench_admin.py --runs 100000     # quick: ~15 s
    .venv/bin/python benchmarks/bench_admin.py --reuse           # the pages again, same data
    .venv/bin/python benchmarks/bench_admin.py --days 1          # the same runs within 24 hours

Uses its own database (``dw_benchadmin``, dropped and recreated with bench_engine.py's
helpers, unless ``--reuse`` finds a complete load of the same ``--runs`` and ``--days`` in
it) and prints the machine first. The history is written in SQL (``INSERT ... SELECT generate_series``; the
indexes that back no constraint dropped during the load and built after it; foreign-key
triggers off for the load's session, the rows consistent by construction), then
``VACUUM (ANALYZE)``: the planner has statistics, index-only scans a visibility map, and
autovacuum does not start on the fresh tables while the pages are timed.

- ``--runs`` runs, queued evenly over the last ``--days`` (30) days up to now, ids UUIDv7 of
  that moment as the engine makes them, each started by an event of its own (one event per
  run, one event name per function): the oldest 1 % of a retired function (no longer
  defined, no run since), the others of 10 functions (shares 30, 20, 15, 10, 8, 6, 5, 3, 2,
  1 %);
- statuses: the newest 2,000 runs (1 % of smaller histories) running or queued, the others
  3 % failed, 0.5 % cancelled, the rest completed;
- 5 steps per run (queued runs have none yet): a failed run's last step failed after 4
  attempts, a running run's is retrying, a cancelled run's is waiting for an event;
- attempts: one per step that ran, 4 for a failed step, 2 for step 3 of 1 % of the completed
  runs (retried once).

Then, logged in as a superuser through Django's test client (``force_login``; in this
process, ``DEBUG`` off), each page is requested once to warm up and ``--repeat`` (5) times
measured, its SQL captured (``CaptureQueriesContext``, each statement timed by an execute
wrapper): the runs list unfiltered, filtered by a common and a rare function, by status
``failed``, searched by an event id and by a run id; one failed run's page (5 steps, 8
attempts); the functions page (the 10 functions are defined in this process, as a worker
would); the events list; and more: the last page the unfiltered runs list links to, the
"queued in the last 24 hours" filter, searches by the start of an event name (of the 1 %
function; of the retired one, whose runs are all old), the retired function's filter.

For each page the ``--explain`` (2) slowest SELECTs (median time over the requests) are run
again under ``EXPLAIN (ANALYZE, BUFFERS)`` and their plans printed, the others under plain
``EXPLAIN``. Flagged: a sequential scan of runs, steps, attempts or events; a node on one of
them that discards 10,000 rows or more by filter, or returns 100,000 rows or more. The table
at the end: status code, median ms of the request, SQL ms, queries, the slowest statement's
ms, the response size, the flags. Targets: every page under ``--slow-ms`` (500 ms), no
sequential scan of a big table. See benchmarks/README.md, "Admin".
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_engine  # noqa: E402

DB_NAME = "dw_benchadmin"
DEFAULT_URL = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
BIG_TABLES = ("django_workflows_run", "django_workflows_step", "django_workflows_attempt",
              "django_workflows_event")
STEPS = 5
# (function id, its trigger event's name, share of the runs in %)
FUNCTIONS = [
    ("bench-orders", "shop/order.created", 30),
    ("bench-emails", "mail/message.queued", 20),
    ("bench-invoices", "billing/invoice.due", 15),
    ("bench-signups", "user/signed.up", 10),
    ("bench-exports", "report/export.requested", 8),
    ("bench-payments", "billing/payment.received", 6),
    ("bench-refunds", "billing/refund.requested", 5),
    ("bench-shipping", "shop/order.shipped", 3),
    ("bench-reviews", "shop/review.posted", 2),
    ("bench-audits", "ops/audit.requested", 1),
]
assert sum(share for _fid, _name, share in FUNCTIONS) == 100
# A function no longer defined (retired): the oldest 1 % of the runs, none since. Not in this
# process's registry, as after a deploy that removed it.
RETIRED = ("bench-legacy-import", "legacy/import.requested")
RETIRED_SHARE = 100  # the oldest 1 / RETIRED_SHARE of the runs


def progress(message: str, started: float) -> None:
    print(f"  [{time.monotonic() - started:6.1f} s] {message}", flush=True)


# -- the history ------------------------------------------------------------------------------

UUID7 = """
CREATE FUNCTION pg_temp.uuid7(moment timestamptz, seed text) RETURNS uuid
LANGUAGE sql IMMUTABLE AS $$
    SELECT (lpad(to_hex(floor(extract(epoch FROM moment) * 1000)::bigint), 12, '0')
            || '7' || substr(md5(seed), 1, 3) || '8' || substr(md5(seed), 4, 15))::uuid
$$
"""


def plan_sql(runs: int, days: int) -> str:
    """One row per run to be: its ids, function, status and times (a temporary table)."""
    function_case, edge = [], 0
    for index, (_fid, _name, share) in enumerate(FUNCTIONS):
        edge += share
        function_case.append(f"WHEN h_fn < {edge} THEN {index}")
    recent = min(2000, max(1, runs // 100))
    return f"""
    CREATE TEMP TABLE plan AS
    WITH base AS (
        SELECT n,
            now() - (({runs} - n)::float8 / {runs}) * interval '{days} days' AS queued_at,
            abs(hashint8extended(n, 1)) % 100 AS h_fn,
            abs(hashint8extended(n, 2)) % 1000 AS h_status,
            abs(hashint8extended(n, 3)) % 100 AS h_retry,
            50 + abs(hashint8extended(n, 4)) % 2000 AS took_ms
        FROM generate_series(1, {runs}) AS n
    )
    SELECT n, queued_at, took_ms,
        pg_temp.uuid7(queued_at, 'run' || n) AS id,
        pg_temp.uuid7(queued_at - interval '5 ms', 'event' || n) AS event_id,
        CASE WHEN n <= {runs // RETIRED_SHARE} THEN {len(FUNCTIONS)}
             ELSE CASE {' '.join(function_case)} END END AS fn,
        CASE
            WHEN n > {runs - recent} THEN CASE WHEN h_status % 2 = 0 THEN 'running' ELSE 'queued' END
            WHEN h_status < 30 THEN 'failed'
            WHEN h_status < 35 THEN 'cancelled'
            ELSE 'completed'
        END AS status,
        h_retry = 0 AS retried
    FROM base
    """


def load_history(runs: int, days: int, started: float) -> dict[str, int]:
    from django.db import connection

    functions = "VALUES " + ", ".join(
        f"({index}, '{fid}', '{name}')" for index, (fid, name) in enumerate(
            [(fid, name) for fid, name, _share in FUNCTIONS] + [RETIRED])
    )
    # A step's times: the run's duration cut in STEPS equal parts.
    part = "(p.took_ms::float8 / 5 * interval '1 ms')"
    step_start = f"(p.queued_at + interval '20 ms' + (k - 1) * {part})"
    last_step_state = (
        "CASE WHEN k < 5 OR p.status = 'completed' THEN 'completed' "
        "WHEN p.status = 'failed' THEN 'failed' WHEN p.status = 'running' THEN 'retrying' ELSE 'waiting' END"
    )
    error = (
        """'{"name": "PaymentDeclined", "message": "card declined (attempt ' || a || ')", """
        """"stack": "Traceback (most recent call last):\\n  File \\"flows.py\\", line 42, in charge\\n'
        || '    raise PaymentDeclined(...)\\nPaymentDeclined: card declined"}'"""
    )
    error_run, error_step = error.replace("|| a ||", "|| 4 ||"), error.replace("|| a ||", "|| 1 ||")
    attempts_of = (
        "CASE WHEN k = 5 AND p.status = 'failed' THEN 4 WHEN k = 5 AND p.status = 'cancelled' THEN 0 "
        "WHEN k = 3 AND p.retried AND p.status = 'completed' THEN 2 ELSE 1 END"
    )
    statements = [
        ("plan", UUID7, None),
        ("plan", plan_sql(runs, days), None),
        ("plan", "CREATE TEMP TABLE fn (idx int, function_id text, event_name text)", None),
        ("plan", f"INSERT INTO fn {functions}", None),
        ("events", """
            INSERT INTO django_workflows_event (id, name, data, ts, received_at, dedup_id, error/*more columns*/)
            SELECT p.event_id, fn.event_name,
                ('{"order_id": ' || p.n || ', "amount": ' || (p.took_ms * 7 % 10000) || ', "currency": "EUR"}')::jsonb,
                p.queued_at - interval '5 ms', p.queued_at - interval '5 ms',
                CASE WHEN p.n % 4 = 0 THEN 'sender-' || p.n ELSE '' END, NULL/*more values*/
            FROM plan p JOIN fn ON fn.idx = p.fn ORDER BY p.n
        """, "django_workflows_event"),
        ("runs", f"""
            INSERT INTO django_workflows_run (id, function_id, status, output, error, batch_event_ids,
                attempts, queued_at, started_at, ended_at, event_id, replay_of_id, cron_key,
                parent_run_id, parent_step_id, held_since, status_detail/*more columns*/)
            SELECT p.id, fn.function_id, p.status,
                CASE WHEN p.status = 'completed' THEN '{{"ok": true, "order_id": ' || p.n || '}}' END::jsonb,
                CASE WHEN p.status = 'failed' THEN {error_run} END::jsonb,
                jsonb_build_array(p.event_id::text), 0, p.queued_at,
                CASE WHEN p.status <> 'queued' THEN p.queued_at + interval '20 ms' END,
                CASE WHEN p.status NOT IN ('queued', 'running')
                     THEN p.queued_at + interval '20 ms' + p.took_ms * interval '1 ms' END,
                p.event_id, NULL, NULL, NULL, '', NULL, ''/*more values*/
            FROM plan p JOIN fn ON fn.idx = p.fn ORDER BY p.n
        """, "django_workflows_run"),
        ("steps", f"""
            INSERT INTO django_workflows_step (run_id, step_id, kind, status, output, error, attempts,
                started_at, ended_at, scheduled_at/*more columns*/)
            SELECT p.id, 'step-' || k,
                CASE WHEN k = 5 AND p.status = 'cancelled' THEN 'wait_for_event' ELSE 'run' END,
                {last_step_state},
                CASE WHEN {last_step_state} = 'completed'
                     THEN ('{{"step": ' || k || ', "value": "result of step-' || k || '", "items": [1, 2, 3]}}')::jsonb END,
                CASE WHEN {last_step_state} IN ('failed', 'retrying') THEN {error_step} END::jsonb,
                {attempts_of}, {step_start},
                CASE WHEN {last_step_state} IN ('completed', 'failed') THEN {step_start} + {part} END,
                CASE WHEN {last_step_state} = 'retrying' THEN now() + interval '1 minute' END/*more values*/
            FROM plan p, LATERAL generate_series(1, {STEPS}) AS k
            WHERE p.status <> 'queued'
        """, "django_workflows_step"),
        ("attempts", f"""
            INSERT INTO django_workflows_attempt (run_id, step_id, number, started_at, ended_at, outcome,
                error, worker_id/*more columns*/)
            SELECT p.id, 'step-' || k, a,
                {step_start} + (a - 1) * {part}, {step_start} + a * {part},
                CASE WHEN a < {attempts_of} OR {last_step_state} = 'retrying' THEN 'retrying'
                     WHEN {last_step_state} = 'failed' THEN 'failed' ELSE 'completed' END,
                CASE WHEN a < {attempts_of} OR {last_step_state} IN ('failed', 'retrying')
                     THEN {error} END::jsonb,
                'worker-' || (p.n % 4) || ':' || (1000 + p.n % 7)/*more values*/
            FROM plan p, LATERAL generate_series(1, {STEPS}) AS k, LATERAL generate_series(1, {attempts_of}) AS a
            WHERE p.status <> 'queued'
        """, "django_workflows_attempt"),
    ]
    counts: dict[str, int] = {}
    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '512MB'")
        cursor.execute("SET session_replication_role = replica")  # no FK trigger per row (consistent by construction)
        for what, sql, table in statements:
            if table is None:
                cursor.execute(sql)
                continue
            sql = with_model_defaults(table, sql)
            dropped = drop_secondary_indexes(cursor, table)
            t0 = time.monotonic()
            cursor.execute(sql)
            counts[table] = cursor.rowcount
            progress(f"{what}: {cursor.rowcount:,} rows in {time.monotonic() - t0:.1f} s", started)
            t0 = time.monotonic()
            for definition in dropped:
                cursor.execute(definition)
            progress(f"{what}: {len(dropped)} secondary indexes rebuilt in {time.monotonic() - t0:.1f} s", started)
        cursor.execute("SET session_replication_role = DEFAULT")
        cursor.execute("DROP TABLE plan, fn")
        t0 = time.monotonic()
        cursor.execute("VACUUM (ANALYZE)")
        progress(f"VACUUM (ANALYZE) in {time.monotonic() - t0:.1f} s", started)
        cursor.execute(f"COMMENT ON TABLE django_workflows_run IS '{history_mark(runs, days)}'")
    return counts


def with_model_defaults(table: str, sql: str) -> str:
    """``sql`` with the columns it does not write (fields added to the models since this
    script was written) filled with their model defaults, at its ``/*more ...*/`` marks."""
    from django.apps import apps
    from django.db import connection
    from psycopg import sql as pgsql

    model = next(m for m in apps.get_models() if m._meta.db_table == table)
    insert = re.search(r"INSERT INTO \w+ \((.*?)/\*more columns\*/\)", sql, re.S)
    assert insert is not None and "/*more values*/" in sql, table
    written = {name.strip() for name in insert.group(1).split(",")}
    columns, values = [], []
    for model_field in model._meta.concrete_fields:
        if model_field.column in written or model_field.primary_key and not model_field.has_default():
            continue  # written, or an id the database generates
        if not model_field.has_default() and not model_field.null:
            raise SystemExit(f"{table}.{model_field.column}: no default; bench_admin.py must write it")
        value = model_field.get_db_prep_save(model_field.get_default(), connection)
        columns.append(model_field.column)
        values.append(pgsql.Literal(value).as_string(connection.connection))
        print(f"    {table}.{model_field.column}: not written by this script, the model's default "
              f"{model_field.get_default()!r}", flush=True)
    more_columns = "".join(f", {column}" for column in columns)
    more_values = "".join(f", {value}" for value in values)
    return sql.replace("/*more columns*/", more_columns).replace("/*more values*/", more_values)


def drop_secondary_indexes(cursor, table: str) -> list[str]:
    """Drop the table's indexes that back no constraint; their CREATE INDEX statements."""
    cursor.execute(
        """
        SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
        FROM pg_index i
        WHERE i.indrelid = %s::regclass
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
        """,
        [table],
    )
    rows = cursor.fetchall()
    for name, _definition in rows:
        cursor.execute(f"DROP INDEX {name}")
    return [definition for _name, definition in rows]


def history_mark(runs: int, days: int) -> str:
    return f"bench_admin.py history: --runs {runs} --days {days}"


def history_present(runs: int, days: int) -> bool:
    """Whether --reuse can skip the load: the database holds the history of these options
    (the load marks the runs table with them, once complete)."""
    from django.db import connection
    from django.db.utils import OperationalError, ProgrammingError

    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT obj_description(to_regclass('django_workflows_run'), 'pg_class')")
            row = cursor.fetchone()
    except (OperationalError, ProgrammingError):
        connection.close()
        return False
    return bool(row) and row[0] == history_mark(runs, days)


def table_sizes() -> list[tuple[str, int, str]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.relname, c.reltuples::bigint, pg_size_pretty(pg_total_relation_size(c.oid))
            FROM pg_class c WHERE c.relname = ANY(%s) ORDER BY c.relname
            """,
            [list(BIG_TABLES)],
        )
        return cursor.fetchall()


# -- the functions of this process --------------------------------------------------------------


def define_functions() -> None:
    """The 10 functions of the history, as a worker defining them would (the functions page
    lists the registry; the runs list's function filter too)."""
    import django_workflows as wf

    def five_steps(ctx: wf.Context) -> None:
        for k in range(1, STEPS + 1):
            ctx.step.run(f"step-{k}", lambda k=k: {"step": k})

    for function_id, event_name, _share in FUNCTIONS:
        wf.function(id=function_id, trigger=event_name, retries=3)(five_steps)


# -- the pages ----------------------------------------------------------------------------------


@dataclass
class PageResult:
    name: str
    url: str
    status: int = 0
    times: list[float] = field(default_factory=list)  # ms per request
    sql_times: list[float] = field(default_factory=list)  # ms of SQL per request
    counts: list[int] = field(default_factory=list)
    slowest: list[float] = field(default_factory=list)  # ms of each request's slowest query
    size: int = 0
    queries: list[dict] = field(default_factory=list)  # sql, ms (median over the requests)
    explained: list[tuple[float, str, str]] = field(default_factory=list)  # (ms, sql, plan)
    findings: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def seq_scans(self) -> list[str]:
        return [finding for finding in self.findings if "Seq Scan" in finding]


def pages(sample: dict[str, str]) -> list[tuple[str, str]]:
    from django.urls import reverse

    runs = reverse("admin:django_workflows_run_changelist")
    common, rare = FUNCTIONS[0][0], FUNCTIONS[-1][0]
    rare_event = FUNCTIONS[-1][1]
    return [
        ("runs list", runs),
        (f"runs, function={common} (30 %)", f"{runs}?{urlencode({'function': common})}"),
        (f"runs, function={rare} (1 %)", f"{runs}?{urlencode({'function': rare})}"),
        ("runs, status=failed", f"{runs}?{urlencode({'status__exact': 'failed'})}"),
        ("runs, search event id", f"{runs}?{urlencode({'q': sample['event_id']})}"),
        ("runs, search run id", f"{runs}?{urlencode({'q': sample['run_id']})}"),
        ("run page (failed, 5 steps, 8 attempts)",
         reverse("admin:django_workflows_run_change", args=[sample["failed_run_id"]])),
        ("functions page", reverse("admin:django_workflows_functionstate_changelist")),
        ("events list", reverse("admin:django_workflows_event_changelist")),
        # Beyond the list: the list's own links and its other search.
        (f"runs list, last page (p={sample['last_page']})", f"{runs}?{urlencode({'p': sample['last_page']})}"),
        ("runs, queued in the last 24 h", f"{runs}?{urlencode({'queued': '24h'})}"),
        (f"runs, search event name {rare_event.split('.')[0]!r} (1 %)",
         f"{runs}?{urlencode({'q': rare_event.split('.')[0]})}"),
        (f"runs, search event name {RETIRED[1].split('.')[0]!r} (oldest 1 %)",
         f"{runs}?{urlencode({'q': RETIRED[1].split('.')[0]})}"),
        (f"runs, function={RETIRED[0]} (retired)", f"{runs}?{urlencode({'function': RETIRED[0]})}"),
    ]


def pick_samples(client) -> dict[str, str]:
    """A run and its event from the middle of the history, a failed run with 8 attempts, and
    the last page the unfiltered runs list links to."""
    from django.db import connection
    from django.urls import reverse

    from django_workflows.models import Run

    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = 'django_workflows_run'::regclass")
        total = cursor.fetchone()[0]
    run_id, event_id = Run.objects.order_by("pk").values_list("pk", "event_id")[max(0, total // 2)]
    failed = list(
        Run.objects.filter(status="failed", function_id=FUNCTIONS[0][0]).order_by("-queued_at")
        .values_list("pk", flat=True)[:200]
    )[-1]
    html = client.get(reverse("admin:django_workflows_run_changelist")).content.decode()
    last_page = max((int(n) for n in re.findall(r'href="\?p=(\d+)"', html)), default=1)
    return {"run_id": str(run_id), "event_id": str(event_id), "failed_run_id": str(failed),
            "last_page": str(last_page)}


def measure_page(client, name: str, url: str, repeat: int) -> PageResult:
    """One warm-up request, then ``repeat`` measured ones. The SQL of each statement from
    ``CaptureQueriesContext``; its time from an execute wrapper (the captured times are
    rounded to the millisecond)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    result = PageResult(name, url)
    response = client.get(url)  # warm-up: templates, the registry, the planner's caches
    per_request: list[list[float]] = []
    sqls: list[str] = []
    for _ in range(repeat):
        timings: list[float] = []

        def timed(execute, sql, params, many, context, timings=timings):
            start = time.perf_counter()
            try:
                return execute(sql, params, many, context)
            finally:
                timings.append((time.perf_counter() - start) * 1000)

        with CaptureQueriesContext(connection) as captured, connection.execute_wrapper(timed):
            start = time.perf_counter()
            response = client.get(url)
            result.times.append((time.perf_counter() - start) * 1000)
        captured_queries = captured.captured_queries
        if len(timings) != len(captured_queries):  # should not happen; the captured times then
            timings = [float(q["time"]) * 1000 for q in captured_queries]
        result.sql_times.append(sum(timings))
        result.counts.append(len(timings))
        result.slowest.append(max(timings, default=0.0))
        per_request.append(timings)
        sqls = [q["sql"] for q in captured_queries]
    # Each statement's median time over the requests (the same statements every time; if
    # not, the last request's): a one-off stall of the machine does not pick the statements.
    if all(len(timings) == len(sqls) for timings in per_request):
        ms = [statistics.median(column) for column in zip(*per_request, strict=True)]
    else:
        ms = per_request[-1]
    result.queries = [{"sql": sql, "ms": value} for sql, value in zip(sqls, ms, strict=True)]
    result.status = response.status_code
    result.size = len(response.content)
    return result


NODE = re.compile(r"^\s*(?:->\s*)?(?P<node>[A-Z][\w ]+?)(?: using \w+)? on (?P<table>\w+)")
ACTUAL = re.compile(r"actual time=[\d.]+\.\.[\d.]+ rows=(\d+) loops=(\d+)")
REMOVED = re.compile(r"Rows Removed by Filter: (\d+)")
# A node that reads a big table and throws away this many rows is a scan in disguise; one
# that returns this many rows to its parent reads a good part of the table.
REMOVED_FLAG = 10_000
READ_FLAG = 100_000


def plan_findings(plan: str) -> list[str]:
    """Sequential scans of the big tables, nodes on them that discard many rows by filter,
    and nodes on them that return many rows."""
    findings: list[str] = []
    node: tuple[str, str] | None = None
    loops = 1
    for number, line in enumerate(plan.splitlines()):
        if number == 0 or "->" in line:  # a plan node: the following detail lines are its own
            match = NODE.match(line)
            actual = ACTUAL.search(line)
            loops = int(actual.group(2)) if actual else 1
            node = (match.group("node"), match.group("table")) if match else None
            if node is None or node[1] not in BIG_TABLES:
                continue
            rows = int(actual.group(1)) * loops if actual else None
            if "Seq Scan" in node[0]:
                read = f"{rows:,} rows returned" if rows is not None else "never executed"
                findings.append(f"{node[0]} on {node[1]} ({read})")
            elif rows is not None and rows >= READ_FLAG:
                findings.append(f"{node[0]} on {node[1]} returned {rows:,} rows")
            continue
        removed = REMOVED.search(line)
        if (removed and node and node[1] in BIG_TABLES and "Seq Scan" not in node[0]  # flagged already
                and int(removed.group(1)) * loops >= REMOVED_FLAG):
            findings.append(f"{node[0]} on {node[1]} discarded {int(removed.group(1)) * loops:,} rows by filter")
    return findings


def explain(result: PageResult, top: int) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) the page's ``top`` slowest SELECTs; plain EXPLAIN the rest,
    to find a planned sequential scan in any of them."""
    from django.db import connection

    selects = [
        (q["ms"], q["sql"]) for q in result.queries
        if q["sql"].lstrip().upper().startswith(("SELECT", "WITH"))
        and not re.search(r'FROM "(django_session|auth_user)"', q["sql"])
    ]
    selects.sort(key=lambda item: -item[0])
    with connection.cursor() as cursor:
        for ms, sql in selects[:top]:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            result.explained.append((ms, sql, plan))
            result.findings.extend(plan_findings(plan))
        for _ms, sql in selects[top:]:
            cursor.execute("EXPLAIN " + sql)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            result.findings.extend(
                finding.replace("(never executed)", "(planned)") for finding in plan_findings(plan)
                if "Seq Scan" in finding
            )


def print_page(result: PageResult, slow_ms: float) -> None:
    print(f"\n=== {result.name}: GET {result.url}")
    if result.error:
        print(f"    FAILED: {result.error}")
        return
    print(f"    status {result.status}, median {result.median:.1f} ms "
          f"(min {min(result.times):.1f}, max {max(result.times):.1f}), "
          f"{statistics.median(result.counts):.0f} queries, SQL {statistics.median(result.sql_times):.1f} ms, "
          f"{result.size / 1024:.1f} KiB")
    print("    statements, median ms: " + ", ".join(f"{q['ms']:.2f}" for q in result.queries))
    for ms, sql, plan in result.explained:
        print(f"\n  -- {ms:.2f} ms in the request (median):")
        print("  " + (sql if len(sql) <= 2000 else sql[:2000] + " ..."))
        print("  " + plan.replace("\n", "\n  "))
    for finding in result.findings:
        what = "SEQUENTIAL SCAN of a big table" if "Seq Scan" in finding else "big read"
        print(f"\n  !!! {what}: {finding} !!!")
    if result.median > slow_ms:
        print(f"\n  !!! SLOW: median {result.median:.0f} ms > {slow_ms:.0f} ms !!!")


def print_table(results: list[PageResult], repeat: int, slow_ms: float) -> None:
    columns = [("page", 52), ("status", 6), ("median ms", 9), ("SQL ms", 7), ("queries", 7),
               ("slowest q ms", 12), ("KiB", 5), ("seq scan / big read", 40)]
    print(f"\nmedians of {repeat} requests after one warm-up; SQL ms: the statements' time in the "
          "request (the rest is Python: the admin, templates, the test client)")
    print(" | ".join(f"{name:<{width}}" for name, width in columns))
    print("-|-".join("-" * width for _, width in columns))
    for r in results:
        if r.error:
            print(f"{r.name:<52} | FAILED: {r.error}")
            continue
        values = [
            r.name, str(r.status), f"{r.median:.1f}", f"{statistics.median(r.sql_times):.1f}",
            f"{statistics.median(r.counts):.0f}", f"{statistics.median(r.slowest):.1f}",
            f"{r.size / 1024:.0f}", "; ".join(r.findings) or "none",
        ]
        print(" | ".join(f"{value:<{width}}" for value, (_, width) in zip(values, columns, strict=True)))
    slow = [r.name for r in results if r.median > slow_ms]
    scans = [r.name for r in results if r.seq_scans]
    failed = [r.name for r in results if r.status != 200]
    print(f"\ntarget: every page under {slow_ms:.0f} ms: {bench_engine.verdict(not slow)}"
          + (f" (slow: {', '.join(slow)})" if slow else ""))
    print(f"target: no sequential scan of runs, steps, attempts or events: {bench_engine.verdict(not scans)}"
          + (f" (in: {', '.join(scans)})" if scans else ""))
    if failed:
        print(f"!!! pages not answered with 200: {', '.join(failed)}")


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30, help="the runs are queued over this many days, up to now")
    parser.add_argument("--repeat", type=int, default=5, help="measured requests per page (after one warm-up)")
    parser.add_argument("--explain", type=int, default=2, help="EXPLAIN ANALYZE this many slowest SELECTs per page")
    parser.add_argument("--slow-ms", type=float, default=500.0)
    parser.add_argument("--reuse", action="store_true",
                        help="keep the database if a complete load with the same --runs and --days made it")
    args = parser.parse_args()
    started = time.monotonic()

    bench_engine.setup_django(args.database_url)
    reuse = args.reuse and history_present(args.runs, args.days)
    if not reuse:
        from django.db import connection

        connection.close()
        bench_engine.recreate_database(args.database_url)
        bench_engine.migrate()

    print("\n".join(bench_engine.machine_description()))
    print(bench_engine.background_load_line())
    print(f"compares: the admin's pages on {args.runs:,} runs x {STEPS} steps against {args.slow_ms:.0f} ms "
          f"and no sequential scan of a big table; medians of {args.repeat} requests", flush=True)

    if reuse:
        progress("reusing the history already in the database (--reuse)", started)
    else:
        progress(f"loading {args.runs:,} runs over {args.days} days ...", started)
        load_history(args.runs, args.days, started)
    for table, rows, size in table_sizes():
        print(f"    {table:<26} {rows:>12,} rows  {size}")

    from django.contrib.auth import get_user_model
    from django.test import Client

    define_functions()
    user_model = get_user_model()
    user = user_model.objects.filter(username="bench-admin").first() or user_model.objects.create_superuser(
        "bench-admin", "bench@example.com", "bench-admin"
    )
    client = Client()
    client.force_login(user)
    sample = pick_samples(client)
    progress(f"samples: run {sample['run_id']}, event {sample['event_id']}, failed run {sample['failed_run_id']}",
             started)

    results = []
    for name, url in pages(sample):
        try:
            result = measure_page(client, name, url, args.repeat)
            explain(result, args.explain)
        except Exception as exc:  # a broken page: report it, measure the others
            traceback.print_exc()
            result = PageResult(name, url, error=f"{type(exc).__name__}: {exc}")
            progress(f"{name}: FAILED ({result.error})", started)
        else:
            progress(f"{name}: {result.status}, {result.median:.1f} ms", started)
        results.append(result)
    for result in results:
        print_page(result, args.slow_ms)
    print()
    print("\n".join(bench_engine.machine_description()))
    print_table(results, args.repeat, args.slow_ms)
    print(f"\ntotal time {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
