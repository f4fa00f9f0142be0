"""django-workflows: durable, event-driven, multi-step background functions for Django.

    import django_workflows as wf

    @wf.function(id="send-welcome", trigger="user.signup")
    def send_welcome(ctx: wf.Context):
        ctx.step.run("send-email", send_email, ctx.event.data["email"])
"""

from .context import Context, EventInfo
from .durations import parse_duration
from .errors import (
    EventValidationError,
    NonRetriableError,
    RetryAfterError,
    StepError,
    UnknownFunctionError,
    WorkflowDefinitionError,
)
from .events import Event, send
from .functions import Function, TriggerEvent, function

__all__ = [
    "Context",
    "Event",
    "EventInfo",
    "EventValidationError",
    "Function",
    "NonRetriableError",
    "RetryAfterError",
    "StepError",
    "TriggerEvent",
    "UnknownFunctionError",
    "WorkflowDefinitionError",
    "function",
    "parse_duration",
    "send",
]

__version__ = "0.1.0"
