"""The worker processes of a fault test: start, SIGKILL and replace, SIGSTOP/SIGCONT, logs.

Every worker is ``python -m fault_support.worker --concurrency N`` on the fault cluster's
test database. The pool remembers which processes the test killed on purpose, so that any
other exit is reported as a worker that did not survive the fault.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent  # the repository
TESTS = ROOT / "tests"


class Workers:
    def __init__(self, db_url: str, log_dir: Path, *, lease_seconds: float, concurrency: int) -> None:
        self.env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "DJANGO_SETTINGS_MODULE": "testproject.settings",
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]),
            "PYTHONUNBUFFERED": "1",
            "WORKFLOWS_LEASE_SECONDS": str(lease_seconds),
            "WORKFLOWS_LOG_LEVEL": "WARNING",
        }
        self.env.pop("FAULT_CLOCK_SKEW_SECONDS", None)
        self.log_dir = log_dir
        self.concurrency = concurrency
        self.procs: list[subprocess.Popen] = []
        self.killed: dict[int, float] = {}  # pid -> wall-clock time the test SIGKILLed it
        self.frozen: set[int] = set()
        self.skew: dict[int, float] = {}

    # -- starting and faults ---------------------------------------------------------------

    def start(self, count: int = 1, *, skew: float | None = None) -> list[subprocess.Popen]:
        env = dict(self.env)
        if skew is not None:
            env["FAULT_CLOCK_SKEW_SECONDS"] = str(skew)
        started = []
        for _ in range(count):
            with open(self.log_dir / f"worker-{len(self.procs):02d}.log", "wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "fault_support.worker", "--concurrency", str(self.concurrency)],
                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                )
            self.procs.append(proc)
            if skew is not None:
                self.skew[proc.pid] = skew
            started.append(proc)
        return started

    def kill(self, proc: subprocess.Popen) -> float:
        """SIGKILL ``proc`` (reaped before returning); returns when, by the wall clock."""
        proc.send_signal(signal.SIGKILL)
        at = time.time()
        proc.wait(10)
        self.killed[proc.pid] = at
        return at

    def kill_and_replace(self, proc: subprocess.Popen) -> tuple[float, subprocess.Popen]:
        at = self.kill(proc)
        [replacement] = self.start(1, skew=self.skew.get(proc.pid))
        return at, replacement

    def freeze(self, proc: subprocess.Popen) -> float:
        """SIGSTOP: the whole process stops, heartbeat included; returns when (wall clock)."""
        at = time.time()
        proc.send_signal(signal.SIGSTOP)
        self.frozen.add(proc.pid)
        return at

    def thaw(self, proc: subprocess.Popen) -> float:
        """SIGCONT; returns the wall-clock time just before the signal was sent."""
        at = time.time()
        proc.send_signal(signal.SIGCONT)
        self.frozen.discard(proc.pid)
        return at

    # -- state -----------------------------------------------------------------------------

    def alive(self) -> list[subprocess.Popen]:
        return [p for p in self.procs if p.poll() is None]

    def survivors_expected(self) -> list[subprocess.Popen]:
        """The workers the test did not kill: each must still be running."""
        return [p for p in self.procs if p.pid not in self.killed]

    def unexpected_exits(self) -> list[tuple[int, int]]:
        return [
            (p.pid, p.returncode) for p in self.procs if p.pid not in self.killed and p.poll() is not None
        ]

    def log_of(self, proc: subprocess.Popen) -> str:
        index = self.procs.index(proc)
        return (self.log_dir / f"worker-{index:02d}.log").read_text(errors="replace")

    def logs(self, chars: int = 6000, limit: int = 6) -> str:
        """The tail of the logs of the workers that wrote something (at most ``limit`` of them)."""
        parts = []
        for index, proc in enumerate(self.procs):
            text = (self.log_dir / f"worker-{index:02d}.log").read_text(errors="replace").strip()
            if not text:
                continue
            state = "running" if proc.poll() is None else f"exit code {proc.returncode}"
            if proc.pid in self.killed:
                state += ", killed by the test"
            parts.append(f"--- worker-{index:02d}.log (pid {proc.pid}, {state}; last {chars} chars)\n{text[-chars:]}")
        if len(parts) > limit:
            parts = parts[:limit] + [f"... and {len(parts) - limit} more logs in {self.log_dir}"]
        return "\n".join(parts) or f"(no worker wrote to its log in {self.log_dir})"

    def close(self) -> None:
        """Stop every worker: SIGCONT (a frozen one), SIGTERM, then SIGKILL after 10 s."""
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGCONT)
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
