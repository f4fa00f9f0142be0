"""The API's OpenAPI 3 schema (``schema/``) and a page that shows it (``docs/``).

The schema is drf-spectacular's, generated from the API's own views only (whatever else
the project's URLs hold, and wherever the API is included), with the settings it needs
given here: no ``SPECTACULAR_SETTINGS`` and no ``INSTALLED_APPS`` entry are required.

``docs/`` is a page rendered on the server from that schema: no JavaScript and nothing
from a CDN, so it works offline (Swagger UI and ReDoc load their code from a CDN).
Both are public: they describe the API, not the data behind it.
"""

from __future__ import annotations

import json
import re
from importlib import metadata
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.utils.decorators import method_decorator
from django.utils.html import escape
from django.utils.safestring import mark_safe
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.renderers import (
    OpenApiJsonRenderer,
    OpenApiJsonRenderer2,
    OpenApiYamlRenderer,
    OpenApiYamlRenderer2,
)
from drf_spectacular.settings import patched_settings
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView
from rest_framework.permissions import AllowAny
from rest_framework.request import Request

from .errors import exception_handler


def _version() -> str:
    try:
        return metadata.version("django-workflows")
    except metadata.PackageNotFoundError:  # pragma: no cover - not installed as a package
        return "0"


DESCRIPTION = """\
The REST API of django-workflows: send events, follow runs (their steps and every attempt),
replay and cancel runs, pause, resume and invoke functions.

Authentication: `Authorization: Bearer <key>` with an API key (`python manage.py
createapikey NAME --scope send|read|manage`), or a staff user's session (with its CSRF
token for POSTs) within that user's Django permissions. Scopes: `send` sends events;
`read` also reads everything; `manage` also cancels, replays, pauses, resumes and invokes.
401 without credentials, 403 outside the key's scope or the user's permissions.

Errors are JSON: `{"code": "...", "message": "...", "errors": {"field": ["..."]}}`;
`code` is stable.

Lists (runs, events) are newest first and paginated by cursor: follow `next`.
"""

SETTINGS: dict[str, Any] = {
    "TITLE": "django-workflows API",
    "DESCRIPTION": DESCRIPTION,
    "VERSION": _version(),
    "PREPROCESSING_HOOKS": ["django_workflows.api.schema.only_this_api"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "django_workflows.api.schema.add_components",
    ],
    "ENUM_NAME_OVERRIDES": {
        "RunStatusEnum": "django_workflows.states.RunStatus",
        "StepStatusEnum": "django_workflows.states.StepStatus",
        "StepKindEnum": "django_workflows.states.StepKind",
    },
    "COMPONENT_SPLIT_REQUEST": False,
    "SCHEMA_PATH_PREFIX": None,
    "TAGS": [
        {"name": "events", "description": "Events in (send) and out (list, get)."},
        {"name": "inngest", "description": "Inngest's event API, for code that sends with Inngest's SDKs."},
        {"name": "runs", "description": "Runs: list, get (with steps and attempts), cancel, replay."},
        {"name": "functions", "description": "Registered functions: list, get, pause, resume, invoke."},
    ],
}


def only_this_api(endpoints: list, **kwargs: Any) -> list:
    """drf-spectacular preprocessing hook: the endpoints of this API's views only."""
    result = []
    for path, path_regex, method, callback in endpoints:
        cls = getattr(callback, "cls", None)
        if cls is None or not cls.__module__.startswith("django_workflows.api.") or issubclass(cls, SchemaView):
            continue
        result.append((path, path_regex, method, callback))
    return result


