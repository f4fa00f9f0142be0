"""A soak: N ``runworkers`` processes for M minutes under steady load, a fault every minute.

    .venv/bin/python benchmarks/soak.py --minutes 30 --workers 4 --rate 20
    .venv/bin/python benchmarks/soak.py --minutes 3 --rate 10        # a quick one

Not a test (it takes as long as you ask, and is not run in CI): it reuses the fault tests'
harness (``tests/fault_support``). It creates a throwaway PostgreSQL cluster on a free port
(as the ``postgres`` OS user when run as root), migrates a database there, starts
``--workers`` runworkers processes (``--concurrency`` threads, ``--lease-seconds``), and a
sender process (this script with ``--sender``) that sends ``--rate`` events per second of the
fault tests' 3-step function (one in ``--sleep-every`` with a ``--sleep`` step between
step-0 and step-1), each with its own event id so that a batch whose commit failed can be
sent again without starting a run twice.

Every ``--fault-every`` seconds (the first half a period after the load starts) the next fault
of the rotation: the database stopped 5 s (``fast``); every backend of the database
terminated every 0.5 s for 5 s; the busiest worker (not one of the first ``--keep-workers``)
SIGKILLed and a replacement started; the busiest worker SIGSTOPped until the runs it was in
have been taken over (past its lease), then SIGCONTed; the database stopped 20 s
(``immediate``: crash recovery). After each fault it measures the time to recover: from the
fault's end to the first step completed after it.

Every ``--sample-every`` seconds it samples each worker's RSS (VmRSS in /proc/<pid>/status)
and the backlog (unfinished runs, the oldest one's age, events not taken in yet).

At the end it stops the sender, waits (``--drain-timeout``) until every run has finished,
sends a probe batch (every surviving worker must still take work), and checks what the fault
tests check (``fault_support.checks.verify``): every run completed, one run per event sent,
every step recorded exactly once and never run again once recorded, a step body re-executed
only if it was in flight at a fault (and at most once per thread that could have had one in
flight: ``--concurrency`` for a killed or frozen worker, every live thread for a database
fault, times the rounds for repeated terminations), no queue item left, no worker exiting
unless killed. Plus: no run unfinished for more than ``--stuck-seconds`` at any sample, the
frozen worker's runs taken over, a step completed within ``--recover-timeout`` of each fault,
and memory flat: no worker that was not killed (the first ``--keep-workers`` never are) and
was sampled for at least a third of the soak after its own warm-up (``--warmup-minutes``)
grew more than ``--rss-growth-mb`` from the end of its warm-up to the end.

It prints a report (the machine, the figures, each fault, each worker's RSS, the queue items
released most often after errors) and a PASS/FAIL line; the exit code is 0 only on PASS.
The cluster is removed at the end, also on failure or Ctrl-C; the worker, sender and server
logs stay in ``--log-dir``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

from fault_support import EVENT, EXEC_TABLE, EXEC_TABLE_DDL, FUNCTION  # noqa: E402
from fault_support.checks import (  # noqa: E402
    QUEUE_TABLE,
    RUN_TABLE,
    STEP_TABLE,
    Exec,
    FaultDB,
    Figures,
    probe,
    verify,
    wait_ready,
)
from fault_support.cluster import Cluster  # noqa: E402
from fault_support.pool import Workers  # noqa: E402

log = logging.getLogger("soak")

DB_NAME = "soak"
ROTATION = ("db-stop-5s", "terminate-backends", "sigkill-replace", "sigstop-sigcont", "db-stop-20s")
FINISHED = ("completed", "failed", "cancelled")


# -- the sender (this script with --sender, in a process of its own) -------------------------


def sender_main(args: argparse.Namespace) -> None:
    """Send ``--rate`` events/s in small batches until SIGTERM; the state goes to ``--state``.

    A batch that fails (the database is away, the connection was terminated) is sent again,
    with the same event ids, until it succeeds: if a failed commit did in fact commit, the
    second copy is stored but starts nothing. Ticks missed meanwhile are skipped, not made up
    afterwards in a burst. Events seq 0 .. next_seq-1 were sent, except ``uncertain`` ones (a
    batch still failing when told to stop, given up after 60 s).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s sender: %(message)s")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    import django

    django.setup()
    from django.db import Error as DatabaseError
    from django.db import connection

    import django_workflows as wf

    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    state = {"next_seq": 0, "confirmed": 0, "batches": 0, "failed_attempts": 0, "outages": 0, "uncertain": []}
    state_path = Path(args.state)

    def write_state() -> None:
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, state_path)

    def data(seq: int) -> dict:
        item: dict = {"seq": seq, "delay": args.delay}
        if args.sleep_every and seq % args.sleep_every == 0:
            item["sleep"] = args.sleep
        return item

    def send(events: list) -> bool:
        failing_since, give_up_at = None, None
        while True:
            try:
                wf.send(events)
                if failing_since is not None:
                    log.warning("batch sent after %.1fs of failures", time.monotonic() - failing_since)
                return True
            except DatabaseError as exc:
                state["failed_attempts"] += 1
                if failing_since is None:
                    failing_since = time.monotonic()
                    state["outages"] += 1
                    log.warning("sending failed, retrying the batch: %s: %s", type(exc).__name__, str(exc).strip()[:200])
                try:
                    connection.close()
                except Exception:
                    pass
                if stopping.is_set():
                    give_up_at = give_up_at or time.monotonic() + 60
                    if time.monotonic() > give_up_at:
                        log.error("giving up a batch of %d events after 60s of failures while stopping", len(events))
                        return False
                time.sleep(0.5)

    write_state()
    per_tick, owed = args.rate * args.tick, 0.0
    next_at = time.monotonic()
    while not stopping.is_set():
        owed += per_tick
        count = int(owed)
        owed -= count
        if count:
            first = state["next_seq"]
            seqs = list(range(first, first + count))
            events = [wf.Event(name=EVENT, id=f"soak-{seq}", data=data(seq)) for seq in seqs]
            if send(events):
                state["confirmed"] += count
            else:
                state["uncertain"].extend(seqs)
            state["next_seq"] = first + count
            state["batches"] += 1
            write_state()
        next_at += args.tick
        delay = next_at - time.monotonic()
        if delay < -args.tick:  # fell behind (an outage): carry on from now, no burst
            next_at = time.monotonic()
            owed = 0.0
        elif delay > 0:
            stopping.wait(delay)
    write_state()
    log.info("stopped: %d events sent in %d batches", state["confirmed"], state["batches"])


