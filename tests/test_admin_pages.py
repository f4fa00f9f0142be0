"""The admin's functions, events and workers pages: what they show, their actions, permissions."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.urls import reverse

import django_workflows as wf
from django_workflows.admin.functions import figures_for, percentile
from django_workflows.engine import clock
from django_workflows.engine.registry import live_cutoff
from django_workflows.models import Event, FunctionState, Run, WorkerRecord
from django_workflows.testing import drain

pytestmark = pytest.mark.django_db

FUNCTIONS = "admin:django_workflows_functionstate_changelist"
EVENTS = "admin:django_workflows_event_changelist"
SEND = "admin:django_workflows_event_send"
WORKERS = "admin:django_workflows_workerrecord_changelist"


def fn_url(name: str, function_id: str) -> str:
    return reverse(f"admin:django_workflows_functionstate_{name}", args=[quote(function_id)])


def user_with(*codenames: str, username: str = "staff") -> User:
    user = User.objects.create_user(username=username, password="x", is_staff=True)
    perms = Permission.objects.filter(content_type__app_label="django_workflows", codename__in=codenames)
    assert perms.count() == len(codenames), codenames
    user.user_permissions.add(*perms)
    return user


@pytest.fixture
def admin_client_() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "x"))
    return client


def client_for(*codenames: str) -> Client:
    client = Client()
    client.force_login(user_with(*codenames, username="u-" + "-".join(codenames or ("none",))))
    return client


def text(response) -> str:
    return response.content.decode()


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


# -- functions defined for these tests ---------------------------------------------------------


def define_functions():
    @wf.function(
        id="ap-work", name="Admin pages work", trigger=[wf.TriggerEvent("ap.work", expression="event.data.n > 0")],
        retries=2, concurrency=wf.Concurrency(3, key="event.data.account"),
        throttle=wf.Throttle(100, "1m"), cancel=[wf.Cancel("ap.stop", match="data.account")],
        timeouts=wf.Timeouts(finish="1h"),
    )
    def work(ctx):
        """Does the work."""
        value = ctx.step.run("double", lambda: ctx.event.data["n"] * 2)
        return {"doubled": value, "data": ctx.event.data}

    @wf.function(id="ap-fail", trigger="ap.fail", retries=0)
    def fail(ctx):
        raise wf.NonRetriableError("nope")

    @wf.function(id="ap-sleep", trigger="ap.sleep")
    def sleeper(ctx):
        ctx.step.sleep("nap", "1h")

    @wf.function(id="ap/slashed:id", trigger=wf.TriggerCron("TZ=Europe/Paris 0 8 * * *"))
    def slashed(ctx):
        return "ok"

    return work, fail, sleeper, slashed


# -- pages load ---------------------------------------------------------------------------------


def test_every_page_loads(admin_client_):
    define_functions()
    wf.send("ap.work", data={"n": 2, "account": "a"})
    drain()
    event = Event.objects.get(name="ap.work")
    now = clock.now()
    worker = WorkerRecord.objects.create(id="w1", hostname="host-a", pid=42, started_at=now, last_seen_at=now, functions=["ap-work"])
    pages = [
        reverse("admin:index"),
        reverse("admin:app_list", args=["django_workflows"]),
        reverse(FUNCTIONS),
        fn_url("change", "ap-work"),
        fn_url("change", "ap/slashed:id"),
        reverse(EVENTS),
        reverse("admin:django_workflows_event_change", args=[event.pk]),
        reverse(SEND),
        reverse(WORKERS),
        reverse("admin:django_workflows_workerrecord_change", args=[worker.pk]),
    ]
    for url in pages:
        response = admin_client_.get(url)
        assert response.status_code == 200, (url, response.status_code)
    index = text(admin_client_.get(reverse("admin:index")))
    assert ">Functions<" in index and ">Events<" in index and ">Workers<" in index
    # A function id with "/" and ":" round-trips through the admin's quoting.
    assert "ap/slashed:id" in text(admin_client_.get(fn_url("change", "ap/slashed:id")))
    # The bare object URL redirects to the function's page.
    response = admin_client_.get(reverse(FUNCTIONS) + quote("ap-work") + "/")
    assert response.status_code == 302 and response["Location"] == fn_url("change", "ap-work")


def test_unknown_function_is_a_404(admin_client_):
    assert admin_client_.get(fn_url("change", "no-such-function")).status_code == 404
    assert admin_client_.post(fn_url("pause", "no-such-function")).status_code == 404


# -- the functions page -------------------------------------------------------------------------


def test_functions_page_lists_the_registry_with_triggers_options_and_figures(admin_client_):
    define_functions()
    for n in (1, 2, 3):
        wf.send("ap.work", data={"n": n, "account": "a"})
    wf.send("ap.fail")
    drain(advance_time=True)  # past the throttle's turns
    page = text(admin_client_.get(reverse(FUNCTIONS)))
    for function_id in ("ap-work", "ap-fail", "ap-sleep", "ap/slashed:id"):
        assert function_id in page
    assert "Admin pages work" in page
    assert "event ap.work if event.data.n &gt; 0" in page
    assert "cron TZ=Europe/Paris 0 8 * * *" in page
    assert "concurrency, throttle, cancel, timeouts" in page
    assert "3 completed" in page and "1 failed" in page
    assert page.count('<svg class="wf-chart"') == len(wf.functions.registry.all())

    detail = text(admin_client_.get(fn_url("change", "ap-work")))
    assert "Does the work." in detail
    assert "2 per step (3 attempts)" in detail
    assert "3 at once per event.data.account" in detail
    assert "100 starts per 1m, burst 1" in detail
    assert "on ap.stop matching data.account" in detail
    assert "finish within 1h" in detail
    assert "3 completed" in detail
    assert 'aria-label="Runs per hour over the last 24 hours (peak 3)"' in detail
    assert "of 3 completed runs" in detail  # p50/p95 over them


def make_run(function_id, status, seconds, *, ago=timedelta(minutes=5)):
    now = clock.now()
    started = now - ago
    return Run.objects.create(
        function_id=function_id, status=status, queued_at=started, started_at=started,
        ended_at=started + timedelta(seconds=seconds) if seconds is not None else None,
    )


def test_p50_and_p95_of_completed_runs_of_the_last_24_hours():
    for seconds in range(1, 11):  # 1 .. 10 s
        make_run("ap-stats", "completed", seconds)
    make_run("ap-stats", "failed", 500)  # not completed: not counted
    make_run("ap-stats", "completed", 900, ago=timedelta(hours=25))  # outside the window
    make_run("ap-stats", "running", None)
    figures = figures_for("default", ["ap-stats", "ap-none"], clock.now())["ap-stats"]
    assert figures.p50 == pytest.approx(5.5)
    assert figures.p95 == pytest.approx(9.55)  # percentile_cont: interpolated
    assert figures.durations == 10
    assert figures.counts == {"queued": 0, "running": 1, "completed": 10, "failed": 1, "cancelled": 0}
    assert sum(runs for _hour, runs, _failed in figures.hours) == 12
    assert sum(failed for _hour, _runs, failed in figures.hours) == 1
    assert len(figures.hours) == 24
    empty = figures_for("default", ["ap-stats", "ap-none"], clock.now())["ap-none"]
    assert empty.p50 is None and empty.total == 0
    assert percentile([3.0], 0.95) == 3.0 and percentile([], 0.5) is None


def test_pause_and_resume_change_the_function_state_and_the_page_shows_it(admin_client_):
    define_functions()
    response = admin_client_.post(fn_url("pause", "ap-work"))
    assert response.status_code == 302 and response["Location"] == fn_url("change", "ap-work")
    assert FunctionState.objects.get(function_id="ap-work").paused is True
    page = text(admin_client_.get(fn_url("change", "ap-work")))
    assert '<span class="wf-badge wf-paused">paused</span>' in page
    assert fn_url("resume", "ap-work") in page
    listing = text(admin_client_.get(reverse(FUNCTIONS)))
    assert '<span class="wf-badge wf-paused">paused</span>' in listing

    # Back to the listing when it asked (a safe "next" only).
    response = admin_client_.post(fn_url("resume", "ap-work"), {"next": reverse(FUNCTIONS)})
    assert response["Location"] == reverse(FUNCTIONS)
    assert FunctionState.objects.get(function_id="ap-work").paused is False
    assert '<span class="wf-badge wf-active">active</span>' in text(admin_client_.get(fn_url("change", "ap-work")))
    response = admin_client_.post(fn_url("pause", "ap-work"), {"next": "https://evil.example.com/"})
    assert response["Location"] == fn_url("change", "ap-work")


def test_replay_failed_shows_the_count_first_then_replays_exactly_those(admin_client_):
    define_functions()
    for n in range(3):
        wf.send("ap.fail", data={"n": n})
    wf.send("ap.work", data={"n": 1})
    drain()
    failed = set(Run.objects.filter(function_id="ap-fail", status="failed").values_list("pk", flat=True))
    assert len(failed) == 3
    old = make_run("ap-fail", "failed", 1, ago=timedelta(days=3))  # outside the range asked for

    after = (clock.now() - timedelta(hours=1)).isoformat()
    response = admin_client_.post(fn_url("replay_failed", "ap-fail"), {"replay-after": after, "replay-before": ""})
    assert response.status_code == 200
    page = text(response)
    assert re.search(r'<strong class="wf-count">3</strong> failed runs', page), page
    assert "Yes, replay 3 runs" in page
    assert Run.objects.count() == 5  # nothing replayed yet
    shown = set(re.findall(r'name="run" value="([0-9a-f-]+)"', page))
    assert shown == {str(pk) for pk in failed}

    # A failed run that appears meanwhile is not part of the confirmed set.
    wf.send("ap.fail", data={"n": 99})
    drain()
    response = admin_client_.post(fn_url("replay_failed", "ap-fail"), {"confirm": "yes", "run": sorted(shown)})
    assert response.status_code == 302 and response["Location"] == fn_url("change", "ap-fail")
    replays = Run.objects.filter(replay_of__isnull=False)
    assert {r.replay_of_id for r in replays} == failed
    assert old.pk not in {r.replay_of_id for r in replays}
    assert "Replayed 3 failed runs of ap-fail." in messages_of(admin_client_.get(fn_url("change", "ap-fail")))

    # Confirming again replays nothing twice; asking again leaves the replayed ones out.
    admin_client_.post(fn_url("replay_failed", "ap-fail"), {"confirm": "yes", "run": sorted(shown)})
    assert Run.objects.filter(replay_of__isnull=False).count() == 3
    page = text(admin_client_.post(fn_url("replay_failed", "ap-fail"), {"replay-after": after}))
    assert re.search(r'<strong class="wf-count">1</strong> failed run ', page)  # the one sent meanwhile
    assert "3 failed runs of that range were replayed already" in page


def test_replay_failed_refused_while_paused_says_why(admin_client_):
    define_functions()
    wf.send("ap.fail")
    drain()
    run = Run.objects.get(function_id="ap-fail")
    wf.pause("ap-fail")
    response = admin_client_.post(fn_url("replay_failed", "ap-fail"), {"confirm": "yes", "run": [str(run.pk)]}, follow=True)
    assert any("is paused" in m for m in messages_of(response))
    assert not Run.objects.filter(replay_of=run).exists()


def test_range_form_errors_are_shown_inline(admin_client_):
    define_functions()
    now = clock.now()
    response = admin_client_.post(
        fn_url("cancel_running", "ap-sleep"),
        {"cancel-after": now.isoformat(), "cancel-before": (now - timedelta(hours=1)).isoformat()},
    )
    assert response.status_code == 200
    assert "“From” must be earlier than “To”." in text(response)
    response = admin_client_.post(fn_url("replay_failed", "ap-sleep"), {"replay-after": "yesterday"})
    assert "Enter a valid date/time." in text(response)


def test_cancel_running_shows_the_count_then_cancels(admin_client_):
    define_functions()
    for n in range(2):
        wf.send("ap.sleep", data={"n": n})
    wf.send("ap.work", data={"n": 1})
    drain()
    assert Run.objects.filter(function_id="ap-sleep", status="running").count() == 2

    response = admin_client_.post(fn_url("cancel_running", "ap-sleep"), {"cancel-after": "", "cancel-before": ""})
    page = text(response)
    assert re.search(r'<strong class="wf-count">2</strong> queued or running runs', page), page
    assert Run.objects.filter(status="cancelled").count() == 0
    before = re.search(r'name="cancel-before" value="([^"]+)"', page).group(1)

    response = admin_client_.post(
        fn_url("cancel_running", "ap-sleep"), {"confirm": "yes", "cancel-after": "", "cancel-before": before}
    )
    assert response.status_code == 302
    assert Run.objects.filter(function_id="ap-sleep", status="cancelled").count() == 2
    assert Run.objects.get(function_id="ap-work").status == "completed"
    assert "Cancelled 2 runs of ap-sleep." in messages_of(admin_client_.get(fn_url("change", "ap-sleep")))


def test_invoke_with_data_starts_a_run_of_that_function(admin_client_):
    define_functions()
    response = admin_client_.post(fn_url("invoke", "ap-work"), {"invoke-data": '{"n": 21, "account": "x"}'})
    assert response.status_code == 302
    run = Run.objects.get(function_id="ap-work")
    assert run.event.name == "workflows/function.invoked"
    assert run.event.data == {"n": 21, "account": "x"}
    assert run.parent_run_id is None
    drain()
    run.refresh_from_db()
    assert run.status == "completed" and run.output == {"doubled": 42, "data": {"n": 21, "account": "x"}}


def test_invoke_shows_bad_json_and_refusals_inline_and_stores_nothing(admin_client_):
    define_functions()
    response = admin_client_.post(fn_url("invoke", "ap-work"), {"invoke-data": '{"n": '})
    assert response.status_code == 200
    assert "data is not valid JSON: Expecting value: line 1 column 7 (char 6)" in text(response)

    response = admin_client_.post(fn_url("invoke", "ap-work"), {"invoke-data": "[1, 2]"})
    assert "data must be a dict, got list" in text(response)

    wf.pause("ap-work")
    response = admin_client_.post(fn_url("invoke", "ap-work"), {"invoke-data": "{}"})
    assert response.status_code == 200
    assert "function &#x27;ap-work&#x27; is paused" in text(response)
    assert not Run.objects.exists() and not Event.objects.exists()


# -- events ------------------------------------------------------------------------------------


def test_events_list_search_and_an_event_page_with_its_runs(admin_client_):
    define_functions()
    [first] = wf.send("ap.work", data={"n": 1, "account": "a"}, id="sender-key-1")
    wf.send("ap.work", data={"n": 0})  # matches no trigger expression: starts nothing
    wf.send("other.thing")
    drain()
    run = Run.objects.get(event_id=first)

    page = text(admin_client_.get(reverse(EVENTS)))
    assert "sender-key-1" in page
    assert f'{reverse("admin:django_workflows_event_change", args=[first])}#event-runs">1</a>' in page
    assert "3 events" in page
    assert reverse(SEND) in page  # the "Send event" button

    found = text(admin_client_.get(reverse(EVENTS), {"q": first}))
    assert "1 result" in found and "sender-key-1" in found
    found = text(admin_client_.get(reverse(EVENTS), {"q": "ap."}))
    assert "2 results" in found and "other.thing" not in found
    found = text(admin_client_.get(reverse(EVENTS), {"q": "work"}))  # a prefix, not a substring
    assert "0 results" in found

    detail = text(admin_client_.get(reverse("admin:django_workflows_event_change", args=[first])))
    assert str(run.pk) in detail
    assert "&quot;account&quot;: &quot;a&quot;" in detail  # data as pretty JSON
    assert fn_url("change", "ap-work") in detail
    assert 'name="_save"' not in detail  # read-only


def test_the_events_count_is_capped(admin_client_, monkeypatch):
    from django_workflows.admin import events

    monkeypatch.setattr(events, "COUNT_CAP", 2)
    wf.send([wf.Event("ap.many", data={"i": i}) for i in range(4)])
    page = text(admin_client_.get(reverse(EVENTS)))
    assert "more than 2 events" in page and "3 events" not in page
    assert page.count('class="field-name"') == 4  # one page: all of them are shown


def test_an_event_page_lists_the_batch_runs_it_joined(admin_client_):
    @wf.function(id="ap-batch", trigger="ap.batch", batch_events=wf.Batch(max_size=5, timeout="5s"))
    def batched(ctx):
        return len(ctx.events)

    ids = wf.send([wf.Event("ap.batch", data={"i": 1}), wf.Event("ap.batch", data={"i": 2})])
    drain(advance_time=True)
    run = Run.objects.get(function_id="ap-batch")
    assert run.event_id is not None and str(run.event_id) == ids[0]
    page = text(admin_client_.get(reverse("admin:django_workflows_event_change", args=[ids[1]])))
    if connection.vendor == "postgresql":
        assert str(run.pk) in page and "(batch)" in page
    else:
        assert str(run.pk) not in page
        assert "not looked for on this database (PostgreSQL only)" in page


def test_send_event_stores_it_and_links_to_it(admin_client_):
    response = admin_client_.post(reverse(SEND), {"name": "ap.sent", "data": '{"x": [1, 2]}', "id": "k-1"}, follow=True)
    event = Event.objects.get()
    assert (event.name, event.data, event.dedup_id) == ("ap.sent", {"x": [1, 2]}, "k-1")
    [message] = messages_of(response)
    assert str(event.pk) in message
    assert reverse("admin:django_workflows_event_change", args=[event.pk]) in message
    admin_client_.post(reverse(SEND), {"name": "ap.sent", "data": ""})
    assert Event.objects.filter(data={}).count() == 1  # empty data: {}


@pytest.mark.parametrize(
    "name, data, send_args",
    [
        ("workflows/x", "{}", ("workflows/x", {})),
        ("ap.sent", "[1, 2]", ("ap.sent", [1, 2])),
        ("", "{}", ("", {})),
        (" ap.sent", "{}", (" ap.sent", {})),
        ("ap.sent", '{"x": NaN}', ("ap.sent", {"x": float("nan")})),
    ],
)
def test_a_malformed_event_shows_what_wf_send_says_and_stores_nothing(admin_client_, name, data, send_args):
    with pytest.raises(wf.EventValidationError) as raised:
        wf.send(send_args[0], data=send_args[1])
    response = admin_client_.post(reverse(SEND), {"name": name, "data": data})
    assert response.status_code == 200
    form = response.context["form"]
    assert str(raised.value) in [error for errors in form.errors.values() for error in errors]
    assert "Nothing was sent" in text(response)
    assert not Event.objects.exists()


def test_send_event_with_invalid_json_shows_the_error_and_stores_nothing(admin_client_):
    response = admin_client_.post(reverse(SEND), {"name": "ap.sent", "data": "{'x': 1}"})
    assert response.status_code == 200
    assert response.context["form"].errors["data"] == [
        "data is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    ]
    assert not Event.objects.exists()


# -- workers -----------------------------------------------------------------------------------


def test_workers_page_shows_live_and_gone_workers(admin_client_):
    now = clock.now()
    WorkerRecord.objects.create(
        id="live-1", hostname="host-live", pid=101, started_at=now - timedelta(hours=1), last_seen_at=now,
        threads=8, items_in_hand=3, processed=1234, functions=["a", "b", "c"], schedules=[["a", "0 8 * * *"]],
    )
    WorkerRecord.objects.create(
        id="gone-1", hostname="host-gone", pid=202, started_at=now - timedelta(hours=2),
        last_seen_at=now - live_cutoff() - timedelta(seconds=5), threads=4,
    )
    page = text(admin_client_.get(reverse(WORKERS)))
    assert "host-live" in page and "host-gone" in page
    assert page.count('<span class="wf-badge wf-live">live</span>') == 1
    assert page.count('<span class="wf-badge wf-gone" title="last heard of') == 1
    assert "1234" in page
    live = text(admin_client_.get(reverse(WORKERS), {"status": "live"}))
    assert "host-live" in live and "host-gone" not in live
    gone = text(admin_client_.get(reverse(WORKERS), {"status": "gone"}))
    assert "host-gone" in gone and "host-live" not in gone
    detail = text(admin_client_.get(reverse("admin:django_workflows_workerrecord_change", args=["live-1"])))
    assert "0 8 * * *" in detail and 'name="_save"' not in detail


# -- permissions, methods, CSRF ----------------------------------------------------------------


ACTIONS = ["pause", "resume", "replay_failed", "cancel_running", "invoke"]


def test_actions_are_post_only(admin_client_):
    define_functions()
    for action in ACTIONS:
        assert admin_client_.get(fn_url(action, "ap-work")).status_code == 405, action
    assert admin_client_.post(fn_url("change", "ap-work")).status_code == 405


def test_actions_need_a_csrf_token():
    define_functions()
    client = Client(enforce_csrf_checks=True)
    client.force_login(User.objects.create_superuser("root", "root@example.com", "x"))
    for action in ACTIONS:
        assert client.post(fn_url(action, "ap-work")).status_code == 403, action
    assert client.post(reverse(SEND), {"name": "ap.sent", "data": "{}"}).status_code == 403
    assert not FunctionState.objects.exists() and not Event.objects.exists()


def test_functions_pages_need_view_run_and_actions_their_change_permission():
    define_functions()
    nobody = client_for()
    assert nobody.get(reverse(FUNCTIONS)).status_code == 403
    assert nobody.get(fn_url("change", "ap-work")).status_code == 403

    viewer = client_for("view_run")
    assert viewer.get(reverse(FUNCTIONS)).status_code == 200
    page = text(viewer.get(fn_url("change", "ap-work")))
    assert fn_url("pause", "ap-work") not in page and "Replay failed runs" not in page
    for action in ACTIONS:
        assert viewer.post(fn_url(action, "ap-work"), {"invoke-data": "{}"}).status_code == 403, action

    pauser = client_for("view_run", "change_functionstate")
    assert pauser.post(fn_url("pause", "ap-work")).status_code == 302
    for action in ("replay_failed", "cancel_running", "invoke"):
        assert pauser.post(fn_url(action, "ap-work")).status_code == 403, action

    operator = client_for("view_run", "change_run")
    assert operator.post(fn_url("pause", "ap-work")).status_code == 403
    assert operator.post(fn_url("resume", "ap-work")).status_code == 403
    assert operator.post(fn_url("cancel_running", "ap-work"), {}).status_code == 200
    response = operator.post(fn_url("invoke", "ap-work"), {"invoke-data": '{"n": 1}'})
    assert response.status_code == 200 and "is paused" in text(response)  # the pauser paused it
    assert FunctionState.objects.get(function_id="ap-work").paused is True
    assert Run.objects.filter(function_id="ap-work").count() == 0
    wf.resume("ap-work")
    assert operator.post(fn_url("invoke", "ap-work"), {"invoke-data": '{"n": 1}'}).status_code == 302
    assert Run.objects.filter(function_id="ap-work").count() == 1


def test_events_and_workers_pages_need_their_permissions():
    wf.send("ap.sent")
    event = Event.objects.get()
    nobody = client_for()
    assert nobody.get(reverse(EVENTS)).status_code == 403
    assert nobody.get(reverse("admin:django_workflows_event_change", args=[event.pk])).status_code == 403
    assert nobody.get(reverse(SEND)).status_code == 403
    assert nobody.get(reverse(WORKERS)).status_code == 403

    viewer = client_for("view_event", "view_workerrecord")
    assert viewer.get(reverse(EVENTS)).status_code == 200
    assert reverse(SEND) not in text(viewer.get(reverse(EVENTS)))
    assert viewer.get(reverse("admin:django_workflows_event_change", args=[event.pk])).status_code == 200
    assert viewer.get(reverse(WORKERS)).status_code == 200
    assert viewer.get(reverse(SEND)).status_code == 403
    assert viewer.post(reverse(SEND), {"name": "ap.sent", "data": "{}"}).status_code == 403
    assert Event.objects.count() == 1

    sender = client_for("view_event", "change_event")
    assert sender.get(reverse(SEND)).status_code == 200
    assert sender.post(reverse(SEND), {"name": "ap.sent", "data": "{}"}).status_code == 302
    assert Event.objects.count() == 2
    # Events are history: nobody edits or deletes them here.
    response = sender.post(reverse("admin:django_workflows_event_change", args=[event.pk]), {"name": "changed"})
    assert response.status_code == 403
    assert sender.get(reverse("admin:django_workflows_event_delete", args=[event.pk])).status_code == 403
