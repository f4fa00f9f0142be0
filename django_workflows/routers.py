"""A database router for keeping the workflow tables on their own database.

    DATABASES = {"default": {...}, "workflows": {...}}
    DJANGO_WORKFLOWS = {"DATABASE": "workflows"}
    DATABASE_ROUTERS = ["django_workflows.routers.WorkflowsRouter"]

The engine always names the alias itself; the router sends the admin's and your own
queries on these models there too, and migrates them only there.
"""

from __future__ import annotations

from typing import Any

from . import conf

APP_LABEL = "django_workflows"


class WorkflowsRouter:
    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return conf.database() if model._meta.app_label == APP_LABEL else None

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return conf.database() if model._meta.app_label == APP_LABEL else None

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        if APP_LABEL in (obj1._meta.app_label, obj2._meta.app_label):
            return obj1._meta.app_label == obj2._meta.app_label
        return None

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        if app_label == APP_LABEL:
            return db == conf.database()
        return None
