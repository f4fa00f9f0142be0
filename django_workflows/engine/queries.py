"""The hot path's SQL, one named statement per operation.

Claim, heartbeat, checkpoint, end of a run and loading a run: the statements every
step and every run go through, kept together and readable as SQL (in the style of
River's and Procrastinate's query files). Writes made while a worker holds an item are
fenced by its ``lease_token``: a stale worker matches no row and writes nothing.

Parameters are named (``%(name)s``). The callers are ``queue.py`` (claim, heartbeat),
``store.py`` (checkpoint, load) and ``lifecycle.end_run`` (the one way a run ends).
"""

from __future__ import annotations

from typing import Any

from django.db import connections

from .. import conf, jsonenc
from ..models import Attempt, Event, FlowSlot, QueueItem, Run, Step, Waiter

QUEUE = QueueItem._meta.db_table
RUN = Run._meta.db_table
STEP = Step._meta.db_table
EVENT = Event._meta.db_table
WAITER = Waiter._meta.db_table
FLOW_SLOT = FlowSlot._meta.db_table
ATTEMPT = Attempt._meta.db_table

FINISHED = "('completed', 'failed', 'cancelled')"

try:
    import psycopg
except ImportError:  # projects on SQLite need no libpq
    psycopg = None

if psycopg is not None:

    class PreparedCursor(psycopg.Cursor):
        """Server-side binding, every statement prepared (Django turns psycopg's automatic
        preparation off, and its client-side cursor sends each statement as new text)."""

        def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None,
                    binary: bool | None = None) -> Any:
            return super().execute(query, params, prepare=True, binary=binary)

# Advisory-lock class of concurrency lanes ("WL"); event names use 0x5746 (lifecycle.py).
LANE_LOCK_CLASS = 0x574C


def jsonb(value: Any) -> str | None:
    return None if value is None else jsonenc.dumps(value)


def cursor(db: str) -> Any:
    """A cursor for this module's statements on PostgreSQL: prepared on the server (parsed
    and planned once per connection: planning the claim cost more than running it) unless
    ``PREPARED_STATEMENTS`` is off. Django's cursor wrapper still maps errors and logs queries.
    """
    connection = connections[db]
    # While Django logs queries (DEBUG, assertNumQueries) the statements go as text: the log
    # of a prepared statement's execution would have no SQL in it.
    if not conf.get("PREPARED_STATEMENTS") or connection.queries_logged:
        return connection.cursor()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        _use_generic_plans(connection)
        # What connection.cursor() would give, with a cursor that prepares.
        return connection.make_cursor(PreparedCursor(connection.connection))


def _use_generic_plans(connection: Any) -> None:
    """Have this connection's prepared statements keep one plan. PostgreSQL's own choice
    (``plan_cache_mode = auto``) kept re-planning them for every claim and step: each plan
    cost as much as running the statement. Every one of them reaches its rows through
    indexes whatever the parameters, so a generic plan is as good. Only this module's
    statements are prepared (Django's cursors bind on the client), unless the project has
    turned ``server_side_binding`` on: then its own queries are left to ``auto``."""
    raw = connection.connection
    if getattr(raw, "_workflows_generic_plans", False) or connection.in_atomic_block:
        return  # (inside a transaction a rollback would undo the SET: next time)
    if not connection.settings_dict.get("OPTIONS", {}).get("server_side_binding"):
        # Django turns psycopg's preparation off (prepare_threshold None), which would
        # ignore prepare=True too; its client-side cursors never prepare whatever it is.
        raw.prepare_threshold = 5
        # A generic plan's cost is estimated without the parameters (a third of a million
        # queued items "due"): with the default jit_above_cost PostgreSQL would compile the
        # claim with LLVM at every execution (0.8 s with 10^6 queued items, measured).
        raw.execute("SET plan_cache_mode = force_generic_plan")
        raw.execute("SET jit = off")
    raw._workflows_generic_plans = True


def fetch(db: str, sql: str, params: dict) -> list[tuple]:
    """Run one of this module's statements; its rows."""
    with cursor(db) as c:
        c.execute(sql, params)
        return c.fetchall()


def columns(model: Any, *, skip: tuple[str, ...] = ()) -> str:
    return ", ".join(f.column for f in model._meta.concrete_fields if f.column not in skip)


# -- events ---------------------------------------------------------------------------------

# Intake: the events of a claimed batch (every column, for ``Event.from_db``).
LOAD_EVENTS_POSTGRES = f"SELECT {columns(Event)} FROM {EVENT} WHERE id = ANY(%(ids)s::uuid[])"

