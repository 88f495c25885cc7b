"""Lazy batch spawn: a million agents declared for nothing, materialised only for work, never
more than the threshold at once, idle ones compressed to durable tokens and restored with their
state, every spend charged to the controller's account."""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from yool.kernel.accounts import Account, Budget, Cost
from yool.kernel.errors import QuotaExceeded
from yool.kernel.store import Store
from yool.policy import RuntimePolicy
from yool.tools import Session
from yool.tools.table import OPERATIONS, Call, OpError, load_all
from yool.tuplespace import TupleSpace
from yool.tuplespace.batch import Agent, Batch, BatchError, tokens_in_store

POLICY = RuntimePolicy(lane_concurrency=4, max_lane_concurrency=8, batch_small_task_size=4)


def controller(tokens: int | None = None) -> Account:
    return Account(None, Budget(tokens=tokens), 0.0)


def test_a_million_agents_are_declared_in_well_under_a_second_and_a_few_kilobytes() -> None:
    tracemalloc.start()
    t0 = time.perf_counter()
    batch = Batch(
        TupleSpace(),
        depth=4,
        branching=32,
        lane="files",
        controller=controller(),
        policy=POLICY,
        now=lambda: 0.0,
    )
    took = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert batch.size == 1_048_576
    assert took < 1.0 and peak < 1_000_000
    assert (batch.materialised, len(batch.active), len(batch.tokens)) == (0, 0, 0)
    assert batch.path(1_048_575) == (31, 31, 31, 31) and batch.path(33) == (0, 0, 1, 1)
    with pytest.raises(BatchError, match="outside"):
        batch.path(1_048_576)


def test_only_agents_with_work_materialise_never_more_than_the_threshold(virtual: Any) -> None:
    async def main() -> Any:
        space = TupleSpace()
        batch = Batch(
            space,
            depth=3,
            branching=16,
            lane="work",
            controller=controller(),
            policy=POLICY,
            threshold=5,
        )
        seen: list[int] = []

        async def handler(agent: Agent, t: tuple[Any, ...]) -> None:
            await asyncio.sleep(0.01)
            agent.state["notes"] = [*agent.state.get("notes", []), t[1]]
            seen.append(agent.index)

        for round_ in range(3):
            for index in (3, 77, 100, 2000, 4095, 9, 10, 11):
                space.out_nowait("work", [index, f"r{round_}"])
        done = await batch.serve(handler)
        return batch, done, seen

    batch, done, seen = virtual(main())
    assert done == 24 and sorted(set(seen)) == [3, 9, 10, 11, 77, 100, 2000, 4095]
    assert batch.peak_active <= 5  # the threshold, although 8 agents had work
    assert batch.compressed >= 3 and batch.restored >= 1
    every = {**{i: a.state for i, a in batch.active.items()}}
    every |= {i: json.loads(t)["s"] for i, t in batch.tokens.items()}
    # restored agents kept what they wrote before they were compressed
    assert all(sorted(every[i]["notes"]) == ["r0", "r1", "r2"] for i in every)


def test_agents_spend_from_the_controllers_budget_and_are_refused_past_it(virtual: Any) -> None:
    async def main() -> Any:
        space = TupleSpace()
        boss = controller(tokens=250)
        batch = Batch(
            space,
            depth=2,
            branching=4,
            lane="w",
            controller=boss,
            policy=POLICY,
            threshold=2,
            budget=Budget(tokens=100),
        )
        refused: list[str] = []

        async def handler(agent: Agent, t: tuple[Any, ...]) -> None:
            try:
                agent.account.charge(Cost(tokens=int(t[1])))
            except QuotaExceeded as e:
                refused.append(f"{agent.index}:{e}")

        for i, cost in enumerate([60, 60, 60, 60, 60]):
            space.out_nowait("w", [i % 4, cost])
        await batch.serve(handler)
        return boss, refused

    boss, refused = virtual(main())
    # agent 0's second 60 passes its own 100, even though it was compressed in between
    assert boss.tokens == 240 and len(refused) == 1 and refused[0].startswith("0:")