# -- the soak --------------------------------------------------------------------------------


@dataclass
class Fault:
    number: int
    kind: str
    scheduled: float  # seconds after the load started
    start: float = 0.0  # wall clock; for a kill, start == end == the SIGKILL
    end: float = 0.0
    pid: int | None = None  # the worker killed or frozen
    threads: int = 0  # threads that could have had a step body in flight
    rounds: int = 1  # termination rounds (each may catch every thread once)
    detail: str = ""
    recover: float | None = None
    reexecuted: int = 0

    def in_flight(self, e: Exec) -> bool:
        """Was the execution ``e`` in flight at this fault (so it may have to run again)?

        A body that began before the fault ended and whose work had not ended a second
        before it began (its checkpoint may fail just after); for a killed or frozen worker,
        only that worker's bodies begun before the signal.
        """
        if e.finished is not None and e.finished <= self.start - 1.0:
            return False
        if self.pid is not None:
            return e.pid == self.pid and e.started < self.start + 0.05
        return e.started < self.end

    @property
    def bound(self) -> int:
        return self.threads * self.rounds


@dataclass
class WorkerInfo:
    pid: int
    index: int
    started: float  # seconds after the load started (negative: before)
    replaces: int | None = None
    killed: float | None = None
    frozen: list[float] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds after load start, kB)


def read_rss_kb(pid: int) -> int | None:
    from bench_engine import (
        read_rss_kb as read,  # benchmarks/ is on sys.path: this script's own folder
    )

    return read(pid)


def machine_lines(cluster: Cluster) -> list[str]:
    from bench_engine import (  # benchmarks/ is on sys.path: this script's own folder
        cpu_model,
        git_revision,
    )

    cpu = cpu_model()
    with cluster.connect() as conn:
        pg_version = conn.execute("SHOW server_version").fetchone()[0]
        pg_settings = conn.execute(
            "SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM pg_settings "
            "WHERE name IN ('fsync', 'synchronous_commit', 'shared_buffers', 'max_connections')"
        ).fetchone()[0]
    try:
        import django

        django_version = django.get_version()
    except ImportError:
        django_version = "?"
    return [
        f"django-workflows at {git_revision()} ({ROOT})",
        f"CPU: {cpu}, {os.cpu_count()} cores; {platform.system()} {platform.release()}; "
        f"load average before the start {' '.join(Path('/proc/loadavg').read_text().split()[:3])}",
        f"Python {platform.python_version()}, Django {django_version}, PostgreSQL {pg_version} "
        f"(throwaway cluster on port {cluster.port}: {pg_settings}), same machine, TCP on 127.0.0.1",
    ]


def cpu_times() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - fields[3] - fields[4]) / ticks, sum(fields) / ticks


def fmt_mb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"


def fmt_t(seconds: float) -> str:
    seconds = max(0.0, seconds)
    return f"{int(seconds // 60):02d}:{int(seconds % 60):02d}"


