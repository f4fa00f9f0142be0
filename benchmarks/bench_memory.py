#!/usr/bin/env python
"""Memory soak: is a worker process's memory flat over a million steps?

    .venv/bin/python benchmarks/bench_memory.py                        # 1,000,000 steps
    .venv/bin/python benchmarks/bench_memory.py --steps 20000 --warmup-steps 5000   # a quick check

It (re)creates a dedicated database (``django_workflows_bench_memory`` by default), migrates
it and starts ``--processes`` real ``runworkers`` processes of ``--concurrency`` threads
(bench_engine.py's pool). This process then feeds runs of bench_workflows.py's 10-step no-op
function in batches (``--batch`` events in one transaction whenever fewer than
``--low-water`` runs are unfinished), so the backlog stays bounded, until ``--steps`` steps
are sent; and it deletes finished runs (steps, attempts, waiters, event) a few seconds after
they end, so the tables stay small and what grows, if anything, is the workers.

Every ``--sample-every`` seconds it samples each worker's RSS (VmRSS in /proc/<pid>/status)
and the steps completed so far, and prints them as a table row. At the end it reports each
worker's RSS before the load, after the warm-up (``--warmup-steps``: caches, lazily imported
modules, connection buffers and the allocator's arenas settle), at the end, its growth from
the warm-up to the end and its maximum; steps/s over the whole soak and per tenth of it (a
slowdown over time shows there); and checks that every run sent completed and no worker died.
PASS when that holds and no worker grew more than ``--rss-growth-mb``; the exit code is 0
only on PASS.

See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import (  # noqa: E402
    WorkerPool,
    background_load_line,
    machine_description,
    migrate,
    read_rss_kb,
    recreate_database,
    send,
    setup_django,
)

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/django_workflows_bench_memory"
TICK = 0.2  # seconds between the feeder's looks at the backlog
PRUNE_GRACE = 5.0  # a finished run is deleted only this many seconds after it ended
PRUNE_CHUNK = 2000  # runs deleted per statement
PRUNE_EVERY = 2.0  # seconds between prunes (sooner while a chunk came back full)


# -- measurements -----------------------------------------------------------------------------


@dataclass
class Sample:
    at: float  # seconds since the first send
    steps: int  # steps completed so far
    rss_kb: list[int | None]  # per worker


@dataclass
class Progress:
    """What the sender knows: what it sent and what it deleted (the tables only keep the rest)."""

    sent: int = 0
    pruned_completed: int = 0  # runs deleted, completed ones
    pruned_other: int = 0  # runs deleted, failed or cancelled
    pruned_steps: int = 0  # completed steps of the deleted runs
    finished_in_table: int = 0
    other_in_table: int = 0  # failed or cancelled runs not deleted yet
    tenths: list[float] = field(default_factory=list)  # when each tenth of the steps was done

    @property
    def finished(self) -> int:
        return self.pruned_completed + self.pruned_other + self.finished_in_table

    @property
    def failed(self) -> int:
        return self.pruned_other + self.other_in_table


def tables() -> dict[str, str]:
    from django_workflows.models import Attempt, Event, QueueItem, Run, Step, Waiter

    return {model.__name__.lower(): model._meta.db_table for model in (Attempt, Event, QueueItem, Run, Step, Waiter)}


def count_finished(progress: Progress) -> None:
    """Finished runs still in the table; few (pruning keeps them so), read by the ended_at index."""
    from django.db import connection

    t = tables()
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*), count(*) FILTER (WHERE status <> 'completed') FROM {t['run']} "
            "WHERE ended_at IS NOT NULL"
        )
        progress.finished_in_table, progress.other_in_table = cursor.fetchone()


def steps_done(progress: Progress) -> int:
    """Completed steps: those deleted with their runs plus those still in the (small) table."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {tables()['step']} WHERE status = 'completed'")
        return progress.pruned_steps + cursor.fetchone()[0]


def vacuum() -> None:
    """What autovacuum does for a production database: the queue, run, step and attempt
    tables churn, and without it their dead rows slow every claim and write down (the CI
    machines run PostgreSQL with ``autovacuum = off``)."""
    from django.db import connection

    t = tables()
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM {', '.join(t[name] for name in ('queueitem', 'run', 'step', 'attempt', 'event'))}")


