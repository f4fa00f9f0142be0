"""Claim cost with an empty queue and with 100,000 items queued (issue 7 item 9: fair claims).

    .venv/bin/python benchmarks/bench_claim.py [--backlog 100000] [--claims 2000] [--repeats 3]

Uses its own PostgreSQL database (``django_workflows_bench_claim``, recreated each time,
with bench_engine.py's helpers). Each measurement claims 8 items at a time, as a worker
with 8 free threads does, and puts them back (one more statement), in this process, for
``--claims`` claims; it reports the median claim time. The queue holds 200 due items of
each of 5 functions, plus, for the backlog figures, either ``--backlog`` due items of one
more function (a flood) or ``--backlog`` items due in a week (sleeping runs). The fair
claim takes turns between the functions with a skip scan over an index: its cost should
grow with the number of functions, not with the backlog.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_engine  # noqa: E402

DB_NAME = "django_workflows_bench_claim"


def fill(count: int, function_id: str, due_sql: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO django_workflows_queue (kind, function_id, step_id, due_at, worker_id,
                lease_token, claims, wake, lane, lane_limit, lane2, lane2_limit)
            SELECT 'run', %s, '', {due_sql}, '', 0, 0, false, %s, 0, '', 0 FROM generate_series(1, %s)
            """,
            [function_id, function_id, count],
        )
        cursor.execute("ANALYZE django_workflows_queue")


def clear() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE django_workflows_queue")


def measure(claims: int) -> float:
    """Median milliseconds per claim of 8 (the put-back is not counted)."""
    from django_workflows.engine import queue

    times = []
    for _ in range(claims):
        start = time.perf_counter()
        items = queue.claim("bench", 8)
        times.append(time.perf_counter() - start)
        queue.release("bench", [item.id for item in items])
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--claims", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--url", default=f"postgres://postgres@127.0.0.1:5432/{DB_NAME}")
    args = parser.parse_args()
    bench_engine.recreate_database(args.url)
    bench_engine.setup_django(args.url)
    bench_engine.migrate()
    scenarios = {
        "5 functions, 1,000 due": [],
        f"+ {args.backlog:,} due of one function (a flood)": [(args.backlog, "flood", "now() - interval '1 hour'")],
        f"+ {args.backlog:,} sleeping (due in a week)": [(args.backlog, "sleepers", "now() + interval '7 days'")],
    }
    results: dict[str, list[float]] = {name: [] for name in scenarios}
    for _ in range(args.repeats):  # interleaved, so that the ratios come from one sitting
        for name, extra in scenarios.items():
            clear()
            for index in range(5):
                fill(200, f"fn-{index}", "now() - interval '1 minute'")
            for count, function_id, due_sql in extra:
                fill(count, function_id, due_sql)
            results[name].append(measure(args.claims))
    print("\n".join(bench_engine.machine_description()))
    print(f"claim of 8 items, median ms over {args.claims} claims, median of {args.repeats} runs:")
    base = statistics.median(results["5 functions, 1,000 due"])
    for name, values in results.items():
        value = statistics.median(values)
        print(f"  {name:<48} {value:6.3f} ms   ratio to empty-ish {value / base:4.2f}")


if __name__ == "__main__":
    main()
