"""A parallel group of 200 branches on 1 and on 4 worker processes.

    .venv/bin/python benchmarks/bench_parallel.py [--branches 200] [--seconds 0.05] [--repeat 3]

Each branch is one step that waits ``--seconds`` (an I/O-bound call, like an HTTP request).
Each branch is its own queue item, so any free worker takes it: with one thread per
process, 4 processes should finish the group in about a quarter of the time 1 takes.
Measured from the sender's commit to the run's end, side by side in one run of the
script, median of ``--repeat``. Uses bench_engine.py's dedicated database and worker pool.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_engine  # noqa: E402


def measure(processes: int, branches: int, seconds: float, db_url: str, log_dir: Path) -> float:
    from bench_workflows import PARALLEL_EVENT

    from django_workflows.models import Run

    bench_engine.reset_tables()
    pool = bench_engine.WorkerPool(processes, 1, db_url, log_dir)
    pool.start()
    try:
        committed = bench_engine.send_data(PARALLEL_EVENT, {"branches": branches, "seconds": seconds})
        bench_engine.wait_for(
            lambda: Run.objects.filter(function_id="bench-parallel", status="completed").exists(),
            120, "the parallel run to complete", interval=0.05,
        )
        run = Run.objects.get(function_id="bench-parallel")
        assert run.output == branches, run.output
        return run.ended_at.timestamp() - committed
    finally:
        pool.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=bench_engine.DEFAULT_URL)
    parser.add_argument("--branches", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=0.05)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    bench_engine.recreate_database(args.database_url)
    bench_engine.setup_django(args.database_url)
    bench_engine.migrate()
    print("\n".join(bench_engine.machine_description()))
    print(f"comparison: one parallel group of {args.branches} branches ({args.seconds * 1000:.0f} ms of I/O each) "
          f"on 1 vs 4 worker processes of 1 thread; median of {args.repeat}, interleaved")
    timings: dict[int, list[float]] = {1: [], 4: []}
    with tempfile.TemporaryDirectory() as logs:
        for _ in range(args.repeat):
            for processes in (1, 4):
                timings[processes].append(measure(processes, args.branches, args.seconds, args.database_url, Path(logs)))
    one, four = statistics.median(timings[1]), statistics.median(timings[4])
    ideal = args.branches * args.seconds
    print(f"\n{'processes':>9} | {'seconds (median)':>16} | runs")
    for processes, values in timings.items():
        print(f"{processes:>9} | {statistics.median(values):>16.2f} | {', '.join(f'{v:.2f}' for v in values)}")
    print(f"\nwith 4 processes: {four / one:.2f} of the time with 1 (target: about 0.25); "
          f"branch I/O alone is {ideal:.1f}s on one worker")


if __name__ == "__main__":
    main()
