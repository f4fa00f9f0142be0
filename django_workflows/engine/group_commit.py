"""Group commit of step checkpoints and run ends: one statement and one commit for many threads.

A worker process runs many runs at once, one per thread, and each thread waits for its
step's checkpoint to be durable before its run goes on. Committed one by one, every step
costs a statement, a transaction and a WAL flush on the server. Here the threads that have
a checkpoint ready at the same moment share them: the first one to arrive (the leader)
writes every checkpoint waiting in the process with one statement, which is one
transaction, and hands each thread its own result. While the leader's statement is in
flight, more checkpoints gather for the next one: the busier the process, the more steps
per commit; an idle process writes a lone checkpoint at once, with no added wait.

The same goes for the end of runs that finish at the same moment (``lifecycle.end_run``
of a held run, outside a transaction: ``queries.END_HELD_RUNS``).

Durability per step is unchanged: a thread returns only when its write is committed. Each
row is still fenced by its own lease token, so a worker that lost one run's lease loses
that row only. PostgreSQL only: SQLite has one writer at a time anyway.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError, connections

from .. import jsonenc
from . import queries

# Bigger batches would only delay the threads behind them: 64 checkpoints are one statement
# of a few kilobytes.
MAX_BATCH = 64


@dataclass
class _Ticket:
    row: dict[str, Any]
    done: bool = False
    stored: bool = False
    error: BaseException | None = None
    _event: threading.Event = field(default_factory=threading.Event)


class GroupCommit:
    """Leader/follower batching of one kind of write (``write_batch``) across threads.

    ``write_batch(rows)`` writes the rows in one transaction and returns, for each, whether
    it was written; it runs on the leader's thread and database connection.
    """

    def __init__(self, write_batch: Callable[[list[dict[str, Any]]], list[bool]]) -> None:
        self._write_batch = write_batch
        self._lock = threading.Lock()
        self._waiting: list[_Ticket] = []
        self._leading = False
        self.batches = 0  # statements written (for benchmarks and tests)
        self.rows = 0

    def submit(self, row: dict[str, Any]) -> bool:
        """Write ``row`` together with whatever else is ready; True once it is committed,
        False if its fence refused it. Raises what the batch's write raised."""
        ticket = _Ticket(row)
        with self._lock:
            self._waiting.append(ticket)
            lead = not self._leading
            if lead:
                self._leading = True
        if not lead:
            ticket._event.wait()
            if not ticket.done:  # the leader left it for the next batch: lead that one
                return self._lead_from(ticket)
            return self._result(ticket)
        return self._lead_from(ticket)

    def _lead_from(self, ticket: _Ticket) -> bool:
        while True:
            with self._lock:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            self._write(batch)
            with self._lock:
                if not ticket.done:
                    continue  # ours did not fit in that batch (more than MAX_BATCH waiting)
                if self._waiting:
                    # Hand the lead to a thread still waiting: it writes the next batch on
                    # its own connection while this thread goes back to its run.
                    self._waiting[0]._event.set()
                else:
                    self._leading = False
            return self._result(ticket)

    def _write(self, batch: Sequence[_Ticket]) -> None:
        try:
            stored = self._write_batch([t.row for t in batch])
        except DatabaseError as exc:
            if len(batch) == 1:
                stored, errors = [False], [exc]
            else:
                # One bad row must not fail the others: write them one by one.
                stored, errors = self._one_by_one(batch)
        except BaseException as exc:
            stored, errors = [False] * len(batch), [exc] * len(batch)
        else:
            errors = [None] * len(batch)
        self.batches += 1
        self.rows += len(batch)
        for ticket, ok, error in zip(batch, stored, errors, strict=True):
            ticket.stored, ticket.error, ticket.done = ok, error, True
            ticket._event.set()

    def _one_by_one(self, batch: Sequence[_Ticket]) -> tuple[list[bool], list[BaseException | None]]:
        stored: list[bool] = []
        errors: list[BaseException | None] = []
        for ticket in batch:
            try:
                stored.append(self._write_batch([ticket.row])[0])
                errors.append(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the ticket's own thread
                stored.append(False)
                errors.append(exc)
        return stored, errors

    @staticmethod
    def _result(ticket: _Ticket) -> bool:
        if ticket.error is not None:
            raise ticket.error
        return ticket.stored


# -- the process's groups ------------------------------------------------------------------

_groups: dict[tuple[str, str], GroupCommit] = {}
_groups_lock = threading.Lock()


def _group(kind: str, db: str, write: Callable[[str, list[dict[str, Any]]], list[bool]]) -> GroupCommit:
    with _groups_lock:
        group = _groups.get((kind, db))
        if group is None:
            group = _groups[(kind, db)] = GroupCommit(lambda rows: write(db, rows))
        return group


def checkpoints(db: str) -> GroupCommit:
    """The process's group commit of step checkpoints on database ``db``."""
    return _group("checkpoints", db, lambda db, rows: write_checkpoints(db, rows))


def run_ends(db: str) -> GroupCommit:
    """The process's group commit of held runs' ends (``lifecycle.end_run``) on ``db``."""
    return _group("run_ends", db, lambda db, rows: write_run_ends(db, rows))


def checkpoint(db: str, row: dict[str, Any]) -> bool:
    """Write one step checkpoint; False if its lease was lost."""
    return _write(db, row, write_checkpoints, checkpoints)


def end_held_run(db: str, row: dict[str, Any]) -> bool:
    """End one held run; False if its lease was lost or it had ended already."""
    return _write(db, row, write_run_ends, run_ends)


def _write(
    db: str, row: dict[str, Any], write: Callable[[str, list[dict[str, Any]]], list[bool]],
    group: Callable[[str], GroupCommit],
) -> bool:
    if connections[db].in_atomic_block:  # the caller's transaction: with its other writes, alone
        return write(db, [row])[0]
    return group(db).submit(row)  # with whatever the process's other threads have ready


def write_checkpoints(db: str, rows: list[dict[str, Any]]) -> list[bool]:
    """Write step checkpoints (``queries.RECORD_STEPS_POSTGRES``'s row shape) in one
    statement, on this thread's connection: in autocommit, one transaction."""
    found = queries.fetch(db, queries.RECORD_STEPS_POSTGRES, {"rows": jsonenc.dumps(rows)})
    written = {(str(run_id), step_id) for run_id, step_id in found}
    return [(row["run"], row["step_id"]) in written for row in rows]


def write_run_ends(db: str, rows: list[dict[str, Any]]) -> list[bool]:
    """End held runs (``queries.END_HELD_RUNS``'s row shape) in one statement; for each row,
    whether it ended its run (False: the lease was lost, or the run had ended already)."""
    ended = {str(run_id) for (run_id,) in queries.fetch(db, queries.END_HELD_RUNS, {"rows": jsonenc.dumps(rows)})}
    return [row["run"] in ended for row in rows]
