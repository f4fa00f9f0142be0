"""Group commit of step checkpoints (engine/group_commit.py): many threads' checkpoints in
one statement, each still fenced by its own lease, each thread back only once its own is
committed."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from django.db import DatabaseError, OperationalError, connection
from django.utils import timezone

from django_workflows.engine import group_commit
from django_workflows.engine.group_commit import MAX_BATCH, GroupCommit
from django_workflows.models import Attempt, QueueItem, Run, Step


def submit_from_threads(group: GroupCommit, rows_per_thread: list[list[dict]]) -> list[list[object]]:
    """Each thread submits its rows one after the other; returns each thread's results
    (True/False, or the exception raised)."""
    results: list[list[object]] = [[] for _ in rows_per_thread]
    start = threading.Barrier(len(rows_per_thread))

    def work(index: int) -> None:
        start.wait()
        for row in rows_per_thread[index]:
            try:
                results[index].append(group.submit(row))
            except Exception as exc:  # noqa: BLE001 - recorded for the assertions
                results[index].append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(rows_per_thread))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive(), "a thread never got its checkpoint's result"
    return results


def test_threads_share_statements_and_each_gets_its_own_result():
    written: list[list[dict]] = []

    def write(rows: list[dict]) -> list[bool]:
        time.sleep(0.005)  # a statement's round trip: others gather meanwhile
        written.append(rows)
        return [row["n"] % 7 != 0 for row in rows]  # every seventh row's fence refuses it

    group = GroupCommit(write)
    rows = [[{"n": t * 100 + i} for i in range(30)] for t in range(8)]
    results = submit_from_threads(group, rows)

    assert [r for thread in results for r in thread] == [row["n"] % 7 != 0 for thread in rows for row in thread]
    assert sorted(row["n"] for batch in written for row in batch) == sorted(row["n"] for t in rows for row in t)
    assert group.rows == 240
    # 8 threads with a checkpoint ready at nearly every moment: far fewer statements than rows.
    assert group.batches <= group.rows / 2, f"{group.batches} statements for {group.rows} checkpoints"


def test_a_lone_checkpoint_is_written_at_once():
    group = GroupCommit(lambda rows: [True] * len(rows))
    started = time.monotonic()
    assert group.submit({"n": 1}) is True
    assert time.monotonic() - started < 1
    assert (group.batches, group.rows) == (1, 1)


def test_one_bad_row_fails_only_its_own_thread():
    def write(rows: list[dict]) -> list[bool]:
        time.sleep(0.002)
        if any(row["bad"] for row in rows):
            raise DatabaseError("invalid input syntax for type json")
        return [True] * len(rows)

    group = GroupCommit(write)
    rows = [[{"bad": t == 3 and i == 5, "n": i} for i in range(20)] for t in range(6)]
    results = submit_from_threads(group, rows)

    for t, thread in enumerate(results):
        for i, result in enumerate(thread):
            if t == 3 and i == 5:
                assert isinstance(result, DatabaseError)
            else:
                assert result is True, (t, i, result)


def test_a_failed_statement_is_raised_in_every_thread_it_carried():
    calls = {"n": 0}

    def write(rows: list[dict]) -> list[bool]:
        calls["n"] += 1
        raise KeyboardInterrupt if calls["n"] == 1 else AssertionError("unexpected")  # not a DatabaseError

    group = GroupCommit(write)
    with pytest.raises(KeyboardInterrupt):
        group.submit({"n": 1})
    # The group is usable afterwards: the failed leader gave up the lead.
    group._write_batch = lambda rows: [True] * len(rows)
    assert group.submit({"n": 2}) is True


def test_more_threads_than_a_batch_holds_all_get_written():
    sizes: list[int] = []

    def write(rows: list[dict]) -> list[bool]:
        sizes.append(len(rows))
        time.sleep(0.01)
        return [True] * len(rows)

    group = GroupCommit(write)
    results = submit_from_threads(group, [[{"n": t}] for t in range(MAX_BATCH * 2 + 5)])
    assert all(r == [True] for r in results)
    assert max(sizes) <= MAX_BATCH and sum(sizes) == MAX_BATCH * 2 + 5


# -- on PostgreSQL: the real statement -------------------------------------------------------


def leased_items(count: int) -> list[dict]:
    """Runs each held by a worker (a queue item with lease token 1), as checkpoint rows."""
    rows = []
    for n in range(count):
        run = Run.objects.create(id=uuid.uuid4(), function_id="f", status="running", queued_at=timezone.now())
        item = QueueItem.objects.create(kind="run", run=run, function_id="f", worker_id="w1", lease_token=1)
        rows.append({
            "item": item.id, "token": 1, "run": str(run.pk), "step_id": f"s{n}", "kind": "run",
            "status": "completed", "output": {"n": n, "nested": [1.5, None, "x"]} if n else None, "error": None,
            "attempts": 1, "started_at": "2026-11-22T07:00:00.000001+00:00",
            "ended_at": "2026-11-22T07:00:00.5+00:00", "scheduled_at": None,
            "attempt_started_at": "2026-11-22T07:00:00.000001+00:00", "worker": "w1",
        })
    return rows


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_checkpoint_statement_writes_each_row_under_its_own_lease():
    rows = leased_items(4)
    QueueItem.objects.filter(pk=rows[2]["item"]).update(lease_token=2)  # taken over by another worker

    assert group_commit.write_checkpoints("default", rows) == [True, True, False, True]

    steps = {(str(s.run_id), s.step_id): s for s in Step.objects.all()}
    assert set(steps) == {(r["run"], r["step_id"]) for i, r in enumerate(rows) if i != 2}
    first = steps[(rows[0]["run"], "s0")]
    assert first.output is None and first.status == "completed" and first.attempts == 1
    assert steps[(rows[1]["run"], "s1")].output == {"n": 1, "nested": [1.5, None, "x"]}
    assert first.started_at.isoformat() == "2026-11-22T07:00:00.000001+00:00"
    assert Attempt.objects.count() == 3  # the attempt history of the written rows only
    # A second checkpoint of the same step (a retry's) updates the row.
    again = dict(rows[0], status="failed", attempts=2, output=None, error={"message": "boom"})
    assert group_commit.write_checkpoints("default", [again]) == [True]
    assert Step.objects.get(run_id=rows[0]["run"], step_id="s0").error == {"message": "boom"}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_threads_checkpoints_are_grouped_into_fewer_statements_on_postgres():
    rows = leased_items(160)
    group = GroupCommit(lambda batch: group_commit.write_checkpoints("default", batch))

    def per_thread(t: int) -> list[dict]:
        return rows[t::8]

    try:
        results = submit_from_threads(group, [per_thread(t) for t in range(8)])
    finally:
        connection.close()
    assert all(r is True for thread in results for r in thread)
    assert Step.objects.count() == 160
    assert group.batches < 160, "no two checkpoints shared a statement"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_killed_connection_mid_batch_is_retried_and_nothing_is_written_twice(monkeypatch):
    """The leader's connection dies under its statement: every thread it carried gets the
    error, and the store retries its own checkpoint on a new connection (still fenced)."""
    from django_workflows.engine.records import StepRecord
    from django_workflows.engine.store import DatabaseCheckpointer

    rows = leased_items(1)
    real = group_commit.write_checkpoints
    failures = {"left": 1}

    def dying(db: str, batch: list[dict]) -> list[bool]:
        if failures["left"]:
            failures["left"] -= 1
            with connection.cursor() as cursor:  # what a killed backend looks like to the client
                cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
            raise OperationalError("terminating connection due to administrator command")
        return real(db, batch)

    monkeypatch.setattr(group_commit, "write_checkpoints", dying)
    monkeypatch.setattr(group_commit, "_groups", {})
    monkeypatch.setattr("django_workflows.engine.store.WRITE_RETRY_DELAYS", (0.01,))
    run = Run.objects.get(pk=rows[0]["run"])
    item = QueueItem.objects.get(pk=rows[0]["item"])

    class Held:
        id, token = item.id, 1

    checkpointer = DatabaseCheckpointer("default", Held(), run, None, worker_id="w1")
    record = StepRecord(step_id="s0", kind="run", status="completed", output={"ok": True}, attempts=1)
    checkpointer.record_step(record)

    assert record.stored
    assert list(Step.objects.values_list("step_id", "output")) == [("s0", {"ok": True})]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_end_of_many_held_runs_in_one_statement_ends_only_those_still_held():
    rows = leased_items(3)
    QueueItem.objects.filter(pk=rows[1]["item"]).update(lease_token=5)  # taken over
    Run.objects.filter(pk=rows[2]["run"]).update(status="cancelled")  # ended meanwhile
    ends = [
        {"item": r["item"], "token": 1, "run": r["run"], "status": "completed", "output": {"n": n}, "error": None,
         "now": "2026-11-22T08:00:00+00:00"}
        for n, r in enumerate(rows)
    ]

    assert group_commit.write_run_ends("default", ends) == [True, False, False]

    runs = {str(r.pk): r for r in Run.objects.all()}
    assert runs[rows[0]["run"]].status == "completed" and runs[rows[0]["run"]].output == {"n": 0}
    assert runs[rows[0]["run"]].ended_at.isoformat() == "2026-11-22T08:00:00+00:00"
    assert runs[rows[1]["run"]].status == "running"  # its new holder ends it
    assert runs[rows[2]["run"]].status == "cancelled"
    assert not QueueItem.objects.filter(pk=rows[0]["item"]).exists()
    assert QueueItem.objects.filter(pk=rows[1]["item"]).exists()
