"""``python manage.py workflows SUBCOMMAND``: what a developer does by hand, from a terminal.

Subcommands: ``functions``, ``send``, ``runs``, ``show``, ``replay``, ``cancel``, ``pause``,
``resume``, ``wake`` and ``prune`` (docs/cli.md). Each prints aligned, coloured text for a
terminal, or JSON with ``--json``; errors are ``CommandError`` with a message that says
what to do instead.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.core.management.color import color_style, no_style, supports_color
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from django_workflows import conf
from django_workflows.states import RunStatus

from ...durations import format_duration

# Statuses and outcomes -> the name of a Django style (django.core.management.color).
STATUS_STYLES = {
    "completed": "SUCCESS",
    "active": "SUCCESS",
    "failed": "ERROR",
    "cancelled": "WARNING",
    "paused": "WARNING",
    "retrying": "WARNING",
    "running": "MIGRATE_HEADING",
    "waiting": "MIGRATE_HEADING",
}
SUMMARY_WIDTH = 60  # characters of an output or error shown in a table cell
HANDLER_LABEL = "(handler)"  # the handler's code between steps (Attempt.step_id '')


class JSONEncoder(DjangoJSONEncoder):
    """Django's, with full-precision times (``2025-06-01T09:30:00.123456+00:00``)."""

    def default(self, o: Any) -> Any:
        if isinstance(o, datetime):
            return o.isoformat()
        return super().default(o)


# -- formatting ---------------------------------------------------------------------------------


def duration_text(seconds: float | None) -> str:
    """A compact duration (``durations.format_duration``); ``-`` for None."""
    if seconds is None:
        return "-"
    return format_duration(timedelta(seconds=seconds))


def offset_text(moment: datetime | None, origin: datetime | None) -> str:
    if moment is None or origin is None:
        return "-"
    seconds = (moment - origin).total_seconds()
    text = duration_text(seconds)
    return text if text.startswith("-") else f"+{text}"


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


def local_text(moment: datetime | None, *, zone: bool = False) -> str:
    if moment is None:
        return "-"
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S" + (" %Z" if zone else ""))


def summarize(value: Any, width: int = SUMMARY_WIDTH) -> str:
    """One line of JSON, cut to ``width`` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "), cls=DjangoJSONEncoder)
    except (TypeError, ValueError):
        text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def error_text(error: dict | None, width: int | None = SUMMARY_WIDTH) -> str:
    """``Name: message`` of a recorded error (first line of the message)."""
    if not error:
        return ""
    name = str(error.get("name") or "Error")
    message = str(error.get("message") or "").strip().splitlines()
    text = f"{name}: {message[0]}" if message else name
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def close_matches(word: str, candidates: Iterable[str]) -> list[str]:
    return difflib.get_close_matches(word, sorted(set(candidates)), n=5, cutoff=0.6)


def describe_trigger(trigger: Any) -> str:
    from django_workflows.functions import TriggerCron

    if isinstance(trigger, TriggerCron):
        return f"cron {trigger.cron}" + (f" (jitter {trigger.jitter})" if trigger.jitter else "")
    return trigger.event + (f" if {trigger.expression}" if trigger.expression else "")


def trigger_json(trigger: Any) -> dict:
    from django_workflows.functions import TriggerCron

    if isinstance(trigger, TriggerCron):
        return {"cron": trigger.cron, "jitter": None if trigger.jitter is None else str(trigger.jitter)}
    return {"event": trigger.event, "expression": trigger.expression}


def describe_flow(function: Any) -> list[str]:
    """Short words for the function's flow control options, e.g. ``concurrency 5``."""
    flow = function.flow
    words = []
    for rule in flow.concurrency:
        words.append(f"concurrency {rule.limit}" + (f" per {rule.key}" if rule.key else ""))
    if flow.throttle is not None:
        words.append(f"throttle {flow.throttle.limit}/{flow.throttle.period}")
    if flow.rate_limit is not None:
        words.append(f"rate_limit {flow.rate_limit.limit}/{flow.rate_limit.period}")
    if flow.debounce is not None:
        words.append(f"debounce {flow.debounce.period}")
    if flow.batch is not None:
        words.append(f"batch {flow.batch.max_size}/{flow.batch.timeout}")
    if flow.idempotency is not None:
        words.append(f"idempotency {flow.idempotency.source}")
    if flow.priority is not None:
        words.append("priority")
    if flow.singleton is not None:
        words.append(f"singleton ({flow.singleton.mode})")
    if function.cancel:
        words.append("cancel on " + ", ".join(rule.event for rule in function.cancel))
    return words