def prune(progress: Progress) -> int:
    """Delete one chunk of runs that ended over PRUNE_GRACE seconds ago, with their rows.

    Django cascades deletes in Python, not in the database, so this deletes every table's
    rows explicitly, in one statement. Runs with a queue item left and runs a worker holds
    locked are skipped: nothing a worker may still touch goes away under it. Returns how
    many runs it deleted.
    """
    from django.db import connection

    t = tables()
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH doomed AS (
                SELECT id FROM {t['run']} r
                WHERE ended_at < now() - make_interval(secs => %s)
                  AND NOT EXISTS (SELECT 1 FROM {t['queueitem']} q WHERE q.run_id = r.id)
                ORDER BY ended_at LIMIT %s FOR UPDATE SKIP LOCKED
            ),
            steps AS (DELETE FROM {t['step']} WHERE run_id IN (SELECT id FROM doomed) RETURNING status),
            attempts AS (DELETE FROM {t['attempt']} WHERE run_id IN (SELECT id FROM doomed)),
            waiters AS (DELETE FROM {t['waiter']} WHERE run_id IN (SELECT id FROM doomed)),
            runs AS (DELETE FROM {t['run']} WHERE id IN (SELECT id FROM doomed) RETURNING event_id, status),
            events AS (
                DELETE FROM {t['event']} e WHERE id IN (SELECT event_id FROM runs)
                  AND NOT EXISTS (SELECT 1 FROM {t['queueitem']} q WHERE q.event_id = e.id)
            )
            SELECT (SELECT count(*) FROM runs WHERE status = 'completed'),
                   (SELECT count(*) FROM runs WHERE status <> 'completed'),
                   (SELECT count(*) FROM steps WHERE status = 'completed')
            """,
            [PRUNE_GRACE, PRUNE_CHUNK],
        )
        completed, other, steps = cursor.fetchone()
    progress.pruned_completed += completed
    progress.pruned_other += other
    progress.pruned_steps += steps
    return completed + other


def database_size_mb() -> float:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_database_size(current_database())")
        return cursor.fetchone()[0] / 1024 / 1024


def queue_items_left() -> str:
    """The queue's items by kind: after the soak, only the test project's cron schedule's."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT kind, count(*) FROM {tables()['queueitem']} GROUP BY kind ORDER BY kind")
        return ", ".join(f"{count} {kind}" for kind, count in cursor.fetchall()) or "none"


# -- the soak ---------------------------------------------------------------------------------


