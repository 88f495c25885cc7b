"""Tuple-space figures: indexed in/out (equality; range or prefix) with a million tuples present,
declaring a million lazy agents, and draining 100,000 tasks through a lane served by lazily
materialised agents.

    .venv/bin/python bench/tuples.py

Prints `tuple_ops_per_s`, `tuple_ops_per_s_range` (with the first queries' index build and
the event loop's largest gap meanwhile), `tuple_ops_per_s_wide_range`, `batch_declare_s`,
`batch_declare_mb` and `lane_drain_s`, one JSON object per line. In memory (no store): these
measure the space, not SQLite.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time
import tracemalloc
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

from _common import emit
from yool.kernel.accounts import Account, Budget
from yool.policy import RuntimePolicy
from yool.tuplespace import Template, TupleSpace
from yool.tuplespace.batch import Agent, Batch

PRESENT = 1_000_000
OPS = 200_000
TASKS = 100_000


def tuple_ops() -> None:
    space = TupleSpace()
    for i in range(PRESENT):
        space.out_nowait("jobs", ["job", i, i * 2])
    gc.collect()
    inp, out = space.inp, space.out_nowait
    half = OPS // 2
    t0 = time.perf_counter()
    for k in range(half):
        got = inp("jobs", Template(["job", k, None]))
        assert got is not None
        out("jobs", ["job", PRESENT + k, k])
    took = time.perf_counter() - t0
    assert space.count("jobs") == PRESENT
    emit("tuple_ops_per_s", OPS / took, "ops/s", present=PRESENT, ops=OPS, template="eq,eq,any")


async def _first_queries(space: TupleSpace) -> tuple[float, float, float]:
    """The first range and prefix queries (they build their indexes off the hot path), with a
    1 ms ticker on the loop: (seconds taken, the ticker's largest gap in wall and CPU time)."""
    loop = asyncio.get_running_loop()
    gaps: list[tuple[float, float]] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        wall, cpu = loop.time(), time.thread_time()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now_wall, now_cpu = loop.time(), time.thread_time()
            gaps.append((now_wall - wall, now_cpu - cpu))
            wall, cpu = now_wall, now_cpu

    tick = asyncio.ensure_future(ticker())
    t0 = time.perf_counter()
    got = await space.in_("jobs", [None, {"gte": 0, "lt": 1}, None])
    assert got == ("job", 0, "p/0000000")
    assert await space.in_("jobs", [None, None, {"prefix": "p/0000001"}]) is not None
    took = time.perf_counter() - t0
    stop.set()
    await tick
    return took, max(g[0] for g in gaps), max(g[1] for g in gaps)


def tuple_ops_range() -> None:
    """in/out where every `in` has no equality field: a range or a prefix template."""
    space = TupleSpace()
    for i in range(PRESENT):
        space.out_nowait("jobs", ["job", i, f"p/{i:07d}"])
    gc.collect()
    inp, out = space.inp, space.out_nowait
    build, gap_wall, gap_cpu = asyncio.run(_first_queries(space))
    out("jobs", ["job", PRESENT, f"p/{PRESENT:07d}"])
    out("jobs", ["job", PRESENT + 1, f"p/{PRESENT + 1:07d}"])
    half = OPS // 2
    examined = space.examined
    t0 = time.perf_counter()
    for k in range(2, half + 2):
        if k % 2 == 0:
            got = inp("jobs", Template([None, {"gte": k, "lt": k + 2}, None]))
        else:
            got = inp("jobs", Template([None, None, {"prefix": f"p/{k:07d}"}]))
        assert got is not None and got[1] == k
        n = PRESENT + k
        out("jobs", ["job", n, f"p/{n:07d}"])
    took = time.perf_counter() - t0
    assert space.count("jobs") == PRESENT
    emit(
        "tuple_ops_per_s_range",
        OPS / took,
        "ops/s",
        present=PRESENT,
        ops=OPS,
        template="any,range,any | any,any,prefix",
        examined_per_in=round((space.examined - examined) / half, 2),
        index_build_s=round(build, 2),
        build_max_loop_gap_ms=round(gap_wall * 1000, 1),
        build_max_loop_gap_cpu_ms=round(gap_cpu * 1000, 1),
    )
    # A wide range (every tuple fits): `in` still takes its oldest looking at one candidate.
    wide = Template([None, {"gte": 0}, None])
    examined = space.examined
    t0 = time.perf_counter()
    for k in range(half):
        got = inp("jobs", wide)
        assert got is not None
        n = 2 * PRESENT + k
        out("jobs", ["job", n, f"p/{n:07d}"])
    took = time.perf_counter() - t0
    emit(
        "tuple_ops_per_s_wide_range",
        OPS / took,
        "ops/s",
        present=PRESENT,
        ops=OPS,
        template="any,{gte:0},any (all fit)",
        examined_per_in=round((space.examined - examined) / half, 2),
    )


def batch_declare() -> None:
    space = TupleSpace()
    policy = RuntimePolicy()
    boss = Account(None, Budget(tokens=1_000_000), 0.0)
    t0 = time.perf_counter()
    batch = Batch(
        space, depth=4, branching=32, lane="files", controller=boss, policy=policy, now=lambda: 0.0
    )
    took = time.perf_counter() - t0
    tracemalloc.start()
    Batch(space, depth=4, branching=32, lane="f2", controller=boss, policy=policy, now=lambda: 0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    emit("batch_declare_s", took, "s", agents=batch.size)
    emit("batch_declare_mb", peak / 1e6, "MB", agents=batch.size, materialised=batch.materialised)


async def lane_drain() -> None:
    space = TupleSpace()
    policy = RuntimePolicy()
    boss = Account(None, None, 0.0)
    batch = Batch(space, depth=2, branching=64, lane="work", controller=boss, policy=policy)

    async def handler(agent: Agent, t: tuple[Any, ...]) -> None:
        agent.state["n"] = agent.state.get("n", 0) + 1

    for i in range(TASKS):
        space.out_nowait("work", [(i * 7919) % batch.size, "task"])
    t0 = time.perf_counter()
    done = await batch.serve(handler)
    took = time.perf_counter() - t0
    assert done == TASKS
    emit(
        "lane_drain_s",
        took,
        "s",
        tasks=TASKS,
        agents=batch.size,
        threshold=batch.threshold,
        peak_active=batch.peak_active,
        materialised=batch.materialised,
        restored=batch.restored,
        compressed=batch.compressed,
        concurrency=batch.pool.concurrency,
    )


def main() -> None:
    tuple_ops()
    tuple_ops_range()
    batch_declare()
    asyncio.run(lane_drain())


if __name__ == "__main__":
    main()
