"""API keys for the REST API: create one (its key is shown once, after saving), list, revoke.

Only a key's hash is stored; the page never shows it. The list shows each key's name,
prefix (its first characters, to tell keys apart), scope, and when it was created, last
used and revoked. A revoked key is refused (401) at once. The usual model permissions
apply (``add_apikey`` to create, ``change_apikey`` to rename or revoke).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html

from .. import conf
from ..api.keys import create_key
from ..models import ApiKey


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix_column", "scope", "created_at", "last_used_at", "state"]
    list_filter = ["scope", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix"]
    ordering = ["-created_at"]
    actions = ["revoke"]
    # key_hash is never a field: not in forms, not shown.
    add_fields = ["name", "scope"]
    change_fields = ["name", "scope", "prefix_column", "created_at", "last_used_at", "revoked_at"]
    readonly_change_fields = ["prefix_column", "created_at", "last_used_at", "revoked_at"]

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        return self.add_fields if obj is None else self.change_fields

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        return [] if obj is None else self.readonly_change_fields

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).using(conf.database())

    @admin.display(description="key", ordering="prefix")
    def prefix_column(self, obj: ApiKey) -> str:
        return f"{obj.prefix}…"

    @admin.display(description="state", ordering="revoked_at")
    def state(self, obj: ApiKey) -> str:
        return f"revoked {obj.revoked_at:%Y-%m-%d %H:%M}" if obj.revoked_at else "active"

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            obj.save(using=conf.database())
            return
        # A new key: made by the same code as createapikey; shown once, here, never again.
        key, raw = create_key(obj.name, obj.scope)
        obj.pk, obj.prefix, obj.key_hash, obj.created_at = key.pk, key.prefix, key.key_hash, key.created_at
        obj._state.adding, obj._state.db = False, key._state.db
        messages.warning(
            request,
            format_html(
                "The new API key is <code style=\"user-select: all\">{}</code> — copy it now: it is shown only "
                "this once (only its hash is stored). Use it as <code>Authorization: Bearer &lt;key&gt;</code>.",
                raw,
            ),
        )

    @admin.action(description="Revoke the selected API keys", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} API key{'s' if count != 1 else ''}: they are refused from now on.")
