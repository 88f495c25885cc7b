"""Sandbox latency and throughput: one snippet per run, every layer this machine has on.

`sandbox_p50_ms` / `sandbox_p99_ms`: one `print(1)` run at a time through `Pool.run` (fresh
workdir, fork from a warm zygote, every layer applied in the child, supervised, workdir read
back and removed), over 300 runs after 20 warm-up runs. `sandbox_runs_per_s`: the same
snippet, 8 runs in flight at once, for 300 runs. Run: `python bench/sandbox.py`.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit
from yool.sandbox import Config, Pool, Task
from yool.sandbox.probe import probe

RUNS = 300
WARMUP = 20
IN_FLIGHT = 8


async def main() -> None:
    p = probe()
    pool = Pool(Config(level=p.level, zygotes=2))
    await pool.start()
    task = Task("print(1)")
    try:
        for _ in range(WARMUP):
            await pool.run(task)
        times = []
        layers: list[str] = []
        for _ in range(RUNS):
            t0 = time.perf_counter()
            r = await pool.run(task)
            times.append((time.perf_counter() - t0) * 1000)
            assert r.ok and r.stdout == "1\n", r
            layers = r.layers
        times.sort()
        ctx = {"runs": RUNS, "layers": layers, "level": p.level, "cores": os.cpu_count()}
        emit("sandbox_p50_ms", statistics.median(times), "ms", target=15, **ctx)
        emit("sandbox_p99_ms", times[int(len(times) * 0.99) - 1], "ms", **ctx)

        sem = asyncio.Semaphore(IN_FLIGHT)

        async def one() -> None:
            async with sem:
                r = await pool.run(task)
                assert r.ok, r

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(RUNS)))
        rate = RUNS / (time.perf_counter() - t0)
        emit("sandbox_runs_per_s", rate, "runs/s", in_flight=IN_FLIGHT, **ctx)
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main())
