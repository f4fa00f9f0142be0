"""The demo project's workflow functions, taken from real use."""

from __future__ import annotations

from functools import partial

import django_workflows as wf

from . import services


@wf.function(id="invite-waiting-list", trigger=wf.TriggerEvent(event="invite.users"), retries=4)
def invite_waiting_list(ctx: wf.Context) -> dict:
    """Invite everyone who joined the waiting list in a date range."""
    emails = ctx.step.run(
        "fetch-waiting-list", services.fetch_waiting_list, ctx.event.data["from"], ctx.event.data.get("until")
    )
    for email in emails:  # repeated step ids become create-invite-code, create-invite-code:1, ...
        code = ctx.step.run("create-invite-code", services.create_invite_code, email)
        ctx.step.run("send-invite-email", services.send_invite, email, code)
    return {"message": f"Invited {len(emails)} users"}


@wf.function(
    id="new-user-drip",
    name="New user drip campaign",
    trigger="user.signup",
    # A user who deletes their account gets no more emails, even mid-sleep.
    cancel=[wf.Cancel(event="user.deleted", match="data.email")],
)
def new_user_drip(ctx: wf.Context) -> dict:
    """Welcome now, tips two days later, an upgrade offer three days after that."""
    email = ctx.event.data["email"]
    ctx.step.run("send-welcome", services.send_drip_email, email, "welcome")
    ctx.step.sleep("wait-2-days", "2d")
    ctx.step.run("send-tips", services.send_drip_email, email, "tips")
    ctx.step.sleep("wait-3-days", "3d")
    if ctx.event.data.get("plan", "free") == "free":
        ctx.step.run("send-upgrade-offer", services.send_drip_email, email, "upgrade")
        return {"emails": 3}
    return {"emails": 2}


def import_failed(ctx: wf.Context) -> None:
    """on_failure: tell the uploader their import failed for good."""
    original = ctx.event.data["event"]["data"]
    ctx.step.run(
        "notify-uploader", services.send_import_failed, original["uploaded_by"], ctx.event.data["error"]["message"]
    )


@wf.function(id="import-contacts-csv", trigger="contacts.csv.uploaded", on_failure=import_failed)
def import_contacts_csv(ctx: wf.Context) -> dict:
    """Validate an uploaded CSV; import the valid rows; report the rest to the uploader."""
    parsed = ctx.step.run("parse-and-validate", services.parse_contacts_csv, ctx.event.data["csv"])
    imported = 0
    if parsed["valid"]:
        # atomic: the contacts and the step's recorded result commit together, exactly once.
        imported = ctx.step.run("import-valid-rows", services.import_contacts, parsed["valid"], atomic=True)
    if parsed["errors"]:
        ctx.logger.info("%d rows failed validation", len(parsed["errors"]))
        ctx.step.run(
            "send-error-report",
            partial(services.send_import_report, ctx.event.data["uploaded_by"]),
            imported,
            parsed["errors"],
        )
    if imported:
        # Other functions (and other apps) react to the import; sent exactly once.
        ctx.step.send_event("announce-import", wf.Event(name="contacts.imported", data={"count": imported}))
    return {"imported": imported, "rejected": len(parsed["errors"])}


@wf.function(
    id="abandoned-cart",
    trigger="cart.created",
    timeouts=wf.Timeouts(finish="2d"),
)
def abandoned_cart(ctx: wf.Context) -> dict:
    """Remind a shopper who has not paid within an hour; stop as soon as they pay."""
    paid = ctx.step.wait_for_event("wait-for-payment", event="cart.paid", match="data.cart_id", timeout="1h")
    if paid is not None:
        return {"paid": True, "order_total": paid.data.get("total")}
    ctx.step.run("send-reminder", services.send_cart_reminder, ctx.event.data["email"], ctx.event.data["cart_id"])
    return {"paid": False}


@wf.function(id="enrich-contact", trigger="contacts.imported")
def enrich_contact(ctx: wf.Context) -> dict:
    """Look a company up in three sources at once (each branch on any free worker)."""
    company_info, social, news = ctx.group.parallel(
        (
            lambda: ctx.step.run("company-registry", services.lookup_source, "registry", ctx.event.data["count"]),
            lambda: ctx.step.run("social-profiles", services.lookup_source, "social", ctx.event.data["count"]),
            lambda: ctx.step.run("news-mentions", services.lookup_source, "news", ctx.event.data["count"]),
        )
    )
    return {"sources": [company_info["source"], social["source"], news["source"]]}


@wf.function(id="render-invoice", trigger=[])
def render_invoice(ctx: wf.Context) -> dict:
    """Invoked by other functions: render an invoice and return its number."""
    number = ctx.step.run("allocate-number", services.allocate_invoice_number, ctx.event.data["order_id"])
    return {"invoice_number": number, "total": ctx.event.data["total"]}


@wf.function(id="complete-order", trigger="order.completed")
def complete_order(ctx: wf.Context) -> dict:
    """Invoke the invoice function and email its result: one function calling another."""
    invoice = ctx.step.invoke(
        "render-invoice", function=render_invoice,
        data={"order_id": ctx.event.data["order_id"], "total": ctx.event.data["total"]}, timeout="10m",
    )
    ctx.step.run("email-invoice", services.send_drip_email, ctx.event.data["email"], "invoice")
    return invoice


@wf.function(id="daily-digest", trigger=wf.TriggerCron("TZ=Europe/Paris 0 8 * * *", jitter="5m"))
def daily_digest(ctx: wf.Context) -> dict:
    """Every morning at 08:00 Paris time: count yesterday's contacts."""
    count = ctx.step.run("count-contacts", services.count_contacts)
    return {"contacts": count, "scheduled_for": ctx.event.data["scheduled_for"]}
