"""``manage.py runworkers``: claim and run due work until stopped."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from django_workflows import conf

logger = logging.getLogger("django_workflows.worker")


def _child_main(concurrency: int, burst: bool) -> None:
    import django

    django.setup()
    try:
        _run_worker(concurrency, burst)
    except CommandError as exc:
        logger.error("%s", exc)  # one line, no traceback; the supervisor starts another later
        sys.stderr.flush()
        os._exit(1)


def _run_worker(concurrency: int, burst: bool) -> None:
    from django_workflows.engine.worker import DatabaseUnavailable, Worker

    worker = Worker(concurrency=concurrency, burst=burst)

    def on_signal(signum: int, _frame: Any) -> None:
        logger.info("worker %s: got %s, stopping (no new claims)", worker.id, signal.Signals(signum).name)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        worker.run()
    except DatabaseUnavailable as exc:
        raise CommandError(str(exc)) from None
    # In-flight threads that outlived the grace period were released; do not wait for them.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class Command(BaseCommand):
    help = "Run django-workflows workers: claim due events and runs and execute them."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--concurrency", type=int, default=None,
            help="Threads per worker process (default: DJANGO_WORKFLOWS['CONCURRENCY'], 8).",
        )
        parser.add_argument("--processes", type=int, default=1, help="Worker processes to start (default 1).")
        parser.add_argument("--burst", action="store_true", help="Exit once nothing is due.")

    def execute(self, *args: Any, **options: Any) -> Any:
        from django_workflows import checks

        checks.requested_processes = options.get("processes") or 1  # for the SQLite system check
        return super().execute(*args, **options)

    def handle(self, *args: Any, **options: Any) -> None:
        concurrency = options["concurrency"]
        if concurrency is None:
            concurrency = int(conf.get("CONCURRENCY"))
        processes = options["processes"]
        if concurrency < 1 or processes < 1:
            raise CommandError("--concurrency and --processes must be at least 1")
        if processes == 1:
            _run_worker(concurrency, options["burst"])
            return
        self._supervise(processes, concurrency, options["burst"])

    def _supervise(self, processes: int, concurrency: int, burst: bool) -> None:
        """Start ``processes`` children; restart any that dies, stop them all on a signal."""
        context = multiprocessing.get_context("spawn")
        stopping = False

        def start() -> multiprocessing.process.BaseProcess:
            child = context.Process(target=_child_main, args=(concurrency, burst), daemon=False)
            child.start()
            return child

        def on_signal(signum: int, _frame: Any) -> None:
            nonlocal stopping
            stopping = True
            for child in children:
                if child.is_alive() and child.pid:
                    os.kill(child.pid, signal.SIGTERM)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        logger.info("runworkers: starting %d processes of %d threads", processes, concurrency)
        children = [start() for _ in range(processes)]
        started_at = {child.pid: time.monotonic() for child in children}
        restart_delay = 0.0  # grows while children die young, so that a crash loop is no storm
        while children:
            time.sleep(0.2)
            for index, child in enumerate(list(children)):
                if child.is_alive():
                    continue
                if stopping or burst or child.exitcode == 0:
                    children.remove(child)
                    continue
                lived = time.monotonic() - started_at.pop(child.pid, 0.0)
                restart_delay = 0.0 if lived > 60 else min(max(restart_delay * 2, 1.0), 30.0)
                logger.error(
                    "worker process %s died (exit code %s) after %.0fs; starting another in %.0fs",
                    child.pid, child.exitcode, lived, restart_delay,
                )
                deadline = time.monotonic() + restart_delay
                while time.monotonic() < deadline and not stopping:
                    time.sleep(0.2)
                if stopping:
                    children.remove(child)
                    continue
                children[index] = start()
                started_at[children[index].pid] = time.monotonic()
        logger.info("runworkers: all worker processes stopped")
