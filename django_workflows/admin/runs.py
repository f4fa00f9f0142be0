"""Runs in the admin: a changelist that stays fast on millions of runs, and one page per run
with its visual timeline, replay (from the start or from a step) and cancel.

Read-only: runs are written by the engine only. Nobody adds, edits or deletes a run here:
history is pruned by the workers (``RETENTION_DAYS``), and deleting a run a worker holds
would pull its steps out from under it. ``change_run`` is the permission to replay and
cancel; ``view_run`` (or ``change_run``) to look.

Speed on PostgreSQL with a million runs:

* no ``COUNT(*)`` over the table: the paginator reads the planner's estimate
  (``pg_class.reltuples``) when nothing is filtered, and counts at most
  :data:`COUNT_CAP` rows otherwise; ``show_full_result_count`` is off and so are facets;
* every filter is served by an index: status and function by ``(status, -queued_at)`` and
  ``(function_id, -queued_at)``, with the list ordered by ``queued_at`` so that the index
  also gives the order; without either, the list is ordered by the primary key, a UUIDv7
  whose leading bits are the creation time (the same moment as ``queued_at``), and time
  ranges (date hierarchy, the "queued" filter) add a primary-key range around them;
* the function filter lists the registered functions, not a ``DISTINCT`` over the table;
  the date hierarchy takes its bounds from the oldest and newest ids, not from ``MIN``,
  ``MAX`` and ``DISTINCT date_trunc(...)`` scans;
* search is exact or a prefix: a UUID is a run id or an event id, anything else the
  start of the trigger event's name (``LIKE 'x%'``, served by Django's ``_like`` index);
* the attempts column is one grouped query for the rows of the page.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils import formats, timezone
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_POST

from .. import control
from ..engine import clock
from ..errors import RunNotFinishedError, RunRefusedError, UnknownFunctionError
from ..functions import registry
from ..models import Attempt, Event, Run, Step
from ..states import FINISHED_STATUSES
from . import timeline as timeline_module

# Filtered lists count at most this many rows (then "more than 10,000 runs").
COUNT_CAP = 10_000
# An action on more runs than this (e.g. "select all" over a large filter) is refused.
MAX_ACTION_RUNS = 1_000
# Pretty JSON longer than this is cut (a step's output may be 4 MiB).
MAX_JSON_CHARS = 100_000
# Rows of the run page's lists (replays, invoked runs, batch events) shown at most.
MAX_RELATED = 100
# A time range in the list also bounds the primary key (UUIDv7: creation time) this much
# wider, for clocks that disagree (queued_at follows the database's clock, ids the host's).
ID_TIME_SLACK = timedelta(hours=1)
LIVE_REFRESH_SECONDS = 3

QUEUED_WITHIN = {
    "1h": (_("Last hour"), timedelta(hours=1)),
    "24h": (_("Last 24 hours"), timedelta(hours=24)),
    "7d": (_("Last 7 days"), timedelta(days=7)),
    "30d": (_("Last 30 days"), timedelta(days=30)),
}


# -- ids and time ---------------------------------------------------------------------------


def id_floor(moment: datetime) -> uuid.UUID:
    """The smallest UUIDv7 (``django_workflows.ids.new_id``) made at ``moment``'s millisecond."""
    millis = max(0, int(moment.timestamp() * 1000))
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= 0x2 << 62  # RFC 4122 variant
    return uuid.UUID(int=value)


def ids_follow_clock() -> bool:
    """Whether run ids' creation times can bound a queued_at range: true unless the
    engine's clock was moved (tests: ``drain(advance_time=True)``) or is far off."""
    return abs(clock.now() - timezone.now()) < ID_TIME_SLACK / 4


def id_range(since: datetime | None, until: datetime | None) -> dict[str, uuid.UUID]:
    """Lookups on the primary key that hold every run queued in [since, until)."""
    if not ids_follow_clock():
        return {}
    bounds = {}
    if since is not None:
        bounds["pk__gte"] = id_floor(since - ID_TIME_SLACK)
    if until is not None:
        bounds["pk__lt"] = id_floor(until + ID_TIME_SLACK)
    return bounds


def duration_of(run: Run, now: datetime | None = None) -> timedelta | None:
    if run.started_at is None:
        return None
    end = run.ended_at or (now or clock.now())
    return end - run.started_at


