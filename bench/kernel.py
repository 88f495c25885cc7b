"""Kernel figures: spawn rate, idle-process memory, message round trips, capability checks,
journal appends. Prints one JSON object per figure."""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import emit
from yool.kernel import Kernel, Sys
from yool.kernel.journal import Entry
from yool.kernel.store import Store

IDLE = 100_000
ROUNDTRIPS = 100_000
CAP_CHECKS = 1_000_000
APPENDS = 100_000
ROUNDS = 5  # noisy figures: the median of this many rounds


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def idle(sys: Sys) -> None:
    await sys.recv()


async def spawn_round() -> tuple[float, float, int]:
    """One round: spawn IDLE processes that park in recv; (spawns/s, bytes each, parked)."""
    async with Kernel() as k:
        init = k.init
        gc.collect()
        before = rss()
        t0 = time.perf_counter()
        for _ in range(IDLE):
            last = init.spawn(idle)
        newest = k.procs[last.pid]
        # Tasks take their first step in spawn order, so the newest parks last.
        while newest.waiter is None:  # noqa: ASYNC110 - polling the loop is what we measure
            await asyncio.sleep(0)
        elapsed = time.perf_counter() - t0
        parked = sum(1 for p in k.procs.values() if p.waiter is not None)
        gc.collect()
        return IDLE / elapsed, (rss() - before) / IDLE, parked


def spawn_and_memory() -> None:
    # The first round grows the heap from nothing: it gives the memory figure (the
    # conservative one); the spawn rate is the steady state of the rounds after it.
    first = asyncio.run(spawn_round())
    rounds = [asyncio.run(spawn_round()) for _ in range(ROUNDS)]
    rates = sorted(r[0] for r in rounds)
    emit(
        "spawn_per_s",
        statistics.median(rates),
        "spawns/s",
        processes=IDLE,
        rounds=ROUNDS,
        min=round(rates[0]),
        max=round(rates[-1]),
        first_round=round(first[0]),
        parked=min(r[2] for r in (first, *rounds)),
    )
    emit(
        "bytes_per_idle_process",
        first[1],
        "bytes",
        processes=IDLE,
        measure="RSS growth while 100,000 idle processes are alive (first round)",
    )


async def roundtrip_round() -> float:
    async with Kernel() as k:
        init = k.init

        async def echo(sys: Sys) -> None:
            first = await sys.recv()
            back = first.caps[0]
            while True:
                m = await sys.recv()
                await sys.send(back, m.body)

        child = init.spawn(echo)
        await init.send(child.ref, "hello", caps=(init.self_ref(),))
        t0 = time.perf_counter()
        for i in range(ROUNDTRIPS):
            await init.send(child.ref, i)
            await init.recv()
        return ROUNDTRIPS / (time.perf_counter() - t0)


def roundtrips() -> None:
    rates = sorted(asyncio.run(roundtrip_round()) for _ in range(ROUNDS))
    emit(
        "roundtrips_per_s",
        statistics.median(rates),
        "roundtrips/s",
        roundtrips=ROUNDTRIPS,
        rounds=ROUNDS,
        min=round(rates[0]),
        max=round(rates[-1]),
    )


async def cap_checks() -> None:
    async with Kernel() as k:
        child = k.init.spawn(idle)
        require = k.caps.require
        ref = child.ref
        t0 = time.perf_counter_ns()
        for _ in range(CAP_CHECKS):
            require(1, ref, "send", "process")
        elapsed = time.perf_counter_ns() - t0
        emit("cap_check_ns", elapsed / CAP_CHECKS, "ns", checks=CAP_CHECKS)


async def journal_appends() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "yool.db")
        try:
            async with Kernel(store=store) as k:
                journal = k.journal
                entry = Entry("0" * 24, {"value": {"text": "ok"}, "cost": {"tokens": 12}}, None)
                t0 = time.perf_counter()
                for op in range(APPENDS):
                    journal.append(7, op, entry)
                caller = time.perf_counter() - t0
                await store.aflush()
                durable = time.perf_counter() - t0
                emit(
                    "journal_append_us",
                    caller / APPENDS * 1e6,
                    "us",
                    appends=APPENDS,
                    measure="caller side, SQLite store on",
                )
                emit(
                    "journal_durable_append_us",
                    durable / APPENDS * 1e6,
                    "us",
                    appends=APPENDS,
                    measure="until committed to SQLite (group commit)",
                )
        finally:
            store.close()


def main() -> None:
    spawn_and_memory()
    roundtrips()
    for bench in (cap_checks, journal_appends):
        asyncio.run(bench())
        gc.collect()


if __name__ == "__main__":
    sys.exit(main())
