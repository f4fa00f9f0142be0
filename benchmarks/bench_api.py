#!/usr/bin/env python
"""Events per second through the REST API (``POST /workflows/api/events``) vs ``wf.send``.

    .venv/bin/python benchmarks/bench_api.py               # ~1.5 minutes
    .venv/bin/python benchmarks/bench_api.py --repeat 1 --single 500 --batched 5000   # quick

Its own PostgreSQL database (``dw_benchapi``, dropped and recreated, migrated, with
bench_engine.py's helpers). The API is served by gunicorn, as a site would deploy it:
``--workers`` (4) sync workers, ``DEBUG=False``, the app loaded through
``bench_api:application()`` (``django.core.wsgi.get_wsgi_application()`` with the
benchmark's settings, and ``CONN_MAX_AGE`` as given). Two servers run side by side: one
with Django's default ``CONN_MAX_AGE=0`` (a new database connection per request), one with
persistent connections (``--conn-max-age``, 60 s).

A client of ``--threads`` (8) threads, each with its own ``http.client`` connection (gunicorn's
sync workers close the connection after each response; http.client opens the next one)
and a ``send``-scope API key, posts ``--single`` (2,000) requests of 1 event, and
``--batched`` (20,000) events in requests of ``--batch`` (100). The bodies are made before
the clock starts; events/s = events / wall time from the first request to the last answer.
Every answer must be a 201 with as many ids as events sent, and the table must then hold
them all.

The same counts then go through ``wf.send`` in this process, one call (its own transaction)
per event or per 100 events: from one thread (what one view calling ``wf.send`` pays), and
from ``--workers`` threads (the same concurrency as the server's workers).
Each measurement starts on emptied tables and runs ``--repeat`` (3) times, the kinds
interleaved; the figures are medians. No worker runs: this is the cost of taking events in
(the event rows and their queue items), not of running anything.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import bench_engine  # noqa: E402

DB_NAME = "dw_benchapi"
EVENT = "bench.api"
PATH = "/workflows/api/events"


def application():
    """gunicorn's app factory (``bench_api:application()``): Django's WSGI application,
    with ``CONN_MAX_AGE`` from ``BENCH_CONN_MAX_AGE``."""
    import django

    django.setup()
    from django.core.wsgi import get_wsgi_application
    from django.db import connections

    # Read at each connect: set before this worker's first connection.
    connections["default"].settings_dict["CONN_MAX_AGE"] = float(os.environ.get("BENCH_CONN_MAX_AGE", "0"))
    return get_wsgi_application()


# -- the server --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """gunicorn serving the test project's URLs (the API at /workflows/api/)."""

    def __init__(self, url: str, workers: int, conn_max_age: float, log_dir: Path) -> None:
        self.port = free_port()
        self.conn_max_age = conn_max_age
        env = {**bench_engine.worker_env(url), "BENCH_CONN_MAX_AGE": str(conn_max_age)}
        self.log = open(log_dir / f"gunicorn-{conn_max_age:g}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "bench_api:application()", "--workers", str(workers),
             "--worker-class", "sync", "--bind", f"127.0.0.1:{self.port}", "--log-level", "warning",
             "--timeout", "120"],
            cwd=HERE, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, key: str) -> None:
        def answers() -> bool:
            if self.proc.poll() is not None:
                raise SystemExit(f"gunicorn exited with {self.proc.returncode}; see {self.log.name}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/workflows/api/functions", headers={"Authorization": f"Bearer {key}"})
                status = conn.getresponse().status
                conn.close()
            except OSError:
                return False
            return status == 403  # the send key may not read: the app is up and the key is known

        bench_engine.wait_for(answers, 60, "gunicorn to answer")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# -- measurements ------------------------------------------------------------------------------


def reset_tables() -> None:
    """Empty django_workflows' tables, all but the API keys'."""
    from django.apps import apps
    from django.db import connection

    from django_workflows.models import ApiKey

    tables = [m._meta.db_table for m in apps.get_app_config("django_workflows").get_models() if m is not ApiKey]
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)} CASCADE")


def bodies(events: int, per_request: int, first: int) -> list[bytes]:
    """The request bodies: one event object, or lists of ``per_request`` events."""
    result = []
    for start in range(first, first + events, per_request):
        batch = [{"name": EVENT, "data": {"i": i}} for i in range(start, min(start + per_request, first + events))]
        result.append(json.dumps(batch[0] if per_request == 1 else batch).encode())
    return result


