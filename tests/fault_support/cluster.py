"""A throwaway PostgreSQL cluster on a port of its own, for the fault tests.

PostgreSQL refuses to run as root: when the tests run as root, ``initdb``, ``pg_ctl`` and
the server run as the ``postgres`` OS user (``runuser -u postgres --``), in a directory
under the system's temporary directory that belongs to that user. Trust authentication,
user ``postgres``, listening on 127.0.0.1 only, unix socket inside that directory.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psycopg

OS_USER = "postgres"  # who runs the server when the tests run as root


class ClusterUnavailable(Exception):
    """No PostgreSQL server binaries here (the tests using the cluster are skipped)."""


def find_bindir() -> Path:
    """The directory of initdb and pg_ctl: $FAULT_PG_BIN, pg_config, Debian's layout, $PATH."""
    candidates: list[str] = []
    if os.environ.get("FAULT_PG_BIN"):
        candidates.append(os.environ["FAULT_PG_BIN"])
    if shutil.which("pg_config"):
        try:
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
            candidates.append(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    if shutil.which("initdb"):
        candidates.append(str(Path(shutil.which("initdb")).parent))
    for candidate in candidates:
        if candidate and all((Path(candidate) / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(candidate)
    raise ClusterUnavailable(
        "no PostgreSQL server binaries (initdb, pg_ctl) found; set FAULT_PG_BIN to their directory"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """``Cluster.create()``; ``destroy()`` stops it and removes its directory."""

    def __init__(self, bindir: Path, base: Path, port: int) -> None:
        self.bindir = bindir
        self.base = base
        self.data = base / "data"
        self.log = base / "server.log"
        self.port = port
        self.host = "127.0.0.1"
        self._lock = threading.Lock()

    # -- life cycle ------------------------------------------------------------------------

    @classmethod
    def create(cls) -> Cluster:
        bindir = find_bindir()
        as_root = os.geteuid() == 0
        if as_root and not shutil.which("runuser"):
            raise ClusterUnavailable("running as root, and runuser is missing to run PostgreSQL as postgres")
        base = Path(tempfile.mkdtemp(prefix="wf-faults-pg-"))
        if as_root:
            user = pwd.getpwnam(OS_USER)
            os.chown(base, user.pw_uid, user.pw_gid)
        cluster = cls(bindir, base, free_port())
        try:
            cluster._run(
                "initdb", "-D", str(cluster.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                "--no-sync", "--no-instructions", timeout=120,
            )
            cluster.start()
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    def _command(self, tool: str, *args: str) -> list[str]:
        command = [str(self.bindir / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", OS_USER, "--", *command]
        return command

    def _run(self, tool: str, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            self._command(tool, *args), cwd=self.base, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n"
                f"{self.server_log()}"
            )
        return result

    def start(self) -> None:
        """Start the server and wait until it accepts connections (crash recovery included)."""
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses={self.host} "
            "-c max_connections=300 -c fsync=off -c full_page_writes=off"
        )
        with self._lock:
            self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "120",
                      "-o", options, timeout=150)

    def stop(self, mode: str = "fast") -> None:
        """``fast``: clients disconnected, clean shutdown; ``immediate``: a crash (recovery at start)."""
        assert mode in ("smart", "fast", "immediate"), mode
        with self._lock:
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "60", timeout=90)

    def is_running(self) -> bool:
        return self._run("pg_ctl", "status", "-D", str(self.data), check=False, timeout=30).returncode == 0

    def ensure_running(self) -> None:
        if not self.is_running():
            self.start()

    def outage(self, seconds: float, mode: str = "fast") -> tuple[float, float]:
        """Stop the server, start it again ``seconds`` later (wall-clock times of both ends).

        The second time is when the restarted server accepts connections again.
        """
        self.stop(mode)
        stopped = time.time()
        time.sleep(max(0.0, seconds - (time.time() - stopped)))
        self.start()
        return stopped, time.time()

    def destroy(self) -> None:
        """Stop the server (immediately: it is thrown away) and remove its directory."""
        try:
            if self.data.exists() and self.is_running():
                self.stop("immediate")
        except Exception:
            pass
        shutil.rmtree(self.base, ignore_errors=True)

    def server_log(self, chars: int = 3000) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return f"--- PostgreSQL log (last {chars} chars)\n{text[-chars:]}"

    # -- databases -------------------------------------------------------------------------

    def url(self, dbname: str) -> str:
        return f"postgres://postgres@{self.host}:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        # A statement timeout: a test that hangs is worse than one that fails.
        return psycopg.connect(
            host=self.host, port=self.port, user="postgres", dbname=dbname, autocommit=True, connect_timeout=5,
            options="-c statement_timeout=60s",
        )

    def create_database(self, name: str, template: str | None = None) -> None:
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            suffix = f' TEMPLATE "{template}"' if template else ""
            conn.execute(f'CREATE DATABASE "{name}"{suffix}')

    def drop_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # -- faults ----------------------------------------------------------------------------

    def terminate_backends(self, dbname: str, conn: psycopg.Connection | None = None) -> int:
        """``pg_terminate_backend`` every other session on ``dbname``; returns how many."""
        sql = (
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()"
        )
        if conn is not None:
            return conn.execute(sql, [dbname]).fetchone()[0]
        with self.connect() as own:
            return own.execute(sql, [dbname]).fetchone()[0]

    def terminate_repeatedly(self, dbname: str, *, every: float, for_seconds: float) -> list[tuple[float, int]]:
        """Terminate the backends of ``dbname`` every ``every`` seconds for ``for_seconds``.

        Returns (wall-clock time, sessions terminated) for each round. The terminating
        session is on the ``postgres`` database, so it is never among its own victims.
        """
        rounds = []
        with self.connect() as conn:
            start = time.monotonic()
            tick = 0
            while True:
                rounds.append((time.time(), self.terminate_backends(dbname, conn)))
                tick += 1
                next_at = start + tick * every
                if next_at - start > for_seconds + 1e-6:
                    break
                time.sleep(max(0.0, next_at - time.monotonic()))
        return rounds
