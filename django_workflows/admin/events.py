"""Events: what arrived, the runs each one started, and a form to send one.

Viewing needs ``view_event``. Sending needs ``change_event`` (the design's rule: sending
is a change permission, like replay, cancel and pause). Events are history: the pages
never add, change or delete one.

The changelist reads only index-served queries: newest first (``received_at``), a search
by exact event id (the primary key) or by the start of a name (the ``name`` index), a
count capped at ``COUNT_CAP`` rows, and one query for the runs started by the events of
the page.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import quote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import BooleanField, Count, ExpressionWrapper, Q
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from .. import conf
from ..errors import EventValidationError, WorkflowDefinitionError
from ..events import send
from ..flow_control import BATCH_TIMEOUT_MAX
from ..functions import registry
from ..models import Event, Run
from .forms import json_data
from .functions import admin_url, pretty_json, run_url

APP = "django_workflows"
# The changelist counts at most this many events (a count of a big table is slow).
COUNT_CAP = 10_000
# Runs listed on an event's page (per kind: started by it, or batches it joined).
RUNS_SHOWN = 100
# A batch run is queued at most BATCH_TIMEOUT_MAX before one of its events is taken in;
# it is looked for among runs queued from then until this long after the event arrived.
BATCH_LOOKUP_AFTER = timedelta(days=1)


class CappedPaginator(Paginator):
    """Counts at most ``COUNT_CAP + 1`` rows: pages beyond are reached by searching."""

    @cached_property
    def count(self) -> int:
        return self.object_list.order_by()[: COUNT_CAP + 1].count()  # any rows: no sort

    @property
    def cap(self) -> int:
        return COUNT_CAP

    @property
    def capped(self) -> bool:
        return self.count > COUNT_CAP


class EventChangeList(ChangeList):
    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> Any:
        queryset = super().get_queryset(request, exclude_parameters)
        # The list shows whether taking an event in failed, not the error or the data.
        flag = ExpressionWrapper(Q(error__isnull=False), output_field=BooleanField())
        return queryset.defer("data", "error").annotate(has_error=flag)

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        events = list(self.result_list)
        counts = dict(
            Run.objects.using(conf.database())
            .filter(event_id__in=[event.pk for event in events])
            .order_by()
            .values_list("event_id")
            .annotate(n=Count("pk"))
        )
        for event in events:
            event.runs_started = counts.get(event.pk, 0)
        self.result_list = events


class SendEventForm(forms.Form):
    """Checked by ``wf.send`` itself: its message is shown as it is."""

    name = forms.CharField(
        label="Name", required=False, strip=False,
        widget=forms.TextInput(attrs={"class": "vTextField", "list": "wf-event-names", "autocomplete": "off"}),
    )
    data = forms.CharField(
        label="Data", required=False, strip=False, initial="{}",
        widget=forms.Textarea(attrs={"rows": 10, "cols": 60, "class": "vLargeTextField", "spellcheck": "false"}),
        help_text="A JSON object: the event's data.",
    )
    id = forms.CharField(
        label="Id", required=False, strip=False,
        widget=forms.TextInput(attrs={"class": "vTextField"}),
        help_text="Optional: your deduplication key. An event whose id was seen in the last 24 hours is stored "
        "but triggers nothing.",
    )

    def clean_data(self) -> Any:
        return json_data(self.cleaned_data["data"])


def _field_of(message: str) -> str | None:
    """Which field a ``wf.send`` message is about, to show it there."""
    if message.startswith("event name"):
        return "name"
    if message.startswith("event id") or "': id " in message:
        return "id"
    if "': data" in message:
        return "data"
    return None


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["name", "received_at", "ts", "sender_id", "runs_started_column", "error_flag"]
    list_display_links = ["name"]
    list_filter = [("unmatched", admin.BooleanFieldListFilter)]
    search_fields = ["name"]  # shows the search box; get_search_results does the search
    search_help_text = "An event id (exact), or the start of an event name."
    show_full_result_count = False
    sortable_by = ["received_at"]
    list_per_page = 50
    paginator = CappedPaginator
    fields = ["id", "name", "sender_id", "ts", "received_at", "data_json", "error_json"]
    readonly_fields = fields
    send_template = "admin/django_workflows/event/send.html"

    # -- permissions: read-only, and send ------------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_send_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"{APP}.change_event")

    # -- the list ------------------------------------------------------------------------------

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).using(conf.database())

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return EventChangeList

    def get_search_results(self, request: HttpRequest, queryset: Any, search_term: str) -> tuple[Any, bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(pk=uuid.UUID(term)), False
        except ValueError:
            return queryset.filter(name__startswith=term), False

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        context = {"has_send_permission": self.has_send_permission(request)}
        return super().changelist_view(request, {**context, **(extra_context or {})})

    @admin.display(description="sender's id")
    def sender_id(self, obj: Event) -> str:
        return obj.dedup_id or "–"

    @admin.display(description="runs started")
    def runs_started_column(self, obj: Event) -> Any:
        count = getattr(obj, "runs_started", 0)
        if not count:
            return "0"
        url = reverse(f"admin:{APP}_event_change", args=[obj.pk], current_app=self.admin_site.name)
        return format_html('<a href="{}#event-runs">{}</a>', url, count)

    @admin.display(description="error")
    def error_flag(self, obj: Event) -> Any:
        """Taking the event in failed for good (it triggered nothing): the reason is on its page."""
        if getattr(obj, "has_error", False):
            return mark_safe('<span class="wf-status-failed">failed</span>')
        if obj.unmatched:  # nothing listens to its name: a typo in the sender, or a missing function
            return mark_safe('<span class="wf-status-cancelled" title="started no run and matched no wait '
                             'or cancel rule: nothing listens to this name">unmatched</span>')
        return ""

    # -- one event -----------------------------------------------------------------------------

    @admin.display(description="data")
    def data_json(self, obj: Event) -> Any:
        return pretty_json(obj.data)

    @admin.display(description="error")
    def error_json(self, obj: Event) -> Any:
        return pretty_json(obj.error) if obj.error is not None else "–"

    def render_change_form(
        self, request: HttpRequest, context: dict, add: bool = False, change: bool = False,
        form_url: str = "", obj: Event | None = None,
    ) -> HttpResponse:
        if obj is not None:
            context.update(self.runs_context(obj))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def runs_context(self, event: Event) -> dict:
        """The runs the event started (trigger event), and on PostgreSQL the batch runs it
        joined (``batch_event_ids`` containment, among the runs of the functions that
        batch this event, queued around its arrival: index-served and bounded)."""
        db = conf.database()
        runs = Run.objects.using(db)
        started = list(runs.filter(event=event).order_by("-queued_at")[: RUNS_SHOWN + 1])
        batched: list[Run] = []
        batching = sorted({fn.id for fn, _trigger in registry.triggered_by(event.name) if fn.flow.batch is not None})
        batch_note = ""
        if batching and connections[db].vendor == "postgresql":
            batched = list(
                runs.filter(
                    function_id__in=batching,
                    queued_at__gte=event.received_at - BATCH_TIMEOUT_MAX - timedelta(minutes=1),
                    queued_at__lte=event.received_at + BATCH_LOOKUP_AFTER,
                    batch_event_ids__contains=[str(event.pk)],
                )
                .exclude(event=event)
                .order_by("-queued_at")[:RUNS_SHOWN]
            )
            batch_note = (
                "Batch runs are looked for among the runs of functions that batch this event, "
                "queued within a day of its arrival."
            )
        elif batching:
            batch_note = (
                "Batches this event joined after their first event are not looked for on this "
                "database (PostgreSQL only): see the runs of "
                + ", ".join(batching) + "."
            )
        rows = [
            {
                "run": run,
                "url": run_url(run.pk),
                "function_url": admin_url(f"{APP}_functionstate_change", quote(run.function_id)),
                "batch": run in batched,
            }
            for run in [*started[:RUNS_SHOWN], *batched]
        ]
        return {
            "event_runs": rows,
            "event_runs_more": len(started) > RUNS_SHOWN,
            "runs_shown": RUNS_SHOWN,
            "batch_note": batch_note,
        }

    # -- sending -------------------------------------------------------------------------------

    def get_urls(self) -> list:
        info = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("send/", self.admin_site.admin_view(self.send_view), name=f"{info}_send"),
            *super().get_urls(),
        ]

    def send_view(self, request: HttpRequest) -> HttpResponse:
        """A form that calls ``wf.send``: its checks, its messages; nothing stored on error."""
        if not self.has_send_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            form = SendEventForm(request.POST)
            if form.is_valid():
                name, data = form.cleaned_data["name"], form.cleaned_data["data"]
                sender_id = form.cleaned_data["id"] or None
                try:
                    ids = send(name, data=data, id=sender_id)
                except (EventValidationError, WorkflowDefinitionError) as exc:
                    message = str(exc)
                    form.add_error(_field_of(message), message)
                else:
                    url = reverse(f"admin:{APP}_event_change", args=[ids[0]], current_app=self.admin_site.name)
                    messages.success(request, format_html('Sent event {}: <a href="{}">{}</a>.', name, url, ids[0]))
                    return HttpResponseRedirect(reverse(f"admin:{APP}_event_changelist", current_app=self.admin_site.name))
        else:
            form = SendEventForm()
        request.current_app = self.admin_site.name
        names = sorted({trigger.event for fn in registry.all() for trigger in fn.event_triggers
                        if not trigger.event.startswith("workflows/")})
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "title": "Send an event",
            "form": form,
            "event_names": names,
            "has_view_permission": self.has_view_permission(request),
        }
        return TemplateResponse(request, self.send_template, context)
