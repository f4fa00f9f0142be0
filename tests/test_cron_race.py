"""Several processes racing to fire the same cron schedule: each tick starts exactly one run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from django.db import connection

import django_workflows as wf
from django_workflows.engine import cron
from django_workflows.models import CronSchedule, Run

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = 4
TICKS = 30

# Each racer registers the same cron function, then, in lock-step rounds on the wall clock,
# fires tick i of the schedule (as a worker's tick would at that moment) with every other racer.
RACER = """
import os, sys, time
from datetime import timedelta
import django
django.setup()
import django_workflows as wf
from django_workflows.engine import cron
from django_workflows.models import CronSchedule

@wf.function(id="race-cron", trigger=wf.TriggerCron("*/5 * * * *"))
def race_cron(ctx):
    return None

start_at, ticks = float(sys.argv[1]), int(sys.argv[2])
schedule = CronSchedule.objects.get(function_id="race-cron")
trigger = race_cron.cron_triggers[0]
tick = cron.next_tick(trigger, schedule.created_at)
fired = 0
for i in range(ticks):
    time.sleep(max(0.0, start_at + i * 0.15 - time.time()))
    fired += cron.fire_schedule("default", schedule.pk, tick + timedelta(seconds=1)) is not None
    tick = cron.next_tick(trigger, tick)
print(fired)
"""


@pytest.mark.django_db(transaction=True)
def test_racing_processes_fire_each_tick_exactly_once():
    @wf.function(id="race-cron", trigger=wf.TriggerCron("*/5 * * * *"))
    def race_cron(ctx):
        return None

    cron.sync_schedules("default")
    assert CronSchedule.objects.filter(function_id="race-cron").exists()
    settings = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{settings['USER']}@{settings['HOST']}:{settings['PORT'] or 5432}/{settings['NAME']}",
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "PYTHONPATH": str(ROOT),
        "WORKFLOWS_LOG_LEVEL": "WARNING",
    }
    start_at = time.time() + 4  # every racer has imported Django by then
    racers = [
        subprocess.Popen([sys.executable, "-c", RACER, str(start_at), str(TICKS)], env=env, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(PROCESSES)
    ]
    outputs = [racer.communicate(timeout=60) for racer in racers]
    for racer, (_, err) in zip(racers, outputs, strict=True):
        assert racer.returncode == 0, err
    fired = [int(out.strip()) for out, _ in outputs]
    runs = Run.objects.filter(function_id="race-cron")
    per_tick = Counter(runs.values_list("event__data__scheduled_for", flat=True))
    assert sum(fired) == TICKS
    assert len(per_tick) == TICKS and set(per_tick.values()) == {1}
    assert sum(1 for f in fired if f) > 1, f"one racer won every tick ({fired}): the race was not a race"