class Soak:
    def __init__(self, args: argparse.Namespace, pool: WorkerPool, steps_per_run: int, event: str) -> None:
        self.args = args
        self.pool = pool
        self.steps_per_run = steps_per_run
        self.event = event
        self.runs = args.steps // steps_per_run
        self.progress = Progress()
        self.samples: list[Sample] = []
        self.warmup: Sample | None = None
        self.started = 0.0
        self.ended = 0.0
        self.died: list[str] = []

    def sample(self, note: str = "") -> Sample:
        sample = Sample(
            at=time.monotonic() - self.started if self.started else 0.0,
            steps=steps_done(self.progress),
            rss_kb=[read_rss_kb(proc.pid) for proc in self.pool.procs],
        )
        self.samples.append(sample)
        self.print_row(sample, note)
        return sample

    def print_header(self) -> None:
        workers = "".join(f"{f'w{n + 1} MB':>9}" for n in range(len(self.pool.procs)))
        print(f"{'time s':>8}{'steps done':>12}{'steps/s':>9}{workers}", flush=True)

    def print_row(self, sample: Sample, note: str) -> None:
        previous = self.samples[-2] if len(self.samples) > 1 else None
        rate = "-"
        if previous is not None and sample.at > previous.at:
            rate = f"{(sample.steps - previous.steps) / (sample.at - previous.at):.0f}"
        rss = "".join(f"{'-' if kb is None else f'{kb / 1024:.1f}':>9}" for kb in sample.rss_kb)
        print(f"{sample.at:>8.0f}{sample.steps:>12,}{rate:>9}{rss}{note and '  ' + note}", flush=True)

    def check_workers(self) -> bool:
        """False (and the reason noted) once any worker process exited."""
        for n, proc in enumerate(self.pool.procs):
            if proc.poll() is not None:
                self.died.append(f"worker {n + 1} (pid {proc.pid}) exited with {proc.returncode}")
        return not self.died

    def feed(self) -> None:
        """Send batches while fewer than --low-water runs are unfinished (events not yet taken
        in included: the sender counts what it sent, not what became a run)."""
        while self.progress.sent < self.runs and self.progress.sent - self.progress.finished < self.args.low_water:
            count = min(self.args.batch, self.runs - self.progress.sent)
            send(self.event, count, first=self.progress.sent)
            self.progress.sent += count

    def note_tenths(self) -> None:
        done = self.progress.finished * self.steps_per_run
        while len(self.progress.tenths) < 10 and done >= (len(self.progress.tenths) + 1) * self.runs * self.steps_per_run / 10:
            self.progress.tenths.append(time.monotonic() - self.started)

    def run(self) -> bool:
        """Feed, prune and sample until every run sent finished; False if it had to stop."""
        self.print_header()
        self.sample("before the load")
        self.started = time.monotonic()
        next_sample = self.started + self.args.sample_every
        next_prune = self.started + PRUNE_EVERY
        next_vacuum = self.started + self.args.vacuum_every
        last_progress, last_finished = self.started, -1
        while True:
            if not self.check_workers():
                return False
            count_finished(self.progress)
            now = time.monotonic()
            self.note_tenths()
            if self.progress.finished >= self.runs:
                self.ended = now
                self.sample("the end")
                return True
            if self.progress.finished != last_finished:
                last_progress, last_finished = now, self.progress.finished
            elif now - last_progress > self.args.stall_seconds:
                self.died.append(f"no run finished for {self.args.stall_seconds:.0f} s")
                return False
            self.feed()
            if now >= next_prune:
                full = prune(self.progress) == PRUNE_CHUNK
                next_prune = now + (0 if full else PRUNE_EVERY)
            if self.args.vacuum_every and now >= next_vacuum:
                vacuum()
                next_vacuum = time.monotonic() + self.args.vacuum_every
            if self.warmup is None and self.progress.finished * self.steps_per_run >= self.args.warmup_steps:
                self.warmup = self.sample("after the warm-up: the baseline")
                next_sample = time.monotonic() + self.args.sample_every
            elif now >= next_sample:
                self.sample()
                next_sample += self.args.sample_every
            time.sleep(TICK)


# -- report -----------------------------------------------------------------------------------


def mb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"


def report_rss(soak: Soak, limit_mb: float) -> bool:
    """Each worker's RSS: start, after warm-up, end, growth, max. True if none grew too much."""
    start, end, warm = soak.samples[0], soak.samples[-1], soak.warmup
    ok = warm is not None
    print(f"\nRSS per worker, MB (growth: end minus after warm-up; limit {limit_mb:.0f} MB):")
    print(f"{'worker':>8}{'pid':>9}{'start':>9}{'warm-up':>9}{'end':>9}{'growth':>9}{'max':>9}")
    for n, proc in enumerate(soak.pool.procs):
        series = [s.rss_kb[n] for s in soak.samples if s.rss_kb[n] is not None]
        w, e = (warm.rss_kb[n] if warm else None), end.rss_kb[n]
        growth = (e - w) / 1024 if w is not None and e is not None else None
        ok = ok and growth is not None and growth <= limit_mb
        print(f"{n + 1:>8}{proc.pid:>9}{mb(start.rss_kb[n]):>9}{mb(w):>9}{mb(e):>9}"
              f"{'-' if growth is None else f'{growth:+.1f}':>9}{mb(max(series, default=None)):>9}")
    if warm is None:
        print("  no sample after the warm-up: --warmup-steps must be well below --steps")
    return ok


def report_rates(soak: Soak) -> None:
    steps = soak.runs * soak.steps_per_run
    elapsed = soak.ended - soak.started
    print(f"\nsteps/s over the soak: {steps / elapsed:.0f} ({steps:,} steps in {elapsed:.0f} s, "
          "from the first send to the last run's end)")
    tenths, previous, rates = soak.progress.tenths, 0.0, []
    for at in tenths:
        rates.append(steps / 10 / max(at - previous, 1e-9))
        previous = at
    if rates:
        print("steps/s per tenth: " + " ".join(f"{r:.0f}" for r in rates)
              + f"  (last / first: {rates[-1] / rates[0]:.2f})")


