"""What the API answers with (read-only representations) and the bodies it reads.

Events in are not read by a serializer: ``parsing.events_from_body`` turns them into
``wf.Event`` objects for ``wf.send``'s own validation (one validation path).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ..functions import Function, TriggerCron, TriggerEvent
from ..models import Attempt, Event, Run, Step
from ..states import FINISHED_STATUSES, RunStatus

# -- fields ------------------------------------------------------------------------------------


@extend_schema_field({"type": "object", "additionalProperties": True})
class ObjectField(serializers.JSONField):
    """A JSON object (an event's data)."""


@extend_schema_field({"description": "Any JSON value.", "nullable": True})
class AnyJSONField(serializers.JSONField):
    """Any JSON value (a step's or a run's output)."""


@extend_schema_field(
    {
        "type": "object", "nullable": True,
        "properties": {"name": {"type": "string"}, "message": {"type": "string"}, "stack": {"type": "string"}},
        "description": "The error: its name (e.g. ValueError), message and stack; null if none.",
    }
)
class ErrorInfoField(serializers.JSONField):
    pass


@extend_schema_field(
    {
        "oneOf": [{"type": "string", "format": "date-time"}, {"type": "number"}],
        "description": "ISO 8601 with a time zone, or epoch milliseconds.",
    }
)
class TimeField(serializers.Field):
    """A moment: ISO 8601 with a time zone, or epoch milliseconds (as the query filters)."""

    def to_internal_value(self, data: Any) -> Any:
        from .errors import ApiError
        from .parsing import parse_time

        try:
            return parse_time(data, self.field_name)
        except ApiError as exc:
            raise serializers.ValidationError((exc.errors or {}).get(self.field_name) or str(exc.detail)) from None

    def to_representation(self, value: Any) -> Any:
        return value.isoformat()


def seconds(value: timedelta | None) -> float | None:
    return None if value is None else value.total_seconds()


class StrictSerializer(serializers.Serializer):
    """A request body: a JSON object whose every field is known (a typo is a 400, not ignored)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(str(key) for key in data if key not in self.fields)
            if unknown:
                raise serializers.ValidationError(
                    {key: [f"unknown field; this body has {', '.join(self.fields) or 'no fields'}"] for key in unknown}
                )
        return super().to_internal_value(data)


# -- events ------------------------------------------------------------------------------------


class IdsSerializer(serializers.Serializer):
    ids = serializers.ListField(child=serializers.UUIDField(), help_text="The stored events' ids, in the order sent.")


class InngestIdsSerializer(serializers.Serializer):
    ids = serializers.ListField(child=serializers.UUIDField(), help_text="The stored events' ids, in the order sent.")
    status = serializers.IntegerField(help_text="200, as Inngest's event API answers.")


class RunSummarySerializer(serializers.ModelSerializer):
    class Meta:
        model = Run
        fields = ["id", "function_id", "status", "queued_at", "started_at", "ended_at"]
        read_only_fields = fields


class EventSerializer(serializers.ModelSerializer):
    data = ObjectField()
    sender_id = serializers.SerializerMethodField(help_text="The id the sender gave (the deduplication key), or null.")
    error = ErrorInfoField(help_text="Why taking the event in failed for good (it then started nothing), or null.")

    class Meta:
        model = Event
        fields = ["id", "name", "data", "sender_id", "ts", "received_at", "error"]
        read_only_fields = fields

    def get_sender_id(self, event: Event) -> str | None:
        return event.dedup_id or None


class EventDetailSerializer(EventSerializer):
    runs = serializers.SerializerMethodField(
        help_text="The runs this event started (its trigger event), newest first, at most 100: "
        "GET runs?event_id=... lists them all."
    )
    runs_truncated = serializers.SerializerMethodField(help_text="Whether the event started more runs than listed.")

    class Meta(EventSerializer.Meta):
        fields = [*EventSerializer.Meta.fields, "runs", "runs_truncated"]
        read_only_fields = fields

    @extend_schema_field(RunSummarySerializer(many=True))
    def get_runs(self, event: Event) -> list[dict]:
        return RunSummarySerializer(event.started_runs[: self.context["runs_shown"]], many=True).data

    def get_runs_truncated(self, event: Event) -> bool:
        return len(event.started_runs) > self.context["runs_shown"]


# -- runs --------------------------------------------------------------------------------------


class AttemptSerializer(serializers.ModelSerializer):
    error = ErrorInfoField()

    class Meta:
        model = Attempt
        fields = ["number", "started_at", "ended_at", "outcome", "error", "worker_id"]
        read_only_fields = fields


class StepSerializer(serializers.ModelSerializer):
    output = AnyJSONField(help_text="The step's result (null until it completed; null for sleeps).")
    error = ErrorInfoField(help_text="Its last error, or null.")
    attempts = serializers.IntegerField(help_text="How many times its code ran.")
    attempt_history = serializers.SerializerMethodField(help_text="Every attempt, oldest first.")

    class Meta:
        model = Step
        fields = [
            "step_id", "kind", "status", "output", "error", "attempts", "started_at", "ended_at",
            "scheduled_at", "attempt_history",
        ]
        read_only_fields = fields

    @extend_schema_field(AttemptSerializer(many=True))
    def get_attempt_history(self, step: Step) -> list[dict]:
        attempts = self.context.get("attempts", {}).get(step.step_id, [])
        return AttemptSerializer(attempts, many=True).data


class RunSerializer(serializers.ModelSerializer):
    event_id = serializers.UUIDField(allow_null=True, help_text="The trigger event (the first one, for a batch).")
    replay_of = serializers.UUIDField(source="replay_of_id", allow_null=True, help_text="The run this one replays.")
    parent_run = serializers.UUIDField(
        source="parent_run_id", allow_null=True, help_text="The run whose step.invoke started this one."
    )
    error = ErrorInfoField(help_text="Why it failed or was cancelled, or null.")

    class Meta:
        model = Run
        fields = [
            "id", "function_id", "status", "event_id", "replay_of", "parent_run", "queued_at", "started_at",
            "ended_at", "error",
        ]
        read_only_fields = fields


class RunDetailSerializer(RunSerializer):
    output = AnyJSONField(help_text="What the handler returned (null until it completed).")
    attempts = serializers.IntegerField(help_text="Failed attempts of the handler's code outside any step.")
    attempt_history = serializers.SerializerMethodField(
        help_text="Every attempt of the handler's code between steps, oldest first."
    )
    batch_event_ids = serializers.ListField(
        child=serializers.UUIDField(), help_text="For a batch run: its events, in order (else empty)."
    )
    waiting_reason = serializers.SerializerMethodField(
        help_text="Why an unfinished run is held back right now (throttled, debounced, waiting for a "
        "concurrency slot ...), or ''."
    )
    event = serializers.SerializerMethodField(help_text="The trigger event, or null (cron runs have none stored).")
    steps = serializers.SerializerMethodField(help_text="Its steps in the order they were first recorded.")
    replays = serializers.SerializerMethodField(help_text="Runs that replay this one (at most 100).")
    invoked_runs = serializers.SerializerMethodField(help_text="Runs its step.invoke calls started (at most 100).")

    class Meta(RunSerializer.Meta):
        fields = [
            *RunSerializer.Meta.fields, "output", "attempts", "attempt_history", "parent_step_id",
            "batch_event_ids", "waiting_reason", "event", "steps", "replays", "invoked_runs",
        ]
        read_only_fields = fields

    @extend_schema_field(AttemptSerializer(many=True))
    def get_attempt_history(self, run: Run) -> list[dict]:
        return AttemptSerializer(self.context["attempts"].get("", []), many=True).data

    def get_waiting_reason(self, run: Run) -> str:
        return "" if run.status in FINISHED_STATUSES else run.waiting_reason

    @extend_schema_field(EventSerializer(allow_null=True))
    def get_event(self, run: Run) -> dict | None:
        return EventSerializer(run.event).data if run.event is not None else None

    @extend_schema_field(StepSerializer(many=True))
    def get_steps(self, run: Run) -> list[dict]:
        return StepSerializer(self.context["steps"], many=True, context=self.context).data

    @extend_schema_field(RunSummarySerializer(many=True))
    def get_replays(self, run: Run) -> list[dict]:
        return RunSummarySerializer(self.context["replays"], many=True).data

    @extend_schema_field(RunSummarySerializer(many=True))
    def get_invoked_runs(self, run: Run) -> list[dict]:
        return RunSummarySerializer(self.context["invoked"], many=True).data


class ReplaySerializer(StrictSerializer):
    from_step = serializers.CharField(
        required=False, allow_null=True, max_length=255,
        help_text="Keep the outputs of the steps before this one (they do not run again); run it and "
        "everything after it anew.",
    )


class CancelResultSerializer(serializers.Serializer):
    cancelled = serializers.BooleanField(help_text="False if the run had already ended.")
    run = RunDetailSerializer()


STATUS_HELP = "A status, or several (a list, or a comma-separated string)."


class StatusesField(serializers.ListField):
    """A list of run statuses; a single string, or a comma-separated one, also goes."""

    def __init__(self, allowed: list[str], **kwargs: Any) -> None:
        super().__init__(child=serializers.ChoiceField(choices=allowed), **kwargs)

    def to_internal_value(self, data: Any) -> list[str]:
        if isinstance(data, str):
            data = [part.strip() for part in data.split(",") if part.strip()]
        return super().to_internal_value(data)


class RangeMixin(StrictSerializer):
    queued_after = TimeField(required=False, allow_null=True, help_text="Only runs queued after this time.")
    queued_before = TimeField(required=False, allow_null=True, help_text="Only runs queued before this time.")


FINISHED = [str(s) for s in FINISHED_STATUSES]
UNFINISHED = [RunStatus.QUEUED.value, RunStatus.RUNNING.value]


class BulkReplaySerializer(RangeMixin):
    function_id = serializers.CharField(max_length=255, help_text="The function whose runs to replay.")
    status = StatusesField(
        FINISHED, required=False, help_text=f"Which finished runs: {', '.join(FINISHED)} (default: failed). {STATUS_HELP}"
    )


class BulkReplayResultSerializer(serializers.Serializer):
    count = serializers.IntegerField(help_text="Runs replayed (a new run started for each).")
    refused = serializers.IntegerField(help_text="Runs whose replay flow control refused (e.g. the function is paused).")
    refusals = serializers.ListField(
        child=serializers.DictField(child=serializers.CharField()),
        help_text="The first refusals: run_id, code and message of each.",
    )
    more = serializers.BooleanField(
        help_text="More runs match than one request replays (1,000): send the same request again for the next ones."
    )


class BulkCancelSerializer(RangeMixin):
    function_id = serializers.CharField(max_length=255, help_text="The function whose runs to cancel.")
    status = StatusesField(
        UNFINISHED, required=False, help_text=f"queued, running or both (default: both). {STATUS_HELP}"
    )


class CountSerializer(serializers.Serializer):
    count = serializers.IntegerField(help_text="Runs cancelled.")


# -- functions ---------------------------------------------------------------------------------


class TriggerSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=["event", "cron"])
    event = serializers.CharField(allow_null=True, help_text="For an event trigger: the event name.")
    expression = serializers.CharField(allow_null=True, help_text="For an event trigger: its CEL condition, or null.")
    cron = serializers.CharField(allow_null=True, help_text="For a cron trigger: the schedule (maybe with TZ=...).")
    jitter_seconds = serializers.FloatField(allow_null=True, help_text="For a cron trigger: its jitter, or null.")


class ConcurrencySerializer(serializers.Serializer):
    limit = serializers.IntegerField()
    key = serializers.CharField(allow_null=True)
    scope = serializers.ChoiceField(choices=["fn", "env"])


class ThrottleSerializer(serializers.Serializer):
    limit = serializers.IntegerField()
    period_seconds = serializers.FloatField()
    key = serializers.CharField(allow_null=True)
    burst = serializers.IntegerField()


class RateLimitSerializer(serializers.Serializer):
    limit = serializers.IntegerField()
    period_seconds = serializers.FloatField()
    key = serializers.CharField(allow_null=True)


class DebounceSerializer(serializers.Serializer):
    period_seconds = serializers.FloatField()
    key = serializers.CharField(allow_null=True)
    timeout_seconds = serializers.FloatField(allow_null=True)


class BatchSerializer(serializers.Serializer):
    max_size = serializers.IntegerField()
    timeout_seconds = serializers.FloatField()
    key = serializers.CharField(allow_null=True)


class PrioritySerializer(serializers.Serializer):
    run = serializers.CharField()


class SingletonSerializer(serializers.Serializer):
    key = serializers.CharField(allow_null=True)
    mode = serializers.ChoiceField(choices=["skip", "cancel"])


class CancelRuleSerializer(serializers.Serializer):
    event = serializers.CharField()
    match = serializers.CharField(allow_null=True)
    if_exp = serializers.CharField(allow_null=True)
    timeout_seconds = serializers.FloatField(allow_null=True)


class TimeoutsSerializer(serializers.Serializer):
    start_seconds = serializers.FloatField(allow_null=True)
    finish_seconds = serializers.FloatField(allow_null=True)


class OptionsSerializer(serializers.Serializer):
    concurrency = ConcurrencySerializer(many=True)
    throttle = ThrottleSerializer(allow_null=True)
    rate_limit = RateLimitSerializer(allow_null=True)
    debounce = DebounceSerializer(allow_null=True)
    batch_events = BatchSerializer(allow_null=True)
    idempotency = serializers.CharField(allow_null=True)
    priority = PrioritySerializer(allow_null=True)
    singleton = SingletonSerializer(allow_null=True)
    cancel = CancelRuleSerializer(many=True)
    timeouts = TimeoutsSerializer(allow_null=True)
    on_failure = serializers.CharField(allow_null=True, help_text="The id of its on_failure handler's function.")


class RunCountsSerializer(serializers.Serializer):
    queued = serializers.IntegerField()
    running = serializers.IntegerField()
    completed = serializers.IntegerField()
    failed = serializers.IntegerField()
    cancelled = serializers.IntegerField()


class FunctionSerializer(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField(help_text="The handler's docstring.")
    triggers = TriggerSerializer(many=True)
    retries = serializers.IntegerField(help_text="Retries per step (attempts = retries + 1).")
    options = OptionsSerializer(help_text="Flow control and the other options it sets (null or [] when not set).")
    paused = serializers.BooleanField()
    paused_at = serializers.DateTimeField(allow_null=True, help_text="When it was paused, if it is.")
    runs_last_24h = RunCountsSerializer(help_text="Its runs queued in the last 24 hours, by status.")


def describe_function(function: Function, state: Any, counts: dict[str, int]) -> dict[str, Any]:
    """The plain data ``FunctionSerializer`` shows of a registered function."""
    import inspect

    flow = function.flow
    triggers = []
    for trigger in function.triggers:
        if isinstance(trigger, TriggerEvent):
            triggers.append({"type": "event", "event": trigger.event, "expression": trigger.expression,
                             "cron": None, "jitter_seconds": None})
        elif isinstance(trigger, TriggerCron):
            triggers.append({"type": "cron", "event": None, "expression": None, "cron": trigger.cron,
                             "jitter_seconds": seconds(trigger.jitter_delta) if trigger.jitter is not None else None})
    throttle, rate, debounce, batch, single = flow.throttle, flow.rate_limit, flow.debounce, flow.batch, flow.singleton
    options = {
        "concurrency": [{"limit": c.limit, "key": c.key, "scope": c.scope} for c in flow.concurrency],
        "throttle": throttle and {
            "limit": throttle.limit, "period_seconds": seconds(throttle.period_delta), "key": throttle.key,
            "burst": throttle.burst,
        },
        "rate_limit": rate and {"limit": rate.limit, "period_seconds": seconds(rate.period_delta), "key": rate.key},
        "debounce": debounce and {
            "period_seconds": seconds(debounce.period_delta), "key": debounce.key,
            "timeout_seconds": seconds(debounce.timeout_delta),
        },
        "batch_events": batch and {
            "max_size": batch.max_size, "timeout_seconds": seconds(batch.timeout_delta), "key": batch.key,
        },
        "idempotency": flow.idempotency.source if flow.idempotency is not None else None,
        "priority": flow.priority and {"run": flow.priority.run},
        "singleton": single and {"key": single.key, "mode": single.mode},
        "cancel": [
            {"event": c.event, "match": c.match, "if_exp": c.if_exp, "timeout_seconds": seconds(c.timeout_delta)}
            for c in function.cancel
        ],
        "timeouts": function.timeouts and {
            "start_seconds": seconds(function.timeouts.start_delta),
            "finish_seconds": seconds(function.timeouts.finish_delta),
        },
        "on_failure": function.on_failure.id if function.on_failure is not None else None,
    }
    paused = bool(state and state.paused)
    return {
        "id": function.id,
        "name": function.name,
        "description": inspect.cleandoc(function.__doc__ or ""),
        "triggers": triggers,
        "retries": function.retries,
        "options": options,
        "paused": paused,
        "paused_at": state.changed_at if paused else None,
        "runs_last_24h": {status.value: counts.get(status.value, 0) for status in RunStatus},
    }


class InvokeSerializer(StrictSerializer):
    data = ObjectField(
        required=False, allow_null=True,
        help_text="The invoked run's event.data (a JSON object; {} if left out). The run's event is "
        "workflows/function.invoked.",
    )
