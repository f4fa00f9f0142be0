"""Plain application code the demo workflows call from their steps."""

from __future__ import annotations

import csv
import io
import secrets
from datetime import date

from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import IntegrityError
from django.utils import timezone

from .models import Contact, WaitingListEntry


def fetch_waiting_list(joined_from: str, joined_until: str | None = None) -> list[str]:
    entries = WaitingListEntry.objects.filter(joined_on__gte=date.fromisoformat(joined_from), invited_at=None)
    if joined_until:
        entries = entries.filter(joined_on__lte=date.fromisoformat(joined_until))
    return list(entries.order_by("joined_on", "email").values_list("email", flat=True))


def create_invite_code(email: str) -> str:
    entry = WaitingListEntry.objects.get(email=email)
    if not entry.invite_code:  # a retried step reuses the code it made before
        entry.invite_code = secrets.token_urlsafe(12)
        entry.save(update_fields=["invite_code"])
    return entry.invite_code


def send_invite(email: str, code: str) -> None:
    send_mail("You're in!", f"Your invite code: {code}", None, [email])
    WaitingListEntry.objects.filter(email=email).update(invited_at=timezone.now())


def send_drip_email(email: str, template: str) -> str:
    subjects = {
        "welcome": "Welcome aboard",
        "tips": "Three tips to get started",
        "upgrade": "Ready for more? Upgrade today",
        "invoice": "Your invoice",
    }
    send_mail(subjects[template], f"[{template}] email for {email}", None, [email])
    return template


def parse_contacts_csv(text: str) -> dict:
    """Split the upload into valid rows and errors (row number and reason)."""
    reader = csv.DictReader(io.StringIO(text))
    missing = {"email", "name"} - set(reader.fieldnames or [])
    if missing:
        return {"valid": [], "errors": [{"row": 1, "reason": f"missing columns: {', '.join(sorted(missing))}"}]}
    valid, errors, seen = [], [], set()
    for number, row in enumerate(reader, start=2):
        email = (row.get("email") or "").strip().lower()
        name = (row.get("name") or "").strip()
        try:
            validate_email(email)
        except Exception:
            errors.append({"row": number, "reason": f"invalid email {email!r}"})
            continue
        if not name:
            errors.append({"row": number, "reason": "name is empty"})
        elif email in seen:
            errors.append({"row": number, "reason": f"duplicate email {email!r}"})
        else:
            seen.add(email)
            valid.append({"email": email, "name": name, "company": (row.get("company") or "").strip()})
    return {"valid": valid, "errors": errors}


def import_contacts(rows: list[dict]) -> int:
    created = 0
    for row in rows:
        try:
            _, was_created = Contact.objects.update_or_create(
                email=row["email"], defaults={"name": row["name"], "company": row["company"]}
            )
        except IntegrityError:
            continue
        created += int(was_created)
    return created


def send_import_report(to: str, imported: int, errors: list[dict]) -> None:
    lines = [f"Imported {imported} contacts."]
    if errors:
        lines.append(f"{len(errors)} rows were skipped:")
        lines.extend(f"  row {e['row']}: {e['reason']}" for e in errors)
    send_mail("Your contact import", "\n".join(lines), None, [to])


def send_import_failed(to: str, reason: str) -> None:
    send_mail("Your contact import failed", f"We could not import your file: {reason}", None, [to])


def send_cart_reminder(email: str, cart_id: str) -> None:
    send_mail("You left something in your cart", f"Cart {cart_id} is waiting for you.", None, [email])


def lookup_source(source: str, count: int) -> dict:
    """Stands in for a call to an enrichment API."""
    return {"source": source, "looked_up": count}


def allocate_invoice_number(order_id: str) -> str:
    return f"INV-{order_id}"


def count_contacts() -> int:
    return Contact.objects.count()
