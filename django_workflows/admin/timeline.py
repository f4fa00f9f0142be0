"""The geometry of a run's timeline, as pure functions: no database, no request, no HTML.

:func:`build` takes a run, its steps and its attempts (model instances or anything with
the same attributes) and returns rows of bars on one shared time axis, with ``x`` and
``width`` in percent of the axis, labels and tooltip texts. The admin's run page draws
them as inline SVG; tests assert on them directly.

The axis runs from the moment the run was queued to the moment it ended (or ``now``, or the
due time of a sleep, wait or retry still ahead, whichever is last), so the gaps between
steps, the backoff between attempts and branches that ran at the same time (overlapping
bars on separate rows) show as they happened.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from ..durations import format_duration  # noqa: F401  (used by the run page's template context)

# A bar this narrow (percent of the axis) stays visible even for a step of a millisecond
# in a run of days.
MIN_WIDTH = 0.4
HANDLER = ""  # Attempt.step_id of the handler's code between steps

WAITING_KINDS = frozenset({"sleep", "wait_for_event", "invoke"})
FINISHED = frozenset({"completed", "failed", "cancelled"})

# Tick spacings to choose from: the first that puts at most MAX_TICKS ticks on the axis.
MAX_TICKS = 6
_TICK_STEPS = [
    timedelta(milliseconds=n) for n in (1, 2, 5, 10, 20, 50, 100, 200, 500)
] + [timedelta(seconds=n) for n in (1, 2, 5, 10, 15, 30)] + [
    timedelta(minutes=n) for n in (1, 2, 5, 10, 15, 30)
] + [timedelta(hours=n) for n in (1, 2, 3, 6, 12)] + [
    timedelta(days=n) for n in (1, 2, 7, 14, 30, 60, 90, 180, 365)
]


@dataclass
class Bar:
    """One bar on a row: an attempt, a sleep or wait, the run itself, or time still ahead.

    ``kind``: ``attempt`` (one execution of code), ``wait`` (a sleep, a wait for an event or
    an invoke: drawn hollow), ``queued`` (the run before it started: hollow), ``run`` (the
    run from start to end), ``pending`` (until a retry or a due time still ahead: hollow,
    dashed), ``step`` (a step recorded without attempt history).
    ``outcome`` is the colour: completed, failed, retrying, running, waiting, queued,
    cancelled, timed-out, pending.
    """

    kind: str
    outcome: str
    start: datetime
    end: datetime
    x: float
    width: float
    label: str
    tooltip: str
    hollow: bool = False
    dashed: bool = False
    number: int | None = None  # the attempt's number (1 for the first)
    error: dict | None = None

    @property
    def duration(self) -> timedelta:
        return self.end - self.start


@dataclass
class Row:
    """One line of the timeline: the run, the handler between steps, or one step."""

    key: str  # "run", "handler", or the step id
    label: str
    kind: str  # "run", "handler", or the step's kind
    status: str
    bars: list[Bar] = field(default_factory=list)
    # A thin line from the step's start to its end, under its attempt bars (x1, x2).
    track: tuple[float, float] | None = None
    step: Any = None
    attempts: list[Any] = field(default_factory=list)
    note: str = ""
    kept: bool = False  # a step whose output a replay from a later step kept

    @property
    def is_step(self) -> bool:
        return self.step is not None


@dataclass
class Tick:
    x: float
    label: str


@dataclass
class Timeline:
    start: datetime
    end: datetime
    rows: list[Row]
    ticks: list[Tick]
    now_x: float | None = None  # where "now" is, for a run that has not ended

    @property
    def span(self) -> timedelta:
        return self.end - self.start

    def row(self, key: str) -> Row:
        for row in self.rows:
            if row.key == key:
                return row
        raise KeyError(key)


# -- formatting ----------------------------------------------------------------------------


def _offset_label(value: timedelta) -> str:
    """A tick's label: the time since the axis' start, in its largest whole units."""
    seconds = value.total_seconds()
    if seconds == 0:
        return "0"
    if seconds < 1:
        return f"+{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"+{seconds:g}s"
    parts = []
    whole = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "+" + "".join(parts[:2])


def _clock(moment: datetime) -> str:
    local = timezone.localtime(moment) if timezone.is_aware(moment) else moment
    return local.strftime("%Y-%m-%d %H:%M:%S.") + f"{local.microsecond // 1000:03d}"


def _error_line(error: dict | None) -> str:
    if not error:
        return ""
    name, message = error.get("name") or "Error", error.get("message") or ""
    return f"{name}: {message}" if message else str(name)


# -- geometry ------------------------------------------------------------------------------


class _Axis:
    def __init__(self, start: datetime, end: datetime) -> None:
        self.start = start
        self.end = end if end > start else start + timedelta(milliseconds=1)
        self.total = (self.end - self.start).total_seconds()

    def x(self, moment: datetime) -> float:
        return min(100.0, max(0.0, (moment - self.start).total_seconds() / self.total * 100))

    def place(self, start: datetime, end: datetime) -> tuple[float, float]:
        """``(x, width)`` in percent, at least MIN_WIDTH wide, never past the right edge."""
        x = self.x(start)
        width = max(self.x(max(start, end)) - x, MIN_WIDTH)
        if x + width > 100:
            x = max(0.0, 100 - width)
        return round(x, 3), round(width, 3)

    def ticks(self) -> list[Tick]:
        span = self.end - self.start
        step = next((s for s in _TICK_STEPS if span / s <= MAX_TICKS), None)
        if step is None:
            step = span / MAX_TICKS
        ticks = []
        offset = timedelta(0)
        while offset <= span:
            ticks.append(Tick(x=round(self.x(self.start + offset), 3), label=_offset_label(offset)))
            offset += step
        return ticks


def _is_kept(run: Any, step: Any, attempts: Sequence[Any]) -> bool:
    """A step copied from the replayed run (``replay(from_step=...)`` keeps earlier outputs):
    recorded before this run was queued, with no attempt of its own here."""
    return bool(
        getattr(run, "replay_of_id", None)
        and not attempts
        and step.started_at is not None
        and step.started_at < run.queued_at
    )


def build(
    run: Any,
    steps: Iterable[Any],
    attempts: Iterable[Any],
    *,
    now: datetime,
) -> Timeline:
    """The timeline of ``run``: a row for the run, one for the handler's attempts between
    steps (if any), then one per step in the order they were recorded (``steps`` ordered
    by id), and one for attempts of a step that has no step row (yet)."""
    steps = list(steps)
    attempts = list(attempts)
    by_step: dict[str, list[Any]] = {}
    for attempt in attempts:
        by_step.setdefault(attempt.step_id, []).append(attempt)
    kept = {s.step_id for s in steps if _is_kept(run, s, by_step.get(s.step_id, []))}
    finished = run.status in FINISHED

    # The axis: from the earliest moment shown to the latest.
    moments = [run.queued_at]
    for moment in (run.started_at, run.ended_at):
        if moment is not None:
            moments.append(moment)
    for step in steps:
        if step.step_id in kept:
            continue
        moments += [m for m in (step.started_at, step.ended_at) if m is not None]
        if step.ended_at is None and step.scheduled_at is not None:
            moments.append(step.scheduled_at)  # a sleep's end, a wait's timeout, a retry
    for attempt in attempts:
        moments += [attempt.started_at, attempt.ended_at]
    if not finished:
        moments.append(now)
    axis = _Axis(min(moments), max(moments))
    live_end = run.ended_at if finished and run.ended_at else now

    rows = [_run_row(run, axis, live_end)]
    if by_step.get(HANDLER):
        rows.append(_handler_row(by_step[HANDLER], axis))
    known = set()
    for step in steps:
        known.add(step.step_id)
        rows.append(_step_row(run, step, by_step.get(step.step_id, []), axis, now, step.step_id in kept))
    for step_id, orphans in by_step.items():
        if step_id != HANDLER and step_id not in known:
            rows.append(_orphan_row(step_id, orphans, axis))
    return Timeline(
        start=axis.start,
        end=axis.end,
        rows=rows,
        ticks=axis.ticks(),
        now_x=None if finished else round(axis.x(now), 3),
    )


def _bar(axis: _Axis, kind: str, outcome: str, start: datetime, end: datetime, label: str, tooltip: str, **extra: Any) -> Bar:
    x, width = axis.place(start, end)
    return Bar(kind=kind, outcome=outcome, start=start, end=end, x=x, width=width, label=label, tooltip=tooltip, **extra)


def _attempt_bar(axis: _Axis, name: str, attempt: Any) -> Bar:
    outcome = attempt.outcome
    lines = [
        f"{name}: attempt {attempt.number}, {outcome}",
        f"{_clock(attempt.started_at)} for {format_duration(attempt.ended_at - attempt.started_at)}",
    ]
    if attempt.error:
        lines.append(_error_line(attempt.error))
    if getattr(attempt, "worker_id", ""):
        lines.append(f"worker {attempt.worker_id}")
    return _bar(
        axis, "attempt", outcome, attempt.started_at, attempt.ended_at, f"#{attempt.number}",
        "\n".join(lines), number=attempt.number, error=attempt.error,
    )


def _run_row(run: Any, axis: _Axis, live_end: datetime) -> Row:
    row = Row(key="run", label="run", kind="run", status=run.status)
    status = run.status
    if run.started_at is None:
        end = run.ended_at or live_end
        label = "queued" if status == "queued" else f"{status} before it started"
        row.bars.append(
            _bar(axis, "queued", "queued" if status == "queued" else status, run.queued_at, end, label,
                 f"queued {_clock(run.queued_at)}, {label} ({format_duration(end - run.queued_at)})",
                 hollow=True)
        )
        return row
    if run.started_at > run.queued_at:
        row.bars.append(
            _bar(axis, "queued", "queued", run.queued_at, run.started_at, "queued",
                 f"queued {_clock(run.queued_at)} for {format_duration(run.started_at - run.queued_at)}",
                 hollow=True)
        )
    end = run.ended_at or live_end
    outcome = status if status in FINISHED else "running"
    tooltip = f"run {status}: started {_clock(run.started_at)}, " + (
        f"ended after {format_duration(end - run.started_at)}" if run.ended_at else
        f"running for {format_duration(end - run.started_at)}"
    )
    if run.error:
        tooltip += "\n" + _error_line(run.error)
    row.bars.append(_bar(axis, "run", outcome, run.started_at, end, status, tooltip, error=run.error))
    return row


def _handler_row(attempts: list[Any], axis: _Axis) -> Row:
    last = attempts[-1].outcome
    row = Row(
        key="handler", label="handler (between steps)", kind="handler",
        status="failed" if last == "failed" else ("retrying" if last == "retrying" else "completed"),
        attempts=attempts,
    )
    row.bars = [_attempt_bar(axis, "handler", a) for a in attempts]
    return row


def _orphan_row(step_id: str, attempts: list[Any], axis: _Axis) -> Row:
    row = Row(key=step_id, label=step_id, kind="run", status=attempts[-1].outcome, attempts=attempts)
    row.bars = [_attempt_bar(axis, step_id, a) for a in attempts]
    row.note = "attempts of a step not recorded (yet)"
    return row


def _wait_outcome(step: Any) -> tuple[str, str]:
    """Colour and label of a sleep, wait or invoke."""
    status = step.status
    if status == "waiting":
        return "waiting", {"sleep": "sleeping", "wait_for_event": "waiting for event", "invoke": "waiting for run"}[step.kind]
    if status == "completed":
        if step.kind == "wait_for_event":
            if step.output is None:
                return "timed-out", "timed out"
            name = step.output.get("name") if isinstance(step.output, dict) else None
            return "completed", f"received {name}" if name else "event received"
        return "completed", {"sleep": "slept", "invoke": "run returned"}[step.kind]
    return status, status


def _step_row(run: Any, step: Any, attempts: list[Any], axis: _Axis, now: datetime, kept: bool) -> Row:
    row = Row(
        key=step.step_id, label=step.step_id, kind=step.kind, status=step.status,
        step=step, attempts=attempts, kept=kept,
    )
    if kept:
        row.note = "output kept from the replayed run"
        return row
    if step.started_at is None:
        return row
    if step.kind in WAITING_KINDS:
        outcome, label = _wait_outcome(step)
        if step.ended_at is not None:
            end, dashed = step.ended_at, False
        elif step.scheduled_at is not None:
            end, dashed = step.scheduled_at, True  # until its due time (sleep's end, timeout)
        else:
            end, dashed = now, True  # an invoke without timeout: until the invoked run ends
        tip = f"{step.step_id} ({step.kind.replace('_', ' ')}): {label}\nfrom {_clock(step.started_at)} "
        tip += f"for {format_duration(end - step.started_at)}"
        if step.ended_at is None and step.scheduled_at is not None:
            tip += f"\ndue {_clock(step.scheduled_at)}"
        if step.error:
            tip += "\n" + _error_line(step.error)
        row.bars.append(
            _bar(axis, "wait", outcome, step.started_at, end, label, tip, hollow=True, dashed=dashed, error=step.error)
        )
        row.bars += [_attempt_bar(axis, step.step_id, a) for a in attempts]
        return row

    # Code steps (run, send_event): a bar per attempt on a thin line from start to end.
    bars = [_attempt_bar(axis, step.step_id, a) for a in attempts]
    last_end = attempts[-1].ended_at if attempts else None
    if not attempts:
        # Recorded without attempt history (before it was kept): one bar for the step.
        end = step.ended_at or last_end or (now if step.status not in FINISHED else step.started_at)
        tip = f"{step.step_id}: {step.status}, {step.attempts} attempt(s)\nfrom {_clock(step.started_at)} for {format_duration(end - step.started_at)}"
        if step.error:
            tip += "\n" + _error_line(step.error)
        bars.append(_bar(axis, "step", step.status, step.started_at, end, step.status, tip, error=step.error))
    if step.status == "retrying" and step.scheduled_at is not None:
        begin = last_end or step.started_at
        bars.append(
            _bar(axis, "pending", "pending", begin, max(begin, step.scheduled_at), "next attempt",
                 f"{step.step_id}: next attempt due {_clock(step.scheduled_at)}", hollow=True, dashed=True)
        )
    track_end = step.ended_at or (bars[-1].end if bars else step.started_at)
    x, width = axis.place(step.started_at, track_end)
    row.track = (x, round(x + width, 3))
    row.bars = bars
    return row
