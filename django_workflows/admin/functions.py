"""The functions page: every registered function, its options, its figures and its controls.

Functions live in code (the registry), not in the database, so this is a ModelAdmin for
``FunctionState`` (the per-function pause switch) whose changelist lists the registry.

Permissions: seeing the pages needs ``view_run`` (they show runs); pause and resume need
``change_functionstate``; replaying failed runs, cancelling running ones and invoking a
function need ``change_run``. Every action is a POST (405 otherwise) with a CSRF token.

The figures cover the last 24 hours and read only the runs of that window, through the
``(function_id, -queued_at)`` index: runs per status, runs per hour, and the p50/p95
duration of completed runs (``percentile_cont`` on PostgreSQL; elsewhere, over the latest
``DURATION_SAMPLE`` completed runs).
"""

from __future__ import annotations

import inspect
import json
import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.db import connections
from django.db.models import Aggregate, Count, DurationField, Exists, F, OuterRef
from django.db.models.functions import Trunc
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import SafeString, mark_safe
from django.utils.timezone import localtime

from .. import conf, control
from ..control import cancel_runs, pause, replay, resume
from ..engine import clock
from ..errors import (
    EventValidationError,
    RunNotFinishedError,
    RunRefusedError,
    UnknownFunctionError,
)
from ..functions import Function, TriggerCron, TriggerEvent, registry
from ..models import FunctionState, Run
from ..states import FINISHED_STATUSES, RunStatus
from .forms import json_data

APP = "django_workflows"
WINDOW = timedelta(hours=24)
HOURS = 24
# Completed runs whose durations give p50/p95 where the database has no percentile_cont.
DURATION_SAMPLE = 1000
# At most this many failed runs are replayed by one confirmation (the oldest first).
MAX_REPLAY = 500
STATUSES = [status.value for status in RunStatus]
INVOKED_EVENT = "workflows/function.invoked"



# -- small helpers shared by the admin pages ---------------------------------------------------


def admin_url(name: str, *args: Any, query: str = "") -> str | None:
    """``reverse("admin:<name>")``, or None when that page is not installed."""
    try:
        url = reverse(f"admin:{name}", args=args)
    except NoReverseMatch:
        return None
    return f"{url}?{query}" if query else url


def run_url(run_id: Any) -> str | None:
    return admin_url("django_workflows_run_change", run_id)


def pretty_json(value: Any) -> SafeString:
    return format_html('<pre class="wf-json">{}</pre>', json.dumps(value, indent=2, ensure_ascii=False))


def safe_next(request: HttpRequest, default: str) -> str:
    target = request.POST.get("next") or ""
    allowed = url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return target if target and allowed else default


