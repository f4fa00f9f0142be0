"""Events, runs and steps (history), and the queue of due work (a small hot table)."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _

from .ids import new_id
from .jsonenc import ExactJSONEncoder
from .states import FINISHED_STATUSES, QueueKind, RunStatus, StepKind, StepStatus, WaiterKind

__all__ = [
    "Event", "Run", "Step", "Attempt", "QueueItem", "SeenEventId", "FlowSlot", "ApiKey",
    "Waiter", "WaitKey", "FunctionState", "CronSchedule", "WorkerRecord",
    "RunStatus", "StepKind", "StepStatus", "QueueKind", "WaiterKind", "FINISHED_STATUSES",
]


class Event(models.Model):
    """An event received by ``wf.send`` (or emitted by the engine)."""

    id = models.UUIDField(primary_key=True, default=new_id, editable=False)
    name = models.CharField(max_length=255, db_index=True)
    data = models.JSONField(default=dict, blank=True, encoder=ExactJSONEncoder)
    ts = models.DateTimeField(help_text=_("When the event happened; a future ts delays its runs."))
    received_at = models.DateTimeField(db_index=True)
    dedup_id = models.CharField(
        max_length=255,
        blank=True,
        default="",
        help_text=_("The sender's event id: a repeat within 24 h is stored but triggers nothing."),
    )
    error = models.JSONField(
        null=True, blank=True, encoder=ExactJSONEncoder,
        help_text=_("Why taking this event in failed for good (name, message, stack); it triggered nothing."),
    )
    unmatched = models.BooleanField(
        default=False,
        help_text=_("Taken in, it started no run and matched no wait and no cancel rule (a typo in its name?)."),
    )

    class Meta:
        ordering = ["-received_at"]
        verbose_name = _("event")
        indexes = [
            # A waiter that begins looks back at the events of its name taken in since.
            models.Index(fields=["name", "received_at"], name="wf_event_name_received_idx"),
            # The admin's "unmatched" filter (few rows: names nothing listens to).
            models.Index(
                fields=["-received_at"], name="wf_event_unmatched_idx", condition=models.Q(unmatched=True)
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"

    def as_payload(self) -> dict:
        """The event as handlers and expressions see it."""
        return {
            "id": self.dedup_id or str(self.id),  # the sender's id when given, as ctx.event.id
            "name": self.name,
            "data": self.data,
            "ts": int(self.ts.timestamp() * 1000),
        }


class Run(models.Model):
    """One execution of a function, from its trigger to its end."""

    id = models.UUIDField(primary_key=True, default=new_id, editable=False)
    function_id = models.CharField(max_length=255)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    output = models.JSONField(null=True, blank=True, encoder=ExactJSONEncoder)
    error = models.JSONField(null=True, blank=True, encoder=ExactJSONEncoder)
    event = models.ForeignKey(
        Event, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs"
    )
    batch_event_ids = models.JSONField(default=list, blank=True)
    replay_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replays"
    )
    parent_run = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="invoked_runs",
        help_text=_("The run whose step.invoke started this run."),
    )
    parent_step_id = models.CharField(max_length=255, blank=True, default="")
    cron_key = models.CharField(
        max_length=255, null=True, blank=True, unique=True,
        help_text=_("function:schedule:time of a cron run; unique, so each tick starts one run."),
    )
    attempts = models.PositiveIntegerField(
        default=0, help_text=_("Failed attempts of the handler outside any step.")
    )
    queued_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    status_detail = models.CharField(
        max_length=500, blank=True, default="",
        help_text=_("Why an unfinished run is held back, e.g. no worker defines its function."),
    )
    held_since = models.DateTimeField(
        null=True, blank=True, help_text=_("Since when the run has been held back for that reason.")
    )

    class Meta:
        ordering = ["-queued_at"]
        indexes = [
            models.Index(fields=["function_id", "-queued_at"], name="wf_run_function_idx"),
            models.Index(fields=["status", "-queued_at"], name="wf_run_status_idx"),
            models.Index(fields=["ended_at"], name="wf_run_ended_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.function_id} {self.id} ({self.status})"

    @property
    def waiting_reason(self) -> str:
        """Why this unfinished run is held back right now, or ``""``.

        ``status_detail`` when admission delayed it (throttled, debounced, collecting a
        batch) or no worker defines its function; otherwise, for a run whose next work is
        due, a full concurrency limit: ``waiting for concurrency slot (key "acct-42")``.
        One or two small queries, for the admin and the API (not for the hot path).
        """
        if self.status in FINISHED_STATUSES:
            return ""
        if self.status_detail:
            return self.status_detail
        from .engine import clock
        from .engine.admission import describe_lane

        items = QueueItem.objects.using(self._state.db or "default")
        waiting = items.filter(run_id=self.pk, worker_id="", due_at__lte=clock.now(), lane_limit__gt=0).first()
        if waiting is None:
            return ""
        for lane, limit, field in ((waiting.lane, waiting.lane_limit, "lane"), (waiting.lane2, waiting.lane2_limit, "lane2")):
            if lane and limit and items.exclude(worker_id="").filter(**{field: lane}).count() >= limit:
                return f"waiting for concurrency slot ({describe_lane(lane)}, limit {limit})"
        return ""


class Step(models.Model):
    """A recorded step of a run: its result is memoized and never re-run once completed."""

    # No index of its own: the (run, step_id) unique constraint serves run lookups.
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="steps", db_index=False)
    step_id = models.CharField(max_length=255)
    kind = models.CharField(max_length=16, choices=StepKind.choices, default=StepKind.RUN)
    status = models.CharField(max_length=16, choices=StepStatus.choices)
    output = models.JSONField(null=True, blank=True, encoder=ExactJSONEncoder)
    error = models.JSONField(null=True, blank=True, encoder=ExactJSONEncoder)
    attempts = models.PositiveIntegerField(default=0, help_text=_("How many times its code ran."))
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    scheduled_at = models.DateTimeField(
        null=True, blank=True, help_text=_("When a sleep ends, a wait times out or a retry runs.")
    )

    class Meta:
        ordering = ["run", "id"]
        constraints = [
            models.UniqueConstraint(fields=["run", "step_id"], name="wf_step_unique_per_run"),
        ]

    def __str__(self) -> str:
        return f"{self.step_id} ({self.status})"


class Attempt(models.Model):
    """One execution of a step's code, or of the handler's code between steps (``step_id``
    ''), append-only: a step row keeps only its last error, this keeps every attempt's.

    Written in the same statement or transaction as the checkpoint it belongs to (no commit
    of its own); pruned with its run.
    """

    # No index of its own: (run, id) serves run lookups.
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="attempt_history", db_index=False)
    step_id = models.CharField(max_length=255, blank=True, default="", help_text=_("'' for the handler between steps."))
    number = models.PositiveIntegerField(help_text=_("1 for the first attempt."))
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField()
    outcome = models.CharField(
        max_length=16, help_text=_("completed; retrying (it failed, another attempt follows); failed (for good).")
    )
    error = models.JSONField(null=True, blank=True, encoder=ExactJSONEncoder)
    worker_id = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        ordering = ["run", "id"]
        indexes = [models.Index(fields=["run", "id"], name="wf_attempt_run_idx")]

    def __str__(self) -> str:
        return f"{self.step_id or '(handler)'} #{self.number} {self.outcome}"


class QueueItem(models.Model):
    """Due work. Small and hot: finished items are deleted, history lives elsewhere.

    ``due_at`` doubles as the lease: claiming sets it to the lease's end, so an
    item whose worker died becomes due again when the lease lapses. ``NULL``
    parks an item until something wakes it.
    """

    id = models.BigAutoField(primary_key=True)
    kind = models.CharField(max_length=16, choices=QueueKind.choices)
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    # Indexed only where set (wf_queue_event_idx, and the schedule's unique constraint): run
    # items, nearly all of them, have neither, and every claim rewrites an item's index
    # entries (due_at and worker_id change), so entries for NULLs would only cost writes.
    event = models.ForeignKey(
        Event, null=True, blank=True, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    step_id = models.CharField(max_length=255, blank=True, default="")
    due_at = models.DateTimeField(null=True, blank=True)
    worker_id = models.CharField(max_length=64, blank=True, default="")
    lease_token = models.PositiveBigIntegerField(default=0)
    claims = models.PositiveIntegerField(
        default=0, help_text=_("Claims since the item last made progress (crash detection).")
    )
    wake = models.BooleanField(
        default=False, help_text=_("Woken while leased: the holder re-queues it instead of parking it.")
    )
    schedule = models.ForeignKey(
        "CronSchedule", null=True, blank=True, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    function_id = models.CharField(
        max_length=255, blank=True, default="", help_text=_("The run's function ('' for events).")
    )
    # Claims take turns between lanes: a lane is a function, or a function's concurrency
    # key value ("fn|<key>"), or a key shared by functions ("*env|<key>"); events are lane ''.
    lane = models.CharField(max_length=255, blank=True, default="")
    lane_limit = models.PositiveIntegerField(
        default=0, help_text=_("At most this many items of the lane are held by workers at once (0: no limit).")
    )
    lane2 = models.CharField(
        max_length=255, blank=True, default="", help_text=_("A second concurrency key ('' for none).")
    )
    lane2_limit = models.PositiveIntegerField(default=0)

    class Meta:
        db_table = "django_workflows_queue"
        indexes = [
            models.Index(
                fields=["due_at"], name="wf_queue_due_idx", condition=models.Q(due_at__isnull=False)
            ),
            # Fair claims: a skip scan over the lanes, then each one's oldest due items; lanes
            # with a concurrency limit apart, so a claim of unlimited work never reads them.
            models.Index(
                fields=["lane", "due_at", "id"], name="wf_queue_lane_idx",
                condition=models.Q(due_at__isnull=False, lane_limit=0),
            ),
            models.Index(
                fields=["lane", "due_at", "id"], name="wf_queue_limited_lane_idx",
                condition=models.Q(due_at__isnull=False, lane_limit__gt=0),
            ),
            # Held items per concurrency key (few): the claim counts a lane's slots in use.
            models.Index(fields=["lane"], name="wf_queue_held_lane_idx", condition=~models.Q(worker_id="")),
            models.Index(
                fields=["lane2"], name="wf_queue_held_lane2_idx",
                condition=~models.Q(worker_id="") & ~models.Q(lane2=""),
            ),
            models.Index(fields=["event"], name="wf_queue_event_idx", condition=models.Q(event__isnull=False)),
            # Leased items (few): lapsed leases are taken over before any backlog.
            models.Index(
                fields=["due_at"], name="wf_queue_leased_idx",
                condition=models.Q(due_at__isnull=False) & ~models.Q(worker_id=""),
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["schedule"], name="wf_queue_one_item_per_schedule",
                condition=models.Q(schedule__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.run_id or self.event_id} due {self.due_at}"


class FlowSlot(models.Model):
    """Flow control state of one function and key (one row each, locked while changed).

    ``throttle`` and ``rate_limit``: ``tat``, the theoretical arrival time of GCRA.
    ``debounce`` and ``batch``: the queued run that collects the events (``run_id``), opened
    at ``opened_at``, with ``size`` events so far. ``idempotency``: the run that took the key
    at ``opened_at``. ``singleton``: the active run of the key.
    """

    kind = models.CharField(max_length=16)
    function_id = models.CharField(max_length=255)
    key = models.CharField(max_length=255, blank=True, default="")
    run_id = models.UUIDField(null=True, blank=True)
    opened_at = models.DateTimeField()
    tat = models.DateTimeField(null=True, blank=True)
    size = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["kind", "function_id", "key"], name="wf_flowslot_unique"),
        ]
        indexes = [models.Index(fields=["run_id"], name="wf_flowslot_run_idx")]

    def __str__(self) -> str:
        return f"{self.kind} {self.function_id} {self.key}"


class SeenEventId(models.Model):
    """The first event stored with a sender-given id; later ones within 24 h trigger nothing."""

    key = models.CharField(max_length=255, primary_key=True)
    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="+")
    seen_at = models.DateTimeField()

    def __str__(self) -> str:
        return self.key


class Waiter(models.Model):
    """A run waiting for an event: a ``wait_for_event`` step, or a ``cancel`` rule.

    ``match`` waits are found through the (event_name, match_field, match_value)
    index, so intake cost does not grow with the number of waiting runs.
    """

    kind = models.CharField(max_length=8, choices=WaiterKind.choices)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="+")
    step_id = models.CharField(max_length=255, blank=True, default="")
    event_name = models.CharField(max_length=255)
    match_field = models.CharField(max_length=255, blank=True, default="")
    match_value = models.TextField(blank=True, default="", help_text=_("JSON of the trigger's value."))
    if_exp = models.TextField(blank=True, default="")
    trigger = models.JSONField(default=dict, help_text=_("The waiting run's trigger event, for if_exp."))
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["event_name", "match_field", "match_value"], name="wf_waiter_match_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.event_name} for run {self.run_id}"


class WaitKey(models.Model):
    """The (event name, match field) pairs that waiters use; tiny, read at every intake."""

    event_name = models.CharField(max_length=255)
    match_field = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["event_name", "match_field"], name="wf_waitkey_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.event_name} on {self.match_field or '(no match)'}"


class FunctionState(models.Model):
    """Per-function switches kept in the database (pause/resume)."""

    function_id = models.CharField(max_length=255, primary_key=True)
    paused = models.BooleanField(default=False)
    changed_at = models.DateTimeField()

    class Meta:
        # In the admin this is the functions page (the registry's functions, with this switch).
        verbose_name = _("function")
        verbose_name_plural = _("functions")

    def __str__(self) -> str:
        return f"{self.function_id} ({'paused' if self.paused else 'active'})"


class WorkerRecord(models.Model):
    """A live ``runworkers`` process: what it defines, and when it was last heard of.

    During a rolling deploy old and new code run side by side: a cron schedule is removed
    only when no live worker defines it any more.
    """

    id = models.CharField(max_length=64, primary_key=True)
    hostname = models.CharField(max_length=255, blank=True, default="")
    started_at = models.DateTimeField()
    last_seen_at = models.DateTimeField(db_index=True)
    functions = models.JSONField(default=list, help_text=_("Ids of the functions this worker defines."))
    schedules = models.JSONField(default=list, help_text=_("[function id, cron] pairs it defines."))
    pid = models.PositiveIntegerField(null=True, blank=True)
    threads = models.PositiveIntegerField(default=0, help_text=_("Its --concurrency."))
    items_in_hand = models.PositiveIntegerField(default=0, help_text=_("Queue items it held at its last heartbeat."))
    processed = models.PositiveBigIntegerField(default=0, help_text=_("Items it had processed at its last heartbeat."))

    class Meta:
        verbose_name = _("worker")
        verbose_name_plural = _("workers")

    def __str__(self) -> str:
        return self.id


class CronSchedule(models.Model):
    """One cron trigger of one function; ``last_fired_for`` is compare-and-set per tick."""

    function_id = models.CharField(max_length=255)
    cron = models.CharField(max_length=255)
    created_at = models.DateTimeField()
    last_fired_for = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["function_id", "cron"], name="wf_cron_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.function_id} {self.cron!r}"


class ApiKey(models.Model):
    """A key for the REST API: only its SHA-256 hash is stored; the key is shown once.

    ``prefix`` (the key's first characters) tells keys apart in the admin and the logs.
    Scopes: ``send`` (events in only), ``read`` (events in, and read everything),
    ``manage`` (everything: cancel, replay, pause, invoke).
    """

    class Scope(models.TextChoices):
        SEND = "send", _("send events")
        READ = "read", _("send events and read")
        MANAGE = "manage", _("send, read and manage runs and functions")

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    scope = models.CharField(max_length=8, choices=Scope.choices, default=Scope.SEND)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, help_text=_("A revoked key is refused (401)."))

    class Meta:
        verbose_name = _("API key")

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…, {self.scope})"
