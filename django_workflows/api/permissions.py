"""Who may call what: an API key within its scope, or a staff session within its Django
permissions. Nothing is readable or writable without one of them."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission

from ..models import ApiKey
from .keys import allows


class ScopedAccess(BasePermission):
    """The view says what a call needs: ``view.required_access(request)`` returns
    ``(scope, perms)``: the API key scope (``send``, ``read`` or ``manage``) and the Django
    permissions a staff session needs instead (e.g. ``["django_workflows.view_run"]``)."""

    message = "this API key's scope, or this user's permissions, do not allow this"

    def has_permission(self, request: Any, view: Any) -> bool:
        required_access = getattr(view, "required_access", None)
        if required_access is None:
            return False  # fail closed: a view that does not say what it needs is for nobody
        scope, perms = required_access(request)
        if isinstance(request.auth, ApiKey):
            if not allows(request.auth, scope):
                self.message = f"this API key has scope {request.auth.scope!r}; this needs {scope!r}"
                return False
            return True
        user = request.user
        if user is None or not user.is_authenticated:
            return False
        if not user.is_staff:
            self.message = "only staff users may use the API with a session (or use an API key)"
            return False
        return user.has_perms(perms)