class Soak:
    def __init__(self, args: argparse.Namespace, cluster: Cluster, log_dir: Path) -> None:
        self.args = args
        self.cluster = cluster
        self.log_dir = log_dir
        self.db = FaultDB(cluster, DB_NAME)  # the main thread's connection
        self.monitor_db = FaultDB(cluster, DB_NAME)  # the sampler thread's
        self.workers = Workers(self.db.url, log_dir, lease_seconds=args.lease_seconds, concurrency=args.concurrency)
        self.workers.env["DJANGO_DEBUG"] = "0"  # with DEBUG, Django keeps every query in memory
        self.figures = Figures("soak")
        self.faults: list[Fault] = []
        self.info: dict[int, WorkerInfo] = {}
        self.sender: subprocess.Popen | None = None
        self.sender_state: dict = {}
        self.state_path = log_dir / "sender-state.json"
        self.load_start = time.time()
        self.load_end: float | None = None
        self.backlog: list[tuple[float, int, float, int]] = []  # (t, unfinished runs, oldest s, events waiting)
        self.stuck: dict[str, float] = {}  # run id -> longest age seen above --stuck-seconds
        self.lock = threading.Lock()
        self.stop_sampling = threading.Event()
        self.sampler: threading.Thread | None = None
        self.drain_seconds: float | None = None
        self.cpu_start: tuple[float, float] | None = None
        self.cpu_end: tuple[float, float] | None = None
        self.taken_over_failures: list[str] = []
        self.calm_errors: list[str] = []  # worker ERROR lines far from any fault

    # -- setup ------------------------------------------------------------------------------

    def prepare(self) -> None:
        self.cluster.create_database(DB_NAME)
        env = {
            **os.environ, "DATABASE_URL": self.db.url, "DJANGO_SETTINGS_MODULE": "testproject.settings",
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        }
        result = subprocess.run(
            [sys.executable, "testproject/manage.py", "migrate", "--noinput"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )
        if result.returncode != 0:
            raise RuntimeError(f"migrate failed:\n{result.stdout}\n{result.stderr}")
        with self.cluster.connect(DB_NAME) as conn:
            conn.execute(EXEC_TABLE_DDL)
            conn.execute(f"CREATE INDEX ON {EXEC_TABLE} (pid, started)")  # victim selection

    def start_workers(self) -> None:
        procs = self.workers.start(self.args.workers)
        for proc in procs:
            self.info[proc.pid] = WorkerInfo(proc.pid, self.workers.procs.index(proc), 0.0)
        if not wait_ready(self.db, self.workers, self.args.workers, self.figures, timeout=60):
            raise RuntimeError(f"workers not ready: {self.figures.problems}\n{self.workers.logs()}")
        log.info("%d workers ready: pids %s", len(procs), [p.pid for p in procs])

    def start_sender(self) -> None:
        env = {
            **os.environ, "DATABASE_URL": self.db.url, "DJANGO_SETTINGS_MODULE": "testproject.settings",
            "DJANGO_DEBUG": "0", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
            "PYTHONUNBUFFERED": "1", "WORKFLOWS_LOG_LEVEL": "WARNING",
        }
        a = self.args
        with open(self.log_dir / "sender.log", "wb") as out:
            self.sender = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--sender", "--state", str(self.state_path),
                 "--rate", str(a.rate), "--tick", str(a.tick), "--delay", str(a.delay),
                 "--sleep-every", str(a.sleep_every), "--sleep", a.sleep],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        log.info("sender started (pid %d): %g events/s", self.sender.pid, a.rate)

    def read_sender_state(self) -> dict:
        try:
            self.sender_state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            pass
        return self.sender_state

    def stop_sender(self) -> None:
        if self.sender is None or self.sender.poll() is not None:
            return
        self.sender.send_signal(signal.SIGTERM)
        try:
            self.sender.wait(90)
        except subprocess.TimeoutExpired:
            log.error("the sender did not stop within 90s: killed")
            self.sender.kill()
            self.sender.wait(10)

    # -- sampling (a thread) ----------------------------------------------------------------

    def now(self) -> float:
        return time.time() - self.load_start

    def sample_rss(self, pid: int) -> None:
        kb = read_rss_kb(pid)
        if kb is not None:
            with self.lock:
                self.info[pid].rss.append((self.now(), kb))

    def sample(self) -> None:
        for proc in list(self.workers.procs):
            if proc.returncode is None and proc.pid in self.info:
                self.sample_rss(proc.pid)
        try:
            unfinished, oldest, oldest_id = self.monitor_db.query(
                "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(queued_at)), 0), "
                f"(array_agg(id::text ORDER BY queued_at))[1] FROM {RUN_TABLE} "
                "WHERE function_id = %s AND status NOT IN ('completed', 'failed', 'cancelled')",
                [FUNCTION],
            )[0]
            events = self.monitor_db.query(f"SELECT count(*) FROM {QUEUE_TABLE} WHERE kind = 'event'")[0][0]
        except Exception as exc:  # the database may be away (a fault)
            log.info("t=%s backlog not sampled: %s", fmt_t(self.now()), str(exc).strip()[:120])
            return
        oldest = float(oldest)
        self.backlog.append((self.now(), unfinished, oldest, events))
        if oldest > self.args.stuck_seconds and oldest_id:
            self.stuck[oldest_id] = max(oldest, self.stuck.get(oldest_id, 0.0))
            log.error("run %s unfinished for %.0fs (more than --stuck-seconds %g)", oldest_id, oldest,
                      self.args.stuck_seconds)
        with self.lock:
            rss = ", ".join(
                f"{pid}:{fmt_mb(info.rss[-1][1])}" for pid, info in list(self.info.items())
                if info.rss and info.killed is None
            )
        sent = self.read_sender_state().get("confirmed", 0)
        log.info("t=%s sent %d, unfinished runs %d (oldest %.1fs), events waiting %d; RSS MB %s",
                 fmt_t(self.now()), sent, unfinished, oldest, events, rss)

    def sampler_loop(self) -> None:
        next_at = time.monotonic()
        while not self.stop_sampling.is_set():
            try:
                self.sample()
            except Exception:
                log.exception("sampling failed")
            next_at += self.args.sample_every
            self.stop_sampling.wait(max(0.0, next_at - time.monotonic()))

    # -- faults -----------------------------------------------------------------------------

    def live_threads(self) -> int:
        return len([p for p in self.workers.alive() if p.pid not in self.workers.frozen]) * self.args.concurrency

    def pick_victim(self, *, to_kill: bool):
        """The live (not frozen) worker with the most step bodies in flight.

        Never SIGKILLed: the first ``--keep-workers`` workers started, so that some live
        through the whole soak (their memory is what "memory flat" is about).
        """
        count = min(self.args.keep_workers, self.args.workers - 1)
        keep = {p.pid for p in self.workers.procs[:count]} if to_kill else set()
        candidates = [p for p in self.workers.alive() if p.pid not in self.workers.frozen and p.pid not in keep]
        since = time.time() - 60

        def in_flight(proc) -> int:
            return self.db.query(
                f"SELECT count(*) FROM {EXEC_TABLE} e WHERE e.pid = %s AND e.started > %s AND NOT EXISTS ("
                f"SELECT 1 FROM {STEP_TABLE} s WHERE s.run_id = e.run_id::uuid AND s.step_id = e.step_id "
                "AND s.status = 'completed')",
                [proc.pid, since],
            )[0][0]

        counts = {p.pid: in_flight(p) for p in candidates}
        victim = max(candidates, key=lambda p: counts[p.pid])
        return victim, counts[victim.pid]

    def held_by(self, pid: int, since: float) -> dict[str, int]:
        """Unfinished runs whose latest step execution is ``pid``'s -> their completed steps."""
        rows = self.db.query(
            f"SELECT DISTINCT ON (e.run_id) e.run_id, e.pid FROM {EXEC_TABLE} e WHERE e.run_id IN ("
            f"SELECT run_id FROM {EXEC_TABLE} WHERE pid = %s AND started > %s) ORDER BY e.run_id, e.started DESC",
            [pid, since],
        )
        progress = self.progress_of([run_id for run_id, last in rows if last == pid])
        return {run_id: steps for run_id, steps in progress.items() if steps is not None}

    def progress_of(self, run_ids: list[str]) -> dict[str, int | None]:
        if not run_ids:
            return {}
        rows = self.db.query(
            "SELECT r.id::text, r.status, count(s.id) FILTER (WHERE s.status = 'completed') "
            f"FROM {RUN_TABLE} r LEFT JOIN {STEP_TABLE} s ON s.run_id = r.id "
            "WHERE r.id = ANY(%s::uuid[]) GROUP BY r.id, r.status",
            [run_ids],
        )
        return {run_id: (None if status in FINISHED else steps) for run_id, status, steps in rows}

    def inject(self, fault: Fault) -> None:
        kind = fault.kind
        if kind.startswith("db-stop-"):
            seconds = float(kind.removeprefix("db-stop-").removesuffix("s"))
            mode = "fast" if seconds < 10 else "immediate"
            fault.threads = self.live_threads()
            fault.start, fault.end = self.cluster.outage(seconds, mode)
            fault.detail = f"{mode}, down {fault.end - fault.start:.1f}s"
        elif kind == "terminate-backends":
            fault.threads = self.live_threads()
            rounds = self.cluster.terminate_repeatedly(DB_NAME, every=0.5, for_seconds=self.args.terminate_seconds)
            fault.start, fault.end = rounds[0][0], rounds[-1][0]
            fault.rounds = len(rounds)
            fault.detail = f"{len(rounds)} rounds over {fault.end - fault.start:.1f}s, {sum(n for _, n in rounds)} sessions"
        elif kind == "sigkill-replace":
            victim, busy = self.pick_victim(to_kill=True)
            self.sample_rss(victim.pid)
            fault.threads = self.args.concurrency
            at, replacement = self.workers.kill_and_replace(victim)
            fault.start = fault.end = at
            fault.pid = victim.pid
            self.info[victim.pid].killed = at - self.load_start
            self.info[replacement.pid] = WorkerInfo(
                replacement.pid, self.workers.procs.index(replacement), time.time() - self.load_start,
                replaces=victim.pid,
            )
            fault.detail = f"pid {victim.pid} ({busy} bodies in flight) -> replacement {replacement.pid}"
        elif kind == "sigstop-sigcont":
            victim, busy = self.pick_victim(to_kill=False)
            fault.threads = self.args.concurrency
            fault.pid = victim.pid
            freeze_at = self.workers.freeze(victim)
            fault.start = freeze_at
            self.info[victim.pid].frozen.append(freeze_at - self.load_start)
            time.sleep(0.3)  # statements sent just before SIGSTOP land
            held = self.held_by(victim.pid, freeze_at - 60)
            lease = self.args.lease_seconds

            def taken_over() -> bool:
                if time.time() - freeze_at < lease + 1:
                    return False
                now = self.progress_of(list(held))
                return all(now.get(run_id) is None or now[run_id] > steps for run_id, steps in held.items())

            limit = lease + self.args.freeze_limit
            ok = self._wait(taken_over, limit)
            fault.end = self.workers.thaw(victim)
            fault.detail = (f"pid {victim.pid} ({busy} bodies in flight) frozen {fault.end - freeze_at:.1f}s, "
                            f"{len(held)} runs it was in " + ("taken over" if ok else "NOT all taken over"))
            if not ok:
                left = {r: s for r, s in self.progress_of(list(held)).items() if s is not None and s <= held[r]}
                self.taken_over_failures.append(
                    f"fault #{fault.number}: runs of frozen worker {victim.pid} not taken over within {limit:.0f}s: "
                    f"{sorted(left)[:5]}"
                )
        else:
            raise ValueError(kind)

    def _wait(self, predicate, timeout: float, interval: float = 0.1) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if predicate():
                    return True
            except Exception as exc:
                log.info("waiting: %s", str(exc).strip()[:120])
            if time.monotonic() > deadline:
                return False
            time.sleep(interval)

    def measure_recovery(self, fault: Fault, timeout: float) -> None:
        """From the fault's end to the first step completed after it (0.1 s polling)."""
        try:
            baseline = self.db.completed_steps()
        except Exception:
            baseline = None
        deadline = time.monotonic() + max(1.0, timeout)
        while time.monotonic() < deadline:
            try:
                count = self.db.completed_steps()
            except Exception:
                count = None
            if count is not None:
                if baseline is None:
                    baseline = count
                elif count > baseline:
                    fault.recover = round(time.time() - fault.end, 2)
                    return
            time.sleep(0.1)

    # -- the soak ---------------------------------------------------------------------------

    def run(self) -> None:
        a = self.args
        duration = a.minutes * 60
        self.load_start = time.time()
        for info in self.info.values():
            info.started = -1.0
        self.cpu_start = cpu_times()
        self.sampler = threading.Thread(target=self.sampler_loop, name="sampler", daemon=True)
        self.sampler.start()
        self.start_sender()
        schedule = []
        k = 0
        while (k + 0.5) * a.fault_every < duration:
            schedule.append((k + 0.5) * a.fault_every)
            k += 1
        for number, at in enumerate(schedule, start=1):
            kind = ROTATION[(number - 1) % len(ROTATION)]
            if not self._sleep_until(at):
                break
            fault = Fault(number, kind, at)
            late = self.now() - at
            log.info("fault #%d at t=%s: %s%s", number, fmt_t(self.now()), kind,
                     f" ({late:.0f}s late: the previous one overran)" if late > 2 else "")
            self.inject(fault)
            self.faults.append(fault)
            next_at = schedule[number] if number < len(schedule) else duration
            self.measure_recovery(fault, min(a.recover_timeout, next_at - self.now() - 1))
            log.info("fault #%d %s done: %s; recovered %s", number, kind, fault.detail,
                     "-" if fault.recover is None else f"{fault.recover:.2f}s after its end")
        self._sleep_until(duration)
        log.info("t=%s stopping the sender", fmt_t(self.now()))
        self.stop_sender()
        self.load_end = time.time()
        self.cpu_end = cpu_times()
        state = self.read_sender_state()
        log.info("sender: %s", {k: v for k, v in state.items() if k != "uncertain"})

    def _sleep_until(self, t: float) -> bool:
        """Sleep until ``t`` seconds after the load started; False if the sender died."""
        while self.now() < t:
            if self.sender is not None and self.sender.poll() is not None:
                self.figures.problem(f"the sender exited with code {self.sender.returncode} at t={fmt_t(self.now())}")
                log.error("the sender exited (%s): see %s", self.sender.returncode, self.log_dir / "sender.log")
                return False
            time.sleep(min(1.0, max(0.0, t - self.now())))
        return True

    # -- the end ----------------------------------------------------------------------------

    def finish(self) -> None:
        state = self.sender_state
        confirmed = state.get("confirmed", 0)
        uncertain = set(state.get("uncertain", []))
        runs = self.db.runs()
        seqs = Counter(data.get("seq") for _, _, data in runs.values() if "seq" in data)
        present_uncertain = len([s for s in uncertain if s in seqs])
        self.db.sent = confirmed + present_uncertain
        started = time.monotonic()
        self.drain()
        self.drain_seconds = time.monotonic() - started
        finished = self.db.finished_runs()
        completed = finished >= self.db.sent
        if finished < self.db.sent:
            statuses = dict(self.db.query(
                f"SELECT status, count(*) FROM {RUN_TABLE} WHERE function_id = %s GROUP BY status", [FUNCTION]
            ))
            self.figures.problem(
                f"after the load stopped and {self.drain_seconds:.0f}s of draining (--drain-timeout "
                f"{self.args.drain_timeout:g}): {finished}/{self.db.sent} runs finished, runs by status {statuses}, "
                f"queue {self.db.leftover_queue()}"
            )
        log.info("drained in %.1fs (completed: %s)", self.drain_seconds, completed)
        # Events: each one sent starts exactly one run (seq 0 .. next_seq-1, uncertain ones at most one).
        runs = self.db.runs()
        seqs = Counter(data.get("seq") for _, _, data in runs.values() if "seq" in data)
        twice = sorted(s for s, n in seqs.items() if n > 1)
        lost = [s for s in range(state.get("next_seq", 0)) if s not in seqs and s not in uncertain]
        strangers = sorted(s for s in seqs if not isinstance(s, int) or s >= state.get("next_seq", 0))
        if twice:
            self.figures.problem(f"{len(twice)} events started more than one run: seq {twice[:10]}")
        if lost:
            self.figures.problem(f"{len(lost)} events sent started no run: seq {lost[:10]}; "
                                 + self.event_evidence(lost[:5]))
        if strangers:
            self.figures.problem(f"runs of events the sender does not know: seq {strangers[:10]}")
        if runs and self.db.finished_runs() == len(runs):
            # Every run there is finished (some may have failed, some events may have started
            # none: reported above and by verify): probe that every surviving worker takes work.
            self.db.sent = len(runs)
            probed = Figures("probe")
            probe(self.db, self.workers, probed)
            self.figures.extra.update(probed.extra)
            for text in probed.problems:
                if "finished without completing" not in text:  # the failed runs: verify names them
                    self.figures.problem(text)
        else:
            log.error("probe skipped: not every run finished")
        self.stop_sampling.set()
        by_key = verify(
            self.db, self.workers, self.figures,
            may_rerun=lambda e: any(f.in_flight(e) for f in self.faults),
            rerun_rule="a body may run again only if it was in flight at a fault",
            max_reruns=sum(f.bound for f in self.faults),
        )
        for group in by_key.values():
            for e in group[:-1]:
                fault = next((f for f in self.faults if f.in_flight(e)), None)
                if fault is not None:
                    fault.reexecuted += 1
        over = [f"#{f.number} {f.kind}: {f.reexecuted} > {f.bound}" for f in self.faults if f.reexecuted > f.bound]
        if over:
            self.figures.problem(f"faults with more re-executed bodies than threads in flight: {over}")
        for text in self.taken_over_failures:
            self.figures.problem(text)
        if self.stuck:
            worst = sorted(self.stuck.items(), key=lambda kv: -kv[1])[:5]
            self.figures.problem(
                f"{len(self.stuck)} runs were unfinished for more than {self.args.stuck_seconds:g}s during the soak: "
                + ", ".join(f"{run_id} ({age:.0f}s)" for run_id, age in worst)
            )
        no_recovery = [f"#{f.number} {f.kind}" for f in self.faults if f.recover is None]
        if no_recovery:
            self.figures.problem(f"no step completed within {self.args.recover_timeout:g}s after fault(s) {no_recovery}")
        self.check_memory()

    def drain(self) -> None:
        """Until every run sent has finished, ``--drain-timeout`` passes, or nothing is left to
        do for 15 s (no unfinished run, no queue item: the runs missing will never come)."""
        deadline = time.monotonic() + self.args.drain_timeout
        idle_since = None
        while time.monotonic() < deadline:
            try:
                if self.db.finished_runs() >= self.db.sent:
                    return
                unfinished = self.db.query(
                    f"SELECT count(*) FROM {RUN_TABLE} WHERE function_id = %s "
                    "AND status NOT IN ('completed', 'failed', 'cancelled')", [FUNCTION],
                )[0][0]
                idle = not unfinished and not self.db.leftover_queue()
            except Exception as exc:
                log.info("draining: %s", str(exc).strip()[:120])
                idle = False
            if not idle:
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > 15:
                log.error("nothing left to run, but %d of %d runs are missing", self.db.sent - self.db.finished_runs(),
                          self.db.sent)
                return
            if not self.workers.alive():
                return
            time.sleep(0.5)

    def released_items(self, at_least: int) -> list[str]:
        """Queue items a worker released after an error ``at_least`` times (worker logs)."""
        pattern = re.compile(r"^(\S+ \S+) ERROR \S+: worker \S+: items \[([^\]]*)\] raised (\w+)")
        seen: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for path in sorted(self.log_dir.glob("worker-*.log")):
            for line in path.read_text(errors="replace").splitlines():
                match = pattern.match(line)
                if match:
                    for item in re.findall(r"\((\d+), '(\w+)'\)", match.group(2)):
                        seen[f"{item[0]} ({item[1]})"].append((match.group(1), match.group(3)))
        found = sorted(((k, v) for k, v in seen.items() if len(v) >= at_least), key=lambda kv: -len(kv[1]))
        return [
            f"item {key}: {len(times)} times, {min(t for t, _ in times)[11:]} - {max(t for t, _ in times)[11:]}, "
            f"{dict(Counter(e for _, e in times))}"
            for key, times in found
        ]

    def event_evidence(self, seqs: list[int]) -> str:
        """What the database and the worker logs say about the events of ``seqs``."""
        rows = self.db.query(
            "SELECT e.id::text, e.data->>'seq', e.dedup_id, e.received_at, e.error, s.event_id::text, s.seen_at, "
            f"(SELECT count(*) FROM {QUEUE_TABLE} q WHERE q.event_id = e.id), "
            f"(SELECT count(*) FROM {RUN_TABLE} r WHERE r.event_id = e.id) "
            "FROM django_workflows_event e LEFT JOIN django_workflows_seeneventid s ON s.key = e.dedup_id "
            "WHERE e.name = %s AND e.data->>'seq' = ANY(%s) ORDER BY e.received_at",
            [EVENT, [str(seq) for seq in seqs]],
        )
        parts = []
        for event_id, seq, dedup, received, error, seen_event, seen_at, queued, runs in rows:
            mentions = []
            for path in sorted(self.log_dir.glob("worker-*.log")):
                mentions += [f"{path.name}: {line[:400]}" for line in path.read_text(errors="replace").splitlines()
                             if event_id in line]
            parts.append(
                f"[event {event_id} seq {seq} id {dedup} received {received.isoformat()} error {error} "
                f"seen-id row -> event {seen_event} at {seen_at.isoformat() if seen_at else None}, "
                f"queue items {queued}, runs {runs}; log lines: {mentions[:4]}]"
            )
        for text in parts:
            log.error("lost event: %s", text)
        return "events: " + (" ".join(parts) if parts else "no event row stored for them")

    def warm_at(self) -> float:
        """The warm-up: --warmup-minutes, at most a third of the soak."""
        return min(self.args.warmup_minutes * 60, self.args.minutes * 60 / 3)

    def memory(self, info: WorkerInfo) -> dict:
        """RSS after the worker's own warm-up: the first sample then, the last, the slope.

        ``checked``: the worker was not killed and was sampled for at least a third of the
        soak after its warm-up (the workers never SIGKILLed, and long-lived replacements).
        """
        warm = next(((t, kb) for t, kb in info.rss if t >= info.started + self.warm_at()), None)
        end = info.rss[-1] if info.rss else None
        result = {"warm": warm[1] if warm else None, "end": end[1] if end else None, "slope": None,
                  "checked": False}
        if warm is None or end is None:
            return result
        after = [(t, kb) for t, kb in info.rss if t >= warm[0]]
        if len(after) >= 3:
            mean_t = sum(t for t, _ in after) / len(after)
            mean_kb = sum(kb for _, kb in after) / len(after)
            var = sum((t - mean_t) ** 2 for t, _ in after)
            if var > 0:
                result["slope"] = sum((t - mean_t) * (kb - mean_kb) for t, kb in after) / var * 3600 / 1024
        result["checked"] = info.killed is None and end[0] - warm[0] >= self.args.minutes * 60 / 3
        return result

    def check_memory(self) -> None:
        limit_kb = self.args.rss_growth_mb * 1024
        checked = 0
        for info in self.info.values():
            mem = self.memory(info)
            if not mem["checked"]:
                continue
            checked += 1
            if mem["end"] - mem["warm"] > limit_kb:
                self.figures.problem(
                    f"worker {info.pid}: RSS grew {(mem['end'] - mem['warm']) / 1024:.1f} MB after its warm-up "
                    f"({fmt_mb(mem['warm'])} -> {fmt_mb(mem['end'])} MB; limit {self.args.rss_growth_mb:g} MB)"
                )
        if not checked:
            self.figures.problem("memory: no worker lived long enough after its warm-up to be checked")

    # -- the report -------------------------------------------------------------------------

    def worker_log_counts(self) -> dict[int, Counter]:
        """Lines per level in each worker's log; "calm" counts ERROR and CRITICAL lines logged
        more than ``--calm-after`` seconds after the end of every fault (and not during one)."""
        counts: dict[int, Counter] = {}
        pattern = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ (WARNING|ERROR|CRITICAL) ")
        windows = [(f.start - 1.0, f.end + self.args.calm_after) for f in self.faults]
        for info in self.info.values():
            path = self.log_dir / f"worker-{info.index:02d}.log"
            counter: Counter = Counter()
            try:
                for line in path.read_text(errors="replace").splitlines():
                    match = pattern.match(line)
                    if match:
                        counter[match.group(2)] += 1
                        if match.group(2) != "WARNING":
                            at = time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S"))
                            if not any(lo - 1 <= at <= hi + 1 for lo, hi in windows):
                                counter["calm ERROR"] += 1
                                self.calm_errors.append(f"worker-{info.index:02d}.log: {line[:300]}")
                    elif line.startswith("Traceback"):
                        counter["Traceback"] += 1
            except OSError:
                pass
            counts[info.pid] = counter
        return counts

    def report(self, machine: list[str]) -> list[str]:
        a, fig = self.args, self.figures
        state = self.sender_state
        load = ((self.load_end or time.time()) - self.load_start)
        lines = ["", "== django-workflows soak ==", *machine]
        lines.append(
            f"setup: {a.workers} runworkers processes x {a.concurrency} threads, lease {a.lease_seconds:g}s, "
            f"DEBUG off, log level WARNING; load {a.rate:g} events/s of '{FUNCTION}' (3 steps of {a.delay:g}s"
            + (f"; 1 in {a.sleep_every} with a {a.sleep} sleep step" if a.sleep_every else "")
            + f"), a fault every {a.fault_every:g}s in rotation {', '.join(ROTATION)}"
        )
        drain = "-" if self.drain_seconds is None else f"{self.drain_seconds:.1f}s"
        lines.append(f"duration: {load / 60:.1f} min of load, then {drain} until every run had finished; "
                     f"{len(self.faults)} faults")
        if self.cpu_start and self.cpu_end and self.cpu_end[1] > self.cpu_start[1]:
            busy = (self.cpu_end[0] - self.cpu_start[0]) / (self.cpu_end[1] - self.cpu_start[1])
            lines.append(f"machine CPU busy during the load: {busy:.0%} (every process, other work included); "
                         f"load average at the end {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
        completed = sum(1 for status, _, _ in self.db.runs().values() if status == "completed")
        lines.append(
            f"runs: {state.get('confirmed', 0):,} events sent (+{fig.extra.get('probe_runs', 0)} probe runs), "
            f"{fig.runs:,} runs, {completed:,} completed; steps recorded {fig.steps:,}; step-body executions "
            f"{fig.executions:,}, re-executed {fig.reexecuted}"
        )
        lines.append(
            f"sender: {state.get('batches', 0):,} batches, {state.get('outages', 0)} batches had to be sent again "
            f"({state.get('failed_attempts', 0)} failed attempts), {len(state.get('uncertain', []))} given up"
        )
        if self.backlog:
            worst = max(self.backlog, key=lambda b: b[2])
            lines.append(
                f"backlog (every {a.sample_every:g}s, {len(self.backlog)} samples): unfinished runs median "
                f"{statistics.median(b[1] for b in self.backlog):.0f}, max {max(b[1] for b in self.backlog)}; "
                f"oldest unfinished run max {worst[2]:.1f}s (t={fmt_t(worst[0])}); events waiting max "
                f"{max(b[3] for b in self.backlog)}"
            )
        lines.append("")
        lines.append(f"{'#':>3} {'t':>5}  {'fault':<19} {'re-exec':>7} {'bound':>5} {'recover':>8}  detail")
        for f in self.faults:
            recover = "-" if f.recover is None else f"{f.recover:.2f}s"
            lines.append(f"{f.number:>3} {fmt_t(f.start - self.load_start):>5}  {f.kind:<19} {f.reexecuted:>7} "
                         f"{f.bound:>5} {recover:>8}  {f.detail}")
        lines.append("")
        lines.append(f"{'per fault kind':<19} {'faults':>6} {'re-executed':>11} {'recover median':>14} {'max':>7}")
        for kind in ROTATION:
            group = [f for f in self.faults if f.kind == kind]
            if not group:
                continue
            recovers = [f.recover for f in group if f.recover is not None]
            med = f"{statistics.median(recovers):.2f}s" if recovers else "-"
            top = f"{max(recovers):.2f}s" if recovers else "-"
            lines.append(f"{kind:<19} {len(group):>6} {sum(f.reexecuted for f in group):>11} {med:>14} {top:>7}")
        lines.append("")
        counts = self.worker_log_counts()
        lines.append(f"RSS MB per worker (samples every {a.sample_every:g}s; warm = first sample "
                     f"{self.warm_at() / 60:g} min after the worker started; * = checked for growth):")
        lines.append(f"{'pid':>8}  {'life':<44} {'start':>6} {'warm':>6} {'end':>6} {'max':>6} "
                     f"{'end-warm':>8} {'MB/h':>6}  log lines")
        for info in self.info.values():
            if info.replaces is not None:
                life = f"replaced {info.replaces} at {fmt_t(info.started)}"
            else:
                life = "from the start"
            if info.killed is not None:
                life += f", killed at {fmt_t(info.killed)}"
            if info.frozen:
                life += ", frozen at " + ",".join(fmt_t(t) for t in info.frozen)
            mem = self.memory(info)
            start = info.rss[0][1] if info.rss else None
            top = max((kb for _, kb in info.rss), default=None)
            growth = "-" if mem["warm"] is None else f"{(mem['end'] - mem['warm']) / 1024:+.1f}"
            slope = "-" if mem["slope"] is None else f"{mem['slope']:+.1f}"
            logs = ", ".join(f"{k} {v}" for k, v in sorted(counts.get(info.pid, Counter()).items())) or "none"
            pid = f"{'*' if mem['checked'] else ''}{info.pid}"
            lines.append(f"{pid:>8}  {life:<44} {fmt_mb(start):>6} {fmt_mb(mem['warm']):>6} "
                         f"{fmt_mb(mem['end']):>6} {fmt_mb(top):>6} {growth:>8} {slope:>6}  {logs}")
        lines.append(f"logs: {self.log_dir}")
        released = self.released_items(5)
        if released:
            lines.append(f"queue items released after an error 5 times or more ({len(released)}; worker logs):")
            lines.extend(f"  {text}" for text in released[:10])
        if self.calm_errors:
            lines.append(f"worker ERROR lines more than {a.calm_after:g}s after any fault ({len(self.calm_errors)}), "
                         "first ones:")
            lines.extend(f"  {text}" for text in self.calm_errors[:10])
        lines.append("")
        lines.append("checks: every run completed; one run per event; each step recorded once, never run again "
                     "once recorded; re-executions only for bodies in flight at a fault, within the bound; "
                     "no queue item left; no run stuck; workers alive and taking work; memory flat "
                     f"(<= {a.rss_growth_mb:g} MB growth after the warm-up, workers marked *)")
        for text in fig.problems:
            lines.append(f"  PROBLEM: {text[:1500]}")
        lines.append("PASS" if not fig.problems else f"FAIL ({len(fig.problems)} problem(s))")
        return lines


# -- main ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30, help="minutes of load (default 30)")
    parser.add_argument("--workers", type=int, default=4, help="runworkers processes (default 4)")
    parser.add_argument("--concurrency", type=int, default=4, help="threads per worker process (default 4)")
    parser.add_argument("--keep-workers", type=int, default=2,
                        help="the first N workers are never SIGKILLed (memory over the whole soak; default 2)")
    parser.add_argument("--lease-seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=20, help="events per second (default 20)")
    parser.add_argument("--tick", type=float, default=0.25, help="the sender sends a batch every TICK seconds")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds of work per step body (default 0.05)")
    parser.add_argument("--sleep-every", type=int, default=5, help="one event in N has a sleep step (0: none)")
    parser.add_argument("--sleep", default="2s", help="that sleep (default 2s)")
    parser.add_argument("--fault-every", type=float, default=60.0, help="seconds between faults (default 60)")
    parser.add_argument("--terminate-seconds", type=float, default=5.0,
                        help="terminate the backends every 0.5 s for this long (default 5)")
    parser.add_argument("--freeze-limit", type=float, default=30.0,
                        help="a frozen worker is resumed at most lease + this many seconds after SIGSTOP")
    parser.add_argument("--recover-timeout", type=float, default=45.0)
    parser.add_argument("--sample-every", type=float, default=30.0, help="RSS and backlog sampling period")
    parser.add_argument("--stuck-seconds", type=float, default=120.0,
                        help="a run unfinished this long at a sample counts as stuck")
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument("--warmup-minutes", type=float, default=5.0)
    parser.add_argument("--rss-growth-mb", type=float, default=20.0,
                        help="most a worker's RSS may grow from the end of the warm-up to the end")
    parser.add_argument("--calm-after", type=float, default=30.0,
                        help="worker ERROR lines this long after every fault are listed in the report")
    parser.add_argument("--log-dir", help="where the worker, sender and server logs go (default: a new temp dir)")
    parser.add_argument("--sender", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.sender:
        sender_main(args)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    log_dir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="wf-soak-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    cluster = None
    soak = None
    lines: list[str] = []
    code = 1
    try:
        cluster = Cluster.create()
        log.info("cluster at %s, port %d; logs in %s", cluster.base, cluster.port, log_dir)
        machine = machine_lines(cluster)
        soak = Soak(args, cluster, log_dir)
        soak.prepare()
        soak.start_workers()
        soak.run()
        soak.finish()
        lines = soak.report(machine)
        code = 0 if not soak.figures.problems else 1
    except KeyboardInterrupt as exc:
        log.error("interrupted (%s): cleaning up", str(exc) or "SIGINT")
        code = 130
    except Exception:
        log.exception("the soak failed")
        code = 1
    finally:
        if soak is not None:
            soak.stop_sampling.set()
            try:
                soak.stop_sender()
            except Exception:
                log.exception("stopping the sender")
            soak.workers.close()
            soak.db.close()
            soak.monitor_db.close()
        if cluster is not None:
            try:
                shutil.copy(cluster.log, log_dir / "postgresql.log")
            except OSError:
                pass
            cluster.destroy()
            log.info("cluster removed (%s)", cluster.base)
    if lines:
        print("\n".join(lines), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
