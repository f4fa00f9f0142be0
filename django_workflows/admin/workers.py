"""Workers: the ``runworkers`` processes that reported in, live or gone (read-only).

A worker records itself when it starts and with every heartbeat; one not heard of for
``live_cutoff()`` (three leases) is gone. A stopping worker removes its record; a dead
one's stays, shown as gone, until it is a day old and pruned. Viewing needs
``view_workerrecord``.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.formats import localize
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.timesince import timesince
from django.utils.timezone import localtime

from .. import conf
from ..engine import clock
from ..engine.registry import live_cutoff
from ..models import WorkerRecord
from .functions import admin_url

APP = "django_workflows"



def is_live(worker: WorkerRecord) -> bool:
    return worker.last_seen_at >= clock.now() - live_cutoff()


class LivenessFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("live", "Live"), ("gone", "Gone")]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        cutoff = clock.now() - live_cutoff()
        if self.value() == "live":
            return queryset.filter(last_seen_at__gte=cutoff)
        if self.value() == "gone":
            return queryset.filter(last_seen_at__lt=cutoff)
        return queryset


@admin.register(WorkerRecord)
class WorkerAdmin(admin.ModelAdmin):
    # The id is "host:pid:random": its parts are the first columns.
    list_display = [
        "hostname", "pid", "status", "started", "last_heartbeat", "threads", "items_in_hand",
        "processed", "functions_count",
    ]
    list_display_links = ["hostname", "pid"]
    list_filter = [LivenessFilter]
    ordering = ["-last_seen_at"]
    list_per_page = 100
    fields = [
        "id", "status", "hostname", "pid", "started_at", "last_seen_at", "threads", "items_in_hand",
        "processed", "functions_list", "schedules_list",
    ]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).using(conf.database())

    @admin.display(description="status")
    def status(self, obj: WorkerRecord) -> Any:
        if is_live(obj):
            return mark_safe('<span class="wf-badge wf-live">live</span>')
        ago = timesince(obj.last_seen_at, clock.now())
        return format_html('<span class="wf-badge wf-gone" title="last heard of {} ago">gone</span>', ago)

    @admin.display(description="started", ordering="started_at")
    def started(self, obj: WorkerRecord) -> Any:
        return obj.started_at

    @admin.display(description="last heartbeat", ordering="last_seen_at")
    def last_heartbeat(self, obj: WorkerRecord) -> Any:
        return format_html(
            '{}<br><span class="wf-quiet">{} ago</span>',
            localize(localtime(obj.last_seen_at)), timesince(obj.last_seen_at, clock.now()),
        )

    @admin.display(description="functions")
    def functions_count(self, obj: WorkerRecord) -> int:
        return len(obj.functions or [])

    @admin.display(description="functions")
    def functions_list(self, obj: WorkerRecord) -> Any:
        if not obj.functions:
            return "–"
        from django.contrib.admin.utils import quote

        items = []
        for function_id in obj.functions:
            url = admin_url(f"{APP}_functionstate_change", quote(function_id))
            items.append((url, function_id) if url else ("#", function_id))
        return format_html("<ul>{}</ul>", format_html_join("", '<li><a href="{}">{}</a></li>', items))

    @admin.display(description="cron schedules")
    def schedules_list(self, obj: WorkerRecord) -> Any:
        if not obj.schedules:
            return "–"
        return format_html(
            "<ul>{}</ul>", format_html_join("", "<li>{}: <code>{}</code></li>", ((f, c) for f, c in obj.schedules))
        )
