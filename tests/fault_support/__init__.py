"""Support for tests/test_faults.py: fault injection against real ``runworkers`` processes.

The fault tests run on a second PostgreSQL cluster of their own (``cluster.Cluster``), on
another port, created and removed by the tests, so that stopping it, killing its backends
or leaving it in crash recovery never disturbs the rest of the suite.

* ``cluster``: the throwaway cluster (initdb, start, stop ``fast``/``immediate``, an
  outage of N seconds, terminating the backends of a database repeatedly).
* ``pool``: the worker processes (start, SIGKILL and replace, SIGSTOP/SIGCONT, logs).
* ``worker``: ``python -m fault_support.worker``, a runworkers process that knows the
  test function and may run with a skewed clock (``FAULT_CLOCK_SKEW_SECONDS``).
* ``workflows``: the test function, imported only by the worker processes.
* ``send``: ``python -m fault_support.send``, sends the events that start the runs.
* ``checks``: reads the results with plain psycopg and checks what every test must show.

Importing this package registers nothing and imports neither Django nor the engine.
"""

# Raw table the step bodies write to; created next to the migrated tables by the tests.
EXEC_TABLE = "fault_exec"  # one row per execution of a step body, written before the body's work

EVENT = "faults.steps"  # data: {"delay": s per step body, "gap": s between steps, "sleep": "2s"}
FUNCTION = "fault-steps"
STEPS = ("step-0", "step-1", "step-2")
SLEEP_STEP = "nap"  # the sleep between step-0 and step-1 of runs sent with data["sleep"]

# How long a step body keeps trying to record its execution while the database is away.
RECORD_PATIENCE_SECONDS = 120.0

EXEC_TABLE_DDL = f"""
CREATE TABLE {EXEC_TABLE} (
    id bigserial PRIMARY KEY,
    token text NOT NULL UNIQUE,          -- one per execution: a retried INSERT counts once
    run_id text NOT NULL,
    step_id text NOT NULL,
    pid int NOT NULL,
    started double precision NOT NULL,   -- the worker's real clock (time.time()) as the body began
    finished double precision,           -- ... as the body's work ended; NULL if it never did
    at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""