def _time(moment: datetime | None, same_day_as: datetime | None = None) -> str:
    """``2026-03-02 14:05:09``, or only ``14:05:09`` on the same day as ``same_day_as``."""
    if moment is None:
        return "—"
    local = timezone.localtime(moment)
    short = same_day_as is not None and timezone.localtime(same_day_as).date() == local.date()
    return format_html(
        '<span class="wf-time" title="{}">{}</span>',
        local.isoformat(),
        local.strftime("%H:%M:%S" if short else "%Y-%m-%d %H:%M:%S"),
    )


def pretty_json(value: Any, limit: int = MAX_JSON_CHARS) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    if len(text) > limit:
        text = text[:limit] + f"\n… ({len(text) - limit:,} more characters not shown)"
    return text


# -- the list -------------------------------------------------------------------------------


# An event name search looks at this many of the newest matching events.
SEARCH_EVENTS_CAP = 10_000


class RunPaginator(Paginator):
    """A paginator that never counts the whole table.

    Unfiltered on PostgreSQL: the planner's row estimate (``estimated``). Otherwise: an
    exact count of at most COUNT_CAP + 1 rows, reported as COUNT_CAP (``capped``) beyond.
    """

    estimated = False
    capped = False

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not queryset.query.where:
            estimate = self._estimate(queryset)
            if estimate is not None and estimate >= COUNT_CAP:
                self.estimated = True
                return estimate
        found = queryset.order_by().values("pk")[: COUNT_CAP + 1].count()
        if found > COUNT_CAP:
            self.capped = True
            return COUNT_CAP
        return found

    @staticmethod
    def _estimate(queryset: Any) -> int | None:
        connection = connections[queryset.db]
        if connection.vendor != "postgresql":
            return None
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)",
                [connection.ops.quote_name(queryset.model._meta.db_table)],
            )
            row = cursor.fetchone()
        # -1: never vacuumed or analyzed; count instead.
        return int(row[0]) if row and row[0] is not None and row[0] >= 0 else None

    @cached_property
    def num_pages(self) -> int:
        # Pages past the first COUNT_CAP rows would be OFFSET scans of the whole history
        # (page 20,000 of 1,000,000 runs: 1.2 s); filter or search to go further back.
        return min(super().num_pages, max(1, COUNT_CAP // self.per_page))


class RunChangeList(ChangeList):
    """Index-friendly ordering and time ranges, attempts per page, a cheap date hierarchy."""

    INDEXED_FILTERS = ("status__exact", "function")

    def has_indexed_filter(self) -> bool:
        return any(self.params.get(name) for name in self.INDEXED_FILTERS)

    def get_filters(self, request: HttpRequest) -> Any:
        specs, has_filters, lookup_params, duplicates, active = super().get_filters(request)
        # The date hierarchy's range on queued_at: bound the primary key as well.
        since = lookup_params.get("queued_at__gte")
        until = lookup_params.get("queued_at__lt")
        since = since[-1] if isinstance(since, list) and since else None
        until = until[-1] if isinstance(until, list) and until else None
        if isinstance(since, datetime) and isinstance(until, datetime):
            for key, value in id_range(since, until).items():
                lookup_params[key] = [value]
        return specs, has_filters, lookup_params, duplicates, active

    def get_ordering(self, request: HttpRequest, queryset: Any) -> list[Any]:
        ordering = super().get_ordering(request, queryset)
        if self.has_indexed_filter():
            return ordering  # (status|function_id, -queued_at) gives queued_at's order
        # No index on queued_at alone: the primary key (UUIDv7, creation time) orders alike.
        first = ordering[0] if ordering else "-queued_at"
        return ["pk"] if first in ("queued_at", "pk") else ["-pk"]

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        runs = list(self.result_list)
        counts = {
            row["run_id"]: (row["total"], row["failed"])
            for row in Attempt.objects.using(self.queryset.db)
            .filter(run_id__in=[run.pk for run in runs])
            .values("run_id")
            .annotate(total=Count("id"), failed=Count("id", filter=~Q(outcome="completed")))
            .order_by()
        }
        for run in runs:
            run.wf_attempts = counts.get(run.pk, (0, 0))
        self.result_list = runs

    @property
    def count_label(self) -> str:
        paginator = getattr(self, "paginator", None)
        number = formats.number_format(self.result_count, force_grouping=True)
        noun = self.opts.verbose_name if self.result_count == 1 else self.opts.verbose_name_plural
        if paginator is not None and paginator.estimated:
            return _("about %(count)s %(noun)s") % {"count": number, "noun": noun}
        if paginator is not None and paginator.capped:
            return _("more than %(count)s %(noun)s") % {"count": number, "noun": noun}
        return f"{number} {noun}"

    @cached_property
    def wf_date_hierarchy(self) -> dict[str, Any]:
        """Like the admin's date hierarchy, with bounds from the oldest and newest ids (two
        primary key lookups) instead of MIN/MAX and DISTINCT scans; every year, month or day
        between them is offered."""
        field = "queued_at"
        year, month, day = (self.params.get(f"{field}__{part}") for part in ("year", "month", "day"))
        base = self.root_queryset.order_by().values_list(field, flat=True)
        ends = [base.order_by("pk").first(), base.order_by("-pk").first()]
        ends = [timezone.localtime(e) for e in ends if e is not None]
        if not ends:
            return {"show": False}
        first, last = min(ends).date(), max(ends).date()

        def link(filters: dict[str, Any]) -> str:
            return self.get_query_string(filters, [f"{field}__"])

        try:
            year_i = int(year) if year else None
            month_i = int(month) if month else None
            day_i = int(day) if day else None
            moment = datetime(year_i or 1, month_i or 1, day_i or 1)
        except (TypeError, ValueError):
            return {"show": False}
        if year_i and month_i and day_i:
            return {
                "show": True,
                "back": {
                    "link": link({f"{field}__year": year_i, f"{field}__month": month_i}),
                    "title": capfirst(formats.date_format(moment, "YEAR_MONTH_FORMAT")),
                },
                "choices": [{"title": capfirst(formats.date_format(moment, "MONTH_DAY_FORMAT"))}],
            }
        if year_i and month_i:
            days = []
            current = moment.date()
            while current.month == month_i:
                if first <= current <= last:
                    days.append(current)
                current += timedelta(days=1)
            return {
                "show": True,
                "back": {"link": link({f"{field}__year": year_i}), "title": str(year_i)},
                "choices": [
                    {
                        "link": link({f"{field}__year": year_i, f"{field}__month": month_i, f"{field}__day": d.day}),
                        "title": capfirst(formats.date_format(d, "MONTH_DAY_FORMAT")),
                    }
                    for d in days
                ],
            }
        if year_i:
            months = [
                m for m in range(1, 13)
                if (year_i, m) >= (first.year, first.month) and (year_i, m) <= (last.year, last.month)
            ]
            return {
                "show": True,
                "back": {"link": link({}), "title": _("All dates")},
                "choices": [
                    {
                        "link": link({f"{field}__year": year_i, f"{field}__month": m}),
                        "title": capfirst(formats.date_format(datetime(year_i, m, 1), "YEAR_MONTH_FORMAT")),
                    }
                    for m in months
                ],
            }
        return {
            "show": True,
            "back": None,
            "choices": [
                {"link": link({f"{field}__year": str(y)}), "title": str(y)}
                for y in range(first.year, last.year + 1)
            ],
        }


class FunctionFilter(admin.SimpleListFilter):
    """The functions this process defines (the registry), not a DISTINCT over the runs."""

    title = _("function")
    parameter_name = "function"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        ids = sorted(fn.id for fn in registry.all())
        current = self.value()
        if current and current not in ids:
            ids.append(current)  # runs of a function no longer defined
        return [(fid, fid) for fid in ids]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        if self.value():
            return queryset.filter(function_id=self.value())
        return queryset


class QueuedWithinFilter(admin.SimpleListFilter):
    title = _("queued")
    parameter_name = "queued"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(key, label) for key, (label, _span) in QUEUED_WITHIN.items()]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        choice = QUEUED_WITHIN.get(self.value() or "")
        if choice is None:
            return queryset
        since = clock.now() - choice[1]
        return queryset.filter(queued_at__gte=since, **id_range(since, None))


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = [
        "status_badge", "function", "trigger", "queued", "started", "ended", "duration", "attempts_column",
    ]
    list_display_links = ["status_badge", "function"]
    list_filter = ["status", FunctionFilter, QueuedWithinFilter]
    list_select_related = ["event"]
    date_hierarchy = "queued_at"
    search_fields = ["id", "event__id", "event__name"]  # see get_search_results
    search_help_text = _(
        "A run id or an event id (exact), or the beginning of the trigger event's name "
        "(case-sensitive)."
    )
    sortable_by = ["queued"]
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 50
    list_max_show_all = 200
    ordering = ["-queued_at"]
    actions = ["replay_runs", "cancel_runs"]
    run_template = "admin/django_workflows/run/run_detail.html"

    # -- permissions: read-only, replay and cancel with change_run ----------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    # -- the list -----------------------------------------------------------------------------

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return RunChangeList

    def get_paginator(self, request: HttpRequest, queryset: Any, per_page: int, orphans: int = 0, allow_empty_first_page: bool = True) -> Paginator:
        return RunPaginator(queryset, per_page, orphans, allow_empty_first_page)

    def get_search_results(self, request: HttpRequest, queryset: Any, search_term: str) -> tuple[Any, bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            value = uuid.UUID(term)
        except ValueError:
            # Runs of the newest matching events: the events come from the (name, received_at)
            # index, the runs by event id. A join ordered by run id would walk the whole
            # history when the name is rare or old (0.9 s on 1,000,000 runs).
            # The ids are fetched first: as a subquery, PostgreSQL hashed them against the
            # whole events table (0.2 s on 1,000,000 events); a list uses the event_id index.
            events = list(
                Event.objects.using(queryset.db).filter(name__startswith=term)
                .order_by("-received_at").values_list("pk", flat=True)[:SEARCH_EVENTS_CAP]
            )
            return queryset.filter(event_id__in=events), False
        return queryset.filter(Q(pk=value) | Q(event_id=value)), False

    @admin.display(description=_("status"))
    def status_badge(self, run: Run) -> str:
        return format_html('<span class="wf-badge wf-o-{}">{}</span>', run.status, run.get_status_display())

    @admin.display(description=_("function"))
    def function(self, run: Run) -> str:
        return run.function_id

    @admin.display(description=_("trigger event"))
    def trigger(self, run: Run) -> str:
        if run.event_id is None or run.event is None:
            return "—"
        extra = len(run.batch_event_ids or []) - 1
        if extra > 0:
            return format_html("{} <span class=\"quiet\">(+{} in batch)</span>", run.event.name, extra)
        return run.event.name

    @admin.display(description=_("duration"))
    def duration(self, run: Run) -> str:
        value = duration_of(run)
        if value is None:
            return "—"
        text = timeline_module.format_duration(value)
        if run.ended_at:
            return format_html('<span class="wf-time">{}</span>', text)
        return format_html('<span class="wf-time quiet">{}…</span>', text)

    @admin.display(description=_("attempts"))
    def attempts_column(self, run: Run) -> str:
        total, failed = getattr(run, "wf_attempts", (None, 0))
        if total is None:
            return "—"
        if failed:
            return format_html('{} <span class="wf-failed-count">({} failed)</span>', total, failed)
        return str(total)

    @admin.display(description=_("queued"), ordering="queued_at")
    def queued(self, run: Run) -> str:
        return _time(run.queued_at)

    @admin.display(description=_("started"))
    def started(self, run: Run) -> str:
        return _time(run.started_at, run.queued_at)

    @admin.display(description=_("ended"))
    def ended(self, run: Run) -> str:
        return _time(run.ended_at, run.queued_at)

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        return super().changelist_view(request, {"title": _("Runs"), **(extra_context or {})})

    # -- list actions --------------------------------------------------------------------------

    def _selected(self, request: HttpRequest, queryset: Any) -> list[Run] | None:
        runs = list(queryset.order_by()[: MAX_ACTION_RUNS + 1])
        if len(runs) > MAX_ACTION_RUNS:
            self.message_user(
                request,
                _("Select at most %(max)s runs at a time (narrow the list with its filters).")
                % {"max": f"{MAX_ACTION_RUNS:,}"},
                messages.ERROR,
            )
            return None
        return runs

    def _report_errors(self, request: HttpRequest, errors: list[tuple[Run, str]]) -> None:
        for run, message in errors[:10]:
            self.message_user(
                request,
                format_html('Run <a href="{}">{}</a>: {}', self.run_url(run.pk), run.pk, message),
                messages.ERROR,
            )
        if len(errors) > 10:
            self.message_user(request, f"… and {len(errors) - 10} more errors.", messages.ERROR)

    @admin.action(description=_("Replay selected runs"), permissions=["change"])
    def replay_runs(self, request: HttpRequest, queryset: Any) -> None:
        runs = self._selected(request, queryset)
        if runs is None:
            return
        replayed, errors = 0, []
        for run in runs:
            try:
                new = control.replay(run.pk)
            except (RunNotFinishedError, RunRefusedError, UnknownFunctionError, ValueError) as exc:
                errors.append((run, str(exc)))
                continue
            replayed += 1
            self.log_change(request, run, f"Replayed as run {new.pk}.")
        if replayed:
            self.message_user(
                request,
                ngettext("Replayed %(count)d run.", "Replayed %(count)d runs.", replayed) % {"count": replayed},
                messages.SUCCESS,
            )
        self._report_errors(request, errors)

    @admin.action(description=_("Cancel selected runs"), permissions=["change"])
    def cancel_runs(self, request: HttpRequest, queryset: Any) -> None:
        runs = self._selected(request, queryset)
        if runs is None:
            return
        cancelled, ended = 0, 0
        for run in runs:
            if control.cancel(run.pk):
                cancelled += 1
                self.log_change(request, run, "Cancelled.")
            else:
                ended += 1
        if cancelled:
            self.message_user(
                request,
                ngettext("Cancelled %(count)d run.", "Cancelled %(count)d runs.", cancelled) % {"count": cancelled},
                messages.SUCCESS,
            )
        if ended:
            self.message_user(
                request,
                ngettext(
                    "%(count)d run had already ended: not cancelled.",
                    "%(count)d runs had already ended: not cancelled.",
                    ended,
                ) % {"count": ended},
                messages.WARNING,
            )

    # -- URLs ----------------------------------------------------------------------------------

    def get_urls(self) -> list[Any]:
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        wrap = self.admin_site.admin_view
        own = [
            path("<path:object_id>/replay/", wrap(require_POST(self.replay_view)), name=f"{prefix}_replay"),
            path("<path:object_id>/cancel/", wrap(require_POST(self.cancel_view)), name=f"{prefix}_cancel"),
        ]
        return own + super().get_urls()

    def run_url(self, run_id: Any) -> str:
        return reverse("admin:django_workflows_run_change", args=[run_id], current_app=self.admin_site.name)

    def event_url(self, event_id: Any) -> str | None:
        try:
            return reverse("admin:django_workflows_event_change", args=[event_id], current_app=self.admin_site.name)
        except NoReverseMatch:
            return None  # no event admin registered

    def _run_for_control(self, request: HttpRequest, object_id: str) -> Run | HttpResponse:
        run = self.get_object(request, unquote(object_id))
        if run is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_change_permission(request, run):
            raise PermissionDenied
        return run

    def replay_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST: replay the run (from ``from_step`` if given); to the new run's page."""
        run = self._run_for_control(request, object_id)
        if isinstance(run, HttpResponse):
            return run
        from_step = request.POST.get("from_step") or None
        try:
            new = control.replay(run.pk, from_step=from_step)
        except (RunNotFinishedError, RunRefusedError, UnknownFunctionError, ValueError) as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(self.run_url(run.pk))
        how = f" from step {from_step!r}" if from_step else ""
        self.log_change(request, run, f"Replayed{how} as run {new.pk}.")
        self.message_user(
            request,
            format_html('Replay{} of run <a href="{}">{}</a> started.', how, self.run_url(run.pk), run.pk),
            messages.SUCCESS,
        )
        return HttpResponseRedirect(self.run_url(new.pk))

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST: cancel the run; back to its page."""
        run = self._run_for_control(request, object_id)
        if isinstance(run, HttpResponse):
            return run
        if control.cancel(run.pk):
            self.log_change(request, run, "Cancelled.")
            self.message_user(request, _("Run cancelled."), messages.SUCCESS)
        else:
            self.message_user(request, _("The run had already ended: nothing to cancel."), messages.WARNING)
        return HttpResponseRedirect(self.run_url(run.pk))

    # -- the run page ------------------------------------------------------------------------

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET", "HEAD"])
        run = self.get_object(request, unquote(object_id))
        if run is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_view_or_change_permission(request, run):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            **self.run_context(request, run),
            **(extra_context or {}),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.run_template, context)

    def run_context(self, request: HttpRequest, run: Run) -> dict[str, Any]:
        db = run._state.db or "default"
        now = clock.now()
        steps = list(Step.objects.using(db).filter(run=run).order_by("id"))
        attempts = list(Attempt.objects.using(db).filter(run=run).order_by("id"))
        timeline = timeline_module.build(run, steps, attempts, now=now)
        runs = Run.objects.using(db)
        invoked = list(runs.filter(parent_run=run).order_by("queued_at")[:MAX_RELATED])
        by_parent_step = {child.parent_step_id: child for child in invoked}
        replays = list(runs.filter(replay_of=run).order_by("queued_at")[:MAX_RELATED])
        finished = run.status in FINISHED_STATUSES
        can_change = self.has_change_permission(request, run)

        rows = []
        for row in timeline.rows:
            rows.append(self._row_context(run, row, by_parent_step, now))

        events = self._trigger_events(run, db)
        try:
            function_name = registry.get(run.function_id).name
        except UnknownFunctionError:
            function_name = None
        return {
            "title": f"{run.function_id} · {run.get_status_display()}",
            "subtitle": str(run.pk),
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "run": run,
            # Not the Function itself: templates call callables.
            "function_defined": function_name is not None,
            "function_name": function_name,
            "function_list_url": reverse("admin:django_workflows_run_changelist", current_app=self.admin_site.name)
            + "?" + urlencode({"function": run.function_id}),
            "duration": timeline_module.format_duration(duration_of(run, now)),
            "waiting_reason": "" if finished else run.waiting_reason,
            "events": events,
            "replay_of_url": self.run_url(run.replay_of_id) if run.replay_of_id else None,
            "replays": [(r, self.run_url(r.pk)) for r in replays],
            "parent_url": self.run_url(run.parent_run_id) if run.parent_run_id else None,
            "invoked": [(r, self.run_url(r.pk)) for r in invoked],
            "timeline": timeline,
            "rows": rows,
            "output_json": pretty_json(run.output) if run.status == "completed" else None,
            "error": run.error,
            "finished": finished,
            "live": not finished,
            "refresh_seconds": LIVE_REFRESH_SECONDS,
            "can_change": can_change,
            "can_replay": can_change and finished,
            "can_cancel": can_change and not finished,
            "replay_url": reverse("admin:django_workflows_run_replay", args=[run.pk], current_app=self.admin_site.name),
            "cancel_url": reverse("admin:django_workflows_run_cancel", args=[run.pk], current_app=self.admin_site.name),
            "has_view_permission": True,
            "is_popup": False,
        }

    def _row_context(self, run: Run, row: timeline_module.Row, children: dict[str, Run], now: datetime) -> dict[str, Any]:
        step = row.step
        context: dict[str, Any] = {"row": row, "duration": "", "output_json": None, "error": None, "child": None}
        if row.key == "run":
            context["duration"] = timeline_module.format_duration(duration_of(run, now))
            return context
        if step is not None:
            if step.started_at is not None and not row.kept:
                context["duration"] = timeline_module.format_duration((step.ended_at or now) - step.started_at)
            if step.status == "completed" and step.kind != "sleep":
                context["output_json"] = pretty_json(step.output)
            context["error"] = step.error
            if step.scheduled_at is not None and step.ended_at is None:
                context["due"] = step.scheduled_at
            child = children.get(step.step_id)
            if child is not None:
                context["child"] = (child, self.run_url(child.pk))
        context["attempts"] = [
            {
                "attempt": a,
                "duration": timeline_module.format_duration(a.ended_at - a.started_at),
            }
            for a in row.attempts
        ]
        context["has_details"] = bool(
            context["output_json"] is not None or context["error"] or context["attempts"] or context["child"]
        )
        return context

    def _trigger_events(self, run: Run, db: str) -> list[dict[str, Any]]:
        ids = [str(i) for i in (run.batch_event_ids or [])]
        if len(ids) > 1:
            wanted = []
            for value in ids[:MAX_RELATED]:
                try:
                    wanted.append(uuid.UUID(value))
                except ValueError:
                    continue
            found = {e.pk: e for e in Event.objects.using(db).filter(pk__in=wanted)}
            events = [found[i] for i in wanted if i in found]
        else:
            events = [run.event] if run.event_id and run.event is not None else []
        return [
            {
                "event": event,
                "url": self.event_url(event.pk),
                "json": pretty_json(
                    {
                        "id": str(event.pk),
                        "name": event.name,
                        "data": event.data,
                        "ts": event.ts.isoformat(),
                        "received_at": event.received_at.isoformat(),
                        **({"sender_id": event.dedup_id} if event.dedup_id else {}),
                    }
                ),
            }
            for event in events
        ]


__all__ = ["RunAdmin", "RunChangeList", "RunPaginator", "FunctionFilter", "QueuedWithinFilter", "id_floor"]
