"""The demo project's three functions, end to end, with drain(advance_time=True)."""

from __future__ import annotations

import time
from datetime import date

import pytest
from django.core import mail

import django_workflows as wf
from django_workflows.models import Run
from django_workflows.testing import drain
from testproject.demo.models import Contact, WaitingListEntry

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _locmem_email(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


def test_invite_waiting_list_invites_everyone_in_range():
    for n, joined in enumerate([date(2023, 3, 19), date(2023, 3, 20), date(2023, 3, 21)]):
        WaitingListEntry.objects.create(email=f"user{n}@example.com", joined_on=joined)
    wf.send("invite.users", data={"from": "2023-03-20", "until": "2023-03-21"})
    drain()
    run = Run.objects.get(function_id="invite-waiting-list")
    assert run.status == "completed"
    assert run.output == {"message": "Invited 2 users"}
    assert [s.step_id for s in run.steps.all()] == [
        "fetch-waiting-list",
        "create-invite-code", "send-invite-email",
        "create-invite-code:1", "send-invite-email:1",
    ]
    assert sorted(m.to[0] for m in mail.outbox) == ["user1@example.com", "user2@example.com"]
    assert WaitingListEntry.objects.filter(invited_at__isnull=False).count() == 2


def test_drip_campaign_sleeps_two_and_three_days_in_no_time():
    wf.send("user.signup", data={"email": "new@example.com", "plan": "free"})
    started = time.monotonic()
    drain()
    run = Run.objects.get(function_id="new-user-drip")
    assert run.status == "running"  # sleeping for 2 days
    assert [m.subject for m in mail.outbox] == ["Welcome aboard"]

    drain(advance_time=True)
    elapsed = time.monotonic() - started
    run.refresh_from_db()
    assert run.status == "completed", run.error
    assert run.output == {"emails": 3}
    assert [m.subject for m in mail.outbox] == [
        "Welcome aboard", "Three tips to get started", "Ready for more? Upgrade today"
    ]
    sleeps = {s.step_id: s for s in run.steps.filter(kind="sleep")}
    assert (sleeps["wait-2-days"].scheduled_at - sleeps["wait-2-days"].started_at).days == 2
    assert (sleeps["wait-3-days"].scheduled_at - sleeps["wait-3-days"].started_at).days == 3
    assert elapsed < 1.0


def test_drip_campaign_skips_upgrade_offer_for_paying_users():
    wf.send("user.signup", data={"email": "pro@example.com", "plan": "pro"})
    drain(advance_time=True)
    assert Run.objects.get().output == {"emails": 2}
    assert len(mail.outbox) == 2


def test_csv_import_imports_valid_rows_and_reports_the_rest():
    csv = "email,name,company\nada@example.com,Ada,Analytical\nnope,Bob,\ngrace@example.com,,Navy\n"
    wf.send("contacts.csv.uploaded", data={"csv": csv, "uploaded_by": "owner@example.com"})
    drain()
    run = Run.objects.get(function_id="import-contacts-csv")
    assert run.status == "completed"
    assert run.output == {"imported": 1, "rejected": 2}
    assert Run.objects.get(function_id="enrich-contact").status == "completed"
    assert list(Contact.objects.values_list("email", flat=True)) == ["ada@example.com"]
    assert [s.step_id for s in run.steps.all()] == [
        "parse-and-validate", "import-valid-rows", "send-error-report", "announce-import"
    ]
    (report,) = mail.outbox
    assert report.to == ["owner@example.com"]
    assert "row 3: invalid email 'nope'" in report.body
    assert "row 4: name is empty" in report.body


def test_csv_import_of_a_clean_file_sends_no_report():
    wf.send("contacts.csv.uploaded", data={"csv": "email,name\nada@example.com,Ada\n", "uploaded_by": "o@example.com"})
    drain()
    assert Run.objects.get(function_id="import-contacts-csv").output == {"imported": 1, "rejected": 0}
    assert mail.outbox == []


def test_drip_campaign_is_cancelled_when_the_user_is_deleted():
    wf.send("user.signup", data={"email": "gone@example.com"})
    drain()
    wf.send("user.deleted", data={"email": "gone@example.com"})
    drain(advance_time=True)
    assert Run.objects.get(function_id="new-user-drip").status == "cancelled"
    assert [m.subject for m in mail.outbox] == ["Welcome aboard"]


def test_import_announces_itself_and_enrichment_runs_in_parallel():
    wf.send("contacts.csv.uploaded", data={"csv": "email,name\nada@example.com,Ada\n", "uploaded_by": "o@example.com"})
    drain()
    enrich = Run.objects.get(function_id="enrich-contact")
    assert enrich.status == "completed"
    assert enrich.output == {"sources": ["registry", "social", "news"]}
    assert enrich.event.data == {"count": 1}


def test_import_failure_notifies_the_uploader():
    wf.send("contacts.csv.uploaded", data={"uploaded_by": "o@example.com"})  # no csv: KeyError outside steps
    drain(advance_time=True)
    assert Run.objects.get(function_id="import-contacts-csv").status == "failed"
    assert Run.objects.get(function_id="import-contacts-csv-failure").status == "completed"
    (notice,) = mail.outbox
    assert notice.subject == "Your contact import failed" and "'csv'" in notice.body


def test_abandoned_cart_waits_for_payment_or_reminds():
    wf.send("cart.created", data={"cart_id": "paid-cart", "email": "a@example.com"})
    wf.send("cart.created", data={"cart_id": "lost-cart", "email": "b@example.com"})
    drain()
    wf.send("cart.paid", data={"cart_id": "paid-cart", "total": 40})
    drain(advance_time=True)
    outputs = dict(Run.objects.filter(function_id="abandoned-cart").values_list("event__data__cart_id", "output"))
    assert outputs == {"paid-cart": {"paid": True, "order_total": 40}, "lost-cart": {"paid": False}}
    assert [m.to for m in mail.outbox] == [["b@example.com"]]


def test_complete_order_invokes_the_invoice_function():
    wf.send("order.completed", data={"order_id": "7", "total": 12, "email": "c@example.com"})
    drain()
    assert Run.objects.get(function_id="complete-order").output == {"invoice_number": "INV-7", "total": 12}
    assert Run.objects.get(function_id="render-invoice").parent_run is not None


def test_daily_digest_fires_at_eight_in_paris():
    from django_workflows.engine import clock, cron
    from django_workflows.models import CronSchedule

    cron.sync_schedules("default")
    schedule = CronSchedule.objects.get(function_id="daily-digest")
    tick = cron.next_tick(cron._trigger_for(schedule)[1], schedule.created_at)
    assert tick.hour == 8 and str(tick.tzinfo) == "Europe/Paris"
    clock.advance_to(tick)
    drain(advance_time=True)
    run = Run.objects.get(function_id="daily-digest")
    assert run.status == "completed" and run.output["contacts"] == 0