def parse_ts(text: str) -> datetime:
    """``--ts``: an ISO 8601 date-time (local time zone if none is given) or epoch milliseconds."""
    value = text.strip()
    if value.lstrip("-").isdigit():
        try:
            return datetime.fromtimestamp(int(value) / 1000, tz=dt_timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise CommandError(f"--ts {text!r}: epoch milliseconds out of range") from None
    try:
        moment = parse_datetime(value)
    except ValueError as exc:
        raise CommandError(f"--ts {text!r} is not a valid date-time: {exc}") from None
    if moment is None:
        raise CommandError(
            f"--ts {text!r} is not a date-time: give ISO 8601 (2025-06-01T09:30:00+02:00) "
            "or epoch milliseconds (1748763000000)"
        )
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


def parse_data(text: str) -> dict:
    """``--data``: a JSON object; ``@path`` reads it from a file, ``-`` from standard input."""
    source = "--data"
    if text == "-":
        text, source = sys.stdin.read(), "--data (standard input)"
    elif text.startswith("@"):
        path = text[1:]
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise CommandError(f"--data {text!r}: cannot read {path!r}: {exc.strerror or exc}") from None
        source = f"--data (file {path!r})"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        excerpt = text[max(exc.pos - 20, 0) : exc.pos + 20].replace("\n", " ")
        raise CommandError(
            f"{source} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} "
            f"(near {excerpt!r}); quote it for the shell, e.g. --data '{{\"user_id\": 42}}'"
        ) from None
    if not isinstance(data, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(data), "a number")
        raise CommandError(f"{source} must be a JSON object ({{...}}), got {kind}: event data is an object")
    return data


# -- the command --------------------------------------------------------------------------------


class Command(BaseCommand):
    help = (
        "Operate django-workflows by hand: list functions, send events, inspect, replay, cancel "
        "and wake runs, pause and resume functions, prune old history. "
        "Every subcommand takes --json for scripts."
    )

    def add_arguments(self, parser: Any) -> None:
        subcommands = parser.add_subparsers(
            dest="subcommand", metavar="SUBCOMMAND", required=True,
            title="subcommands", description="`manage.py workflows SUBCOMMAND --help` tells more.",
        )
        add = self._subcommand(subcommands)

        add("functions", "List the registered functions with their triggers, paused state and options.")

        send = add("send", "Send an event (as wf.send does); its runs start when a worker takes it in.")
        send.add_argument("name", metavar="NAME", help="The event name, e.g. accounts/user.signed_up.")
        send.add_argument(
            "--data", default="{}",
            help="The event data: a JSON object (default {}); @FILE reads it from a file, - from standard input.",
        )
        send.add_argument("--id", dest="event_id", default=None, help="Your id for the event (deduplication for 24 h).")
        send.add_argument(
            "--ts", default=None,
            help="When it happened: ISO 8601 or epoch milliseconds; a future ts delays its runs.",
        )

        runs = add("runs", "List recent runs, newest first.")
        runs.add_argument("--function", dest="function_id", default=None, help="Only runs of this function id.")
        runs.add_argument(
            "--status", default=None, choices=list(RunStatus.values),
            help="Only runs with this status.",
        )
        runs.add_argument("--limit", type=int, default=20, help="At most this many runs (default 20).")

        show = add("show", "Show a run and its steps as a timeline, with every attempt and error.")
        show.add_argument("run_id", metavar="RUN_ID")

        replay = add("replay", "Start a new run of a finished run's function and trigger event(s).")
        replay.add_argument("run_id", metavar="RUN_ID")
        replay.add_argument(
            "--from-step", default=None, metavar="STEP",
            help="Keep the outputs of the steps before STEP; run STEP and what follows anew.",
        )

        cancel = add("cancel", "Cancel a queued or running run (a step in progress finishes; no later step starts).")
        cancel.add_argument("run_id", metavar="RUN_ID")

        pause = add("pause", "Start no new runs of a function (its events are still stored).")
        pause.add_argument("function_id", metavar="FUNCTION")
        resume = add("resume", "Start runs of a paused function again, for events from now on.")
        resume.add_argument("function_id", metavar="FUNCTION")

        wake = add(
            "wake",
            "End a run's sleep or retry backoff now (for development). A wait_for_event is not ended: send its event.",
        )
        wake.add_argument("run_id", metavar="RUN_ID")

        prune = add("prune", "Delete the history past its retention now (workers also do it as they go).")
        prune.add_argument("--batch", type=int, default=500, help="Runs deleted per transaction (default 500).")

    def _subcommand(self, subcommands: Any) -> Callable[[str, str], Any]:
        def add(name: str, text: str) -> Any:
            parser = subcommands.add_parser(name, help=text, description=text)
            parser.add_argument("--json", action="store_true", help="Print JSON instead of text.")
            # Django's own options, so that they may follow the subcommand too. SUPPRESS: not
            # given here, they keep the value parsed before the subcommand.
            parser.add_argument("-v", "--verbosity", type=int, choices=[0, 1, 2, 3], default=argparse.SUPPRESS,
                                help="Verbosity level; 2 also prints error stacks.")
            for flag in ("--no-color", "--force-color", "--traceback", "--skip-checks"):
                parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
            for option in ("--settings", "--pythonpath"):
                parser.add_argument(option, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
            return parser

        return add

    def run_from_argv(self, argv: list[str]) -> None:
        try:
            super().run_from_argv(argv)
        except BrokenPipeError:
            # `manage.py workflows runs | head`: the reader left; no traceback. (Python's
            # advice: point stdout at devnull so the flush at exit does not raise again.)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(1)

    def handle(self, *args: Any, subcommand: str, **options: Any) -> None:
        colour = options.get("force_color") or (
            not options.get("no_color") and self.stdout.isatty() and supports_color()
        )
        self.paint_style = color_style(force_color=True) if colour else no_style()
        self.as_json = bool(options.get("json"))
        self.verbosity = int(options.get("verbosity", 1))
        self.db = conf.database()
        getattr(self, f"do_{subcommand}")(options)

    # -- output helpers -----------------------------------------------------------------------

    def paint(self, text: str, style: str | None) -> str:
        if not style or not text:
            return text
        return getattr(self.paint_style, style)(text)

    def status(self, text: str) -> str:
        return self.paint(text, STATUS_STYLES.get(text))

    def emit_json(self, data: Any) -> None:
        self.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, cls=JSONEncoder))

    def line(self, text: str = "", style: str | None = None) -> None:
        self.stdout.write(self.paint(text, style))

    def say(self, text: str = "", style: str | None = None) -> None:
        """A line that reports what was done or what to do next; not at --verbosity 0."""
        if self.verbosity >= 1:
            self.line(text, style)

    def table(self, headers: list[str], rows: list[list[tuple[str, str | None]]], indent: str = "") -> None:
        """Aligned columns: widths from the plain text, colour added after the padding."""
        widths = [len(h) for h in headers]
        for row in rows:
            for index, (text, _) in enumerate(row):
                widths[index] = max(widths[index], len(text))
        last = len(headers) - 1

        def line(cells: list[tuple[str, str | None]]) -> str:
            parts = []
            for index, (text, style) in enumerate(cells):
                padded = text if index == last else text.ljust(widths[index])
                parts.append(self.paint(text, style) + padded[len(text):])
            return (indent + "  ".join(parts)).rstrip()

        self.stdout.write(line([(h, "MIGRATE_LABEL") for h in headers]))
        for row in rows:
            self.stdout.write(line(row))

    # -- lookups --------------------------------------------------------------------------------

    def get_run(self, value: str) -> Any:
        from django_workflows.models import Run

        try:
            run_id = uuid.UUID(value.strip())
        except ValueError:
            raise CommandError(
                f"{value!r} is not a run id: run ids are UUIDs such as 0197a3c2-5e1f-7c3a-9b0e-4d2f8a6c1e55 "
                "(`manage.py workflows runs` lists recent runs)"
            ) from None
        run = Run.objects.using(self.db).select_related("event").filter(pk=run_id).first()
        if run is None:
            raise CommandError(
                f"unknown run id {run_id}: no such run (a finished run is pruned after its retention); "
                "`manage.py workflows runs` lists recent runs"
            )
        return run

    def get_function(self, function_id: str) -> Any:
        from django_workflows.functions import registry

        ids = [function.id for function in registry.all()]
        if function_id in ids:
            return registry.get(function_id)
        raise CommandError(unknown_function_message(function_id, ids))

    # -- functions ------------------------------------------------------------------------------

    def do_functions(self, options: dict) -> None:
        from django_workflows.functions import registry
        from django_workflows.models import FunctionState

        functions = sorted(registry.all(), key=lambda f: f.id)
        states = {
            state.function_id: state
            for state in FunctionState.objects.using(self.db).filter(function_id__in=[f.id for f in functions])
        }
        if self.as_json:
            self.emit_json([
                {
                    "id": f.id,
                    "name": f.name,
                    "triggers": [trigger_json(t) for t in f.triggers],
                    "paused": bool(states.get(f.id) and states[f.id].paused),
                    "paused_changed_at": states[f.id].changed_at if f.id in states else None,
                    "retries": f.retries,
                    "flow_control": describe_flow(f),
                    "on_failure": f.on_failure.id if f.on_failure else None,
                }
                for f in functions
            ])
            return
        if not functions:
            self.line("No functions are registered: define them with @wf.function in a workflows.py module "
                     "of an installed app.", "WARNING")
            return
        rows = []
        for f in functions:
            paused = bool(states.get(f.id) and states[f.id].paused)
            state = "paused" if paused else "active"
            triggers = ", ".join(describe_trigger(t) for t in f.triggers) or "(none: invoke only)"
            name = "" if f.name == f.id else f.name
            rows.append([
                (f.id, "MIGRATE_LABEL"), (state, STATUS_STYLES[state]), (str(f.retries), None),
                (triggers, None), (", ".join(filter(None, [name and f"name {name!r}", *describe_flow(f)])), None),
            ])
        self.table(["FUNCTION", "STATE", "RETRIES", "TRIGGERS", "OPTIONS"], rows)

    # -- send -----------------------------------------------------------------------------------

    def do_send(self, options: dict) -> None:
        import django_workflows as wf
        from django_workflows.functions import registry
        from django_workflows.models import FunctionState

        name = options["name"]
        data = parse_data(options["data"])
        ts = parse_ts(options["ts"]) if options["ts"] is not None else None
        try:
            ids = wf.send(name, data=data, id=options["event_id"], ts=ts)
        except wf.EventValidationError as exc:
            raise CommandError(f"event not sent: {exc}") from None
        triggered = [function.id for function, _ in registry.triggered_by(name)]
        paused = set(
            FunctionState.objects.using(self.db)
            .filter(function_id__in=triggered, paused=True).values_list("function_id", flat=True)
        )
        if self.as_json:
            self.emit_json({"ids": ids, "name": name, "functions": triggered, "paused": sorted(paused)})
            return
        if self.verbosity == 0:  # for scripts: the event id alone
            self.stdout.write(ids[0])
            return
        self.say(f"Sent {name} (event {ids[0]}).", "SUCCESS")
        if triggered:
            self.say("Functions triggered on it (when their conditions match): " + ", ".join(
                f"{fid} (paused: starts no run)" if fid in paused else fid for fid in triggered
            ))
            self.say("A worker takes it in: `manage.py runworkers`; then `manage.py workflows runs` lists the runs.")
        else:
            names = {trigger.event for function in registry.all() for trigger in function.event_triggers}
            hint = close_matches(name, names)
            self.say(
                f"No registered function triggers on {name!r}: it is stored, and starts no run."
                + (f" Did you mean: {', '.join(hint)}?" if hint else ""),
                "WARNING",
            )

    # -- runs -----------------------------------------------------------------------------------

    def do_runs(self, options: dict) -> None:
        from django_workflows.functions import registry
        from django_workflows.models import Run

        limit = options["limit"]
        if limit < 1:
            raise CommandError(f"--limit must be at least 1, got {limit}")
        runs = Run.objects.using(self.db).select_related("event")
        function_id = options["function_id"]
        if function_id:
            ids = [function.id for function in registry.all()]
            if function_id not in ids and not runs.filter(function_id=function_id).exists():
                raise CommandError(unknown_function_message(function_id, ids))
            runs = runs.filter(function_id=function_id)
        if options["status"]:
            runs = runs.filter(status=options["status"])
        page = list(runs.order_by("-queued_at", "-id")[:limit])
        details = self.run_details(page)
        if self.as_json:
            self.emit_json([{**run_summary(run), "detail": details.get(run.pk, "")} for run in page])
            return
        if not page:
            self.line("No runs" + (" match" if function_id or options["status"] else " yet") + ".")
            return
        from django_workflows.engine import clock

        now = clock.now()
        rows = []
        for run in page:
            end = run.ended_at or (now if run.started_at else None)
            took = duration_text(seconds_between(run.started_at, end))
            if run.started_at and not run.ended_at:
                took += " so far"
            rows.append([
                (str(run.pk), None), (run.function_id, None), (run.status, STATUS_STYLES.get(run.status)),
                (run.event.name if run.event else ("(batch)" if run.batch_event_ids else "-"), None),
                (local_text(run.queued_at), None), (took, None), (details.get(run.pk, ""), None),
            ])
        self.table(["RUN", "FUNCTION", "STATUS", "TRIGGER", "QUEUED", "DURATION", "DETAIL"], rows)

    def run_details(self, runs: list) -> dict:
        """One line per run: its error, or what an unfinished run waits for."""
        from django_workflows.models import Attempt, Step

        unfinished = [run.pk for run in runs if run.status in ("queued", "running")]
        waiting: dict = {}
        if unfinished:
            for step in Step.objects.using(self.db).filter(
                run_id__in=unfinished, status__in=["waiting", "retrying"]
            ).order_by("id"):
                waiting.setdefault(step.run_id, step)
        retrying = [run.pk for run in runs if run.pk in unfinished and run.attempts and run.pk not in waiting]
        handler_errors: dict = {}
        if retrying:
            for attempt in Attempt.objects.using(self.db).filter(run_id__in=retrying, step_id="").order_by("id"):
                handler_errors[attempt.run_id] = attempt.error
        details = {}
        for run in runs:
            if run.error:
                details[run.pk] = error_text(run.error)
            elif run.pk in waiting:
                details[run.pk] = step_wait_text(waiting[run.pk])
            elif run.pk in handler_errors:
                details[run.pk] = f"handler attempt {run.attempts + 1} to come; " + error_text(handler_errors[run.pk])
            elif run.status_detail:
                details[run.pk] = run.status_detail[:SUMMARY_WIDTH]
        return details

    # -- show -----------------------------------------------------------------------------------

    def do_show(self, options: dict) -> None:
        from django_workflows.engine import clock
        from django_workflows.models import Attempt, QueueItem, Step

        run = self.get_run(options["run_id"])
        steps = list(Step.objects.using(self.db).filter(run=run).order_by("id"))
        attempts = list(Attempt.objects.using(self.db).filter(run=run).order_by("id"))
        by_step: dict[str, list] = {}
        for attempt in attempts:
            by_step.setdefault(attempt.step_id, []).append(attempt)
        origin = run.queued_at
        now = clock.now()
        next_due = None
        if run.status in ("queued", "running"):
            next_due = (
                QueueItem.objects.using(self.db).filter(run=run, kind="run", worker_id="")
                .exclude(due_at=None).order_by("due_at").values_list("due_at", flat=True).first()
            )
        if self.as_json:
            data = run_summary(run)
            data.update(
                event=event_json(run.event),
                status_detail=run.status_detail,
                waiting_reason=run.waiting_reason,
                next_due_at=next_due,
                steps=[
                    {**step_json(step, origin), "attempt_history": [attempt_json(a, origin) for a in by_step.get(step.step_id, [])]}
                    for step in steps
                ],
                handler_attempts=[attempt_json(a, origin) for a in by_step.get("", [])],
            )
            self.emit_json(data)
            return

        self.line(
            f"Run {run.pk}  {self.paint(run.function_id, 'MIGRATE_LABEL')}  {self.status(run.status)}"
        )
        facts: list[tuple[str, str]] = []
        if run.event is not None:
            facts.append(("trigger", f"{run.event.name}  event {run.event.pk}  {summarize(run.event.data)}"))
        if run.batch_event_ids:
            facts.append(("batch", f"{len(run.batch_event_ids)} events"))
        if run.replay_of_id:
            facts.append(("replay of", str(run.replay_of_id)))
        if run.parent_run_id:
            facts.append(("invoked by", f"run {run.parent_run_id}, step {run.parent_step_id!r}"))
        facts.append(("queued", local_text(run.queued_at, zone=True)))
        facts.append(("started", offset_text(run.started_at, origin) if run.started_at else "not yet"))
        if run.ended_at:
            facts.append(("ended", f"{offset_text(run.ended_at, origin)}  (ran {duration_text(seconds_between(run.started_at or run.queued_at, run.ended_at))})"))
        if run.status == "completed":
            facts.append(("output", summarize(run.output, 100)))
        if run.error:
            facts.append(("error", error_text(run.error, None)))
        reason = run.waiting_reason
        if reason:
            facts.append(("held", reason))
        waiting = [s for s in steps if s.status in ("waiting", "retrying")]
        for step in waiting:
            facts.append(("waiting", step_wait_text(step, now)))
        if next_due is not None and not waiting and next_due > now:
            what = f"handler attempt {run.attempts + 1}" if run.attempts else "resumes"
            facts.append(("next", f"{what} at {local_text(next_due)} (in {duration_text((next_due - now).total_seconds())})"))
        if run.status in ("queued", "running") and (
            any(
                (s.status == "retrying" or s.kind == "sleep") and s.scheduled_at is not None and s.scheduled_at > now
                for s in waiting
            )
            or (run.attempts and next_due is not None and next_due > now)
        ):
            facts.append(("hint", f"`manage.py workflows wake {run.pk}` ends the wait now"))
        label_width = max(len(label) for label, _ in facts)
        for label, text in facts:
            self.line(f"  {label.ljust(label_width)}  {text}")

        self.line()
        if not steps and not attempts:
            self.line("  No steps recorded yet.")
            return
        self.line("  Timeline (offsets from when the run was queued)")
        self.table(
            ["STEP", "KIND", "STATUS", "ATTEMPTS", "START", "END", "DURATION", "DETAIL"],
            self.timeline_rows(run, steps, by_step, now),
            indent="  ",
        )
        if self.verbosity >= 2:
            self.print_stacks(run, steps, attempts)

    def timeline_rows(self, run: Any, steps: list, by_step: dict, now: datetime) -> list:
        origin = run.queued_at
        entries: list[tuple[datetime, datetime, int, list]] = []
        far = datetime.max.replace(tzinfo=dt_timezone.utc)
        for order, step in enumerate(steps):
            rows = []
            if step.status == "completed":
                detail = "" if step.kind == "sleep" else summarize(step.output)
            elif step.status == "failed":
                detail = error_text(step.error)
            else:
                detail = step_wait_text(step, now, short=True)
            if run.replay_of_id and step.started_at and step.started_at < origin:
                detail = f"kept from run {run.replay_of_id}" + (f": {detail}" if detail else "")
            end = step.ended_at
            rows.append([
                (step.step_id, None), (step.kind, None), (step.status, STATUS_STYLES.get(step.status)),
                (str(step.attempts) if step.attempts else "-", None),
                (offset_text(step.started_at, origin), None), (offset_text(end, origin), None),
                (duration_text(seconds_between(step.started_at, end)), None), (detail, None),
            ])
            history = by_step.get(step.step_id, [])
            if len(history) > 1 or any(a.outcome != "completed" for a in history):
                rows.extend(self.attempt_row(a, origin, f"  #{a.number}") for a in history)
            entries.append((step.ended_at or far, step.started_at or far, order, rows))
        for order, attempt in enumerate(by_step.get("", []), start=len(steps)):
            row = self.attempt_row(attempt, origin, f"{HANDLER_LABEL} #{attempt.number}", kind="code")
            entries.append((attempt.ended_at, attempt.started_at, order, [row]))
        # In the order things ended: a handler attempt spans the steps it ran before it
        # failed, so it follows them; steps still waiting come last.
        entries.sort(key=lambda entry: entry[:3])
        return [row for *_, rows in entries for row in rows]

    def attempt_row(self, attempt: Any, origin: datetime, label: str, kind: str = "") -> list:
        return [
            (label, None), (kind, None), (attempt.outcome, STATUS_STYLES.get(attempt.outcome)), ("", None),
            (offset_text(attempt.started_at, origin), None), (offset_text(attempt.ended_at, origin), None),
            (duration_text(seconds_between(attempt.started_at, attempt.ended_at)), None),
            (error_text(attempt.error), "ERROR" if attempt.outcome == "failed" else None),
        ]

    def print_stacks(self, run: Any, steps: list, attempts: list) -> None:
        shown = []
        if run.error and run.error.get("stack"):
            shown.append(("the run", run.error))
        for attempt in attempts:
            if attempt.error and attempt.error.get("stack"):
                shown.append((f"{attempt.step_id or HANDLER_LABEL} attempt #{attempt.number}", attempt.error))
        for step in steps:
            if step.error and step.error.get("stack") and not any(a.step_id == step.step_id for a in attempts):
                shown.append((f"step {step.step_id}", step.error))
        for label, error in shown:
            self.line()
            self.line(f"  Stack of {label}: {error_text(error, None)}", "ERROR")
            for line in str(error["stack"]).rstrip().splitlines():
                self.line(f"    {line}")

    # -- replay, cancel -------------------------------------------------------------------------

    def do_replay(self, options: dict) -> None:
        import django_workflows as wf

        run = self.get_run(options["run_id"])
        from_step = options["from_step"]
        try:
            new = wf.replay(run.pk, from_step=from_step)
        except wf.RunNotFinishedError as exc:
            raise CommandError(f"{exc} (`manage.py workflows cancel {run.pk}`)") from None
        except wf.RunRefusedError as exc:
            raise CommandError(f"replay refused ({exc.name}): {exc}") from None
        except wf.UnknownFunctionError as exc:
            raise CommandError(f"cannot replay run {run.pk}: {exc}") from None
        except ValueError as exc:  # from_step is not a step of the run
            raise CommandError(f"--from-step: {exc}") from None
        if self.as_json:
            self.emit_json({"run_id": new.pk, "replay_of": run.pk, "from_step": from_step, "status": new.status})
            return
        if self.verbosity == 0:  # for scripts: the new run's id alone
            self.stdout.write(str(new.pk))
            return
        where = f" from step {from_step!r}" if from_step else ""
        self.say(f"Replayed run {run.pk}{where} as new run {new.pk} ({new.status}).", "SUCCESS")
        self.say(f"`manage.py workflows show {new.pk}` follows it.")

    def do_cancel(self, options: dict) -> None:
        import django_workflows as wf
        from django_workflows.models import QueueItem

        run = self.get_run(options["run_id"])
        in_hand = QueueItem.objects.using(self.db).filter(run=run).exclude(worker_id="").exists()
        if not wf.cancel(run.pk):
            run.refresh_from_db(using=self.db)
            raise CommandError(
                f"run {run.pk} already ended ({run.status} at {local_text(run.ended_at, zone=True)}): nothing to cancel"
            )
        if self.as_json:
            self.emit_json({"run_id": run.pk, "cancelled": True, "status": "cancelled"})
            return
        self.say(f"Cancelled run {run.pk} ({run.function_id}).", "SUCCESS")
        if in_hand:
            self.say("A worker is running it: the step in progress finishes; no later step starts.")

    # -- pause, resume --------------------------------------------------------------------------

    def do_pause(self, options: dict) -> None:
        self.set_paused(options["function_id"], True)

    def do_resume(self, options: dict) -> None:
        self.set_paused(options["function_id"], False)

    def set_paused(self, function_id: str, paused: bool) -> None:
        import django_workflows as wf
        from django_workflows.models import FunctionState

        function = self.get_function(function_id)
        was = FunctionState.objects.using(self.db).filter(function_id=function.id, paused=True).exists()
        (wf.pause if paused else wf.resume)(function.id)
        if self.as_json:
            self.emit_json({"function": function.id, "paused": paused, "changed": was != paused})
            return
        word = "paused" if paused else "active"
        if was == paused:
            self.say(f"Function {function.id} was already {word}.")
        elif paused:
            self.say(f"Paused {function.id}: its events are stored but start no run; runs in progress go on.", "SUCCESS")
            self.say(f"`manage.py workflows resume {function.id}` starts runs again.")
        else:
            self.say(f"Resumed {function.id}: events from now on start runs.", "SUCCESS")
            self.say(
                f"Events received while it was paused started none: wf.replay_events({function.id!r}, "
                "received_after=...) starts them."
            )

    # -- wake -----------------------------------------------------------------------------------

    def do_wake(self, options: dict) -> None:
        run = self.get_run(options["run_id"])
        woken = wake_run(self.db, run)
        if self.as_json:
            self.emit_json({"run_id": run.pk, **woken})
            return
        for step in woken["steps"]:
            what = "sleep" if step["kind"] == "sleep" else "retry of step"
            self.say(
                f"Woke run {run.pk}: {what} {step['step_id']!r} (due {local_text(step['was_due_at'])}) is due now.",
                "SUCCESS",
            )
        if woken["handler_retry"]:
            self.say(
                f"Woke run {run.pk}: the retry of its handler (due {local_text(woken['handler_retry_due_at'])}) is due now.",
                "SUCCESS",
            )
        self.say("A running worker picks it up at once (`manage.py runworkers`).")

    # -- prune ----------------------------------------------------------------------------------

    def do_prune(self, options: dict) -> None:
        from django_workflows.engine import clock, retention
        from django_workflows.models import Event

        batch = options["batch"]
        if batch < 1:
            raise CommandError(f"--batch must be at least 1, got {batch}")
        # One moment for the whole loop: every batch prunes against the same cutoff, and the
        # events older than it can be counted before and after (prune returns runs only).
        now = clock.now()
        old_events = Event.objects.using(self.db).filter(
            received_at__lt=now - timedelta(days=float(conf.get("RETENTION_DAYS")))
        )
        events_before = remaining = old_events.count()
        runs = batches = 0
        while True:
            deleted = retention.prune(self.db, now=now, batch=batch)
            batches += 1
            runs += deleted
            if deleted:
                if self.verbosity >= 2 and not self.as_json:
                    self.say(f"  batch {batches}: {deleted:,} runs ({runs:,} so far)")
                continue
            left = old_events.count()
            done = not left or left >= remaining  # no old event left, or this batch deleted none
            remaining = min(left, remaining)
            if done:
                break
        events = events_before - remaining
        days = float(conf.get("RETENTION_DAYS"))
        failed_days = float(conf.get("FAILED_RETENTION_DAYS"))
        if self.as_json:
            self.emit_json({
                "runs": runs, "events": events, "batches": batches,
                "retention_days": days, "failed_retention_days": failed_days,
            })
            return
        policy = (
            f"completed and cancelled runs are kept {days:g} days after they end, failed runs {failed_days:g} days "
            "(DJANGO_WORKFLOWS['RETENTION_DAYS'], ['FAILED_RETENTION_DAYS'])"
        )
        if runs or events:
            self.say(f"Pruned {runs:,} runs (with their steps and attempts) and {events:,} events.", "SUCCESS")
        else:
            self.say("Nothing to prune.")
        self.say(f"Retention: {policy}.")