# -- new runs -------------------------------------------------------------------------------

# PostgreSQL: admission's new runs and their queue items in one statement. ``runs`` and
# ``items`` are JSON arrays of rows keyed by column name (``admission.insert_runs``), typed
# by the tables' own row types, so a column added to a model needs no change here. The
# items' foreign key to their run is checked at commit (Django's constraints are deferred).
INSERT_RUNS_POSTGRES = f"""
WITH runs AS (
    INSERT INTO {RUN} SELECT * FROM jsonb_populate_recordset(NULL::{RUN}, %(runs)s::jsonb)
)
INSERT INTO {QUEUE} ({columns(QueueItem, skip=("id",))})
SELECT {columns(QueueItem, skip=("id",))} FROM jsonb_populate_recordset(NULL::{QUEUE}, %(items)s::jsonb)
RETURNING id, run_id
"""

# -- claim ----------------------------------------------------------------------------------
#
# Fair claiming. A flood of one function's events, a fan-out of 100,000 runs, or a backlog
# held back by a concurrency limit must not delay other work. Work is grouped in lanes
# (a function, or a function's concurrency key value; events are lane ''), and a claim
# takes, in this order: lapsed leases (a dead worker's runs); then the lanes' due items in
# turns (each lane's oldest first, then each one's second ...). A skip scan over the
# (lane, due_at, id) index lists the lanes, so the cost grows with the number of lanes,
# not with the backlog. Lanes with a limit have an index of their own (a second skip
# scan), so 100,000 items held back by a limit cost the claim of other work one probe.
#
# Lanes with a concurrency limit are not claimed here: this statement only reports the
# ones that look like they have a free slot (``limited`` rows, a hint from this
# statement's snapshot), and ``CLAIM_LIMITED`` claims them under a lock. With
# ``reserve``, this statement leaves a slot per such lane (up to half) for that claim, so
# that unlimited work cannot starve limited work. The CTE fences the LIMIT; rows locked
# but not chosen are unlocked when the statement ends (it runs in autocommit).
#
# A per-user key makes thousands of limited lanes, most of them full or asleep: a claim
# looks at ``scan`` of them only, after the lane ``after`` where this worker's last look
# ended (the 'scan' row reports it), and so goes round all of them in turns. The UPDATE
# takes its rows by primary key (``= ANY(ARRAY(...))``): joined to the CTE, the planner
# would misjudge the CTE's size and read the whole queue when it holds a few thousand.
CLAIM_POSTGRES = f"""
WITH RECURSIVE lanes(lane) AS (
    (SELECT lane FROM {QUEUE} WHERE due_at IS NOT NULL AND lane_limit = 0 ORDER BY lane LIMIT 1)
    UNION ALL
    SELECT (SELECT q.lane FROM {QUEUE} q
            WHERE q.due_at IS NOT NULL AND q.lane_limit = 0 AND q.lane > lanes.lane ORDER BY q.lane LIMIT 1)
    FROM lanes WHERE lanes.lane IS NOT NULL
), limited_lanes(lane, depth) AS (
    (SELECT lane, 1 FROM {QUEUE} WHERE due_at IS NOT NULL AND lane_limit > 0 AND lane > %(after)s
     ORDER BY lane LIMIT 1)
    UNION ALL
    SELECT (SELECT q.lane FROM {QUEUE} q
            WHERE q.due_at IS NOT NULL AND q.lane_limit > 0 AND q.lane > limited_lanes.lane ORDER BY q.lane LIMIT 1),
           limited_lanes.depth + 1
    FROM limited_lanes WHERE limited_lanes.lane IS NOT NULL AND limited_lanes.depth < %(scan)s
), limited AS (
    SELECT l.lane, h.lane_limit, h.lane2 FROM limited_lanes l CROSS JOIN LATERAL (
        SELECT lane_limit, lane2 FROM {QUEUE}
        WHERE lane = l.lane AND due_at IS NOT NULL AND lane_limit > 0 AND due_at <= %(now)s AND worker_id = ''
        ORDER BY due_at, id LIMIT 1
    ) h
    WHERE l.lane IS NOT NULL
      AND (SELECT count(*) FROM {QUEUE} a WHERE a.lane = l.lane AND a.worker_id <> '') < h.lane_limit
), lapsed AS (
    SELECT id, due_at FROM {QUEUE}
    WHERE due_at IS NOT NULL AND due_at <= %(now)s AND worker_id <> ''
    ORDER BY due_at LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), per_lane AS (
    SELECT l.lane, c.id, c.due_at FROM lanes l CROSS JOIN LATERAL (
        SELECT id, due_at FROM {QUEUE}
        WHERE lane = l.lane AND due_at IS NOT NULL AND lane_limit = 0 AND due_at <= %(now)s AND worker_id = ''
        ORDER BY due_at, id LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) c
    WHERE l.lane IS NOT NULL
), turns AS (
    SELECT id, due_at, 0 AS turn FROM lapsed
    UNION ALL
    SELECT id, due_at, row_number() OVER (PARTITION BY lane ORDER BY due_at, id) FROM per_lane
), chosen AS (
    SELECT id FROM turns ORDER BY turn, due_at, id
    LIMIT %(limit)s - CASE WHEN %(reserve)s THEN LEAST((SELECT count(*) FROM limited), (%(limit)s + 1) / 2) ELSE 0 END
), claimed AS (
    UPDATE {QUEUE} AS q
    SET worker_id = %(worker)s, due_at = %(lease_end)s, lease_token = q.lease_token + 1, claims = q.claims + 1
    WHERE q.id = ANY(ARRAY(SELECT id FROM chosen))
    RETURNING q.id, q.kind, q.run_id, q.event_id, q.step_id, q.lease_token, q.claims
)
SELECT id, kind, run_id, event_id, step_id, lease_token, claims, NULL, NULL, NULL FROM claimed
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, lane, lane_limit, lane2 FROM limited
UNION ALL
SELECT NULL, 'scan', NULL, NULL, NULL, NULL, NULL, max(lane), count(lane)::int, NULL FROM limited_lanes
"""

