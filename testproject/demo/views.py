"""A one-page demo: send the demo events and watch the runs."""

from __future__ import annotations

from datetime import date, timedelta

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

import django_workflows as wf
from django_workflows.models import Run

from .models import WaitingListEntry

SAMPLE_CSV = "email,name,company\nada@example.com,Ada Lovelace,Analytical\nnot-an-email,Bob,\ngrace@example.com,Grace Hopper,Navy\n"


def home(request: HttpRequest) -> HttpResponse:
    runs = Run.objects.only("id", "function_id", "status", "queued_at", "ended_at", "output", "error")[:25]
    return render(request, "demo/home.html", {"runs": runs})


@require_POST
def send_demo_event(request: HttpRequest, demo: str) -> HttpResponse:
    today = date.today()
    if demo == "invite":
        for n in range(3):
            WaitingListEntry.objects.get_or_create(
                email=f"waiting{n}@example.com", defaults={"joined_on": today - timedelta(days=n)}
            )
        wf.send("invite.users", data={"from": (today - timedelta(days=7)).isoformat()})
    elif demo == "signup":
        wf.send("user.signup", data={"email": "new.user@example.com", "plan": "free"})
    elif demo == "cart":
        wf.send("cart.created", data={"cart_id": "cart-1", "email": "shopper@example.com"})
    elif demo == "pay":
        wf.send("cart.paid", data={"cart_id": "cart-1", "total": 99})
    elif demo == "order":
        wf.send("order.completed", data={"order_id": "1001", "total": 99, "email": "shopper@example.com"})
    elif demo == "unsubscribe":
        wf.send("user.deleted", data={"email": "new.user@example.com"})
    elif demo == "import":
        wf.send("contacts.csv.uploaded", data={"csv": SAMPLE_CSV, "uploaded_by": "owner@example.com"})
    else:
        return HttpResponseBadRequest(f"unknown demo {demo!r}")
    return redirect("home")
