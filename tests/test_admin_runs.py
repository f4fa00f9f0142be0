"""The admin's run console: the runs list, one run's page with its timeline, replay and cancel."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import RequestFactory
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

import django_workflows as wf
from django_workflows.admin import runs as runs_admin
from django_workflows.admin import timeline
from django_workflows.engine import clock
from django_workflows.models import Attempt, Run, Step
from django_workflows.testing import drain

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:django_workflows_run_changelist"


def run_url(run_or_id):
    return reverse("admin:django_workflows_run_change", args=[getattr(run_or_id, "pk", run_or_id)])


def replay_url(run):
    return reverse("admin:django_workflows_run_replay", args=[run.pk])


def cancel_url(run):
    return reverse("admin:django_workflows_run_cancel", args=[run.pk])


def messages_of(response):
    return [str(m) for m in response.context["messages"]] if response.context else []


def row_html(html, key):
    """The <tr> of one timeline row."""
    match = re.search(r'<tr class="wf-row[^"]*" data-row="' + re.escape(key) + r'">(.*?)</tr>', html, re.S)
    assert match, f"no timeline row {key!r}"
    return match.group(1)


# -- users ------------------------------------------------------------------------------------


@pytest.fixture
def make_user(django_user_model):
    def make(name, *perms, staff=True, superuser=False):
        user = django_user_model.objects.create_user(
            username=name, password="x", is_staff=staff, is_superuser=superuser
        )
        for codename in perms:
            user.user_permissions.add(
                Permission.objects.get(content_type__app_label="django_workflows", codename=codename)
            )
        return user

    return make


@pytest.fixture
def viewer(client, make_user):
    client.force_login(make_user("viewer", "view_run"))
    return client


@pytest.fixture
def operator(client, make_user):
    client.force_login(make_user("operator", "view_run", "change_run"))
    return client


@pytest.fixture
def superuser(client, make_user):
    client.force_login(make_user("root", superuser=True))
    return client


# -- functions --------------------------------------------------------------------------------


def define_full_demo():
    """A step failing twice then succeeding, a sleep, a wait that times out, an invoke and
    two parallel branches."""
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] < 3:
            raise ValueError(f"boom {calls['n']}")
        return {"ok": True}

    @wf.function(id="ar-child", trigger=[])
    def child(ctx):
        ctx.step.sleep("child-nap", "5m")
        return {"child": ctx.event.data}

    @wf.function(id="ar-demo", trigger="ar.go", retries=4)
    def demo(ctx):
        ctx.step.run("prepare", lambda: {"a": 1})
        ctx.step.run("call-api", flaky)
        ctx.step.sleep("nap", "1h")
        approval = ctx.step.wait_for_event("approval", event="ar.approved", timeout="2h")
        result = ctx.step.invoke("sub", function=child, data={"x": 1})
        left, right = ctx.group.parallel(
            (lambda: ctx.step.run("left", lambda: "L"), lambda: ctx.step.run("right", lambda: "R"))
        )
        return {"approval": approval, "sub": result, "branches": [left, right]}

    return demo


@pytest.fixture
def full_run():
    define_full_demo()
    wf.send("ar.go", data={"k": "v"})
    drain(advance_time=True)
    run = Run.objects.get(function_id="ar-demo")
    assert run.status == "completed"
    return run


def define_simple():
    @wf.function(id="ar-ok", trigger="ar.ok")
    def ok(ctx):
        return ctx.step.run("only", lambda: ctx.event.data.get("n"))

    @wf.function(id="ar-bad", trigger="ar.bad", retries=0)
    def bad(ctx):
        ctx.step.run("explode", lambda: (_ for _ in ()).throw(wf.NonRetriableError("kaput")))

    @wf.function(id="ar-sleepy", trigger="ar.sleepy")
    def sleepy(ctx):
        ctx.step.run("before", lambda: 1)
        ctx.step.sleep("long-nap", "2d")
        return "woke"


@pytest.fixture
def some_runs():
    """Two completed runs, one failed, one sleeping (running); the clock is not moved."""
    define_simple()
    wf.send("ar.ok", data={"n": 1})
    wf.send("ar.ok", data={"n": 2})
    wf.send("ar.bad")
    wf.send("ar.sleepy")
    drain()
    runs = {r.function_id + (f"-{r.output}" if r.function_id == "ar-ok" else ""): r for r in Run.objects.all()}
    assert runs["ar-ok-1"].status == "completed"
    assert runs["ar-bad"].status == "failed"
    assert runs["ar-sleepy"].status == "running"
    return runs


# -- timeline geometry (timeline.py) ---------------------------------------------------------


def test_timeline_of_retries_sleep_wait_invoke_and_parallel_branches(full_run):
    steps = list(Step.objects.filter(run=full_run).order_by("id"))
    attempts = list(Attempt.objects.filter(run=full_run).order_by("id"))
    tl = timeline.build(full_run, steps, attempts, now=clock.now())

    assert [r.key for r in tl.rows] == ["run", "prepare", "call-api", "nap", "approval", "sub", "left", "right"]
    assert tl.start == full_run.queued_at and tl.end == full_run.ended_at
    assert tl.now_x is None  # finished

    call = tl.row("call-api")
    assert [(b.kind, b.number, b.outcome) for b in call.bars] == [
        ("attempt", 1, "retrying"), ("attempt", 2, "retrying"), ("attempt", 3, "completed"),
    ]
    red = [b for b in call.bars if b.outcome in ("retrying", "failed")]
    assert len(red) == 2
    assert "ValueError: boom 1" in red[0].tooltip and red[0].error["message"] == "boom 1"
    assert call.bars[0].x < call.bars[1].x < call.bars[2].x  # backoff gaps between attempts
    assert call.track is not None and call.track[0] == call.bars[0].x

    nap = tl.row("nap")
    assert [(b.kind, b.outcome, b.hollow) for b in nap.bars] == [("wait", "completed", True)]
    approval = tl.row("approval")
    assert [(b.kind, b.outcome, b.label, b.hollow) for b in approval.bars] == [("wait", "timed-out", "timed out", True)]
    sub = tl.row("sub")
    assert [(b.kind, b.outcome, b.hollow) for b in sub.bars] == [("wait", "completed", True)]
    # One hour of sleep then two hours of wait: the wait's bar is about twice the sleep's.
    assert approval.bars[0].width == pytest.approx(2 * nap.bars[0].width, rel=0.01)
    assert nap.bars[0].x >= call.bars[-1].x  # in order on the shared axis
    assert approval.bars[0].x == pytest.approx(nap.bars[0].x + nap.bars[0].width, abs=0.01)

    left, right = tl.row("left"), tl.row("right")
    assert [b.outcome for b in left.bars + right.bars] == ["completed", "completed"]
    # The branches ran at the same moment: their bars overlap on separate rows, at the end.
    assert left.bars[0].x == pytest.approx(right.bars[0].x, abs=timeline.MIN_WIDTH)
    assert left.bars[0].x + left.bars[0].width > right.bars[0].x
    assert left.bars[0].x > 99 - 2 * timeline.MIN_WIDTH

    run_row = tl.row("run")
    assert [b.kind for b in run_row.bars][-1] == "run" and run_row.bars[-1].outcome == "completed"
    for row in tl.rows:
        for bar in row.bars:
            assert 0 <= bar.x and bar.width >= timeline.MIN_WIDTH and bar.x + bar.width <= 100.0001
    assert tl.ticks[0].x == 0 and tl.ticks[0].label == "0"
    assert all(a.x < b.x for a, b in zip(tl.ticks, tl.ticks[1:], strict=False))
    assert 2 <= len(tl.ticks) <= timeline.MAX_TICKS + 1


def _at(seconds):
    return BASE + timedelta(seconds=seconds)


BASE = timezone.now().replace(microsecond=0)


def ns_run(**kw):
    fields = dict(status="running", queued_at=_at(0), started_at=_at(1), ended_at=None, error=None, replay_of_id=None)
    fields.update(kw)
    return SimpleNamespace(**fields)


def ns_step(step_id, kind="run", status="completed", start=None, end=None, scheduled=None, output=None, error=None, attempts=1):
    return SimpleNamespace(
        step_id=step_id, kind=kind, status=status, started_at=start, ended_at=end, scheduled_at=scheduled,
        output=output, error=error, attempts=attempts,
    )


def ns_attempt(step_id, number, start, end, outcome="completed", error=None):
    return SimpleNamespace(step_id=step_id, number=number, started_at=start, ended_at=end, outcome=outcome, error=error, worker_id="w1")


def test_timeline_of_a_live_run_reaches_the_due_times_ahead():
    run = ns_run()
    steps = [
        ns_step("fetch", start=_at(1), end=_at(2)),
        ns_step("flaky", status="retrying", start=_at(2), scheduled=_at(40)),
        ns_step("sleep", kind="sleep", status="waiting", start=_at(3), scheduled=_at(100)),
    ]
    attempts = [
        ns_attempt("fetch", 1, _at(1), _at(2)),
        ns_attempt("flaky", 1, _at(2), _at(3), "retrying", {"name": "IOError", "message": "down", "stack": "trace"}),
    ]
    tl = timeline.build(run, steps, attempts, now=_at(10))
    assert tl.start == _at(0) and tl.end == _at(100)  # to the sleep's due time
    assert tl.now_x == pytest.approx(10.0)
    flaky = tl.row("flaky")
    assert [(b.kind, b.outcome, b.hollow, b.dashed) for b in flaky.bars] == [
        ("attempt", "retrying", False, False), ("pending", "pending", True, True),
    ]
    assert flaky.bars[1].x == pytest.approx(3.0) and flaky.bars[1].width == pytest.approx(37.0)
    assert "IOError: down" in flaky.bars[0].tooltip
    sleep = tl.row("sleep")
    assert [(b.kind, b.outcome, b.dashed) for b in sleep.bars] == [("wait", "waiting", True)]
    assert sleep.bars[0].x == pytest.approx(3.0) and sleep.bars[0].width == pytest.approx(97.0)
    assert "due" in sleep.bars[0].tooltip
    # The run so far: queued one second, running until now.
    assert [(b.kind, b.outcome) for b in tl.row("run").bars] == [("queued", "queued"), ("run", "running")]
    assert tl.row("run").bars[1].width == pytest.approx(9.0)


def test_timeline_handler_row_kept_steps_tiny_bars_and_a_queued_run():
    run = ns_run(status="completed", ended_at=_at(3600), replay_of_id=uuid.uuid4(), queued_at=_at(0), started_at=_at(0))
    steps = [
        ns_step("old", start=_at(-500), end=_at(-499)),  # kept by a replay from a later step
        ns_step("quick", start=_at(10), end=_at(10.001)),
    ]
    attempts = [
        ns_attempt("", 1, _at(5), _at(6), "retrying", {"name": "RuntimeError", "message": "between"}),
        ns_attempt("quick", 1, _at(10), _at(10.001)),
        ns_attempt("ghost", 1, _at(20), _at(21), "failed"),
    ]
    tl = timeline.build(run, steps, attempts, now=_at(9999))
    assert [r.key for r in tl.rows] == ["run", "handler", "old", "quick", "ghost"]
    assert tl.start == _at(0)  # the kept step does not stretch the axis
    assert tl.row("old").kept and tl.row("old").bars == [] and "kept" in tl.row("old").note
    handler = tl.row("handler")
    assert [(b.kind, b.outcome) for b in handler.bars] == [("attempt", "retrying")]
    assert "RuntimeError: between" in handler.bars[0].tooltip
    assert tl.row("quick").bars[0].width == timeline.MIN_WIDTH  # a millisecond in an hour
    assert tl.row("ghost").note

    queued = timeline.build(ns_run(status="queued", started_at=None), [], [], now=_at(30))
    assert [(b.kind, b.outcome, b.hollow) for b in queued.rows[0].bars] == [("queued", "queued", True)]
    assert queued.end == _at(30)


def test_format_duration():
    f = timeline.format_duration
    assert f(None) == ""
    assert f(timedelta(0)) == "0 ms"
    assert f(timedelta(microseconds=300)) == "<1 ms"
    assert f(timedelta(milliseconds=850)) == "850 ms"
    assert f(timedelta(seconds=12.34)) == "12.3 s"
    assert f(timedelta(seconds=245)) == "4m 05s"
    assert f(timedelta(hours=2, minutes=3)) == "2h 03m"
    assert f(timedelta(days=3, hours=4)) == "3d 4h"


# -- the run page (HTML) ---------------------------------------------------------------------


def test_run_page_draws_the_timeline(superuser, full_run):
    response = superuser.get(run_url(full_run))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'class="wf-badge wf-o-completed"' in html
    call = row_html(html, "call-api")
    assert call.count('data-kind="attempt"') == 3
    assert call.count('data-outcome="retrying"') == 2
    assert call.count('data-outcome="completed"') == 1
    assert "<title>call-api: attempt 1, retrying" in call and "ValueError: boom 1" in call
    assert 'wf-hollow' in row_html(html, "nap")
    assert 'data-outcome="timed-out"' in row_html(html, "approval")
    assert 'data-kind="wait"' in row_html(html, "sub")
    for branch in ("left", "right"):
        assert row_html(html, branch).count('data-kind="attempt"') == 1
    # Details below: attempts with their stack, outputs as JSON, the invoked run's link.
    assert html.count('class="wf-attempt"') == Attempt.objects.filter(run=full_run).count()
    assert "Traceback" in html or "boom 2" in html
    child = Run.objects.get(function_id="ar-child")
    assert run_url(child) in html
    assert "&quot;branches&quot;" in html and "&quot;L&quot;" in html  # the run's output
    assert "&quot;k&quot;: &quot;v&quot;" in html  # the trigger event as JSON
    # Replay and replay-from-step forms (a superuser may change), no cancel: it has ended.
    assert html.count('name="from_step"') == Step.objects.filter(run=full_run).count()
    assert 'value="call-api"' in html
    assert replay_url(full_run) in html and cancel_url(full_run) not in html
    assert "csrfmiddlewaretoken" in html
    assert 'http-equiv="refresh"' not in html and "location.reload" not in html
    # Event link when an event admin is registered.
    try:
        assert reverse("admin:django_workflows_event_change", args=[full_run.event_id]) in html
    except NoReverseMatch:
        pass
    # The child's page links back to its parent.
    child_html = superuser.get(run_url(child)).content.decode()
    assert 'id="wf-parent"' in child_html and run_url(full_run) in child_html


def test_a_live_run_page_refreshes_itself_and_offers_cancel(operator, some_runs):
    sleepy = some_runs["ar-sleepy"]
    html = operator.get(run_url(sleepy)).content.decode()
    assert 'http-equiv="refresh"' in html and "location.reload" in html
    assert cancel_url(sleepy) in html
    assert 'name="from_step"' not in html  # replay needs a finished run
    nap = row_html(html, "long-nap")
    assert 'data-outcome="waiting"' in nap and "wf-dashed" in nap
    assert 'class="wf-now"' in nap


def test_a_failed_run_page_shows_its_error_and_the_handler_row(superuser):
    state = {"n": 0}

    @wf.function(id="ar-handler", trigger="ar.handler", retries=1)
    def fn(ctx):
        ctx.step.run("first", lambda: 1)
        state["n"] += 1
        if state["n"] < 2:
            raise RuntimeError("between steps")
        ctx.step.run("doomed", lambda: (_ for _ in ()).throw(KeyError("gone")))

    wf.send("ar.handler")
    drain(advance_time=True)
    run = Run.objects.get(function_id="ar-handler")
    assert run.status == "failed"
    html = superuser.get(run_url(run)).content.decode()
    handler = row_html(html, "handler")
    assert handler.count('data-kind="attempt"') == 1 and "RuntimeError: between steps" in handler
    doomed = row_html(html, "doomed")
    assert doomed.count('data-outcome="retrying"') == 1 and doomed.count('data-outcome="failed"') == 1
    assert 'id="wf-error"' in html and "KeyError" in html


def test_a_batch_run_page_shows_every_event(superuser):
    @wf.function(id="ar-batch", trigger="ar.batch", batch_events=wf.Batch(3, "1m"))
    def fn(ctx):
        return [e.data["n"] for e in ctx.events]

    for n in range(3):
        wf.send("ar.batch", data={"n": n})
    drain(advance_time=True)
    run = Run.objects.get(function_id="ar-batch")
    assert len(run.batch_event_ids) == 3
    html = superuser.get(run_url(run)).content.decode()
    assert html.count('class="wf-json wf-event"') == 3
    for n in range(3):
        assert f"&quot;n&quot;: {n}" in html
    changelist = superuser.get(reverse(CHANGELIST)).content.decode()
    assert "(+2 in batch)" in changelist


def test_a_held_back_run_page_says_why(operator):
    @wf.function(id="ar-debounced", trigger="ar.debounced", debounce=wf.Debounce("1h"))
    def fn(ctx):
        return ctx.step.run("work", lambda: 1)

    wf.send("ar.debounced")
    drain()
    queued = Run.objects.get(function_id="ar-debounced", status="queued")
    assert queued.waiting_reason
    html = operator.get(run_url(queued)).content.decode()
    assert 'id="wf-waiting-reason"' in html and queued.waiting_reason in html
    assert 'http-equiv="refresh"' in html and cancel_url(queued) in html
    run_row = row_html(html, "run")
    assert 'data-kind="queued"' in run_row and "wf-hollow" in run_row
    # Cancelled while queued: the page says so, and nothing is live any more.
    operator.post(cancel_url(queued))
    html = operator.get(run_url(queued)).content.decode()
    assert 'class="wf-badge wf-o-cancelled"' in html and 'http-equiv="refresh"' not in html


def test_an_unknown_or_malformed_run_id_redirects_with_a_message(superuser):
    for bad in (uuid.uuid4(), "not-a-uuid"):
        response = superuser.get(run_url(bad), follow=True)
        assert response.status_code == 200
        assert any("doesn’t exist" in m for m in messages_of(response))


def test_the_run_page_is_read_only(superuser, some_runs):
    run = some_runs["ar-ok-1"]
    assert superuser.post(run_url(run), {"status": "failed"}).status_code == 405
    assert superuser.get(reverse("admin:django_workflows_run_add")).status_code == 403
    assert superuser.get(reverse("admin:django_workflows_run_delete", args=[run.pk])).status_code == 403
    run.refresh_from_db()
    assert run.status == "completed"


# -- replay and cancel -----------------------------------------------------------------------


def test_replay_creates_a_linked_run_and_redirects_to_it(operator, full_run):
    response = operator.post(replay_url(full_run))
    new = Run.objects.get(replay_of=full_run)
    assert response.status_code == 302 and response.url == run_url(new)
    page = operator.get(response.url)
    assert any("Replay of run" in m for m in messages_of(page))
    html = page.content.decode()
    assert 'id="wf-replay-of"' in html and run_url(full_run) in html
    assert run_url(new) in operator.get(run_url(full_run)).content.decode()  # listed as a replay


def test_replay_from_a_step_keeps_the_earlier_outputs(operator, full_run):
    response = operator.post(replay_url(full_run), {"from_step": "sub"})
    new = Run.objects.get(replay_of=full_run)
    assert response.url == run_url(new)
    kept = {s.step_id: s.output for s in Step.objects.filter(run=new)}
    assert kept["call-api"] == {"ok": True} and "sub" not in kept
    drain(advance_time=True)
    new.refresh_from_db()
    assert new.status == "completed"
    html = operator.get(run_url(new)).content.decode()
    assert "output kept from the replayed run" in row_html(html, "call-api")
    assert 'data-kind="attempt"' not in row_html(html, "call-api")
    assert 'data-kind="wait"' in row_html(html, "sub")


def test_replay_of_a_function_no_longer_defined_is_a_message(operator, some_runs):
    from django_workflows.functions import registry

    run = some_runs["ar-ok-1"]
    registry.unregister("ar-ok")
    html = operator.get(run_url(run)).content.decode()
    assert "not defined in this process" in html
    response = operator.post(replay_url(run), follow=True)
    assert any("no workflow function with id 'ar-ok'" in m for m in messages_of(response))
    assert not Run.objects.filter(replay_of=run).exists()


def test_replay_and_cancel_need_the_csrf_token(make_user, some_runs):
    from django.contrib.admin.models import LogEntry
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(make_user("careful", "view_run", "change_run"))
    run = some_runs["ar-ok-1"]
    assert client.post(replay_url(run)).status_code == 403
    assert not Run.objects.filter(replay_of=run).exists()
    page = client.get(run_url(run)).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    response = client.post(replay_url(run), {"csrfmiddlewaretoken": token})
    new = Run.objects.get(replay_of=run)
    assert response.status_code == 302 and response.url == run_url(new)
    assert LogEntry.objects.filter(object_id=str(run.pk), change_message__contains=str(new.pk)).exists()


def test_replay_from_an_unknown_step_is_a_message(operator, full_run):
    response = operator.post(replay_url(full_run), {"from_step": "nope"}, follow=True)
    assert any("has no step 'nope'" in m for m in messages_of(response))
    assert not Run.objects.filter(replay_of=full_run).exists()


def test_replay_of_a_running_run_is_refused_with_a_message(operator, some_runs):
    sleepy = some_runs["ar-sleepy"]
    response = operator.post(replay_url(sleepy))
    assert response.status_code == 302 and response.url == run_url(sleepy)
    page = operator.get(response.url)
    assert any("only finished runs can be replayed" in m for m in messages_of(page))
    assert not Run.objects.filter(replay_of=sleepy).exists()


def test_a_refused_replay_is_a_message(operator, some_runs):
    wf.pause("ar-ok")
    run = some_runs["ar-ok-1"]
    response = operator.post(replay_url(run), follow=True)
    assert response.redirect_chain[-1][0] == run_url(run)
    assert any("cannot replay" in m for m in messages_of(response))
    assert not Run.objects.filter(replay_of=run).exists()


def test_cancel_from_the_run_page(operator, some_runs):
    sleepy = some_runs["ar-sleepy"]
    response = operator.post(cancel_url(sleepy), follow=True)
    assert response.redirect_chain[-1][0] == run_url(sleepy)
    assert any("cancelled" in m.lower() for m in messages_of(response))
    sleepy.refresh_from_db()
    assert sleepy.status == "cancelled"
    again = operator.post(cancel_url(sleepy), follow=True)
    assert any("already ended" in m for m in messages_of(again))


def test_replay_and_cancel_are_post_only(operator, some_runs):
    run = some_runs["ar-ok-1"]
    assert operator.get(replay_url(run)).status_code == 405
    assert operator.get(cancel_url(some_runs["ar-sleepy"])).status_code == 405
    assert not Run.objects.filter(replay_of=run).exists()
    assert Run.objects.get(pk=some_runs["ar-sleepy"].pk).status == "running"


# -- permissions -----------------------------------------------------------------------------


def test_a_viewer_sees_but_cannot_replay_or_cancel(viewer, some_runs):
    run, sleepy = some_runs["ar-ok-1"], some_runs["ar-sleepy"]
    assert viewer.get(reverse(CHANGELIST)).status_code == 200
    html = viewer.get(run_url(run)).content.decode()
    assert "wf-timeline" in html and replay_url(run) not in html and 'name="from_step"' not in html
    assert cancel_url(sleepy) not in viewer.get(run_url(sleepy)).content.decode()
    assert viewer.post(replay_url(run)).status_code == 403
    assert viewer.post(cancel_url(sleepy)).status_code == 403
    assert viewer.post(replay_url(run), {"from_step": "only"}).status_code == 403
    # The list actions are not offered to a viewer, and posting one does nothing.
    changelist = viewer.get(reverse(CHANGELIST)).content.decode()
    assert "replay_runs" not in changelist
    viewer.post(reverse(CHANGELIST), {"action": "cancel_runs", "_selected_action": [sleepy.pk]})
    assert not Run.objects.filter(replay_of=run).exists()
    assert Run.objects.get(pk=sleepy.pk).status == "running"


def test_staff_without_view_permission_get_403_and_others_the_login_page(client, make_user, some_runs):
    run = some_runs["ar-ok-1"]
    client.force_login(make_user("staff-only"))
    assert client.get(reverse(CHANGELIST)).status_code == 403
    assert client.get(run_url(run)).status_code == 403
    assert client.post(replay_url(run)).status_code == 403
    client.force_login(make_user("customer", "view_run", "change_run", staff=False))
    for url in (reverse(CHANGELIST), run_url(run)):
        response = client.get(url)
        assert response.status_code == 302 and "/login/" in response.url
    assert "/login/" in client.post(replay_url(run)).url
    client.logout()
    assert "/login/" in client.get(run_url(run)).url
    assert not Run.objects.filter(replay_of=run).exists()


# -- the runs list ---------------------------------------------------------------------------


def changelist(client, **params):
    response = client.get(reverse(CHANGELIST), params)
    assert response.status_code == 200, response.content[:2000]
    return response


def listed(response):
    return {run.pk for run in response.context["cl"].result_list}


def test_changelist_shows_badges_columns_and_actions(superuser, some_runs):
    response = changelist(superuser)
    html = response.content.decode()
    assert listed(response) == {r.pk for r in some_runs.values()}
    assert 'class="wf-badge wf-o-completed"' in html and 'class="wf-badge wf-o-failed"' in html
    assert 'class="wf-badge wf-o-running"' in html
    for column in ("status", "function", "trigger event", "queued", "started", "ended", "duration", "attempts"):
        assert f">{column.capitalize()}<" in html or f">{column}<" in html.lower()
    assert "ar.sleepy" in html  # trigger event name
    assert "Replay selected runs" in html and "Cancel selected runs" in html
    assert "Delete selected" not in html
    assert "4 runs" in html
    cl = response.context["cl"]
    bad = next(r for r in cl.result_list if r.function_id == "ar-bad")
    assert bad.wf_attempts == (1, 1)
    assert "(1 failed)" in html
    # Function filter choices come from the registry.
    assert "?function=ar-ok" in html and "?function=ar-sleepy" in html


def test_changelist_filters(superuser, some_runs):
    assert listed(changelist(superuser, status__exact="failed")) == {some_runs["ar-bad"].pk}
    assert listed(changelist(superuser, status__exact="completed")) == {some_runs["ar-ok-1"].pk, some_runs["ar-ok-2"].pk}
    assert listed(changelist(superuser, function="ar-sleepy")) == {some_runs["ar-sleepy"].pk}
    assert listed(changelist(superuser, function="ar-ok", status__exact="completed")) == {
        some_runs["ar-ok-1"].pk, some_runs["ar-ok-2"].pk,
    }
    assert len(listed(changelist(superuser, queued="1h"))) == 4
    # A function no longer defined still filters (and is offered as a choice).
    assert listed(changelist(superuser, function="gone-fn")) == set()


def test_changelist_date_hierarchy(superuser, some_runs):
    now = timezone.localtime(some_runs["ar-ok-1"].queued_at)
    html = changelist(superuser).content.decode()
    assert 'class="toplinks"' in html and f"queued_at__year={now.year}" in html
    html = changelist(superuser, queued_at__year=now.year).content.decode()
    assert f"queued_at__month={now.month}" in html
    day = dict(queued_at__year=now.year, queued_at__month=now.month, queued_at__day=now.day)
    assert len(listed(changelist(superuser, **day))) == 4
    other = now - timedelta(days=400)
    assert listed(changelist(superuser, queued_at__year=other.year, queued_at__month=other.month)) == set()


def test_changelist_search_by_run_id_event_id_and_event_name(superuser, some_runs):
    ok = some_runs["ar-ok-1"]
    assert listed(changelist(superuser, q=str(ok.pk))) == {ok.pk}
    assert listed(changelist(superuser, q=f"  {ok.pk}  ")) == {ok.pk}
    assert listed(changelist(superuser, q=str(ok.event_id))) == {ok.pk}
    assert listed(changelist(superuser, q="ar.ok")) == {some_runs["ar-ok-1"].pk, some_runs["ar-ok-2"].pk}
    assert listed(changelist(superuser, q="ar.")) == {r.pk for r in some_runs.values()}
    assert listed(changelist(superuser, q="ok")) == set()  # a prefix, not a substring
    assert listed(changelist(superuser, q=str(uuid.uuid4()))) == set()
    response = changelist(superuser, q="ar.bad")
    assert "1 run" in response.content.decode()


def test_changelist_orders_newest_first_and_sorts_by_queued(superuser, some_runs):
    newest_first = [r.pk for r in changelist(superuser).context["cl"].result_list]
    assert newest_first == sorted(newest_first, reverse=True)
    oldest_first = [r.pk for r in changelist(superuser, o="4").context["cl"].result_list]
    assert oldest_first == list(reversed(newest_first))
    filtered = changelist(superuser, status__exact="completed").context["cl"]
    assert filtered.queryset.query.order_by[0] == "-queued_at"


def test_changelist_counts_are_capped(superuser, some_runs, monkeypatch):
    monkeypatch.setattr(runs_admin, "COUNT_CAP", 2)
    html = changelist(superuser, q="ar.").content.decode()
    assert "more than 2 runs" in html
    html = changelist(superuser, status__exact="failed").content.decode()
    assert "1 run" in html


def test_changelist_uses_the_estimate_when_unfiltered(superuser, some_runs, monkeypatch):
    monkeypatch.setattr(runs_admin, "COUNT_CAP", 2)
    monkeypatch.setattr(runs_admin.RunPaginator, "_estimate", staticmethod(lambda qs: 1_234_567))
    html = changelist(superuser).content.decode()
    assert "about 1,234,567 runs" in html
    assert "Select all about 1,234,567 runs" in html


@pytest.mark.postgres
def test_changelist_reads_the_planners_estimate_on_postgres(superuser, some_runs, monkeypatch):
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Run._meta.db_table}")
    estimate = runs_admin.RunPaginator._estimate(Run.objects.all())
    assert estimate is not None and estimate >= 0
    monkeypatch.setattr(runs_admin, "COUNT_CAP", 1)
    if estimate >= 1:
        assert f"about {estimate} run" in changelist(superuser).content.decode()


def test_list_actions_replay_and_cancel(operator, some_runs):
    ok1, ok2, sleepy = some_runs["ar-ok-1"], some_runs["ar-ok-2"], some_runs["ar-sleepy"]
    response = operator.post(
        reverse(CHANGELIST),
        {"action": "replay_runs", "_selected_action": [ok1.pk, ok2.pk, sleepy.pk]},
        follow=True,
    )
    notes = messages_of(response)
    assert "Replayed 2 runs." in notes
    assert any(str(sleepy.pk) in m and "only finished runs" in m for m in notes)
    assert Run.objects.filter(replay_of__in=[ok1, ok2]).count() == 2
    assert not Run.objects.filter(replay_of=sleepy).exists()

    response = operator.post(
        reverse(CHANGELIST), {"action": "cancel_runs", "_selected_action": [sleepy.pk, ok1.pk]}, follow=True
    )
    notes = messages_of(response)
    assert "Cancelled 1 run." in notes
    assert any("1 run had already ended" in m for m in notes)
    assert Run.objects.get(pk=sleepy.pk).status == "cancelled"


def test_list_actions_refuse_too_many_runs(operator, some_runs, monkeypatch):
    monkeypatch.setattr(runs_admin, "MAX_ACTION_RUNS", 2)
    response = operator.post(
        reverse(CHANGELIST),
        {"action": "replay_runs", "select_across": "1", "_selected_action": [some_runs["ar-ok-1"].pk]},
        follow=True,
    )
    assert any("at most 2 runs" in m for m in messages_of(response))
    assert not Run.objects.filter(replay_of__isnull=False).exists()


def test_id_floor_bounds_new_ids():
    from django_workflows.ids import new_id

    before = timezone.now()
    made = new_id()
    assert runs_admin.id_floor(before - timedelta(milliseconds=1)) <= made
    assert made < runs_admin.id_floor(timezone.now() + timedelta(milliseconds=2))
    assert runs_admin.id_floor(before).version == 7


def test_time_ranges_skip_the_id_bound_when_the_clock_was_moved(superuser, some_runs):
    clock.advance_to(clock.now() + timedelta(days=3))
    assert runs_admin.id_range(clock.now(), None) == {}
    define_simple()
    wf.send("ar.ok", data={"n": 9})
    drain()
    late = Run.objects.get(function_id="ar-ok", output=9)
    assert late.pk in listed(changelist(superuser, queued="1h"))
    moment = timezone.localtime(late.queued_at)
    assert late.pk in listed(
        changelist(superuser, queued_at__year=moment.year, queued_at__month=moment.month, queued_at__day=moment.day)
    )


# -- index use on PostgreSQL -----------------------------------------------------------------


def changelist_plans(user, params):
    """EXPLAIN of the page query and of the count, with sequential scans discouraged: a plan
    that still reads the run table sequentially has no index to serve it."""
    model_admin = admin.site._registry[Run]
    request = RequestFactory().get(reverse(CHANGELIST), params)
    request.user = user
    cl = model_admin.get_changelist_instance(request)
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_sort = off")
        page = cl.queryset[: cl.list_per_page].explain()
        count = cl.queryset.order_by().values("pk")[: runs_admin.COUNT_CAP + 1].explain()
        cursor.execute("RESET enable_seqscan")
        cursor.execute("RESET enable_sort")
    return page, count


@pytest.mark.postgres
@pytest.mark.parametrize(
    "params",
    [
        {},
        {"status__exact": "failed"},
        {"function": "ar-ok"},
        {"function": "ar-ok", "status__exact": "completed"},
        {"queued": "24h"},
        {"queued_at__year": "2030", "queued_at__month": "1", "queued_at__day": "2"},
        {"status__exact": "running", "queued_at__year": "2030"},
        {"q": "ar.ok"},
        {"q": "01a2019d-3036-7b19-8520-c923db6d542f"},
        {"o": "4"},
    ],
    ids=["all", "status", "function", "function+status", "queued", "day", "status+year", "name", "uuid", "oldest"],
)
def test_every_list_query_is_served_by_an_index(make_user, some_runs, params):
    user = make_user("planner", superuser=True)
    page, count = changelist_plans(user, params)
    table = Run._meta.db_table
    for plan in (page, count):
        assert f"Seq Scan on {table}" not in plan, plan
        assert "Seq Scan on django_workflows_event" not in plan, plan
    # The order comes from the index (at most an incremental sort to break ties by id).
    assert not re.search(r"(?m)^(\s*->)?\s*Sort\s+\(", page), page
