"""Lane worker pools: batched draining, bounded and adaptive fan-out, hedged idempotent tasks,
failed batches retried then reported, never dropped."""

from __future__ import annotations

import asyncio
from typing import Any

from yool.drivers.llm.resilience import Hedger
from yool.policy import RuntimePolicy
from yool.tuplespace import TupleSpace
from yool.tuplespace.pool import LanePool

Tup = tuple[Any, ...]


def test_small_tasks_are_drained_in_batches_of_the_policy_size(virtual: Any) -> None:
    async def main() -> Any:
        space = TupleSpace()
        for i in range(100):
            space.out_nowait("l", [i])
        sizes: list[int] = []

        async def handler(batch: list[Tup]) -> None:
            sizes.append(len(batch))
            await asyncio.sleep(0.01)

        pol = RuntimePolicy(lane_concurrency=2, max_lane_concurrency=4, batch_small_task_size=8)
        pool = LanePool(space, "l", handler, pol)
        return await pool.drain(), sizes, pool.peak, space.count("l")

    done, sizes, peak, left = virtual(main())
    assert done == 100 and sum(sizes) == 100 and max(sizes) == 8 and left == 0
    assert len(sizes) == 13 and peak <= 4  # never more in flight than the ceiling


def test_concurrency_grows_while_healthy_and_is_cut_by_errors(virtual: Any) -> None:
    async def main() -> Any:
        pol = RuntimePolicy(lane_concurrency=2, max_lane_concurrency=16, batch_small_task_size=1)
        space = TupleSpace()
        for i in range(200):
            space.out_nowait("ok", [i])

        async def fine(batch: list[Tup]) -> None:
            await asyncio.sleep(0.01)

        healthy = LanePool(space, "ok", fine, pol)
        await healthy.drain()
        for i in range(60):
            space.out_nowait("bad", [i])

        async def flaky(batch: list[Tup]) -> None:
            await asyncio.sleep(0.01)
            if batch[0][0] % 2:
                raise RuntimeError("provider down")

        sick = LanePool(
            space,
            "bad",
            flaky,
            RuntimePolicy(lane_concurrency=8, max_lane_concurrency=16, batch_small_task_size=1),
            retries=1,
        )
        await sick.drain()
        return healthy.concurrency, sick.concurrency, sick.failed, sick.done, sick.errors

    grown, cut, failed, done, errors = virtual(main())
    assert grown > 2  # additive increase after healthy rounds
    assert cut < 8  # multiplicative decrease on failures
    # each odd task was tried twice (retried once), then reported, not dropped
    assert sorted(t[0] for t in failed) == list(range(1, 60, 2)) and done == 30 and errors == 60


def test_a_slow_idempotent_batch_is_hedged_and_the_fast_attempt_wins(virtual: Any) -> None:
    async def main() -> Any:
        space = TupleSpace()
        space.out_nowait("l", ["idem", 1])
        space.out_nowait("l", ["once", 2])
        attempts: list[str] = []

        async def handler(batch: list[Tup]) -> None:
            attempts.append(batch[0][0])
            if attempts.count(batch[0][0]) == 1:
                await asyncio.sleep(10)  # the first attempt hangs
            else:
                await asyncio.sleep(0.1)

        pol = RuntimePolicy(lane_concurrency=1, max_lane_concurrency=1, batch_small_task_size=1)
        pool = LanePool(
            space,
            "l",
            handler,
            pol,
            arity=2,
            idempotent=lambda t: t[0] == "idem",
            hedger=Hedger(floor_s=0.5),
        )
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await pool.drain()
        return attempts, pool.hedger.hedge_wins if pool.hedger else 0, loop.time() - t0

    attempts, wins, took = virtual(main())
    assert attempts.count("idem") == 2 and attempts.count("once") == 1 and wins == 1
    assert 10 < took < 11  # the idempotent one took 0.6 s, the other its full 10 s