# More events for an intake batch (PostgreSQL): a claim gives a worker at most one item
# per free thread, but a batch of events costs one intake transaction however many it
# holds. With a backlog of events, a worker whose claim brought events takes up to
# ``limit`` more due ones, the oldest first, through the events' lane of the claim index.
CLAIM_EVENTS_POSTGRES = f"""
UPDATE {QUEUE} AS q
SET worker_id = %(worker)s, due_at = %(lease_end)s, lease_token = q.lease_token + 1, claims = q.claims + 1
WHERE q.id = ANY(ARRAY(
    SELECT id FROM {QUEUE}
    WHERE lane = '' AND due_at IS NOT NULL AND lane_limit = 0 AND due_at <= %(now)s AND worker_id = ''
      AND kind = 'event'
    ORDER BY due_at, id LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
))
RETURNING q.id, q.kind, q.run_id, q.event_id, q.step_id, q.lease_token, q.claims
"""

# Limited lanes, step 1 (in a transaction): lock the lanes (and second keys) to claim. A
# lane another worker is claiming right now is skipped, never waited for.
LOCK_LANES_POSTGRES = f"""
SELECT key FROM unnest(%(keys)s::text[]) AS k(key)
WHERE pg_try_advisory_xact_lock({LANE_LOCK_CLASS}, hashtext(key))
"""

# Limited lanes, step 2 (same transaction, so a new snapshot taken after the locks: every
# claim of these lanes before ours has committed and is counted). Each lane gets at most
# its limit minus its held items; items with a second key only while that key has room.
CLAIM_LIMITED_POSTGRES = f"""
WITH lanes AS (
    SELECT * FROM unnest(%(lanes)s::text[], %(limits)s::int[]) AS l(lane, lane_limit)
), used AS (
    SELECT lane, count(*) AS n FROM {QUEUE} WHERE worker_id <> '' AND lane = ANY(%(lanes)s::text[]) GROUP BY lane
), used2 AS (
    SELECT lane2, count(*) AS n FROM {QUEUE} WHERE worker_id <> '' AND lane2 = ANY(%(lanes2)s::text[]) GROUP BY lane2
), candidates AS (
    SELECT c.* FROM lanes l CROSS JOIN LATERAL (
        SELECT id, due_at, lane, lane2, lane2_limit FROM {QUEUE}
        WHERE lane = l.lane AND due_at IS NOT NULL AND lane_limit > 0 AND due_at <= %(now)s AND worker_id = ''
          AND (lane2 = '' OR lane2 = ANY(%(lanes2)s::text[]))
        ORDER BY due_at, id
        LIMIT GREATEST(l.lane_limit - COALESCE((SELECT n FROM used WHERE used.lane = l.lane), 0), 0)
        FOR UPDATE SKIP LOCKED
    ) c
), ranked AS (
    SELECT c.*, row_number() OVER (PARTITION BY lane ORDER BY due_at, id) AS turn,
           row_number() OVER (PARTITION BY lane2 ORDER BY due_at, id) AS n2
    FROM candidates c
), chosen AS (
    SELECT id FROM ranked r
    WHERE r.lane2 = '' OR r.n2 <= r.lane2_limit - COALESCE((SELECT n FROM used2 WHERE used2.lane2 = r.lane2), 0)
    ORDER BY turn, due_at, id LIMIT %(limit)s
)
UPDATE {QUEUE} AS q
SET worker_id = %(worker)s, due_at = %(lease_end)s, lease_token = q.lease_token + 1, claims = q.claims + 1
WHERE q.id = ANY(ARRAY(SELECT id FROM chosen))
RETURNING q.id, q.kind, q.run_id, q.event_id, q.step_id, q.lease_token, q.claims
"""

