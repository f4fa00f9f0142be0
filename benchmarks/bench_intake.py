"""Event intake per second with 0 and with 100,000 runs waiting on ``match``.

    .venv/bin/python benchmarks/bench_intake.py [--waiters 100000] [--events 2000] [--repeats 3]

Uses its own PostgreSQL database (``django_workflows_bench_intake``, recreated each time,
with bench_engine.py's helpers).
The waiting runs are real rows (a run, its waiting step, and its ``Waiter`` in the match
index), written in bulk with SQL so that setting up 100,000 takes seconds; the events
sent are of the waited-for name, so every one is looked up against the index. Each
measurement takes the events in batches of 50 through the same code a worker runs
(claim, then one intake transaction per batch), in this process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_engine  # noqa: E402

DB_NAME = "django_workflows_bench_intake"


def setup(url: str) -> None:
    """A fresh benchmark database, with bench_engine.py's helpers."""
    bench_engine.recreate_database(url)
    bench_engine.setup_django(url)
    bench_engine.migrate()


def add_waiters(count: int) -> None:
    """``count`` runs of 'bench-waiter', each waiting for order.paid with its own order id."""
    from django.db import connection

    import django_workflows as wf

    @wf.function(id="bench-waiter", trigger="order.created")
    def bench_waiter(ctx):  # the shape of the waiting runs inserted below
        ctx.step.wait_for_event("wait-paid", event="order.paid", match="data.order_id", timeout="7d")

    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO django_workflows_run (id, function_id, status, batch_event_ids, attempts,
                parent_step_id, queued_at, started_at)
            SELECT md5('run' || n)::uuid, 'bench-waiter', 'running', '[]', 0, '', now(), now()
            FROM generate_series(1, %s) AS n
            """,
            [count],
        )
        cursor.execute(
            """
            INSERT INTO django_workflows_waiter (kind, run_id, step_id, event_name, match_field,
                match_value, if_exp, trigger, created_at, expires_at)
            SELECT 'wait', md5('run' || n)::uuid, 'wait-paid', 'order.paid', 'data.order_id',
                '"order-' || n || '"', '', jsonb_build_object('data', jsonb_build_object('order_id', 'order-' || n)),
                now() - interval '1 minute', now() + interval '7 days'
            FROM generate_series(1, %s) AS n
            """,
            [count],
        )
        cursor.execute(
            "INSERT INTO django_workflows_waitkey (event_name, match_field) VALUES ('order.paid', 'data.order_id') "
            "ON CONFLICT DO NOTHING"
        )
        cursor.execute("ANALYZE")


def measure_intake(events: int, name: str, batch: int = 50) -> float:
    """Send ``events`` events called ``name`` (matching no waiter) and time their intake."""
    import django_workflows as wf
    from django_workflows.engine import queue
    from django_workflows.engine.intake import process_events

    wf.send([wf.Event(name=name, data={"order_id": f"other-{n}"}) for n in range(events)])
    started = time.perf_counter()
    done = 0
    while True:
        items = queue.claim("bench", batch)
        if not items:
            break
        process_events(items, db="default")
        done += len(items)
    elapsed = time.perf_counter() - started
    assert done == events, (done, events)
    return events / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=f"postgres://postgres@127.0.0.1:5432/{DB_NAME}")
    parser.add_argument("--waiters", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    setup(args.url)
    print("\n".join(bench_engine.machine_description()))
    print(f"comparison: event intake/s of an event that 0 runs wait for vs one that {args.waiters:,} "
          f"runs wait for on match (median of {args.repeats}, {args.events:,} events each, interleaved "
          "in one database so that drift in the machine's load hits both)")
    started = time.perf_counter()
    add_waiters(args.waiters)
    print(f"inserted {args.waiters:,} waiting runs in {time.perf_counter() - started:.1f}s")
    measure_intake(200, "order.shipped")  # warm up
    measure_intake(200, "order.paid")
    empty, loaded = [], []
    for _ in range(args.repeats):
        empty.append(measure_intake(args.events, "order.shipped"))  # nobody waits for it
        loaded.append(measure_intake(args.events, "order.paid"))  # 100,000 runs wait for it
    a, b = statistics.median(empty), statistics.median(loaded)
    print()
    print(f"{'waiting runs':>14} | {'events/s (median)':>18} | runs")
    print(f"{0:>14,} | {a:>18,.0f} | {', '.join(f'{x:,.0f}' for x in empty)}")
    print(f"{args.waiters:>14,} | {b:>18,.0f} | {', '.join(f'{x:,.0f}' for x in loaded)}")
    print(f"\nratio (with waiters / without): {b / a:.2f}  (target: >= 0.80)")


if __name__ == "__main__":
    main()
