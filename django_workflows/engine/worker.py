"""A worker process: a claim loop, a pool of threads, a heartbeat and a listener."""

from __future__ import annotations

import logging
import os
import queue as stdlib_queue
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable

from django.db import InterfaceError, OperationalError, connections

from .. import conf
from ..states import QueueKind
from . import clock, cron, queue, retention, wakeup
from .intake import process_events
from .queue import Claimed
from .records import one_line
from .registry import prune_records, registry_cleanup, registry_touch
from .store import process_run

logger = logging.getLogger("django_workflows.worker")

MIN_POLL = 0.05
PRUNE_EVERY = 300.0  # seconds between retention passes of one worker
TRANSIENT_RETRY = 1.0  # seconds before items that lost the database are due again
# Longest wait between claims while the database is unreachable: claims resume within this
# of its return (the soak saw a 10 s cap delay recovery after a restart by 6.5 s).
CLAIM_BACKOFF_MAX = 2.0
# Most events taken in by one intake transaction (see _more_events).
EVENT_BATCH = 100


def process_items(
    items: list[Claimed], *, db: str, stopping: threading.Event | None = None,
    lease_renewed_at: Callable[[int], float] | None = None, worker_id: str = "",
) -> None:
    """Process claimed items: events together in one transaction, runs one by one.

    ``lease_renewed_at(item_id)`` tells when the worker last knew it held an item's lease.
    """
    events = [i for i in items if i.kind == QueueKind.EVENT]
    if events:
        process_events(events, db=db)
    for item in items:
        if item.kind in (QueueKind.RUN, QueueKind.BRANCH):
            renewed = (lambda item_id=item.id: lease_renewed_at(item_id)) if lease_renewed_at else None
            process_run(item, db=db, stopping=stopping, lease_renewed_at=renewed, worker_id=worker_id)
        elif item.kind == QueueKind.CRON:
            cron.process_cron_item(item, db=db)
        elif item.kind != QueueKind.EVENT:
            logger.error("unknown queue item kind %r (item %s); left for a newer worker", item.kind, item.id)


class DatabaseUnavailable(Exception):
    """A starting worker gave up waiting for the database (``STARTUP_TIMEOUT``)."""