# SQLite has one writer at a time, so one UPDATE ... WHERE id IN (...) is the
# compare-and-set, concurrency limits included: no other connection can claim in between.
# Same order as on PostgreSQL (SQLite is for development: windows over the due items).
CLAIM_SQLITE = f"""
UPDATE {QUEUE}
SET worker_id = %(worker)s, due_at = %(lease_end)s, lease_token = lease_token + 1, claims = claims + 1
WHERE id IN (
    WITH held AS (
        SELECT lane, count(*) AS n FROM {QUEUE} WHERE worker_id <> '' GROUP BY lane
    ), held2 AS (
        SELECT lane2, count(*) AS n FROM {QUEUE} WHERE worker_id <> '' AND lane2 <> '' GROUP BY lane2
    ), due AS (
        SELECT id, due_at, lane, lane_limit, lane2, lane2_limit, worker_id <> '' AS lapsed,
               row_number() OVER (PARTITION BY lane, worker_id <> '' ORDER BY due_at, id) AS turn
        FROM {QUEUE} WHERE due_at IS NOT NULL AND due_at <= %(now)s
    ), allowed AS (
        SELECT d.*, row_number() OVER (PARTITION BY d.lane2 ORDER BY d.turn, d.due_at, d.id) AS n2 FROM due d
        WHERE d.lapsed OR d.lane_limit = 0
           OR d.turn <= d.lane_limit - COALESCE((SELECT n FROM held WHERE held.lane = d.lane), 0)
    )
    SELECT id FROM allowed a
    WHERE a.lapsed OR a.lane2 = ''
       OR a.n2 <= a.lane2_limit - COALESCE((SELECT n FROM held2 WHERE held2.lane2 = a.lane2), 0)
    ORDER BY CASE WHEN a.lapsed THEN 0 ELSE a.turn END, a.due_at, a.id
    LIMIT %(limit)s
)
RETURNING id, kind, run_id, event_id, step_id, lease_token, claims
"""

# -- heartbeat ------------------------------------------------------------------------------

# Extend the leases a worker still holds; returns their ids (the others were taken over).
HEARTBEAT = f"UPDATE {QUEUE} SET due_at = %s WHERE worker_id = %s AND id IN ({{ids}}) RETURNING id"

# -- checkpoint -----------------------------------------------------------------------------

# PostgreSQL: the checkpoints of one or many runs' steps in one statement (``group_commit``
# gathers those of a process's threads), in autocommit its own transaction. ``rows`` is a
# JSON array, one object per step (timestamps as ISO text). Each row's UPDATE of its queue
# item takes the item's row lock and matches only while that worker's lease token is
# current: a row whose lease was lost writes nothing, and is missing from the (run_id,
# step_id) pairs returned. The attempt that ended is appended to the attempt history by
# the same statement (when the step's code ran).
RECORD_STEPS_POSTGRES = f"""
WITH input AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS i(
        item bigint, token bigint, run uuid, step_id text, kind text, status text, output jsonb, error jsonb,
        attempts integer, started_at timestamptz, ended_at timestamptz, scheduled_at timestamptz,
        attempt_started_at timestamptz, worker text)
), lease AS (
    UPDATE {QUEUE} q SET claims = 0
    WHERE q.id = ANY(ARRAY(SELECT item FROM input)) AND q.lease_token = (SELECT token FROM input WHERE item = q.id LIMIT 1)
    RETURNING q.id
), held AS (
    SELECT * FROM input WHERE item IN (SELECT id FROM lease)
), attempt AS (
    INSERT INTO {ATTEMPT} (run_id, step_id, number, started_at, ended_at, outcome, error, worker_id)
    SELECT run, step_id, attempts, attempt_started_at, ended_at, status, error, worker
    FROM held WHERE attempt_started_at IS NOT NULL
)
INSERT INTO {STEP} (run_id, step_id, kind, status, output, error, attempts, started_at, ended_at, scheduled_at)
SELECT run, step_id, kind, status, output, error, attempts, started_at, ended_at, scheduled_at FROM held
ON CONFLICT (run_id, step_id) DO UPDATE SET
    kind = EXCLUDED.kind, status = EXCLUDED.status, output = EXCLUDED.output, error = EXCLUDED.error,
    attempts = EXCLUDED.attempts, started_at = EXCLUDED.started_at, ended_at = EXCLUDED.ended_at,
    scheduled_at = EXCLUDED.scheduled_at
RETURNING run_id, step_id
"""