def test_compressed_agents_are_durable_tokens_in_the_store(tmp_path: Path) -> None:
    async def main() -> Any:
        store = Store.open(tmp_path / "yool.db")
        try:
            space = TupleSpace(store)
            batch = Batch(
                space,
                depth=2,
                branching=8,
                lane="w",
                controller=controller(),
                policy=POLICY,
                threshold=2,
                store=store,
            )

            async def handler(agent: Agent, t: tuple[Any, ...]) -> None:
                agent.state["last"] = t[1]

            for i in range(6):
                space.out_nowait("w", [i, f"task{i}"])
            await batch.serve(handler)
            batch.compress_idle()
            await store.aflush()
            return batch, await store.read(lambda c: tokens_in_store(c, batch.id))
        finally:
            store.close()

    batch, stored = asyncio.run(main())
    assert sorted(stored) == list(range(6)) and len(batch.active) == 0
    assert json.loads(stored[4])["s"] == {"last": "task4"}


async def _op(session: Session, op: str, **args: Any) -> Any:
    return await OPERATIONS[op](Call(session), args)


async def _result(session: Session, lane: str, *want: Any) -> tuple[Any, ...]:
    got = await session.tuples.in_(lane, [*want, *[None] * (4 - len(want))], 20)
    assert got is not None, "no result in time"
    return got


def test_a_batch_reopens_after_a_restart_from_its_durable_tokens_and_lanes(tmp_path: Path) -> None:
    load_all()
    pol = RuntimePolicy(home=tmp_path / "home", compression_threshold=1, heartbeat_s=0.05)

    async def first() -> Any:
        async with Session.open(pol, workspace=tmp_path, environ={}) as s:
            info = await _op(s, "batch_spawn", depth=2, branching=8)
            await s.tuples.out(info.lane, [5, "remember the colour blue"])
            one = await _result(s, info.out)
            await s.tuples.out(info.lane, [6, "count to three"])  # compresses agent 5
            two = await _result(s, info.out)
            # its controller dies (it writes agent 6's token); work waits on the durable lane
            s.sys.kill(s.kernel.caps.mint(s.pid, "process", info.pid, ("kill",)))
            await asyncio.sleep(0.05)
            assert info.pid not in s.kernel.procs
            left = await s.tuples.out(info.lane, [6, "work left when the server stops"])
            return info, one, two, left

    info, one, two, _ = asyncio.run(first())
    assert one[:3] == (5, "remember the colour blue", "normal") and two[0] == 6

    async def second() -> Any:
        async with Session.open(pol, workspace=tmp_path, environ={}) as s:
            with pytest.raises(OpError, match="no batch"):
                await _op(s, "batch_spawn", id="batch_000000000000")
            back = await _op(s, "batch_spawn", id=info.id)
            left = await _result(
                s, info.out, 6, "work left when the server stops"
            )  # the work queued before the restart is done
            await s.tuples.out(info.lane, [5, "what colour was it?"])
            recall = await _result(s, info.out, 5)
            status = await _op(s, "batch_spawn", id=info.id)
            return back, left, recall, status

    back, left, recall, status = asyncio.run(second())
    assert (back.id, back.lane, back.agents, back.materialised) == (info.id, info.lane, 64, 0)
    assert back.pid != info.pid
    assert left[:3] == (6, "work left when the server stops", "normal")
    # agent 5 was restored from the token the first server wrote: its notes are in its prompt
    assert recall[:3] == (5, "what colour was it?", "normal") and "colour blue" in recall[3]
    assert status.restored == 2 and status.peak_active == 1


def test_idle_agents_are_compressed_after_work_and_a_quiet_batch_sets_no_timer(
    virtual: Any,
) -> None:
    async def main() -> Any:
        space = TupleSpace()
        batch = Batch(space, depth=2, branching=8, lane="w", controller=controller(), policy=POLICY)
        loop = asyncio.get_running_loop()

        def armed() -> int:  # timers anyone has set on the loop (this test sets none now)
            return sum(1 for h in loop._scheduled if not h.cancelled())  # type: ignore[attr-defined]

        async def handler(agent: Agent, t: tuple[Any, ...]) -> None:
            await asyncio.sleep(0.5)

        serving = asyncio.ensure_future(batch.serve(handler, wait_s=None, idle_s=5.0))
        await asyncio.sleep(60)
        quiet = armed()  # serving, nothing to do: no timer at all
        for i in (3, 4, 5):
            space.out_nowait("w", [i, "task"])
        await asyncio.sleep(1)
        busy = (len(batch.active), armed())  # the tasks are done: one idle timer
        await asyncio.sleep(5)
        after = (len(batch.active), batch.compressed, armed(), serving.done())
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        return quiet, busy, after

    quiet, busy, after = virtual(main())
    assert quiet == 0
    assert busy == (3, 1)
    assert after == (0, 3, 0, False)  # compressed, and nothing left to wake for