def duration_text(value: Any) -> str:
    """A duration as given (``"30s"``), or a timedelta in short words."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, timedelta):
        return seconds_text(value.total_seconds())
    return str(value)


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h" if hours else f"{days}d"


# -- describing a function ----------------------------------------------------------------------


def _key(key: str | None) -> str:
    return f" per {key}" if key else ""


def describe_triggers(function: Function, now: datetime) -> list[str]:
    lines = []
    for trigger in function.triggers:
        if isinstance(trigger, TriggerEvent):
            lines.append(f"event {trigger.event}" + (f" if {trigger.expression}" if trigger.expression else ""))
        elif isinstance(trigger, TriggerCron):
            text = f"cron {trigger.cron}"
            if trigger.jitter is not None:
                text += f" (jitter {duration_text(trigger.jitter)})"
            upcoming = _next_tick(trigger, now)
            if upcoming is not None:
                text += f", next {upcoming:%Y-%m-%d %H:%M %Z}"
            lines.append(text)
    return lines


def _next_tick(trigger: TriggerCron, now: datetime) -> datetime | None:
    try:
        from zoneinfo import ZoneInfo

        from croniter import croniter

        zone = ZoneInfo(trigger.timezone)
        return croniter(trigger.expression, now.astimezone(zone)).get_next(datetime)
    except Exception:  # a display nicety: never break the page over it
        return None


def describe_options(function: Function) -> list[tuple[str, str]]:
    """(option, what it says) for each option the function sets, in the order of the docs."""
    flow = function.flow
    rows: list[tuple[str, str]] = [("retries", f"{function.retries} per step ({function.retries + 1} attempts)")]
    for rule in flow.concurrency:
        shared = " shared by every function using the key" if rule.scope == "env" else ""
        rows.append(("concurrency", f"{rule.limit} at once{_key(rule.key)}{shared}"))
    if flow.throttle is not None:
        rule = flow.throttle
        rows.append(("throttle", f"{rule.limit} starts per {duration_text(rule.period)}, burst {rule.burst}{_key(rule.key)}"))
    if flow.rate_limit is not None:
        rule = flow.rate_limit
        rows.append(("rate_limit", f"{rule.limit} runs per {duration_text(rule.period)}{_key(rule.key)}"))
    if flow.debounce is not None:
        rule = flow.debounce
        timeout = f", at most {duration_text(rule.timeout)}" if rule.timeout is not None else ""
        rows.append(("debounce", f"{duration_text(rule.period)}{_key(rule.key)}{timeout}"))
    if flow.batch is not None:
        rule = flow.batch
        rows.append(("batch_events", f"up to {rule.max_size} events or {duration_text(rule.timeout)}{_key(rule.key)}"))
    if flow.idempotency is not None:
        rows.append(("idempotency", f"one run per {flow.idempotency.source} per 24 h"))
    if flow.priority is not None:
        rows.append(("priority", f"run: {flow.priority.run}"))
    if flow.singleton is not None:
        rule = flow.singleton
        rows.append(("singleton", f"mode {rule.mode}{_key(rule.key)}"))
    for rule in function.cancel:
        text = f"on {rule.event}"
        if rule.match:
            text += f" matching {rule.match}"
        if rule.if_exp:
            text += f" if {rule.if_exp}"
        if rule.timeout is not None:
            text += f" within {duration_text(rule.timeout)}"
        rows.append(("cancel", text))
    if function.timeouts is not None:
        parts = []
        if function.timeouts.start is not None:
            parts.append(f"start within {duration_text(function.timeouts.start)}")
        if function.timeouts.finish is not None:
            parts.append(f"finish within {duration_text(function.timeouts.finish)}")
        rows.append(("timeouts", ", ".join(parts)))
    if function.on_failure is not None:
        rows.append(("on_failure", f"function {function.on_failure.id}"))
    return rows


def about(function: Function) -> dict:
    """What templates show of a function (a Function is callable: templates would call it)."""
    return {"id": function.id, "name": function.name, "retries": function.retries}


def options_summary(function: Function) -> str:
    """One line for the listing: the options other than retries, by name."""
    names = [name for name, _text in describe_options(function)[1:]]
    return ", ".join(dict.fromkeys(names)) or "–"


# -- figures of the last 24 hours ---------------------------------------------------------------


@dataclass
class Figures:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    hours: list[tuple[datetime, int, int]] = field(default_factory=list)  # (hour, runs, failed)
    p50: float | None = None
    p95: float | None = None
    durations: int = 0  # completed runs the percentiles come from
    sampled: bool = False  # ... the latest DURATION_SAMPLE of them only

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def p50_text(self) -> str:
        return seconds_text(self.p50)

    @property
    def p95_text(self) -> str:
        return seconds_text(self.p95)


class PercentileCont(Aggregate):
    """PostgreSQL's ``percentile_cont(fraction) WITHIN GROUP (ORDER BY expression)``."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"

    def __init__(self, expression: Any, fraction: float, **extra: Any) -> None:
        super().__init__(expression, fraction=float(fraction), output_field=DurationField(), **extra)


