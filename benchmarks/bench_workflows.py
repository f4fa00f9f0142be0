"""The benchmark's functions: imported by the worker processes bench_engine.py starts."""

from __future__ import annotations

import time

import django_workflows as wf

NOOP1_EVENT = "bench.noop1"
NOOP10_EVENT = "bench.noop10"
LATENCY_EVENT = "bench.latency"
STEPS_PER_RUN = 10


def noop() -> None:
    return None


def started_at(_index: int) -> float:
    return time.time()  # when the step body starts, for event-to-first-step latency


@wf.function(id="bench-noop-1", trigger=NOOP1_EVENT, retries=0)
def noop_1(ctx: wf.Context) -> None:
    ctx.step.run("noop", noop)


@wf.function(id="bench-noop-10", trigger=NOOP10_EVENT, retries=0)
def noop_10(ctx: wf.Context) -> None:
    for _ in range(STEPS_PER_RUN):
        ctx.step.run("noop", noop)  # noop, noop:1, ... noop:9


@wf.function(id="bench-latency", trigger=LATENCY_EVENT, retries=0)
def latency(ctx: wf.Context) -> float:
    return ctx.step.run("stamp", started_at, ctx.event.data["i"])


PARALLEL_EVENT = "bench.parallel"  # data: {"branches": n, "seconds": each branch's wait}


def call_api(seconds: float) -> float:
    time.sleep(seconds)  # stands in for an HTTP call: I/O, not CPU
    return seconds


@wf.function(id="bench-parallel", trigger=PARALLEL_EVENT, retries=0)
def parallel_fan_out(ctx: wf.Context) -> int:
    seconds = float(ctx.event.data["seconds"])
    results = ctx.group.parallel(
        [lambda: ctx.step.run("call", call_api, seconds) for _ in range(int(ctx.event.data["branches"]))]
    )
    return len(results)