def report_checks(soak: Soak) -> bool:
    """Every run sent completed, none failed, every worker still alive."""
    p = soak.progress
    completed = p.pruned_completed + p.finished_in_table - p.other_in_table
    alive = sum(proc.poll() is None for proc in soak.pool.procs)
    print(f"\nruns: {soak.runs:,} to send, {p.sent:,} sent, {completed:,} completed, {p.failed} failed or "
          f"cancelled; queue items left: {queue_items_left()}; workers alive: {alive}/{len(soak.pool.procs)}")
    for reason in soak.died:
        print(f"  STOPPED: {reason}")
    return not soak.died and p.sent == soak.runs and completed == soak.runs and p.failed == 0 \
        and alive == len(soak.pool.procs)


def print_log_tails(log_dir: Path) -> None:
    for log in sorted(log_dir.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-15:]
        if lines:
            print(f"\n-- last lines of {log.name}:\n" + "\n".join(lines))


# -- main -------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=DEFAULT_URL,
                        help=f"benchmark database, dropped and recreated (default {DEFAULT_URL})")
    parser.add_argument("--processes", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--concurrency", type=int, default=8, help="threads per worker process (default 8)")
    parser.add_argument("--steps", type=int, default=1_000_000, help="steps in all (default 1,000,000)")
    parser.add_argument("--warmup-steps", type=int, default=50_000,
                        help="steps before the baseline RSS sample (default 50,000)")
    parser.add_argument("--sample-every", type=float, default=10, help="seconds between samples (default 10)")
    parser.add_argument("--rss-growth-mb", type=float, default=20,
                        help="most a worker's RSS may grow from the warm-up to the end (default 20)")
    parser.add_argument("--batch", type=int, default=1000, help="events sent per transaction (default 1000)")
    parser.add_argument("--low-water", type=int, default=1000,
                        help="send a batch whenever fewer runs than this are unfinished (default 1000)")
    parser.add_argument("--vacuum-every", type=float, default=30,
                        help="seconds between VACUUMs of the engine's tables, as autovacuum would (0: never; "
                             "default 30)")
    parser.add_argument("--stall-seconds", type=float, default=120,
                        help="stop (FAIL) when no run finished for this long (default 120)")
    args = parser.parse_args()
    if not 0 <= args.warmup_steps < args.steps:
        parser.error("--warmup-steps must be below --steps")
    return args


def main() -> int:
    args = parse_args()
    began = time.monotonic()
    recreate_database(args.database_url)
    setup_django(args.database_url)
    migrate()
    import bench_workflows

    steps_per_run = bench_workflows.STEPS_PER_RUN
    runs = args.steps // steps_per_run
    print("\n".join(machine_description()))
    print(background_load_line())
    print(f"memory soak: {runs * steps_per_run:,} steps = {runs:,} runs of a {steps_per_run}-step no-op "
          f"function; {args.processes} worker processes x {args.concurrency} threads; batches of "
          f"{args.batch} events below {args.low_water} unfinished runs; finished runs deleted "
          f"{PRUNE_GRACE:.0f} s after they end; warm-up {args.warmup_steps:,} steps\n", flush=True)
    log_dir = Path(tempfile.mkdtemp(prefix="wf-bench-memory-"))
    pool = WorkerPool(args.processes, args.concurrency, args.database_url, log_dir)
    size0 = database_size_mb()
    try:
        pool.start()
        soak = Soak(args, pool, steps_per_run, bench_workflows.NOOP10_EVENT)
        finished = soak.run()
        if finished:
            report_rates(soak)
        rss_ok = report_rss(soak, args.rss_growth_mb)
        checks_ok = report_checks(soak)
        print(f"database size: {size0:.0f} MB before, {database_size_mb():.0f} MB at the end")
    finally:
        pool.stop()
    ok = finished and rss_ok and checks_ok
    if not checks_ok:
        print_log_tails(log_dir)
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
    print(f"total time: {time.monotonic() - began:.0f} s")
    print(f"{'PASS' if ok else 'FAIL'}: worker RSS growth after the warm-up <= {args.rss_growth_mb:.0f} MB "
          f"each, every run completed, no worker died")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