# -- logic that has no engine function of its own ---------------------------------------------------


def unknown_function_message(function_id: str, ids: list[str]) -> str:
    hint = close_matches(function_id, ids)
    message = f"unknown function {function_id!r}: no registered function has that id"
    if hint:
        return f"{message}. Did you mean: {', '.join(hint)}?"
    return f"{message}; `manage.py workflows functions` lists them"


def step_wait_text(step: Any, now: datetime | None = None, *, short: bool = False) -> str:
    """What an unfinished step waits for: ``sleep 'nap' until ...``, ``step 'x': attempt 2 at ...``.

    ``short``: for the step's own row of a timeline (no step id, no error: its attempts show it).
    """
    from django_workflows.engine import clock

    now = now or clock.now()
    when = ""
    if step.scheduled_at is not None:
        gap = (step.scheduled_at - now).total_seconds()
        when = local_text(step.scheduled_at) + (f" (in {duration_text(gap)})" if gap > 0 else " (due)")
    name = "" if short else f"{step.step_id!r} "
    if step.status == "retrying":
        text = f"attempt {step.attempts + 1} at {when or 'once due'}"
        return text if short else f"step {step.step_id!r}: {text}; {error_text(step.error)}"
    if step.kind == "sleep":
        return f"{'' if short else 'sleep ' + name}until {when}"
    if step.kind == "wait_for_event":
        return f"{'' if short else 'wait_for_event ' + name}times out {when}" if when else "waiting for an event"
    if step.kind == "invoke":
        return f"{'' if short else 'invoke ' + name}waits for the invoked run" + (f", times out {when}" if when else "")
    return f"{step.status}"