class Worker:
    def __init__(self, *, concurrency: int, burst: bool = False, db: str | None = None) -> None:
        self.db = db or conf.database()
        self.concurrency = max(1, concurrency)
        self.burst = burst
        self.id = f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._in_flight: dict[int, Claimed] = {}
        # time.monotonic() when each in-flight item's lease was last known held (claim or
        # heartbeat): a step does not start on a lease that may have lapsed.
        self._renewed: dict[int, float] = {}
        self._tasks: stdlib_queue.SimpleQueue[list[Claimed] | None] = stdlib_queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self.processed = 0
        self._running = 0  # threads busy with a batch
        self._next_due = None  # earliest due_at seen by the last idle query
        self._stopped = threading.Event()  # set once shutdown is over: helper threads exit
        self._helpers: list[threading.Thread] = []
        self._claim_backoff = 0.0  # seconds; > 0 while claims fail

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; in-flight runs stop before their next step (see ``shutdown``)."""
        self.stopping.set()
        self.wake.set()

    def describe_in_flight(self) -> str:
        """What this worker is running, for the first Ctrl-C ("2 runs: 0199… , …")."""
        with self._lock:
            items = list(self._in_flight.values())
        runs = [item for item in items if item.run_id]
        if not runs:
            return f"{len(items)} event batch item(s)" if items else ""
        shown = ", ".join(f"run {item.run_id}" + (f" (branch {item.step_id})" if item.step_id else "") for item in runs[:5])
        more = f" and {len(runs) - 5} more" if len(runs) > 5 else ""
        return f"{len(runs)} running: {shown}{more}"

    def run(self) -> None:
        vendor = connections[self.db].vendor
        logger.info(
            "worker %s started: %d threads, database %r (%s), %s",
            self.id, self.concurrency, self.db, vendor,
            "LISTEN/NOTIFY wake-ups" if vendor == "postgresql" and conf.get("NOTIFY") else "polling",
        )
        self._threads = [
            threading.Thread(target=self._thread_loop, name=f"wf-worker-{n}", daemon=True)
            for n in range(self.concurrency)
        ]
        for thread in self._threads:
            thread.start()
        self._helpers = [threading.Thread(target=self._heartbeat_loop, name="wf-heartbeat", daemon=True)]
        if vendor == "postgresql" and conf.get("NOTIFY"):
            self._helpers.append(wakeup.Listener(self.db, self.wake, self._stopped))
        try:
            if not self._wait_for_database():
                return
            for helper in self._helpers:
                helper.start()
            self._claim_loop()
        finally:
            self.shutdown()
            if threading.current_thread() is not threading.main_thread():
                connections.close_all()  # a worker run in a thread of its own (tests, embedding)

    def shutdown(self) -> None:
        grace = float(conf.get("SHUTDOWN_GRACE_SECONDS"))
        deadline = time.monotonic() + grace
        while self._in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            left = list(self._in_flight)
        if left:
            released = queue.release(self.id, left, db=self.db)
            logger.warning("worker %s: released %d unfinished items after %.0fs grace", self.id, released, grace)
        for _ in self._threads:
            self._tasks.put(None)
        registry_cleanup(self.db, self.id)
        if not left:
            for thread in self._threads:
                thread.join(timeout=5)
        self._stopped.set()
        for helper in self._helpers:
            if helper.ident is not None:  # started
                helper.join(timeout=5)
        logger.info("worker %s stopped after %d item%s", self.id, self.processed, "" if self.processed == 1 else "s")

    # -- loops -------------------------------------------------------------------------------

    def _claim_loop(self) -> None:
        poll_max = float(conf.get("POLL_INTERVAL"))
        idle = MIN_POLL
        next_prune = time.monotonic() + random.uniform(5, PRUNE_EVERY)  # spread over workers
        woken = False
        while not self.stopping.is_set():
            self.wake.clear()
            self._replace_dead_threads()
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_EVERY
                self._prune()
                self._sync_schedules()
            free = self.concurrency - len(self._in_flight)
            # --burst exits on an empty claim only if nothing was in flight before it: an item
            # that finishes after the claim may have made more work due.
            was_idle = not self._in_flight
            items = self._claim(free) if free > 0 else []
            if len(items) == free and any(item.kind == QueueKind.EVENT for item in items):
                items += self._more_events(items)  # a full claim with events: maybe a backlog
            claimed_at = time.monotonic()
            with self._lock:
                self._in_flight.update((item.id, item) for item in items)
                self._renewed.update((item.id, claimed_at) for item in items)
            # New events go to one thread as a batch (one intake transaction); runs one each.
            # An idle worker woken for events alone takes them in on this thread, on the
            # connection the claim has just used: no hand-off between event and run.
            events = [item for item in items if item.kind == QueueKind.EVENT]
            if events and was_idle and len(events) == len(items):
                self._handle(events)
            elif events:
                self._tasks.put(events)
            for item in items:
                if item.kind != QueueKind.EVENT:
                    self._tasks.put([item])
            if items:
                idle = MIN_POLL
                continue
            if free > 0 and self.burst and was_idle:
                logger.info("worker %s: nothing due, exiting (--burst)", self.id)
                return
            # After a wake-up (NOTIFY, a finished item) the claim above already looked;
            # ask for the next due time only when the wait ran out.
            timeout = self._idle_timeout(idle, free, query=not woken)
            woken = self.wake.wait(timeout)
            if not woken:
                idle = min(idle * 2, poll_max)

    def _prune(self) -> None:
        try:
            retention.prune(self.db)
            prune_records(self.db)
        except Exception:
            logger.warning("worker %s: pruning old runs failed", self.id, exc_info=True)
            connections[self.db].close()

    def _claim(self, free: int) -> list[Claimed]:
        try:
            items = queue.claim(self.id, free, db=self.db)
        except Exception as exc:
            # The database is down or restarting: one line per attempt, backing off.
            delay = min(max(self._claim_backoff * 2, 0.5), CLAIM_BACKOFF_MAX)
            self._claim_backoff = delay
            logger.warning("worker %s: cannot claim work (%s); retrying in %.1fs", self.id, one_line(exc), delay)
            logger.debug("claim failure", exc_info=True)
            connections[self.db].close()
            self.stopping.wait(delay)
            return []
        if self._claim_backoff:
            logger.info("worker %s: the database is back; claiming again", self.id)
            self._claim_backoff = 0.0
        return items

    def _more_events(self, items: list[Claimed]) -> list[Claimed]:
        """Fill the intake batch up to EVENT_BATCH events: a backlog of events is taken in
        by few transactions, and the runs they start spread over the workers."""
        try:
            return queue.claim_events(self.id, EVENT_BATCH - len(items), db=self.db)
        except Exception as exc:  # the claim's own items go on; the events stay due
            logger.warning("worker %s: claiming more events failed (%s)", self.id, one_line(exc))
            connections[self.db].close()
            return []

    def _idle_timeout(self, idle: float, free: int, *, query: bool) -> float:
        """Sleep until the earliest future item, at most ``idle`` (the poll interval so far)."""
        if free <= 0:
            return 1.0  # all threads busy: a finishing thread sets wake
        if query:
            try:
                self._next_due = queue.next_due_at(db=self.db)
            except Exception:
                self._next_due = None
        if self._next_due is None:
            return idle
        until_due = (self._next_due - clock.now()).total_seconds()
        if until_due <= 0:
            # Due but not claimed: held back by a concurrency limit (or being claimed by
            # another worker). Poll with backoff; a finishing item wakes this loop at once.
            return idle
        return min(idle, until_due)

    def _thread_loop(self) -> None:
        try:
            while (batch := self._tasks.get()) is not None:
                self._handle(batch)
        finally:
            connections.close_all()  # this thread's connections

    def _handle(self, batch: list[Claimed]) -> None:
        with self._lock:
            self._running += 1
        try:
            self._process(batch)
        except BaseException as exc:  # noqa: B036 - the thread must live on
            # Nothing a batch raises may end the thread or leave its items leased
            # (the heartbeat renewing them) with no thread to run them: give them back.
            self._release_failed(batch, exc)
        finally:
            with self._lock:
                for item in batch:
                    self._in_flight.pop(item.id, None)
                    self._renewed.pop(item.id, None)
                self.processed += len(batch)
                self._running -= 1
            self.wake.set()

    def _release_failed(self, batch: list[Claimed], exc: BaseException) -> None:
        """Give a failed batch back.

        A lost connection (the database restarting, a backend killed) is not the items'
        fault: one line, and they are due again in a second, their count of claims
        without progress untouched by it. Anything else is logged with its traceback and
        counts towards ``MAX_CRASHES``, which ends an item that keeps failing.
        """
        items = [(item.id, item.kind) for item in batch]
        transient = isinstance(exc, (OperationalError, InterfaceError))
        if transient:
            logger.warning("worker %s: items %s lost the database (%s); retrying in 1s", self.id, items, one_line(exc))
        else:
            log = logger.error if isinstance(exc, Exception) else logger.critical
            log("worker %s: items %s raised %r; released for another attempt", self.id, items, exc, exc_info=True)
        try:
            connections[self.db].close()
            queue.release(
                self.id, [item.id for item in batch], db=self.db,
                keep_claims=not transient, delay=TRANSIENT_RETRY if transient else 0.0,
            )
        except Exception as release_error:
            logger.warning(
                "worker %s: could not release items (%s); their leases lapse", self.id, one_line(release_error)
            )

    def _replace_dead_threads(self) -> None:
        """A thread that died anyway (a bug in the engine) is replaced, loudly."""
        for index, thread in enumerate(self._threads):
            if not thread.is_alive() and not self._stopped.is_set():
                logger.critical("worker %s: thread %s died; starting a new one", self.id, thread.name)
                self._threads[index] = threading.Thread(target=self._thread_loop, name=thread.name, daemon=True)
                self._threads[index].start()

    def _process(self, batch: list[Claimed]) -> None:
        if batch[0].kind == QueueKind.EVENT and not self.stopping.is_set():
            self._intake(batch)
        else:
            process_items(
                batch, db=self.db, stopping=self.stopping, lease_renewed_at=self._lease_renewed_at, worker_id=self.id
            )

    def _intake(self, batch: list[Claimed]) -> None:
        """Take in events and keep as many of the new runs as there are idle threads."""
        with self._lock:
            idle = self.concurrency - self._running + 1  # this thread is free after intake
        kept = process_events(batch, db=self.db, keep_for=self.id, keep_max=max(idle, 0))
        kept_at = time.monotonic()
        with self._lock:
            self._in_flight.update((item.id, item) for item in kept)
            self._renewed.update((item.id, kept_at) for item in kept)
        for item in kept:
            self._tasks.put([item])

    def _heartbeat_loop(self) -> None:
        # One batched UPDATE per interval extends every lease this worker holds.
        interval = max(float(conf.get("LEASE_SECONDS")) / 3, 0.1)
        try:
            while not self._stopped.wait(interval):
                with self._lock:
                    ids = list(self._in_flight)
                try:
                    clock.sync(self.db)
                    beat_at = time.monotonic()
                    renewed = queue.heartbeat(self.id, ids, db=self.db) if ids else set()
                    with self._lock:
                        for item_id in renewed & self._renewed.keys():
                            self._renewed[item_id] = beat_at
                    registry_touch(
                        self.db, self.id, threads=self.concurrency, in_hand=len(self._in_flight), processed=self.processed
                    )
                except Exception as exc:
                    logger.warning("worker %s: heartbeat failed (%s)", self.id, one_line(exc))
                    connections[self.db].close()
        finally:
            connections.close_all()

    def _lease_renewed_at(self, item_id: int) -> float:
        return self._renewed.get(item_id, 0.0)

    def _wait_for_database(self) -> bool:
        """Start even if the database is down: retry with backoff, one line per attempt,
        for up to ``STARTUP_TIMEOUT`` seconds. Returns False if it gave up or was stopped."""
        give_up = time.monotonic() + float(conf.get("STARTUP_TIMEOUT"))
        delay = 0.5
        while not self.stopping.is_set():
            try:
                clock.sync(self.db)
                schedules = cron.sync_schedules(self.db)
                registry_touch(self.db, self.id, started=True, threads=self.concurrency)
                if schedules:
                    logger.info("worker %s: %d cron schedules", self.id, schedules)
                return True
            except Exception as exc:
                connections[self.db].close()
                if time.monotonic() + delay > give_up:
                    raise DatabaseUnavailable(
                        f"worker {self.id}: the database is still unreachable after STARTUP_TIMEOUT "
                        f"({conf.get('STARTUP_TIMEOUT')}s): {one_line(exc)}; giving up"
                    ) from exc
                logger.warning(
                    "worker %s: the database is unreachable (%s); retrying in %.1fs", self.id, one_line(exc), delay
                )
                self.stopping.wait(delay)
                delay = min(delay * 2, 15.0)
        return False

    def _sync_schedules(self) -> None:
        try:
            cron.sync_schedules(self.db)
        except Exception as exc:
            logger.warning("worker %s: syncing cron schedules failed (%s)", self.id, one_line(exc))
            connections[self.db].close()