def _claimed_batch(store: Store, space: TupleSpace, batch_id: str) -> Batch:
    return Batch(
        space,
        depth=1,
        branching=8,
        lane="w",
        controller=controller(),
        policy=POLICY,
        store=store,
        batch_id=batch_id,
        results="w/out",
    )


def test_a_claimed_task_interrupted_is_started_once_more_marked_then_reported(
    tmp_path: Path,
) -> None:
    """Three lives of one durable batch on one store file: a task interrupted mid-run is
    started again as (*task, 2) by the next serve, and if interrupted again is reported,
    never run a third time."""
    db = tmp_path / "yool.db"
    starts: list[tuple[Any, ...]] = []

    async def life(hang: bool) -> Any:
        store = Store.open(db)
        try:
            space = TupleSpace(store)
            await space.load()
            for lane in ("w", "w/out"):
                space.declare(lane, durable=True)
            batch = _claimed_batch(store, space, "b1")
            started = asyncio.Event()

            async def handler(agent: Agent, claim: tuple[Any, ...]) -> list[Any]:
                starts.append(claim)
                started.set()
                if hang:
                    await asyncio.Event().wait()  # interrupted in the middle
                return [claim[0], claim[1], f"done at start {claim[-1]}"]

            async def reject(t: tuple[Any, ...], why: str) -> list[Any]:
                return [t[0], t[1], why]

            if not starts or space.scan("w/out", [None, None, None]):
                await space.out("w", [1, "the task"])
            serving = asyncio.ensure_future(
                batch.serve(handler, wait_s=0.5, reject=reject, batch_size=1)
            )
            if hang:
                await asyncio.wait_for(started.wait(), 5)
                serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            await space.committed()
            return (
                space.scan("w", [None, None]),
                space.scan("w/claimed", [None, None, None]),
                space.scan("w/out", [None, None, None]),
                batch.stats(),
            )
        finally:
            store.close()

    work, claims, out, _ = asyncio.run(life(hang=True))
    assert claims == [(1, "the task", 1)] and out == []
    work, claims, out, stats = asyncio.run(life(hang=True))  # its second start hangs too
    assert claims == [(1, "the task", 2)] and stats["rerun"] == 1
    work, claims, out, stats = asyncio.run(life(hang=False))
    assert claims == [] and stats["abandoned"] == 1
    assert out[0][:2] == (1, "the task") and out[0][2].startswith("interrupted twice")
    assert starts == [(1, "the task", 1), (1, "the task", 2)]  # never a third time
    work, claims, out, stats = asyncio.run(life(hang=False))  # a fresh task: once, unmarked
    assert claims == [] and work == [] and len(starts) == 3
    assert out[1] == (1, "the task", "done at start 1")


def test_a_claimed_task_whose_handler_fails_is_reported_with_its_result_not_dropped(
    virtual: Any,
) -> None:
    async def main() -> Any:
        space = TupleSpace()
        batch = Batch(
            space,
            depth=1,
            branching=4,
            lane="w",
            controller=controller(),
            policy=POLICY,
            results="w/out",
        )

        async def handler(agent: Agent, claim: tuple[Any, ...]) -> list[Any]:
            if claim[1] == "bad":
                raise RuntimeError("boom")
            return [claim[0], claim[1], "ok"]

        async def reject(t: tuple[Any, ...], why: str) -> list[Any]:
            return [t[0], t[1], why]

        for t in ([0, "good"], [1, "bad"], [9, "nobody"]):
            space.out_nowait("w", t)
        done = await batch.serve(handler, reject=reject)
        out = sorted(space.scan("w/out", [None, None, None]))
        return done, out, space.count("w"), space.count("w/claimed")

    done, out, waiting, claimed = virtual(main())
    assert (done, waiting, claimed) == (3, 0, 0)
    assert out[0] == (0, "good", "ok") and out[1] == (1, "bad", "failed: RuntimeError: boom")
    assert out[2][:2] == (9, "nobody") and "agent index" in out[2][2]