def wake_run(db: str, run: Any) -> dict:
    """End the run's sleep or retry backoff now: the steps become due, then the run.

    A sleep step or a retrying step is over once ``scheduled_at`` has passed
    (``context.StepTools._sleep`` / ``_run_step``): set it to now. A parallel branch's
    retry is its own queue item; the run's own item is woken with ``lifecycle.wake_run``
    (due now, or re-queued at once by the worker that holds it). A wait_for_event or an
    invoke is not ended: raises ``CommandError`` saying what the run waits for.
    """
    from django_workflows.engine import clock, lifecycle, wakeup
    from django_workflows.models import QueueItem, Step

    if run.status not in ("queued", "running"):
        raise CommandError(f"run {run.pk} already ended ({run.status}): nothing to wake")
    with transaction.atomic(using=db):
        now = clock.now()
        steps = Step.objects.using(db).filter(run=run, scheduled_at__gt=now)
        due = list(
            steps.filter(kind="sleep", status="waiting") | steps.filter(status="retrying")
        )
        branches = set(
            QueueItem.objects.using(db)
            .filter(run=run, kind="branch", step_id__in=[s.step_id for s in due])
            .values_list("step_id", flat=True)
        )
        run_item_due = (
            QueueItem.objects.using(db).filter(run=run, kind="run", worker_id="", due_at__gt=now)
            .values_list("due_at", flat=True).first()
        )
        run.refresh_from_db(using=db, fields=["attempts", "status"])
        handler_retry = bool(run.attempts) and run_item_due is not None and not due
        if not due and not handler_retry:
            raise CommandError(nothing_to_wake(db, run, now))
        Step.objects.using(db).filter(pk__in=[s.pk for s in due]).update(scheduled_at=now)
        if branches:
            QueueItem.objects.using(db).filter(
                run=run, kind="branch", step_id__in=branches, worker_id="", due_at__gt=now
            ).update(due_at=now)
        if handler_retry or any(s.step_id not in branches for s in due):
            lifecycle.wake_run(db, run.pk)
        wakeup.notify_on_commit(db)
    return {
        "woken": True,
        "steps": [
            {"step_id": s.step_id, "kind": s.kind, "status": s.status, "was_due_at": s.scheduled_at}
            for s in due
        ],
        "handler_retry": handler_retry,
        "handler_retry_due_at": run_item_due if handler_retry else None,
    }


