"""Durations ("30s", "3 hours", "1 hour 30 minutes") and moments for sleep_until."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.db import connection
from django.utils import timezone

import django_workflows as wf
from django_workflows.durations import parse_duration, parse_moment
from django_workflows.engine import store
from django_workflows.models import Run
from django_workflows.testing import drain

UTC = dt_timezone.utc
PLUS_TWO = dt_timezone(timedelta(hours=2))
MINUS_530 = dt_timezone(-timedelta(hours=5, minutes=30))

# -- parse_duration: units -------------------------------------------------------------------------

SPELLINGS = {
    timedelta(milliseconds=1): ["ms", "msec", "msecs", "millisecond", "milliseconds"],
    timedelta(seconds=1): ["s", "sec", "secs", "second", "seconds"],
    timedelta(minutes=1): ["m", "min", "mins", "minute", "minutes"],
    timedelta(hours=1): ["h", "hr", "hrs", "hour", "hours"],
    timedelta(days=1): ["d", "day", "days"],
    timedelta(weeks=1): ["w", "wk", "wks", "week", "weeks"],
    timedelta(days=365.25): ["y", "yr", "yrs", "year", "years"],
}
UNIT_CASES = [(unit, length) for length, units in SPELLINGS.items() for unit in units]


@pytest.mark.parametrize("unit, length", UNIT_CASES, ids=[unit for unit, _ in UNIT_CASES])
def test_every_unit_spelling_with_and_without_a_space_and_in_any_case(unit, length):
    for text in (f"3{unit}", f"3 {unit}", f"3{unit.upper()}", f"3 {unit.title()}", f"  3  {unit}  "):
        assert parse_duration(text) == 3 * length, text


@pytest.mark.parametrize(
    "text, expected",
    [
        # The forms of Inngest's examples (read there by the `ms` npm library).
        ("3 hours", timedelta(hours=3)),
        ("2 days", timedelta(days=2)),
        ("1 week", timedelta(weeks=1)),
        ("2 weeks", timedelta(weeks=2)),
        ("30 seconds", timedelta(seconds=30)),
        ("1 minute", timedelta(minutes=1)),
        ("1.5 hours", timedelta(minutes=90)),
        ("500 milliseconds", timedelta(milliseconds=500)),
        ("1 year", timedelta(days=365.25)),
        # Compact forms.
        ("30s", timedelta(seconds=30)),
        ("2d", timedelta(days=2)),
        ("250ms", timedelta(milliseconds=250)),
        ("1w", timedelta(weeks=1)),
        ("0s", timedelta(0)),
        (".5h", timedelta(minutes=30)),
        # Several parts add up.
        ("1h30m", timedelta(minutes=90)),
        ("1 hour 30 minutes", timedelta(minutes=90)),
        ("1hr 30min", timedelta(minutes=90)),
        ("2 days 3 hours 4 minutes 5 seconds", timedelta(days=2, hours=3, minutes=4, seconds=5)),
        ("1d12h", timedelta(hours=36)),
        ("1m500ms", timedelta(seconds=60.5)),  # "m" then "ms": minutes, then milliseconds
        ("1 Week 1 DAY", timedelta(days=8)),
    ],
)
def test_spelled_out_compact_and_combined_durations(text, expected):
    assert parse_duration(text) == expected


def test_a_timedelta_is_returned_as_it_is():
    assert parse_duration(timedelta(minutes=5)) == timedelta(minutes=5)


# -- parse_duration: refusals --------------------------------------------------------------------


@pytest.mark.parametrize("bare", [5, 5.0, "5", " 5 ", "2.5", 0])
def test_a_bare_number_is_refused_and_the_error_says_to_add_a_unit(bare):
    with pytest.raises(wf.WorkflowDefinitionError, match="bare number") as info:
        parse_duration(bare, what="sleep 'nap' duration")
    message = str(info.value)
    assert message.startswith("sleep 'nap' duration:")
    assert "unit" in message
    assert f'"{str(bare).strip()}s"' in message  # a suggestion to copy


@pytest.mark.parametrize("negative", ["-5s", "-1 hour", " -2d", timedelta(seconds=-1)])
def test_a_negative_duration_is_refused(negative):
    with pytest.raises(wf.WorkflowDefinitionError, match="must not be negative"):
        parse_duration(negative)


@pytest.mark.parametrize(
    "garbage",
    ["", "   ", "soon", "h1", "1h30", "1 hour and 30 minutes", "1,5h", "1.5.5h", "5 parsecs", "3 months", "1e3s"],
)
def test_unreadable_text_is_refused_with_the_accepted_units_and_examples(garbage):
    with pytest.raises(wf.WorkflowDefinitionError) as info:
        parse_duration(garbage, what="timeout")
    message = str(info.value)
    assert message.startswith("timeout:")
    assert repr(garbage) in message
    for unit in ("ms", "s", "m (minutes)", "h", "d", "w", "y", "hours", "days", "weeks", "years"):
        assert unit in message
    assert '"1h30m"' in message and '"3 hours"' in message


def test_an_unknown_unit_is_named():
    with pytest.raises(wf.WorkflowDefinitionError, match="unknown unit 'parsecs'"):
        parse_duration("5 parsecs")


@pytest.mark.parametrize("wrong", [None, [1], {"hours": 3}, b"3h"])
def test_other_types_are_refused_naming_the_type(wrong):
    with pytest.raises(wf.WorkflowDefinitionError, match=type(wrong).__name__):
        parse_duration(wrong)


def test_an_absurdly_long_duration_is_refused():
    with pytest.raises(wf.WorkflowDefinitionError, match="too long"):
        parse_duration("99999999 years")


# -- parse_moment --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2024-01-01T10:00:00Z", datetime(2024, 1, 1, 10, tzinfo=UTC)),
        ("2024-01-01T10:00:00.123Z", datetime(2024, 1, 1, 10, 0, 0, 123000, tzinfo=UTC)),
        ("2024-01-01T10:00:00+02:00", datetime(2024, 1, 1, 10, tzinfo=PLUS_TWO)),
        ("2024-01-01T10:00:00.5-05:30", datetime(2024, 1, 1, 10, 0, 0, 500000, tzinfo=MINUS_530)),
        ("2024-01-01 10:00+00:00", datetime(2024, 1, 1, 10, tzinfo=UTC)),
        (" 2024-01-01T10:00:00z ", datetime(2024, 1, 1, 10, tzinfo=UTC)),
        # A date alone is midnight UTC, as JavaScript's `new Date("2024-01-01")`.
        ("2024-01-01", datetime(2024, 1, 1, tzinfo=UTC)),
        (date(2024, 1, 1), datetime(2024, 1, 1, tzinfo=UTC)),
        (datetime(2024, 1, 1, 10, tzinfo=PLUS_TWO), datetime(2024, 1, 1, 10, tzinfo=PLUS_TWO)),
    ],
)
def test_moments_that_are_read(value, expected):
    moment = parse_moment(value, what="sleep_until 'until'")
    assert moment == expected
    assert moment.utcoffset() == expected.utcoffset()


def test_a_date_becomes_an_aware_datetime_not_a_date():
    moment = parse_moment("2024-01-01", what="x")
    assert type(moment) is datetime and moment.tzinfo is not None


@pytest.mark.parametrize("naive", [datetime(2030, 1, 1, 12), "2030-01-01T12:00:00", "2030-01-01 12:00"])
def test_a_time_without_a_timezone_is_refused_with_the_fix(naive):
    with pytest.raises(wf.WorkflowDefinitionError, match="has no timezone") as info:
        parse_moment(naive, what="sleep_until 'until'")
    message = str(info.value)
    assert message.startswith("sleep_until 'until':")
    if isinstance(naive, str):
        assert '"Z"' in message and "offset" in message
    else:
        assert "aware datetime" in message


@pytest.mark.parametrize("garbage", ["next tuesday", "", "2024-13-01", "2024-01-01T25:00Z", "3 days"])
def test_an_unreadable_moment_string_is_refused_with_an_example(garbage):
    with pytest.raises(wf.WorkflowDefinitionError, match="not an ISO 8601 datetime") as info:
        parse_moment(garbage, what="sleep_until 'until'")
    assert '"2024-01-01T10:00:00Z"' in str(info.value)


@pytest.mark.parametrize("wrong", [None, 1704067200, 1.5, ["2024-01-01"], timedelta(days=1)])
def test_other_moment_types_are_refused_naming_the_type(wrong):
    with pytest.raises(wf.WorkflowDefinitionError, match=f"got {type(wrong).__name__}"):
        parse_moment(wrong, what="sleep_until 'until'")


# -- through the engine --------------------------------------------------------------------------


@pytest.mark.django_db
def test_sleep_until_a_date_only_string_and_a_z_string_through_the_engine():
    day = (timezone.now() + timedelta(days=3)).date()
    at_z = f"{day + timedelta(days=1)}T10:30:00.250Z"

    @wf.function(id="du-until", trigger="du.go")
    def fn(ctx):
        ctx.step.sleep_until("midnight", day.isoformat())
        ctx.step.sleep_until("half-past-ten", at_z)
        ctx.step.sleep("spelled-out", "1 hour 30 minutes")
        return "woke"

    wf.send("du.go")
    drain()
    run = Run.objects.get(function_id="du-until")
    assert run.status == "running"
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    assert run.steps.get(step_id="midnight").scheduled_at == midnight

    drain(advance_time=True)
    run.refresh_from_db()
    assert run.status == "completed" and run.output == "woke"
    steps = {s.step_id: s for s in run.steps.all()}
    ten_thirty = midnight + timedelta(days=1, hours=10, minutes=30, milliseconds=250)
    assert steps["half-past-ten"].scheduled_at == ten_thirty
    assert steps["spelled-out"].scheduled_at >= ten_thirty + timedelta(minutes=90)
    assert all(s.status == "completed" for s in steps.values())


@pytest.mark.django_db
def test_sleep_until_a_naive_string_fails_the_run_with_the_fix():
    @wf.function(id="du-naive", trigger="du.go", retries=0)
    def fn(ctx):
        ctx.step.sleep_until("until", "2030-01-01T12:00:00")

    wf.send("du.go")
    drain(advance_time=True)
    run = Run.objects.get(function_id="du-naive")
    assert run.status == "failed"
    assert "sleep_until 'until'" in run.error["message"]
    assert 'add "Z"' in run.error["message"]


# -- the run loader's timestamps (PostgreSQL's json) -----------------------------------------------


@pytest.mark.parametrize("digits", range(1, 7))
@pytest.mark.parametrize("offset, tz", [("+00:00", UTC), ("+02:00", PLUS_TWO)])
def test_the_run_loader_reads_fractions_of_any_length(digits, offset, tz):
    """PostgreSQL's json drops a fraction's trailing zeros ("...00.12+00:00"): Python 3.10's
    fromisoformat refused such strings, which is why the package needs Python 3.11."""
    fraction = "123456"[:digits]
    moment = store._moment(f"2024-01-01T00:00:00.{fraction}{offset}")
    assert moment == datetime(2024, 1, 1, 0, 0, 0, int(fraction.ljust(6, "0")), tzinfo=tz)
    assert store._moment(f"2024-01-01T00:00:00{offset}") == datetime(2024, 1, 1, tzinfo=tz)
    assert store._moment(None) is None and store._moment("") is None


@pytest.mark.postgres
@pytest.mark.django_db
@pytest.mark.parametrize("microseconds", [100000, 120000, 123000, 123400, 123450, 123456, 0])
def test_the_run_loader_reads_what_postgresql_json_writes(microseconds):
    written = datetime(2024, 1, 1, 0, 0, 0, microseconds, tzinfo=UTC)
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_json(%s::timestamptz)::text", [written])
        text = cursor.fetchone()[0]
    assert store._moment(text.strip('"')) == written