def percentile(values: list[float], fraction: float) -> float | None:
    """``percentile_cont``: linear interpolation between the closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def hour_start(moment: datetime) -> datetime:
    return moment.astimezone(dt_timezone.utc).replace(minute=0, second=0, microsecond=0)


def figures_for(db: str, function_ids: list[str], now: datetime) -> dict[str, Figures]:
    """The last 24 hours of each function: a few grouped queries, each bounded by the window
    and served by the ``(function_id, -queued_at)`` index."""
    result = {function_id: Figures() for function_id in function_ids}
    if not function_ids:
        return result
    since = now - WINDOW
    runs = Run.objects.using(db).filter(function_id__in=function_ids)
    window = runs.filter(queued_at__gte=since)
    for function_id, status, count in (
        window.order_by().values_list("function_id", "status").annotate(n=Count("pk"))
    ):
        result[function_id].counts[status] = count
    # Runs per hour: the current hour so far and the 23 before it.
    first = hour_start(now) - timedelta(hours=HOURS - 1)
    buckets = [first + timedelta(hours=i) for i in range(HOURS)]
    per_hour: dict[tuple[str, datetime], list[int]] = {}
    hourly = (
        runs.filter(queued_at__gte=first)
        .annotate(hour=Trunc("queued_at", "hour", tzinfo=dt_timezone.utc))
        .order_by()
        .values_list("function_id", "hour", "status")
        .annotate(n=Count("pk"))
    )
    for function_id, hour, status, count in hourly:
        entry = per_hour.setdefault((function_id, hour.astimezone(dt_timezone.utc)), [0, 0])
        entry[0] += count
        if status == RunStatus.FAILED:
            entry[1] += count
    for function_id, figures in result.items():
        figures.hours = [(hour, *per_hour.get((function_id, hour), [0, 0])) for hour in buckets]
    # Durations of the completed runs, from their start to their end.
    completed = window.filter(status=RunStatus.COMPLETED, started_at__isnull=False, ended_at__isnull=False)
    if connections[db].vendor == "postgresql":
        took = F("ended_at") - F("started_at")
        for function_id, p50, p95, count in (
            completed.order_by().values_list("function_id")
            .annotate(p50=PercentileCont(took, 0.5), p95=PercentileCont(took, 0.95), n=Count("pk"))
        ):
            figures = result[function_id]
            figures.p50, figures.p95 = p50.total_seconds(), p95.total_seconds()
            figures.durations = count
    else:
        for function_id in function_ids:
            if not result[function_id].counts[RunStatus.COMPLETED]:
                continue
            sample = list(
                completed.filter(function_id=function_id)
                .order_by("-queued_at")
                .values_list("started_at", "ended_at")[:DURATION_SAMPLE]
            )
            seconds = [(ended - started).total_seconds() for started, ended in sample]
            figures = result[function_id]
            figures.p50, figures.p95 = percentile(seconds, 0.5), percentile(seconds, 0.95)
            figures.durations = len(seconds)
            figures.sampled = figures.counts[RunStatus.COMPLETED] > len(seconds)
    return result


def chart_svg(hours: list[tuple[datetime, int, int]], *, width: int, height: int, axis: bool = False) -> SafeString:
    """Runs per hour as server-rendered bars; the failed part of each bar in red."""
    peak = max((runs for _hour, runs, _failed in hours), default=0)
    count = len(hours) or 1
    label_space = 14 if axis else 0
    plot = height - label_space
    slot = width / count
    bar = max(slot - (2 if slot > 4 else 1), 1)
    parts = []
    for index, (hour, runs, failed) in enumerate(hours):
        x = index * slot
        local = localtime(hour)
        title = f"{local:%Y-%m-%d %H}:00: {runs} run{'s' if runs != 1 else ''}" + (f", {failed} failed" if failed else "")
        total_h = (runs / peak) * (plot - 1) if peak else 0
        failed_h = (failed / peak) * (plot - 1) if peak else 0
        shapes = [format_html(
            '<rect x="{}" y="{}" width="{}" height="{}" style="fill: var(--border-color, #ccc)"></rect>',
            f"{x:.1f}", plot - 1, f"{bar:.1f}", 1,
        )]
        if total_h:
            shapes.append(format_html(
                '<rect x="{}" y="{}" width="{}" height="{}" style="fill: var(--secondary, #79aec8)"></rect>',
                f"{x:.1f}", f"{plot - total_h:.1f}", f"{bar:.1f}", f"{total_h:.1f}",
            ))
        if failed_h:
            shapes.append(format_html(
                '<rect x="{}" y="{}" width="{}" height="{}" style="fill: var(--error-fg, #ba2121)"></rect>',
                f"{x:.1f}", f"{plot - failed_h:.1f}", f"{bar:.1f}", f"{failed_h:.1f}",
            ))
        if axis and index % 6 == 0:
            shapes.append(format_html(
                '<text x="{}" y="{}" font-size="10" style="fill: var(--body-quiet-color, #666)">{}</text>',
                f"{x:.1f}", height - 2, f"{local:%H}:00",
            ))
        parts.append(format_html("<g><title>{}</title>{}</g>", title, mark_safe("".join(shapes))))
    caption = f"Runs per hour over the last 24 hours (peak {peak})"
    return format_html(
        '<svg class="wf-chart" role="img" width="{}" height="{}" viewBox="0 0 {} {}" aria-label="{}">{}</svg>',
        width, height, width, height, caption, mark_safe("".join(parts)),
    )


# -- forms -------------------------------------------------------------------------------------


class DateTimeLocal(forms.DateTimeInput):
    input_type = "datetime-local"

    def __init__(self) -> None:
        super().__init__(attrs={"step": "1"}, format="%Y-%m-%dT%H:%M:%S")


class RangeForm(forms.Form):
    """Runs queued after ``after`` and before ``before`` (either may be left empty)."""

    after = forms.DateTimeField(label="From", required=False, widget=DateTimeLocal())
    before = forms.DateTimeField(label="To", required=False, widget=DateTimeLocal())

    def clean(self) -> dict:
        data = super().clean()
        after, before = data.get("after"), data.get("before")
        if after and before and after >= before:
            raise forms.ValidationError("“From” must be earlier than “To”.")
        return data


class InvokeForm(forms.Form):
    data = forms.CharField(
        label="Data", required=False, strip=False, initial="{}",
        widget=forms.Textarea(attrs={"rows": 6, "cols": 60, "class": "vLargeTextField", "spellcheck": "false"}),
        help_text="A JSON object: the invoked run's event.data.",
    )

    def clean_data(self) -> Any:
        return json_data(self.cleaned_data["data"])


# -- the ModelAdmin ----------------------------------------------------------------------------


@admin.register(FunctionState)
class FunctionAdmin(admin.ModelAdmin):
    """The registry's functions, with their figures, pause/resume, bulk replay and cancel, invoke."""

    list_template = "admin/django_workflows/functionstate/functions.html"
    detail_template = "admin/django_workflows/functionstate/function.html"
    confirm_template = "admin/django_workflows/functionstate/confirm.html"

    # -- permissions ---------------------------------------------------------------------------

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # As Django's own rule for a model: the change permission implies the view one.
        return request.user.has_perm(f"{APP}.view_run") or request.user.has_perm(f"{APP}.change_run")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm(f"{APP}.change_functionstate")

    def has_run_control_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"{APP}.change_run")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_model_perms(self, request: HttpRequest) -> dict[str, bool]:
        view = self.has_view_permission(request)
        return {"add": False, "change": view and self.has_change_permission(request), "delete": False, "view": view}

    # -- URLs ----------------------------------------------------------------------------------

    def get_urls(self) -> list:
        info = f"{self.opts.app_label}_{self.opts.model_name}"

        def wrap(view: Any) -> Any:
            return self.admin_site.admin_view(view)

        # Function ids may contain "/": each URL ends with a fixed word, so none is ambiguous.
        return [
            path("", wrap(self.changelist_view), name=f"{info}_changelist"),
            path("<path:object_id>/pause/", wrap(self.pause_view), name=f"{info}_pause"),
            path("<path:object_id>/resume/", wrap(self.resume_view), name=f"{info}_resume"),
            path("<path:object_id>/replay-failed/", wrap(self.replay_failed_view), name=f"{info}_replay_failed"),
            path("<path:object_id>/cancel-running/", wrap(self.cancel_running_view), name=f"{info}_cancel_running"),
            path("<path:object_id>/invoke/", wrap(self.invoke_view), name=f"{info}_invoke"),
            path("<path:object_id>/change/", wrap(self.change_view), name=f"{info}_change"),
            path("<path:object_id>/", wrap(self.redirect_to_function)),
        ]

    def function_url(self, function_id: str) -> str:
        return self.url("change", function_id)

    def url(self, name: str, function_id: str) -> str:
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_{name}", args=[quote(function_id)],
            current_app=self.admin_site.name,
        )

    def redirect_to_function(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return HttpResponseRedirect(self.function_url(unquote(object_id)))

    # -- pages ---------------------------------------------------------------------------------

    def _function(self, object_id: str) -> Function:
        try:
            return registry.get(unquote(object_id))
        except UnknownFunctionError as exc:
            raise Http404(str(exc)) from None

    def _context(self, request: HttpRequest, title: str, **more: Any) -> dict:
        request.current_app = self.admin_site.name
        return {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "title": title,
            "has_view_permission": self.has_view_permission(request),
            "can_pause": self.has_change_permission(request),
            "can_control_runs": self.has_run_control_permission(request),
            "now": clock.now(),
            **more,
        }

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        db = conf.database()
        now = clock.now()
        functions = sorted(registry.all(), key=lambda fn: fn.id)
        ids = [fn.id for fn in functions]
        paused = set(
            FunctionState.objects.using(db).filter(function_id__in=ids, paused=True).values_list("function_id", flat=True)
        )
        figures = figures_for(db, ids, now)
        rows = [
            {
                "function": about(fn),
                "url": self.function_url(fn.id),
                "quoted_id": quote(fn.id),
                "paused": fn.id in paused,
                "triggers": describe_triggers(fn, now),
                "options": options_summary(fn),
                "figures": figures[fn.id],
                "status_links": self._status_links(fn.id, figures[fn.id]),
                "chart": chart_svg(figures[fn.id].hours, width=120, height=24),
            }
            for fn in functions
        ]
        context = self._context(
            request, "Functions", rows=rows,
            database_is_postgres=connections[db].vendor == "postgresql",
            duration_sample=DURATION_SAMPLE, **(extra_context or {}),
        )
        return TemplateResponse(request, self.list_template, context)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET", "HEAD"])
        if not self.has_view_permission(request):
            raise PermissionDenied
        return self._render_function(request, self._function(object_id))

    def _render_function(
        self, request: HttpRequest, function: Function, *, replay_form: RangeForm | None = None,
        cancel_form: RangeForm | None = None, invoke_form: InvokeForm | None = None, status: int = 200,
    ) -> HttpResponse:
        db = conf.database()
        now = clock.now()
        state = FunctionState.objects.using(db).filter(function_id=function.id).first()
        figures = figures_for(db, [function.id], now)[function.id]
        context = self._context(
            request, function.name,
            function=about(function),
            doc=inspect.cleandoc(function.__doc__ or ""),
            quoted_id=quote(function.id),
            paused=bool(state and state.paused),
            state=state,
            triggers=describe_triggers(function, now),
            options=describe_options(function),
            on_failure_url=self.function_url(function.on_failure.id) if function.on_failure else None,
            figures=figures,
            status_links=self._status_links(function.id, figures),
            chart=chart_svg(figures.hours, width=480, height=110, axis=True),
            runs_url=admin_url("django_workflows_run_changelist", query=f"function={quote_query(function.id)}"),
            database_is_postgres=connections[db].vendor == "postgresql",
            duration_sample=DURATION_SAMPLE,
            replay_form=replay_form or RangeForm(prefix="replay", initial={"after": now - WINDOW}),
            cancel_form=cancel_form or RangeForm(prefix="cancel"),
            invoke_form=invoke_form or InvokeForm(prefix="invoke"),
        )
        return TemplateResponse(request, self.detail_template, context, status=status)

    def _status_links(self, function_id: str, figures: Figures) -> list[dict]:
        links = []
        for status in STATUSES:
            # The runs page's own filters: function, status, queued in the last 24 hours.
            query = f"function={quote_query(function_id)}&status__exact={status}&queued=24h"
            links.append({
                "status": status,
                "count": figures.counts[status],
                "url": admin_url("django_workflows_run_changelist", query=query),
            })
        return links

    # -- actions (POST only) -------------------------------------------------------------------

    def _check(self, request: HttpRequest, allowed: bool) -> None:
        if not allowed:
            raise PermissionDenied

    def pause_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._switch(request, object_id, paused=True)

    def resume_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._switch(request, object_id, paused=False)

    def _switch(self, request: HttpRequest, object_id: str, *, paused: bool) -> HttpResponse:
        if request.method != "POST":
            return _post_only()
        self._check(request, self.has_change_permission(request))
        function = self._function(object_id)
        if paused:
            pause(function.id)
            messages.success(
                request, f"Paused {function.id}: it starts no new runs (its events are still stored); runs in progress go on."
            )
        else:
            resume(function.id)
            messages.success(request, f"Resumed {function.id}: events that arrive from now on start runs again.")
        return HttpResponseRedirect(safe_next(request, self.function_url(function.id)))

    def replay_failed_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """First POST: how many failed runs the range holds (a confirmation page). Second POST
        (``confirm``, with the run ids shown): replays exactly those runs."""
        if request.method != "POST":
            return _post_only()
        self._check(request, self.has_run_control_permission(request))
        function = self._function(object_id)
        db = conf.database()
        if request.POST.get("confirm"):
            return self._replay_confirmed(request, function, db)
        form = RangeForm(request.POST, prefix="replay")
        if not form.is_valid():
            return self._render_function(request, function, replay_form=form)
        after, before = form.cleaned_data["after"], form.cleaned_data["before"] or clock.now()
        failed = _in_range(Run.objects.using(db).filter(function_id=function.id, status=RunStatus.FAILED), after, before)
        replayed = Exists(Run.objects.using(db).filter(replay_of=OuterRef("pk")))
        candidates = list(failed.exclude(replayed).order_by("queued_at").values_list("pk", "queued_at")[: MAX_REPLAY + 1])
        more = len(candidates) > MAX_REPLAY
        candidates = candidates[:MAX_REPLAY]
        already = failed.filter(replayed).count()
        context = self._context(
            request, f"Replay failed runs of {function.name}?",
            function=about(function), function_url=self.function_url(function.id), action="replay",
            action_url=self.url("replay_failed", function.id),
            after=after, before=before, count=len(candidates), more=more, already_replayed=already,
            max_runs=MAX_REPLAY,
            paused=FunctionState.objects.using(db).filter(function_id=function.id, paused=True).exists(),
            runs=[{"id": pk, "queued_at": queued, "url": run_url(pk)} for pk, queued in candidates],
            before_value=before.isoformat(), after_value=after.isoformat() if after else "",
        )
        return TemplateResponse(request, self.confirm_template, context)

    def _replay_confirmed(self, request: HttpRequest, function: Function, db: str) -> HttpResponse:
        ids = set()
        for value in request.POST.getlist("run")[:MAX_REPLAY]:
            try:
                ids.add(uuid.UUID(value))
            except ValueError:
                continue  # not a run id: nothing to replay for it
        runs = list(
            Run.objects.using(db)
            .filter(pk__in=ids, function_id=function.id, status=RunStatus.FAILED)
            .exclude(Exists(Run.objects.using(db).filter(replay_of=OuterRef("pk"))))
            .order_by("queued_at")
            .values_list("pk", flat=True)
        )
        started, refusals = 0, []
        for pk in runs:
            try:
                replay(pk)
            except (RunRefusedError, RunNotFinishedError) as exc:
                refusals.append(str(exc))
            else:
                started += 1
        skipped = len(ids) - len(runs)
        text = f"Replayed {started} failed run{'s' if started != 1 else ''} of {function.id}."
        if skipped:
            text += f" {skipped} were replayed already (or are no longer failed runs of this function) and were left out."
        if started or not refusals:
            messages.success(request, text)
        if refusals:
            messages.error(request, f"{len(refusals)} refused: {refusals[0]}")
        return HttpResponseRedirect(self.function_url(function.id))

    def cancel_running_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """First POST: how many unfinished runs the range holds; second POST (``confirm``):
        ``wf.cancel_runs`` over that range, its end pinned to when the count was shown."""
        if request.method != "POST":
            return _post_only()
        self._check(request, self.has_run_control_permission(request))
        function = self._function(object_id)
        db = conf.database()
        form = RangeForm(request.POST, prefix="cancel")
        if not form.is_valid():
            return self._render_function(request, function, cancel_form=form)
        after, before = form.cleaned_data["after"], form.cleaned_data["before"] or clock.now()
        if request.POST.get("confirm"):
            count = cancel_runs(function.id, started_after=after, started_before=before)
            messages.success(request, f"Cancelled {count} run{'s' if count != 1 else ''} of {function.id}.")
            return HttpResponseRedirect(self.function_url(function.id))
        unfinished = _in_range(
            Run.objects.using(db).filter(function_id=function.id).exclude(status__in=FINISHED_STATUSES), after, before
        )
        count = unfinished.count()
        sample = list(unfinished.order_by("queued_at").values_list("pk", "queued_at")[:20])
        context = self._context(
            request, f"Cancel running runs of {function.name}?",
            function=about(function), function_url=self.function_url(function.id), action="cancel",
            action_url=self.url("cancel_running", function.id),
            after=after, before=before, count=count, more=count > len(sample),
            runs=[{"id": pk, "queued_at": queued, "url": run_url(pk)} for pk, queued in sample],
            before_value=before.isoformat(), after_value=after.isoformat() if after else "",
        )
        return TemplateResponse(request, self.confirm_template, context)

    def invoke_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if request.method != "POST":
            return _post_only()
        self._check(request, self.has_run_control_permission(request))
        function = self._function(object_id)
        form = InvokeForm(request.POST, prefix="invoke")
        if form.is_valid():
            try:
                run = control.invoke(function.id, form.cleaned_data["data"])
            except (EventValidationError, RunRefusedError) as exc:
                form.add_error("data", str(exc))
            else:
                url = run_url(run.pk)
                if url:
                    messages.success(request, format_html('Invoked {}: run <a href="{}">{}</a>.', function.id, url, run.pk))
                    return HttpResponseRedirect(url)
                messages.success(request, f"Invoked {function.id}: run {run.pk}.")
                return HttpResponseRedirect(self.function_url(function.id))
        return self._render_function(request, function, invoke_form=form)


def _in_range(runs: Any, after: datetime | None, before: datetime | None) -> Any:
    """As ``wf.cancel_runs`` reads a range: queued strictly after ``after``, before ``before``."""
    if after is not None:
        runs = runs.filter(queued_at__gt=after)
    if before is not None:
        runs = runs.filter(queued_at__lt=before)
    return runs


def _post_only() -> HttpResponse:
    return HttpResponseNotAllowed(["POST"])


def quote_query(value: str) -> str:
    from urllib.parse import quote as url_quote

    return url_quote(value, safe="")


__all__ = ["FunctionAdmin", "figures_for", "chart_svg", "describe_options", "describe_triggers"]