def nothing_to_wake(db: str, run: Any, now: datetime) -> str:
    """Why ``wake`` has nothing to end, and what would end the wait instead."""
    from django_workflows.models import QueueItem, Step, Waiter

    prefix = f"run {run.pk} has no sleep or retry backoff to end"
    for step in Step.objects.using(db).filter(run=run, status="waiting").order_by("id"):
        if step.kind == "wait_for_event":
            waiter = Waiter.objects.using(db).filter(run=run, step_id=step.step_id, kind="wait").first()
            event = f" for {waiter.event_name!r}" if waiter else ""
            timeout = f", or let it time out at {local_text(step.scheduled_at, zone=True)}" if step.scheduled_at else ""
            return (
                f"{prefix}: its step {step.step_id!r} waits{event}, and wake does not end a wait_for_event "
                f"(it would resume with no event); send the event"
                + (f" (`manage.py workflows send {waiter.event_name} --data ...`)" if waiter else "")
                + timeout
            )
        if step.kind == "invoke":
            return f"{prefix}: its step {step.step_id!r} waits for the run it invoked; wake that run instead"
    if run.status_detail:
        return f"{prefix}: it is {run.status} ({run.status_detail}); wake ends only sleeps and retry backoffs"
    due = (
        QueueItem.objects.using(db).filter(run=run, kind="run").exclude(due_at=None)
        .order_by("due_at").values_list("due_at", flat=True).first()
    )
    if due is not None and due > now:
        return (
            f"{prefix}: it is {run.status} and starts at {local_text(due, zone=True)} (its event's ts, "
            "or its flow control, delays it); wake ends only sleeps and retry backoffs"
        )
    return f"{prefix}: it is {run.status} and due now; a worker runs it (`manage.py runworkers`)"


