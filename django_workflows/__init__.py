"""django-workflows: durable, event-driven, multi-step background functions for Django.

    import django_workflows as wf

    @wf.function(id="send-welcome", trigger="user.signup")
    def send_welcome(ctx: wf.Context):
        ctx.step.run("send-email", send_email, ctx.event.data["email"])
"""

from .context import Context, EventInfo
from .control import cancel, cancel_runs, pause, replay, replay_events, resume
from .durations import parse_duration
from .errors import (
    EventValidationError,
    NonRetriableError,
    RetryAfterError,
    RunNotFinishedError,
    RunRefusedError,
    StepError,
    UnknownFunctionError,
    WorkflowDefinitionError,
)
from .events import Event, send
from .flow_control import Batch, Concurrency, Debounce, Priority, RateLimit, Singleton, Throttle
from .functions import Cancel, Function, Timeouts, TriggerCron, TriggerEvent, function

__all__ = [
    "Batch",
    "Concurrency",
    "Debounce",
    "Priority",
    "RateLimit",
    "Singleton",
    "Throttle",
    "Cancel",
    "Timeouts",
    "TriggerCron",
    "cancel",
    "cancel_runs",
    "pause",
    "replay",
    "replay_events",
    "resume",
    "Context",
    "Event",
    "EventInfo",
    "EventValidationError",
    "Function",
    "NonRetriableError",
    "RetryAfterError",
    "RunNotFinishedError",
    "RunRefusedError",
    "StepError",
    "TriggerEvent",
    "UnknownFunctionError",
    "WorkflowDefinitionError",
    "function",
    "parse_duration",
    "send",
]

__version__ = "0.1.0"
