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


def _child_main(concurrency: int, burst: bool, verbosity: int = 1, log_format: str = "plain") -> None:
    import django

    django.setup()
    from django_workflows import logs

    logs.configure(verbosity, log_format)
    try:
        _run_worker(concurrency, burst, announce=False)
    except CommandError as exc:
        logger.error("%s", exc)  # one line, no traceback; the supervisor starts another later
        sys.stderr.flush()
        os._exit(1)


def _run_worker(concurrency: int, burst: bool, *, announce: bool = True) -> None:
    from django_workflows.engine.queue import release
    from django_workflows.engine.worker import DatabaseUnavailable, Worker

    worker = Worker(concurrency=concurrency, burst=burst)
    signals = 0

    def on_signal(signum: int, _frame: Any) -> None:
        # First Ctrl-C: finish what is running (no new claims, no new steps); second: stop now.
        nonlocal signals
        signals += 1
        name = signal.Signals(signum).name
        if signals == 1:
            worker.stop()
            running = worker.describe_in_flight()
            if running:
                logger.warning(
                    "%s: waiting up to %.0f s for %s; press Ctrl-C again to stop now",
                    name, float(conf.get("SHUTDOWN_GRACE_SECONDS")), running,
                )
            else:
                logger.info("%s: stopping (nothing running)", name)
            return
        held = list(worker._in_flight)
        released = release(worker.id, held, db=worker.db) if held else 0
        logger.warning("%s again: stopping now; %d unfinished items released for other workers", name, released)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if announce:
        banner(processes=1, concurrency=concurrency)
    try:
        worker.run()
    except DatabaseUnavailable as exc:
        raise CommandError(str(exc)) from None
    # In-flight threads that outlived the grace period were released; do not wait for them.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def banner(*, processes: int, concurrency: int) -> None:
    """The start banner: what this runworkers serves, where, and how it wakes up."""
    from django.db import connections

    from django_workflows import __version__
    from django_workflows.functions import TriggerCron, registry

    db = conf.database()
    vendor = connections[db].vendor
    wakeups = "LISTEN/NOTIFY" if vendor == "postgresql" and conf.get("NOTIFY") else f"polling (up to {conf.get('POLL_INTERVAL')} s)"
    functions = sorted(registry.all(), key=lambda fn: fn.id)
    logger.info(
        "django-workflows %s: %d process%s x %d threads, database %r (%s), wake-ups: %s",
        __version__, processes, "" if processes == 1 else "es", concurrency, db, vendor, wakeups,
    )
    if not functions:
        logger.warning("no workflow functions found: define them in <app>/workflows.py of an installed app")
    for function in functions:
        triggers = ", ".join(
            f"cron {t.cron}" if isinstance(t, TriggerCron) else f"event {t.event}" for t in function.triggers
        ) or "invoke only"
        logger.info("  %s: %s", function.id, triggers)


class Command(BaseCommand):
    help = "Run django-workflows workers: claim due events and runs and execute them."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--concurrency", type=int, default=None,
            help="Threads per worker process (default: DJANGO_WORKFLOWS['CONCURRENCY'], 8).",
        )
        parser.add_argument("--processes", type=int, default=1, help="Worker processes to start (default 1).")
        parser.add_argument("--burst", action="store_true", help="Exit once nothing is due.")
        parser.add_argument(
            "--log-format", choices=["plain", "json"], default="plain",
            help="plain lines (default) or one JSON object per line, for log pipelines.",
        )

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
        from django_workflows import checks, logs

        logs.configure(options["verbosity"], options["log_format"])
        problem = checks.not_migrated_message(conf.database())
        if problem:
            raise CommandError(problem)
        self._verbosity, self._log_format = options["verbosity"], options["log_format"]
        if processes == 1:
            _run_worker(concurrency, options["burst"])
            return
        banner(processes=processes, concurrency=concurrency)
        self._supervise(processes, concurrency, options["burst"])

    def _supervise(self, processes: int, concurrency: int, burst: bool) -> None:
        """Start ``processes`` children; restart any that dies, stop them all on a signal."""
        context = multiprocessing.get_context("spawn")
        stopping = False

        def start() -> multiprocessing.process.BaseProcess:
            child = context.Process(
                target=_child_main, args=(concurrency, burst, self._verbosity, self._log_format), daemon=False
            )
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