def run_summary(run: Any) -> dict:
    return {
        "id": run.pk,
        "function_id": run.function_id,
        "status": run.status,
        "event_id": run.event_id,
        "event_name": run.event.name if run.event else None,
        "batch_event_ids": run.batch_event_ids,
        "replay_of": run.replay_of_id,
        "parent_run": run.parent_run_id,
        "parent_step_id": run.parent_step_id or None,
        "queued_at": run.queued_at,
        "started_at": run.started_at,
        "ended_at": run.ended_at,
        "duration_seconds": seconds_between(run.started_at, run.ended_at),
        "attempts": run.attempts,
        "output": run.output,
        "error": run.error,
    }


def event_json(event: Any) -> dict | None:
    if event is None:
        return None
    return {
        "id": event.pk, "name": event.name, "data": event.data, "ts": event.ts,
        "received_at": event.received_at, "sender_id": event.dedup_id or None,
    }


def step_json(step: Any, origin: datetime) -> dict:
    return {
        "step_id": step.step_id,
        "kind": step.kind,
        "status": step.status,
        "attempts": step.attempts,
        "started_at": step.started_at,
        "ended_at": step.ended_at,
        "scheduled_at": step.scheduled_at,
        "start_offset_seconds": seconds_between(origin, step.started_at),
        "end_offset_seconds": seconds_between(origin, step.ended_at),
        "duration_seconds": seconds_between(step.started_at, step.ended_at),
        "output": step.output,
        "error": step.error,
    }


def attempt_json(attempt: Any, origin: datetime) -> dict:
    return {
        "step_id": attempt.step_id,
        "number": attempt.number,
        "outcome": attempt.outcome,
        "started_at": attempt.started_at,
        "ended_at": attempt.ended_at,
        "start_offset_seconds": seconds_between(origin, attempt.started_at),
        "end_offset_seconds": seconds_between(origin, attempt.ended_at),
        "duration_seconds": seconds_between(attempt.started_at, attempt.ended_at),
        "error": attempt.error,
        "worker_id": attempt.worker_id,
    }
