"""The REST API's views: events in and out, runs, functions, Inngest's event API.

Every view sets its own authentication, permission, parser, renderer, pagination and
exception handling (``WorkflowsAPIView``), so the API behaves the same in any project
whatever its ``REST_FRAMEWORK`` settings say. Each view says what a call needs with
``required_access(request) -> (scope, perms)``: the API key scope, or the Django
permissions of a staff session (``permissions.ScopedAccess``).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import Count, Exists, OuterRef, QuerySet
from django.utils.dateparse import parse_datetime
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, status
from rest_framework.authentication import BaseAuthentication, SessionAuthentication
from rest_framework.metadata import SimpleMetadata
from rest_framework.pagination import CursorPagination
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.viewsets import GenericViewSet, ViewSet

from .. import conf, control
from ..engine import clock
from ..errors import (
    EventValidationError,
    RunNotFinishedError,
    RunRefusedError,
    UnknownFunctionError,
)
from ..events import Event as EventSpec
from ..events import send
from ..functions import Function, registry
from ..models import ApiKey, Attempt, Event, FunctionState, Run, Step
from ..states import RunStatus
from . import serializers as s
from .authentication import ApiKeyAuthentication, ApiKeyUser
from .errors import (
    ApiError,
    ErrorSerializer,
    InngestErrorSerializer,
    conflict,
    exception_handler,
    invalid,
    too_large,
)
from .keys import find_key
from .parsing import AnyJSONBodyParser, JSONBodyParser, events_from_body, parse_time
from .permissions import ScopedAccess

APP = "django_workflows"
SEND, READ, MANAGE = ApiKey.Scope.SEND.value, ApiKey.Scope.READ.value, ApiKey.Scope.MANAGE.value
# Runs an event's page lists (GET runs?event_id=... lists them all).
RUNS_SHOWN = 100
# Replays and invoked runs a run's page lists.
RELATED_SHOWN = 100
# Runs one bulk replay request replays at most (the oldest first); "more" says to go on.
MAX_BULK_REPLAY = 1000
REFUSALS_SHOWN = 20
WINDOW = timedelta(hours=24)
INVOKED_EVENT = "workflows/function.invoked"

# -- documented error responses ----------------------------------------------------------------

ERROR_TEXT = {
    400: "Invalid request (code invalid, parse_error or invalid_event); errors names each bad field.",
    401: "No credentials (not_authenticated), or an unknown or revoked API key (authentication_failed).",
    403: "The API key's scope, or the user's permissions, do not allow this (permission_denied).",
    404: "No such object (not_found).",
    409: "Refused in the current state: run_not_finished, unknown_function, or flow control's refusal "
    "(FunctionPaused, RateLimited, SingletonRunActive, IdempotencyKeyTaken).",
    413: "Over a limit (request_too_large, too_many_events, event_too_large): nothing was stored.",
    415: "The body is not application/json (unsupported_media_type).",
}


def errors(*codes: int, serializer: Any = ErrorSerializer) -> dict[int, OpenApiResponse]:
    return {code: OpenApiResponse(serializer, description=ERROR_TEXT[code]) for code in codes}


def time_param(name: str, what: str) -> OpenApiParameter:
    return OpenApiParameter(
        name, OpenApiTypes.DATETIME,
        description=f"Only {what} (strictly). ISO 8601 with a time zone, or epoch milliseconds.",
    )


def documented(**actions: Any) -> Any:
    """``extend_schema`` for each action of a view (as ``extend_schema_view``, which only
    sees DRF's own actions), based on drf-spectacular's AutoSchema that the API's views set
    themselves (not through the project's ``DEFAULT_SCHEMA_CLASS``)."""

    def decorate(view: type) -> type:
        for name, decorator in actions.items():
            method = view.__dict__[name]  # defined on the view itself: nothing else is changed
            method.kwargs = {**getattr(method, "kwargs", {}), "schema": AutoSchema}
            setattr(view, name, decorator(method))
        return view

    return decorate


# -- base classes ------------------------------------------------------------------------------


class WorkflowsPagination(CursorPagination):
    """Newest first, by a cursor (stable while rows are added); 400 for a bad cursor."""

    ordering: Any = ("-queued_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def decode_cursor(self, request: Request) -> Any:
        try:
            cursor = super().decode_cursor(request)
        except exceptions.NotFound:
            raise invalid("cursor", "not a cursor this API gave (use the next or previous link)") from None
        if cursor is not None and cursor.position is not None:
            try:
                valid = parse_datetime(cursor.position) is not None
            except ValueError:
                valid = False
            if not valid:
                raise invalid("cursor", "not a cursor this API gave (use the next or previous link)")
        return cursor


class EventPagination(WorkflowsPagination):
    ordering = ("-received_at", "-id")


class Metadata(SimpleMetadata):
    """OPTIONS: what the endpoint renders and parses (its bodies are in the schema)."""

    def determine_actions(self, request: Request, view: Any) -> dict:
        return {}


class WorkflowsAPIView:
    """What every view of the API sets for itself (no project setting needed)."""

    authentication_classes = [ApiKeyAuthentication, SessionAuthentication]
    permission_classes = [ScopedAccess]
    renderer_classes = [JSONRenderer]
    parser_classes = [JSONBodyParser]
    filter_backends: list = []
    metadata_class = Metadata
    versioning_class = None
    schema = AutoSchema()

    def get_exception_handler(self) -> Any:
        return exception_handler

    # Each view says what a call needs: required_access(request) -> (scope, perms); a view
    # without it is refused to everyone (permissions.ScopedAccess).


def _uuid(value: Any, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise invalid(field, f"{value!r} is not a UUID") from None


def _text(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    if value and "\x00" in value:
        raise invalid(name, "contains a NUL character")
    return value


def _query_time(request: Request, name: str) -> Any:
    value = request.query_params.get(name)
    return None if value in (None, "") else parse_time(value, name)


# -- events ------------------------------------------------------------------------------------


def store(events: list[EventSpec]) -> list[str]:
    """``wf.send`` in one transaction: all the events or none."""
    with transaction.atomic(using=conf.database()):
        try:
            return send(events)
        except EventValidationError as exc:  # checked before already; the same checks again
            raise ApiError(str(exc), code="invalid_event", status_code=400, errors={"body": [str(exc)]}) from None


@documented(
    list=extend_schema(
        operation_id="events_list", tags=["events"], summary="List events",
        description="Events received, newest first. Needs scope read (or view_event).",
        parameters=[
            OpenApiParameter("name", str, description="Only events with this exact name."),
            time_param("received_after", "events received after this time"),
            time_param("received_before", "events received before this time"),
        ],
        responses={200: s.EventSerializer(many=True), **errors(400, 401, 403)},
    ),
    retrieve=extend_schema(
        operation_id="events_retrieve", tags=["events"], summary="Get an event",
        description="An event, with the runs it started. Needs scope read (or view_event).",
        responses={200: s.EventDetailSerializer, **errors(401, 403, 404)},
    ),
    create=extend_schema(
        operation_id="events_send", tags=["events"], summary="Send events",
        description=(
            "One event, or a list, as wf.send takes them: the same checks, the same 24-hour "
            "deduplication by id, a future ts delays the runs. All or nothing: one bad event "
            "and none is stored. Needs scope send (or change_event)."
        ),
        request={"application/json": {
            "oneOf": [
                {"$ref": "#/components/schemas/EventIn"},
                {"type": "array", "items": {"$ref": "#/components/schemas/EventIn"}},
            ]
        }},
        responses={201: s.IdsSerializer, **errors(400, 401, 403, 413, 415)},
    ),
)
class EventViewSet(WorkflowsAPIView, GenericViewSet):
    queryset = Event.objects.all()
    pagination_class = EventPagination
    serializer_class = s.EventSerializer

    def required_access(self, request: Request) -> tuple[str, list[str]]:
        if request.method == "POST":
            return SEND, [f"{APP}.change_event"]
        return READ, [f"{APP}.view_event"]

    def get_queryset(self) -> QuerySet:
        return Event.objects.using(conf.database())

    def list(self, request: Request) -> Response:
        events = self.get_queryset()
        name = _text(request, "name")
        if name:
            events = events.filter(name=name)
        after, before = _query_time(request, "received_after"), _query_time(request, "received_before")
        if after is not None:
            events = events.filter(received_at__gt=after)
        if before is not None:
            events = events.filter(received_at__lt=before)
        page = self.paginate_queryset(events)
        return self.get_paginated_response(s.EventSerializer(page, many=True).data)

    def retrieve(self, request: Request, event_id: uuid.UUID) -> Response:
        event = self.get_queryset().filter(pk=event_id).first()
        if event is None:
            raise exceptions.NotFound(f"no event {event_id}")
        runs = Run.objects.using(conf.database()).filter(event=event).order_by("-queued_at")
        event.started_runs = list(runs[: RUNS_SHOWN + 1])
        return Response(s.EventDetailSerializer(event, context={"runs_shown": RUNS_SHOWN}).data)

    def create(self, request: Request) -> Response:
        events, _many = events_from_body(request.data)
        return Response({"ids": store(events)}, status=status.HTTP_201_CREATED)


# -- Inngest's event API -----------------------------------------------------------------------


class EventKeyAuthentication(BaseAuthentication):
    """The API key in the path (``e/<event_key>``), as Inngest's event keys are."""

    def authenticate(self, request: Request) -> tuple[ApiKeyUser, ApiKey]:
        raw = request.parser_context.get("kwargs", {}).get("event_key", "")
        key = find_key(raw)
        if key is None:
            raise exceptions.AuthenticationFailed("unknown or revoked event key (an API key with scope send or more)")
        return ApiKeyUser(key), key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="workflows"'


def inngest_exception_handler(exc: Exception, context: dict) -> Response:
    """Errors as everywhere, plus ``error`` and ``status``: what Inngest's SDKs read."""
    response = exception_handler(exc, context)
    if isinstance(response.data, dict) and "code" in response.data:
        response.data = {**response.data, "error": response.data["message"], "status": response.status_code, "ids": []}
    return response


@documented(create=extend_schema(
    operation_id="inngest_send", tags=["inngest"], summary="Send events (Inngest's event API)",
    description=(
        "Inngest's event API: the JSON Inngest's SDKs send (an event or a list; ts in epoch "
        "milliseconds; id, user and v optional), the answer they expect. The event key is an "
        "API key with scope send or more; point an SDK's event API base URL here "
        "(INNGEST_EVENT_API_BASE_URL=<site>/workflows/api/ and INNGEST_EVENT_KEY=<key>). "
        "The body is read as JSON whatever its Content-Type."
    ),
    auth=[],
    parameters=[OpenApiParameter("event_key", str, OpenApiParameter.PATH, description="An API key (scope send or more).")],
    request={"application/json": {
        "oneOf": [
            {"$ref": "#/components/schemas/InngestEventIn"},
            {"type": "array", "items": {"$ref": "#/components/schemas/InngestEventIn"}},
        ]
    }},
    responses={200: s.InngestIdsSerializer, **errors(400, 401, 403, 413, serializer=InngestErrorSerializer)},
))
class InngestEventView(WorkflowsAPIView, GenericViewSet):
    """``POST e/<event_key>``: Inngest's event API, for code that sends with Inngest's SDKs."""

    authentication_classes = [EventKeyAuthentication]
    parser_classes = [JSONBodyParser, AnyJSONBodyParser]

    def required_access(self, request: Request) -> tuple[str, list[str]]:
        return SEND, [f"{APP}.change_event"]

    def get_exception_handler(self) -> Any:
        return inngest_exception_handler

    def create(self, request: Request, event_key: str) -> Response:
        events, _many = events_from_body(request.data, inngest=True)
        return Response({"ids": store(events), "status": 200}, status=status.HTTP_200_OK)


# -- runs --------------------------------------------------------------------------------------

RUN_FILTERS = [
    OpenApiParameter("function_id", str, description="Only runs of this function."),
    OpenApiParameter(
        "status", str,
        description="Only runs with this status (queued, running, completed, failed, cancelled); "
        "several, comma-separated.",
    ),
    OpenApiParameter("event_id", OpenApiTypes.UUID, description="Only runs this event started (their trigger event)."),
    OpenApiParameter("event_name", str, description="Only runs whose trigger event has this name."),
    time_param("queued_after", "runs queued after this time"),
    time_param("queued_before", "runs queued before this time"),
    time_param("ended_after", "runs that ended after this time"),
    time_param("ended_before", "runs that ended before this time"),
]


@documented(
    list=extend_schema(
        operation_id="runs_list", tags=["runs"], summary="List runs",
        description="Runs, newest first (by queued time). Needs scope read (or view_run).",
        parameters=RUN_FILTERS,
        responses={200: s.RunSerializer(many=True), **errors(400, 401, 403)},
    ),
    retrieve=extend_schema(
        operation_id="runs_retrieve", tags=["runs"], summary="Get a run",
        description="A run with its trigger event, its steps and every attempt. Needs scope read (or view_run).",
        responses={200: s.RunDetailSerializer, **errors(401, 403, 404)},
    ),
    cancel=extend_schema(
        operation_id="runs_cancel", tags=["runs"], summary="Cancel a run",
        description=(
            "As wf.cancel: a step that is running finishes, no later step starts. A run that had "
            "ended is left as it is (cancelled: false). Needs scope manage (or change_run)."
        ),
        request=None,
        responses={200: s.CancelResultSerializer, **errors(401, 403, 404)},
    ),
    replay=extend_schema(
        operation_id="runs_replay", tags=["runs"], summary="Replay a run",
        description=(
            "As wf.replay: a new run of the same function and trigger event(s), linked to this "
            "one; with from_step, the steps before it keep their outputs. Only a finished run can "
            "be replayed (409 run_not_finished: cancel it first); flow control may refuse (409 "
            "with its name as code). Needs scope manage (or change_run)."
        ),
        request=s.ReplaySerializer,
        responses={201: s.RunDetailSerializer, **errors(400, 401, 403, 404, 409, 413, 415)},
    ),
    bulk_replay=extend_schema(
        operation_id="runs_bulk_replay", tags=["runs"], summary="Replay runs by filter",
        description=(
            "Replays the function's finished runs (failed ones by default) queued in the time "
            "range, the oldest first, at most 1,000 per request (more: true says to send it "
            "again). Runs replayed before are left out. Needs scope manage (or change_run)."
        ),
        request=s.BulkReplaySerializer,
        responses={200: s.BulkReplayResultSerializer, **errors(400, 401, 403, 413, 415)},
    ),
    bulk_cancel=extend_schema(
        operation_id="runs_bulk_cancel", tags=["runs"], summary="Cancel runs by filter",
        description=(
            "As wf.cancel_runs: cancels the function's unfinished runs queued in the time range "
            "(only queued or running ones with status). Needs scope manage (or change_run)."
        ),
        request=s.BulkCancelSerializer,
        responses={200: s.CountSerializer, **errors(400, 401, 403, 413, 415)},
    ),
)
class RunViewSet(WorkflowsAPIView, GenericViewSet):
    queryset = Run.objects.all()
    pagination_class = WorkflowsPagination
    serializer_class = s.RunSerializer

    def required_access(self, request: Request) -> tuple[str, list[str]]:
        if request.method == "POST":
            return MANAGE, [f"{APP}.change_run"]
        return READ, [f"{APP}.view_run"]

    def get_queryset(self) -> QuerySet:
        return Run.objects.using(conf.database())

    def list(self, request: Request) -> Response:
        runs = self.get_queryset()
        params = request.query_params
        if _text(request, "function_id"):
            runs = runs.filter(function_id=params["function_id"])
        if params.get("status"):
            statuses = _statuses(params["status"], [v.value for v in RunStatus], "status")
            runs = runs.filter(status__in=statuses)
        if params.get("event_id"):
            runs = runs.filter(event_id=_uuid(params["event_id"], "event_id"))
        if _text(request, "event_name"):
            runs = runs.filter(event__name=params["event_name"])
        for name, lookup in (
            ("queued_after", "queued_at__gt"), ("queued_before", "queued_at__lt"),
            ("ended_after", "ended_at__gt"), ("ended_before", "ended_at__lt"),
        ):
            moment = _query_time(request, name)
            if moment is not None:
                runs = runs.filter(**{lookup: moment})
        page = self.paginate_queryset(runs)
        return self.get_paginated_response(s.RunSerializer(page, many=True).data)

    def retrieve(self, request: Request, run_id: uuid.UUID) -> Response:
        return Response(run_detail(self._run(run_id)))

    def cancel(self, request: Request, run_id: uuid.UUID) -> Response:
        run = self._run(run_id)
        cancelled = control.cancel(run.pk)
        return Response({"cancelled": cancelled, "run": run_detail(self._run(run.pk))})

    def replay(self, request: Request, run_id: uuid.UUID) -> Response:
        body = s.ReplaySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        run = self._run(run_id)
        from_step = body.validated_data.get("from_step")
        try:
            new = control.replay(run.pk, from_step=from_step)
        except RunNotFinishedError as exc:
            raise conflict(str(exc), "run_not_finished") from None
        except RunRefusedError as exc:
            raise conflict(str(exc), exc.name) from None
        except UnknownFunctionError as exc:
            raise conflict(f"cannot replay run {run.pk}: {exc}", "unknown_function") from None
        except ValueError as exc:  # no such step
            raise invalid("from_step", str(exc)) from None
        return Response(run_detail(self._run(new.pk)), status=status.HTTP_201_CREATED)

    def bulk_replay(self, request: Request) -> Response:
        body = s.BulkReplaySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        function = _registered(data["function_id"])
        db = conf.database()
        runs = Run.objects.using(db).filter(function_id=function.id, status__in=data.get("status") or ["failed"])
        runs = _in_range(runs, data.get("queued_after"), data.get("queued_before"))
        runs = runs.exclude(Exists(Run.objects.using(db).filter(replay_of=OuterRef("pk"))))
        ids = list(runs.order_by("queued_at", "id").values_list("pk", flat=True)[: MAX_BULK_REPLAY + 1])
        count, refusals = 0, []
        for pk in ids[:MAX_BULK_REPLAY]:
            try:
                control.replay(pk)
            except RunRefusedError as exc:
                refusals.append({"run_id": str(pk), "code": exc.name, "message": str(exc)})
            except RunNotFinishedError as exc:  # it changed since it was listed
                refusals.append({"run_id": str(pk), "code": "run_not_finished", "message": str(exc)})
            else:
                count += 1
        return Response({
            "count": count, "refused": len(refusals), "refusals": refusals[:REFUSALS_SHOWN],
            "more": len(ids) > MAX_BULK_REPLAY,
        })

    def bulk_cancel(self, request: Request) -> Response:
        body = s.BulkCancelSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        function = _registered(data["function_id"])
        after, before = data.get("queued_after"), data.get("queued_before")
        statuses = set(data.get("status") or [])
        if not statuses or statuses == set(s.UNFINISHED):
            count = control.cancel_runs(function.id, started_after=after, started_before=before)
        else:
            runs = _in_range(Run.objects.using(conf.database()).filter(function_id=function.id, status__in=statuses), after, before)
            count = sum(control.cancel(pk) for pk in runs.values_list("pk", flat=True).iterator())
        return Response({"count": count})

    def _run(self, run_id: Any) -> Run:
        run = self.get_queryset().select_related("event").filter(pk=run_id).first()
        if run is None:
            raise exceptions.NotFound(f"no run {run_id}")
        return run


def run_detail(run: Run) -> dict:
    db = run._state.db or conf.database()
    attempts: dict[str, list[Attempt]] = {}
    for attempt in Attempt.objects.using(db).filter(run=run).order_by("id"):
        attempts.setdefault(attempt.step_id, []).append(attempt)
    runs = Run.objects.using(db)
    context = {
        "steps": list(Step.objects.using(db).filter(run=run).order_by("id")),
        "attempts": attempts,
        "replays": list(runs.filter(replay_of=run).order_by("queued_at")[:RELATED_SHOWN]),
        "invoked": list(runs.filter(parent_run=run).order_by("queued_at")[:RELATED_SHOWN]),
    }
    return s.RunDetailSerializer(run, context=context).data


def _statuses(value: str, allowed: list[str], field: str) -> list[str]:
    statuses = [part.strip() for part in value.split(",") if part.strip()]
    wrong = [part for part in statuses if part not in allowed]
    if wrong or not statuses:
        raise invalid(field, f"{', '.join(map(repr, wrong)) or 'nothing'} is not a status; statuses: {', '.join(allowed)}")
    return statuses


def _in_range(runs: QuerySet, after: Any, before: Any) -> QuerySet:
    """As ``wf.cancel_runs`` reads a range: queued strictly after ``after``, before ``before``."""
    if after is not None:
        runs = runs.filter(queued_at__gt=after)
    if before is not None:
        runs = runs.filter(queued_at__lt=before)
    return runs


def _registered(function_id: str) -> Function:
    try:
        return registry.get(function_id)
    except UnknownFunctionError as exc:
        raise invalid("function_id", str(exc)) from None


# -- functions ---------------------------------------------------------------------------------


def describe(functions: list[Function]) -> list[dict]:
    db = conf.database()
    ids = [fn.id for fn in functions]
    states = {state.function_id: state for state in FunctionState.objects.using(db).filter(function_id__in=ids)}
    counts: dict[str, dict[str, int]] = {fn_id: {} for fn_id in ids}
    since = clock.now() - WINDOW
    grouped = (
        Run.objects.using(db).filter(function_id__in=ids, queued_at__gte=since)
        .order_by().values_list("function_id", "status").annotate(n=Count("pk"))
    )
    for function_id, run_status, count in grouped:
        counts[function_id][run_status] = count
    return [s.describe_function(fn, states.get(fn.id), counts[fn.id]) for fn in functions]


FUNCTION_ID = OpenApiParameter("function_id", str, OpenApiParameter.PATH, description="The function's id.")


@documented(
    list=extend_schema(
        operation_id="functions_list", tags=["functions"], summary="List functions",
        description="Every registered function (by id), with its triggers, options, pause switch and runs "
        "of the last 24 hours. Needs scope read (or view_functionstate).",
        responses={200: s.FunctionSerializer(many=True), **errors(401, 403)},
    ),
    retrieve=extend_schema(
        operation_id="functions_retrieve", tags=["functions"], summary="Get a function",
        description="Needs scope read (or view_functionstate).",
        parameters=[FUNCTION_ID],
        responses={200: s.FunctionSerializer, **errors(401, 403, 404)},
    ),
    pause=extend_schema(
        operation_id="functions_pause", tags=["functions"], summary="Pause a function",
        description="As wf.pause: it starts no new runs (its events are still stored); runs in progress go on. "
        "Needs scope manage (or change_functionstate).",
        parameters=[FUNCTION_ID], request=None,
        responses={200: s.FunctionSerializer, **errors(401, 403, 404)},
    ),
    resume=extend_schema(
        operation_id="functions_resume", tags=["functions"], summary="Resume a function",
        description="As wf.resume: events that arrive from now on start runs again. "
        "Needs scope manage (or change_functionstate).",
        parameters=[FUNCTION_ID], request=None,
        responses={200: s.FunctionSerializer, **errors(401, 403, 404)},
    ),
    invoke=extend_schema(
        operation_id="functions_invoke", tags=["functions"], summary="Invoke a function",
        description="Starts a run fed a workflows/function.invoked event with this data, as step.invoke "
        "does. Flow control applies: a refusal is a 409 with its name as code (e.g. FunctionPaused). "
        "Needs scope manage (or change_run).",
        parameters=[FUNCTION_ID], request=s.InvokeSerializer,
        responses={201: s.RunDetailSerializer, **errors(400, 401, 403, 404, 409, 413, 415)},
    ),
)
class FunctionViewSet(WorkflowsAPIView, ViewSet):
    def required_access(self, request: Request) -> tuple[str, list[str]]:
        if request.method != "POST":
            return READ, [f"{APP}.view_functionstate"]
        if getattr(self, "action", None) == "invoke":
            return MANAGE, [f"{APP}.change_run"]
        return MANAGE, [f"{APP}.change_functionstate"]

    def list(self, request: Request) -> Response:
        return Response(describe(sorted(registry.all(), key=lambda fn: fn.id)))

    def retrieve(self, request: Request, function_id: str) -> Response:
        return Response(describe([self._function(function_id)])[0])

    def pause(self, request: Request, function_id: str) -> Response:
        function = self._function(function_id)
        control.pause(function.id)
        return Response(describe([function])[0])

    def resume(self, request: Request, function_id: str) -> Response:
        function = self._function(function_id)
        control.resume(function.id)
        return Response(describe([function])[0])

    def invoke(self, request: Request, function_id: str) -> Response:
        function = self._function(function_id)
        body = s.InvokeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data.get("data")
        run = invoke(function, {} if data is None else data)
        return Response(run_detail(Run.objects.using(conf.database()).select_related("event").get(pk=run.pk)),
                        status=status.HTTP_201_CREATED)

    def _function(self, function_id: str) -> Function:
        try:
            return registry.get(function_id)
        except UnknownFunctionError as exc:
            raise exceptions.NotFound(str(exc)) from None


def invoke(function: Function, data: Any) -> Run:
    """``control.invoke``, its refusals as API errors (409 says why; 413 over the size limit)."""
    try:
        return control.invoke(function.id, data)
    except EventValidationError as exc:
        if "bytes, over the limit of" in str(exc):
            raise too_large(f"data: {exc}", "event_too_large", errors={"data": [str(exc)]}) from None
        raise invalid("data", str(exc)) from None
    except RunRefusedError as exc:
        raise conflict(str(exc), exc.name) from None


__all__ = [
    "EventViewSet", "InngestEventView", "RunViewSet", "FunctionViewSet", "WorkflowsAPIView", "WorkflowsPagination",
]
