"""The REST API's URLs: ``path("workflows/api/", include("django_workflows.api.urls"))``.

Paths have no trailing slash (as Inngest's), except ``schema/`` and ``docs/``. Function
ids may contain "/": each function path ends with a fixed word, so none is ambiguous.
Anything else under the prefix is a JSON 404.
"""

from django.urls import path, re_path

from .errors import not_found_view
from .schema import DocsView, SchemaView
from .views import EventViewSet, FunctionViewSet, InngestEventView, RunViewSet

app_name = "workflows_api"

urlpatterns = [
    path("events", EventViewSet.as_view({"get": "list", "post": "create"}), name="events"),
    path("events/<uuid:event_id>", EventViewSet.as_view({"get": "retrieve"}), name="event-detail"),
    path("e/<str:event_key>", InngestEventView.as_view({"post": "create"}), name="inngest-events"),
    path("runs", RunViewSet.as_view({"get": "list"}), name="runs"),
    path("runs/replay", RunViewSet.as_view({"post": "bulk_replay"}), name="runs-replay"),
    path("runs/cancel", RunViewSet.as_view({"post": "bulk_cancel"}), name="runs-cancel"),
    path("runs/<uuid:run_id>", RunViewSet.as_view({"get": "retrieve"}), name="run-detail"),
    path("runs/<uuid:run_id>/cancel", RunViewSet.as_view({"post": "cancel"}), name="run-cancel"),
    path("runs/<uuid:run_id>/replay", RunViewSet.as_view({"post": "replay"}), name="run-replay"),
    path("functions", FunctionViewSet.as_view({"get": "list"}), name="functions"),
    path("functions/<path:function_id>/pause", FunctionViewSet.as_view({"post": "pause"}), name="function-pause"),
    path("functions/<path:function_id>/resume", FunctionViewSet.as_view({"post": "resume"}), name="function-resume"),
    path("functions/<path:function_id>/invoke", FunctionViewSet.as_view({"post": "invoke"}), name="function-invoke"),
    path("functions/<path:function_id>", FunctionViewSet.as_view({"get": "retrieve"}), name="function-detail"),
    path("schema/", SchemaView.as_view(), name="schema"),
    path("docs/", DocsView.as_view(), name="docs"),
    re_path(r"^[\s\S]*$", not_found_view, name="not-found"),  # [\s\S]: paths with a newline too
]