# (The batch statements reach rows by primary key, ``= ANY(ARRAY(...))``: prepared, they
# run a generic plan that must not depend on how big the tables were when it was made.)

# -- the end of a run -----------------------------------------------------------------------
#
# lifecycle.end_run: the run gets its status and lets go of what it held: its queue items
# (its concurrency slots with them), its waiters, and its singleton, debounce and batch
# slots. END_HELD_RUNS does it only while the worker holds the item (the run finished),
# for one or many runs (``group_commit`` gathers the ends of a process's threads); END_RUN
# unconditionally (a cancel). Both do nothing to a run that has already ended.
_END_EFFECTS = f"""
), other_items AS (
    DELETE FROM {QUEUE} WHERE run_id = ANY(ARRAY(SELECT id FROM ended))
), waiters AS (
    DELETE FROM {WAITER} WHERE run_id = ANY(ARRAY(SELECT id FROM ended))
), slots AS (
    DELETE FROM {FLOW_SLOT} WHERE run_id = ANY(ARRAY(SELECT id FROM ended)) AND kind IN ('singleton', 'debounce', 'batch')
)"""

# ``rows``: a JSON array of {item, token, run, status, output, error, now} (``run`` is
# the caller's, for matching the ids returned). Returns the ids of
# the runs it ended: a row whose lease was lost ends nothing.
END_HELD_RUNS = f"""
WITH input AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS i(
        item bigint, token bigint, run uuid, status text, output jsonb, error jsonb, now timestamptz)
), lease AS (
    DELETE FROM {QUEUE} q
    WHERE q.id = ANY(ARRAY(SELECT item FROM input)) AND q.lease_token = (SELECT token FROM input WHERE item = q.id LIMIT 1)
    RETURNING q.run_id
), ended AS (
    UPDATE {RUN} r SET status = i.status, output = i.output, error = i.error, ended_at = i.now FROM input i
    WHERE r.id = ANY(ARRAY(SELECT run_id FROM lease)) AND i.run = r.id AND r.status NOT IN {FINISHED}
    RETURNING r.id
{_END_EFFECTS}
SELECT id FROM ended
"""

END_RUN = f"""
WITH ended AS (
    UPDATE {RUN} SET status = %(status)s, output = %(output)s::jsonb, error = %(error)s::jsonb, ended_at = %(now)s
    WHERE id = %(run)s AND status NOT IN {FINISHED} RETURNING id
{_END_EFFECTS}
SELECT count(*) FROM ended
"""

# -- loading a run --------------------------------------------------------------------------

# PostgreSQL: the run, its trigger event and its recorded steps in one round trip; a
# queued run is marked running by the same statement (the SELECT sees the row as it was).
LOAD_RUN_POSTGRES = f"""
WITH started AS (
    UPDATE {RUN} SET status = 'running', started_at = %(now)s WHERE id = %(run)s AND status = 'queued' RETURNING id
)
SELECT r.function_id, r.status, r.attempts, r.queued_at, r.started_at, r.parent_run_id, r.parent_step_id,
       r.batch_event_ids, r.event_id, e.name, e.data, e.ts, e.received_at, e.dedup_id,
       r.status_detail, r.held_since,
       (SELECT json_agg(json_build_object(
            'step_id', s.step_id, 'kind', s.kind, 'status', s.status, 'output', s.output, 'error', s.error,
            'attempts', s.attempts, 'started_at', s.started_at, 'ended_at', s.ended_at,
            'scheduled_at', s.scheduled_at) ORDER BY s.id)
        FROM {STEP} s WHERE s.run_id = r.id)
FROM {RUN} r LEFT JOIN {EVENT} e ON e.id = r.event_id
WHERE r.id = %(run)s
"""