def post_all(port: int, key: str, payloads: list[bytes], threads: int) -> float:
    """Post every body from ``threads`` threads; returns the wall time in seconds."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    lock = threading.Lock()
    pending = iter(payloads)
    errors: list[str] = []
    start = threading.Barrier(threads + 1)

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        start.wait()
        while True:
            with lock:
                body = next(pending, None)
            if body is None:
                break
            conn.request("POST", PATH, body, headers)
            response = conn.getresponse()
            answer = response.read()
            if response.status != 201:
                errors.append(f"{response.status}: {answer[:300]!r}")
                break
        conn.close()

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, the first: {errors[0]}")
    return elapsed


def measure_http(server: Server, key: str, events: int, per_request: int, threads: int) -> float:
    from django_workflows.models import Event

    reset_tables()
    payloads = bodies(events, per_request, 0)
    elapsed = post_all(server.port, key, payloads, threads)
    stored = Event.objects.count()
    if stored != events:
        raise SystemExit(f"{stored} events stored, {events} sent")
    return events / elapsed


def measure_in_process(events: int, per_call: int, threads: int = 1) -> float:
    """``wf.send`` in this process from ``threads`` threads (each its own connection)."""
    from django.db import connection

    import django_workflows as wf
    from django_workflows.models import Event

    reset_tables()
    calls = [
        [wf.Event(name=EVENT, data={"i": i}) for i in range(start, min(start + per_call, events))]
        for start in range(0, events, per_call)
    ]
    if threads == 1:
        began = time.perf_counter()
        for call in calls:
            wf.send(call)  # autocommit: each call is its own transaction, as in a view
        elapsed = time.perf_counter() - began
    else:
        lock = threading.Lock()
        pending = iter(calls)
        start = threading.Barrier(threads + 1)

        def sender() -> None:
            start.wait()
            try:
                while True:
                    with lock:
                        call = next(pending, None)
                    if call is None:
                        break
                    wf.send(call)
            finally:
                connection.close()  # this thread's own connection

        workers = [threading.Thread(target=sender) for _ in range(threads)]
        for worker in workers:
            worker.start()
        start.wait()
        began = time.perf_counter()
        for worker in workers:
            worker.join()
        elapsed = time.perf_counter() - began
    if Event.objects.count() != events:
        raise SystemExit("events missing after wf.send")
    return events / elapsed


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
                        help=f"benchmark database, dropped and recreated (default {DB_NAME})")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn sync workers (default 4)")
    parser.add_argument("--threads", type=int, default=8, help="client threads (default 8)")
    parser.add_argument("--single", type=int, default=2000, help="requests of 1 event (default 2,000)")
    parser.add_argument("--batched", type=int, default=20000, help="events sent in batches (default 20,000)")
    parser.add_argument("--batch", type=int, default=100, help="events per batched request (default 100)")
    parser.add_argument("--conn-max-age", type=float, default=60,
                        help="CONN_MAX_AGE of the second server (default 60; the first has Django's 0)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3), medians shown")
    args = parser.parse_args()

    bench_engine.recreate_database(args.database_url)
    bench_engine.setup_django(args.database_url)
    bench_engine.migrate()
    from django.db import connection

    from django_workflows.api.keys import create_key

    print("\n".join(bench_engine.machine_description()))
    print(bench_engine.background_load_line())
    import gunicorn

    print(f"gunicorn {gunicorn.__version__}, {args.workers} sync workers, DEBUG=False; client: {args.threads} "
          f"threads (http.client); {args.single:,} requests of 1 event, {args.batched:,} events in requests of "
          f"{args.batch}; {args.repeat} repetitions, medians", flush=True)

    log_dir = Path(tempfile.mkdtemp(prefix="wf-bench-api-"))
    servers: list[Server] = []
    try:
        key = create_key("bench", "send")[1]
        servers = [Server(args.database_url, args.workers, age, log_dir) for age in (0, args.conn_max_age)]
        for server in servers:
            server.wait_ready(key)
            post_all(server.port, key, bodies(200, 1, 0) + bodies(1000, args.batch, 0), args.threads)  # warm-up
        http_kinds = [f"HTTP, CONN_MAX_AGE={server.conn_max_age:g}" for server in servers]
        local_kinds = {"wf.send in-process, 1 thread": 1, f"wf.send in-process, {args.workers} threads": args.workers}
        kinds = http_kinds + list(local_kinds)
        results: dict[tuple[str, int], list[float]] = {(kind, n): [] for kind in kinds for n in (1, args.batch)}
        for rep in range(args.repeat):
            line = []
            for per, events in ((1, args.single), (args.batch, args.batched)):
                for kind, server in zip(http_kinds, servers, strict=True):
                    results[(kind, per)].append(measure_http(server, key, events, per, args.threads))
                for kind, threads in local_kinds.items():
                    results[(kind, per)].append(measure_in_process(events, per, threads))
                line.append(f"x{per}: " + ", ".join(f"{results[(kind, per)][-1]:,.0f}" for kind in kinds))
            print(f"  repetition {rep + 1} (events/s, in the table's order): " + "; ".join(line), flush=True)
    finally:
        for server in servers:
            server.stop()
        connection.close()
        shutil.rmtree(log_dir, ignore_errors=True)

    medians = {name: statistics.median(values) for name, values in results.items()}
    print()
    print(f"{'events/s (median of ' + str(args.repeat) + ')':<34} | {'1 per request/call':>18} | "
          f"{f'{args.batch} per request/call':>20}")
    print(f"{'-' * 34}-|-{'-' * 18}-|-{'-' * 20}")
    for kind in kinds:
        print(f"{kind:<34} | {medians[(kind, 1)]:>18,.0f} | {medians[(kind, args.batch)]:>20,.0f}")
    print()
    for kind in http_kinds:
        for local in local_kinds:
            print(f"{kind} / {local}: {medians[(kind, 1)] / medians[(local, 1)]:.2f} (1 per request), "
                  f"{medians[(kind, args.batch)] / medians[(local, args.batch)]:.2f} ({args.batch} per request)")
    for kind in kinds:
        print(f"{kind}: {args.batch} per request/call vs 1: {medians[(kind, args.batch)] / medians[(kind, 1)]:.1f}x")


if __name__ == "__main__":
    main()
