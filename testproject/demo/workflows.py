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


@wf.function(id="new-user-drip", name="New user drip campaign", trigger="user.signup")
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


@wf.function(id="import-contacts-csv", trigger="contacts.csv.uploaded")
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
    return {"imported": imported, "rejected": len(parsed["errors"])}