def add_components(result: dict, generator: Any, request: Any, public: bool) -> dict:
    """drf-spectacular postprocessing hook: the event bodies (read without a serializer)."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(EXTRA_COMPONENTS)
    return result


EVENT_NAME = {
    "type": "string", "maxLength": 255,
    "description": "The event name, e.g. 'invite.users'; the 'workflows/' prefix is reserved.",
}
EXTRA_COMPONENTS: dict[str, Any] = {
    "EventIn": {
        "type": "object",
        "description": "An event to send, as wf.Event.",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": EVENT_NAME,
            "data": {
                "type": "object", "additionalProperties": True, "nullable": True,
                "description": "A JSON object; {} when left out or null.",
            },
            "id": {
                "type": "string", "maxLength": 255,
                "description": "Your deduplication key: an event whose id was seen in the last 24 hours is "
                "stored but starts no run.",
            },
            "ts": {
                "oneOf": [{"type": "string", "format": "date-time"}, {"type": "number"}],
                "description": "When it happened: ISO 8601 with a time zone, or epoch milliseconds (0: now). "
                "A future ts delays the runs it starts.",
            },
        },
    },
    "InngestEventIn": {
        "type": "object",
        "description": "An event as Inngest's SDKs send it to Inngest's event API "
        "(https://www.inngest.com/docs/events). Other fields are accepted and not kept.",
        "required": ["name"],
        "additionalProperties": True,
        "properties": {
            "name": EVENT_NAME,
            "data": {"type": "object", "additionalProperties": True, "nullable": True},
            "id": {"type": "string", "maxLength": 255, "description": "Deduplication key ('' means none)."},
            "ts": {"type": "integer", "description": "Epoch milliseconds (0: now). A future ts delays its runs."},
            "user": {"type": "object", "additionalProperties": True, "description": "Accepted; not kept."},
            "v": {"type": "string", "description": "The payload's version; accepted, not kept."},
        },
    },
}


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "django_workflows.api.authentication.ApiKeyAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict:
        return {
            "type": "http", "scheme": "bearer",
            "description": "An API key: `python manage.py createapikey NAME --scope send|read|manage`.",
        }


class SchemaView(SpectacularAPIView):
    """``GET schema/``: the OpenAPI 3 schema, JSON (``?format=yaml`` or ``Accept:
    application/vnd.oai.openapi`` for YAML)."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    renderer_classes = [OpenApiJsonRenderer2, OpenApiJsonRenderer, OpenApiYamlRenderer, OpenApiYamlRenderer2]
    versioning_class = None
    custom_settings = SETTINGS
    urlconf = None
    schema = AutoSchema()  # for a project-wide schema (manage.py spectacular), which leaves it out

    def get_exception_handler(self) -> Any:
        return exception_handler

    def get(self, request: Request, *args: Any, **kwargs: Any) -> Any:
        return super().get(request, *args, **kwargs)

    get.kwargs = {"schema": AutoSchema}  # type: ignore[attr-defined]
    get = extend_schema(exclude=True)(get)


def build_schema(request: HttpRequest) -> dict:
    """The schema, as ``schema/`` serves it."""
    with patched_settings(SETTINGS):
        return SchemaGenerator().get_schema(request=Request(request), public=True)


# -- the page ----------------------------------------------------------------------------------

METHOD_ORDER = {"get": 0, "post": 1, "put": 2, "patch": 3, "delete": 4}
_REF = re.compile(r"&quot;\$ref&quot;: &quot;#/components/schemas/([A-Za-z0-9_]+)&quot;")


def json_html(value: Any) -> str:
    """Pretty JSON, escaped, with each ``$ref`` a link to its component."""
    text = escape(json.dumps(value, indent=2, ensure_ascii=False))
    return mark_safe(_REF.sub(r'&quot;$ref&quot;: &quot;<a href="#schema-\1">\1</a>&quot;', text))


def page_context(schema: dict) -> dict:
    tags: dict[str, list[dict]] = {tag["name"]: [] for tag in schema.get("tags", [])}
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if method not in METHOD_ORDER:
                continue
            body = operation.get("requestBody", {}).get("content", {})
            responses = []
            for code, response in sorted(operation.get("responses", {}).items()):
                content = response.get("content", {})
                media = next(iter(content.values()), {})
                responses.append({
                    "code": code, "description": response.get("description", ""),
                    "schema": json_html(media["schema"]) if "schema" in media else "",
                })
            entry = {
                "method": method.upper(), "path": path, "anchor": operation.get("operationId", ""),
                "summary": operation.get("summary", ""), "description": operation.get("description", ""),
                "parameters": [
                    {
                        "name": p["name"], "in": p["in"], "required": p.get("required", False),
                        "type": p.get("schema", {}).get("format") or p.get("schema", {}).get("type", ""),
                        "description": p.get("description", ""),
                    }
                    for p in operation.get("parameters", [])
                ],
                "body": json_html(next(iter(body.values()))["schema"]) if body else "",
                "security": ", ".join(name for requirement in operation.get("security", []) for name in requirement)
                or "none (see the description)",
                "responses": responses,
                "order": (path, METHOD_ORDER[method]),
            }
            for tag in operation.get("tags", ["other"]):
                tags.setdefault(tag, []).append(entry)
    sections = [
        {"name": name, "description": next((t.get("description", "") for t in schema.get("tags", []) if t["name"] == name), ""),
         "operations": sorted(ops, key=lambda op: op["order"])}
        for name, ops in tags.items() if ops
    ]
    components = schema.get("components", {})
    return {
        "info": schema.get("info", {}),
        "sections": sections,
        "schemas": [{"name": name, "json": json_html(value)} for name, value in sorted(components.get("schemas", {}).items())],
        "security_schemes": [
            {"name": name, "json": json_html(value)} for name, value in sorted(components.get("securitySchemes", {}).items())
        ],
    }


@method_decorator(csrf_exempt, name="dispatch")  # GET only: other methods get a JSON 405, not an HTML 403
class DocsView(View):
    """``GET docs/``: the endpoints of the schema as a page (no JavaScript, no CDN)."""

    template_name = "django_workflows/api/docs.html"

    def get(self, request: HttpRequest) -> HttpResponse:
        return TemplateResponse(request, self.template_name, page_context(build_schema(request)))

    def http_method_not_allowed(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = JsonResponse(
            {"code": "method_not_allowed", "message": f'method "{request.method}" not allowed'}, status=405
        )
        response["Allow"] = "GET, HEAD"
        return response
