"""Errors of the REST API: always JSON, always ``{"code", "message", "errors"?}``.

``code`` is stable (clients branch on it), ``message`` is for people, and ``errors``
(400s only) maps each bad field to its messages, e.g. ``{"events[2].data": ["..."]}``.

Codes: ``invalid``, ``parse_error``, ``invalid_event`` (400); ``not_authenticated``,
``authentication_failed`` (401); ``permission_denied`` (403); ``not_found`` (404);
``method_not_allowed`` (405); ``not_acceptable`` (406); ``run_not_finished``,
``unknown_function`` and flow control's refusals (``FunctionPaused``, ``RateLimited``,
``SingletonRunActive``, ``IdempotencyKeyTaken``: the name a refused ``step.invoke`` fails
with) (409); ``request_too_large``, ``too_many_events``, ``event_too_large`` (413);
``unsupported_media_type`` (415); ``throttled`` (429); ``server_error`` (500).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.signals import got_request_exception
from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.views import set_rollback

logger = logging.getLogger("django.request")


class ApiError(exceptions.APIException):
    """An error with its own stable code (and, for 400s, field errors)."""

    def __init__(self, message: str, *, code: str, status_code: int, errors: dict[str, list[str]] | None = None) -> None:
        super().__init__(detail=message, code=code)
        self.status_code = status_code
        self.code = code
        self.errors = errors


def conflict(message: str, code: str) -> ApiError:
    return ApiError(message, code=code, status_code=status.HTTP_409_CONFLICT)


def too_large(message: str, code: str, errors: dict[str, list[str]] | None = None) -> ApiError:
    return ApiError(message, code=code, status_code=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, errors=errors)


def invalid(field: str, message: str, *, code: str = "invalid") -> ApiError:
    """A 400 about one field: ``message`` names it."""
    return ApiError(f"{field}: {message}", code=code, status_code=status.HTTP_400_BAD_REQUEST, errors={field: [message]})


def flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested validation errors as ``{"field.sub": [messages]}`` (lists by index)."""
    if isinstance(detail, dict):
        result: dict[str, list[str]] = {}
        for key, value in detail.items():
            if isinstance(key, int):  # a list field's item
                path = f"{prefix}[{key}]"
            else:
                name = "body" if key == "non_field_errors" and not prefix else str(key)
                path = f"{prefix}.{name}" if prefix else name
            result.update(flatten(value, path))
        return result
    if isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            return {prefix or "body": [str(item) for item in detail]}
        result = {}
        for index, item in enumerate(detail):
            if item:  # a list serializer puts {} for the items without errors
                result.update(flatten(item, f"{prefix}[{index}]" if prefix else f"[{index}]"))
        return result
    return {prefix or "body": [str(detail)]}


def error_body(exc: exceptions.APIException) -> dict[str, Any]:
    if isinstance(exc, ApiError):
        body: dict[str, Any] = {"code": exc.code, "message": str(exc.detail)}
        if exc.errors:
            body["errors"] = exc.errors
        return body
    if isinstance(exc, exceptions.ValidationError):
        errors = flatten(exc.detail)
        summary = "; ".join(f"{field}: {' '.join(messages)}" for field, messages in errors.items())
        return {"code": "invalid", "message": f"invalid request: {summary}", "errors": errors}
    detail = exc.detail
    code = getattr(detail, "code", None) or exc.default_code
    return {"code": str(code), "message": str(detail)}


def exception_handler(exc: Exception, context: dict) -> Response:
    """The API's exception handler (set on its views, so no project setting is needed)."""
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "not found")
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    elif isinstance(exc, RequestDataTooBig):
        exc = request_too_large()
    if not isinstance(exc, exceptions.APIException):
        return server_error(exc, context)
    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header  # type: ignore[attr-defined]
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(math.ceil(exc.wait))  # type: ignore[attr-defined]
    set_rollback()
    return Response(error_body(exc), status=exc.status_code, headers=headers)


def server_error(exc: Exception, context: dict) -> Response:
    """An unexpected error: logged and signalled as Django does for its own 500s (error
    emails, error trackers, the test client's re-raise), answered in JSON."""
    request = context.get("request")
    django_request = getattr(request, "_request", request)
    logger.error(
        "Internal Server Error: %s", getattr(django_request, "path", "?"),
        exc_info=(type(exc), exc, exc.__traceback__), extra={"status_code": 500, "request": django_request},
    )
    got_request_exception.send(sender=None, request=django_request)
    set_rollback()
    response = Response({"code": "server_error", "message": "internal server error"}, status=500)
    response._has_been_logged = True  # type: ignore[attr-defined]  # not logged again by Django
    return response


def request_too_large(limit: int | None = None) -> ApiError:
    from django.conf import settings

    limit = limit if limit is not None else settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return too_large(
        f"the request body is over the limit of {limit:,} bytes (Django's DATA_UPLOAD_MAX_MEMORY_SIZE); "
        "send fewer events per request",
        "request_too_large",
    )


@csrf_exempt  # changes nothing; a POST without a CSRF token gets this 404, not an HTML 403
def not_found_view(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    """Any path under the API's prefix that is not an endpoint: a JSON 404."""
    path = request.path
    message = f"no API endpoint at {path}"
    if path.endswith(("/schema", "/docs")):
        message += f" (try {path}/)"
    elif path.endswith("/") and len(path.rstrip("/")) > 0:
        message += f"; the API's paths have no trailing slash (try {path.rstrip('/')})"
    return JsonResponse({"code": "not_found", "message": message}, status=404)


# -- for the schema ---------------------------------------------------------------------------


class ErrorSerializer(serializers.Serializer):
    """Every error the API answers with."""

    code = serializers.CharField(help_text="A stable code: invalid, not_authenticated, not_found, run_not_finished ...")
    message = serializers.CharField(help_text="What went wrong, for people.")
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()), required=False,
        help_text="400s: the messages of each bad field, e.g. {\"events[2].data\": [\"...\"]}.",
    )


class InngestErrorSerializer(ErrorSerializer):
    """Errors of ``e/<event_key>``: also ``error`` and ``status``, which Inngest's SDKs read."""

    error = serializers.CharField(help_text="The message again, where Inngest's SDKs look for it.")
    status = serializers.IntegerField(help_text="The HTTP status again, as Inngest's event API answers.")
    ids = serializers.ListField(child=serializers.CharField(), help_text="Always empty: nothing was stored.")
