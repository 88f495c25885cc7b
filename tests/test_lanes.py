"""Lanes: admission order (priority, EDF, FIFO, aging), no slot leaks, resize and the registry."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yool.kernel.clock import run_virtual
from yool.kernel.lanes import Lane, Lanes, LaneStats


async def _admission_order(lane: Lane, waiters: list[tuple[str, int, float | None]]) -> list[str]:
    """Queue `waiters` (label, priority, deadline) behind a held slot, free it, record the order."""
    order: list[str] = []

    async def wait(label: str, priority: int, deadline: float | None) -> None:
        async with lane.slot(priority, deadline):
            order.append(label)

    await lane.acquire()
    tasks = [asyncio.create_task(wait(*w)) for w in waiters]
    await asyncio.sleep(0)  # every task runs up to its wait, in creation order
    assert lane.waiting == len(waiters)
    lane.release()
    await asyncio.gather(*tasks)
    return order


def _on_lane(make: Callable[[Lane], Coroutine[Any, Any, Any]], concurrency: int = 1) -> Any:
    return run_virtual(make(Lane("llm", concurrency)))


def test_uncontended_acquire_takes_the_slot_without_letting_another_task_run() -> None:
    async def main() -> None:
        lane = Lane("llm", 2)
        ran = 0

        async def other() -> None:
            nonlocal ran
            ran += 1

        task = asyncio.create_task(other())
        await lane.acquire()
        async with lane.slot(priority=5):
            assert ran == 0
            assert lane.in_use == 2
        lane.release()
        assert ran == 0
        assert lane.stats().admitted_total == 2
        await task
        assert ran == 1

    run_virtual(main())


def test_equal_waiters_are_admitted_in_arrival_order() -> None:
    labels = [f"w{i}" for i in range(20)]
    order = _on_lane(lambda lane: _admission_order(lane, [(x, 0, None) for x in labels]))
    assert order == labels


def test_higher_priority_is_admitted_first_and_equal_priorities_keep_arrival_order() -> None:
    waiters: list[tuple[str, int, float | None]] = [
        ("a0", 0, None),
        ("b3", 3, None),
        ("c1", 1, None),
        ("d3", 3, None),
        ("e-1", -1, None),
        ("f2", 2, None),
    ]
    order = _on_lane(lambda lane: _admission_order(lane, waiters))
    assert order == ["b3", "d3", "f2", "c1", "a0", "e-1"]


def test_equal_priorities_are_admitted_earliest_deadline_first_with_none_last() -> None:
    waiters: list[tuple[str, int, float | None]] = [
        ("none1", 0, None),
        ("d5", 0, 5.0),
        ("d2a", 0, 2.0),
        ("none2", 0, None),
        ("d9", 0, 9.0),
        ("d2b", 0, 2.0),
    ]
    order = _on_lane(lambda lane: _admission_order(lane, waiters))
    assert order == ["d2a", "d2b", "d5", "d9", "none1", "none2"]


def test_priority_outranks_an_earlier_deadline() -> None:
    waiters: list[tuple[str, int, float | None]] = [("urgent-low", 0, 0.5), ("high", 1, None)]
    order = _on_lane(lambda lane: _admission_order(lane, waiters))
    assert order == ["high", "urgent-low"]


@pytest.mark.parametrize(
    ("young_priority", "expected"),
    [(2, ["old", "young"]), (5, ["young", "old"])],
)
def test_aging_adds_one_priority_level_per_aging_interval_waited(
    young_priority: int, expected: list[str]
) -> None:
    async def main() -> list[str]:
        lane = Lane("llm", 1, aging_s=1.0)
        order: list[str] = []

        async def wait(label: str, priority: int) -> None:
            async with lane.slot(priority):
                order.append(label)

        await lane.acquire()
        old = asyncio.create_task(wait("old", 0))
        await asyncio.sleep(2.5)
        young = asyncio.create_task(wait("young", young_priority))
        await asyncio.sleep(0.5)  # old has waited 3 s: effective priority 3
        lane.release()
        await asyncio.gather(old, young)
        return order

    assert run_virtual(main()) == expected


async def _low_priority_admitted_at(aging_s: float) -> tuple[float, int, int]:
    """One slot, high-priority work arriving twice as fast as it is served, one low waiter."""
    lane = Lane("llm", 1, aging_s=aging_s)
    loop = asyncio.get_running_loop()
    high_done = 0
    high_total = 240  # one every 0.25 s for 60 s; each holds the slot 0.5 s
    low_admitted_at: list[tuple[float, int]] = []

    async def high() -> None:
        nonlocal high_done
        async with lane.slot(priority=3):
            await asyncio.sleep(0.5)
        high_done += 1

    async def low() -> None:
        async with lane.slot(priority=0):
            low_admitted_at.append((loop.time(), high_done))

    tasks = [asyncio.create_task(high())]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(low()))
    for _ in range(high_total - 1):
        await asyncio.sleep(0.25)
        tasks.append(asyncio.create_task(high()))
    await asyncio.gather(*tasks)
    ((at, served_before),) = low_admitted_at
    return at, served_before, high_total


def test_aging_lets_a_low_priority_waiter_through_while_high_priority_work_keeps_coming() -> None:
    at, served_before, high_total = run_virtual(_low_priority_admitted_at(aging_s=1.0))
    assert at < 15.0
    assert served_before < high_total // 4


def test_without_aging_a_low_priority_waiter_starves_until_high_priority_work_stops() -> None:
    at, served_before, high_total = run_virtual(_low_priority_admitted_at(aging_s=1e9))
    assert served_before == high_total
    assert at >= 0.5 * high_total


def test_a_slot_being_handed_to_a_waiter_is_not_taken_by_a_newcomer() -> None:
    async def main() -> list[str]:
        lane = Lane("llm", 1)
        order: list[str] = []

        async def wait(label: str) -> None:
            async with lane.slot():
                order.append(label)

        await lane.acquire()
        first = asyncio.create_task(wait("waiter"))
        await asyncio.sleep(0)
        lane.release()  # granted to the waiter, which has not resumed yet
        assert lane.in_use == 1
        newcomer = asyncio.create_task(wait("newcomer"))
        await asyncio.gather(first, newcomer)
        return order

    assert run_virtual(main()) == ["waiter", "newcomer"]


def test_a_waiter_cancelled_while_waiting_is_never_admitted() -> None:
    async def main() -> None:
        lane = Lane("llm", 1)
        admitted: list[str] = []

        async def wait(label: str) -> None:
            async with lane.slot():
                admitted.append(label)

        await lane.acquire()
        doomed = asyncio.create_task(wait("doomed"))
        survivor = asyncio.create_task(wait("survivor"))
        await asyncio.sleep(0)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert lane.waiting == 1
        lane.release()
        await survivor
        assert admitted == ["survivor"]
        assert lane.stats() == LaneStats("llm", 1, 0, 0, 2, 0.0)

    run_virtual(main())


def test_a_waiter_cancelled_just_before_the_slot_frees_is_skipped() -> None:
    async def main() -> None:
        lane = Lane("llm", 1)
        admitted: list[str] = []

        async def wait(label: str) -> None:
            async with lane.slot():
                admitted.append(label)

        await lane.acquire()
        doomed = asyncio.create_task(wait("doomed"))
        survivor = asyncio.create_task(wait("survivor"))
        await asyncio.sleep(0)
        doomed.cancel()  # its cleanup has not run yet when the slot frees
        lane.release()
        assert lane.in_use == 1
        assert lane.waiting == 0
        with pytest.raises(asyncio.CancelledError):
            await doomed
        await survivor
        assert admitted == ["survivor"]
        assert (lane.in_use, lane.waiting) == (0, 0)

    run_virtual(main())


@pytest.mark.parametrize("others_waiting", [0, 1])
def test_a_waiter_granted_a_slot_but_cancelled_before_resuming_passes_the_slot_on(
    others_waiting: int,
) -> None:
    async def main() -> None:
        lane = Lane("llm", 1)
        admitted: list[str] = []

        async def wait(label: str) -> None:
            async with lane.slot():
                admitted.append(label)

        await lane.acquire()
        granted = asyncio.create_task(wait("granted"))
        others = [asyncio.create_task(wait(f"other{i}")) for i in range(others_waiting)]
        await asyncio.sleep(0)
        lane.release()  # the slot is now granted's, but granted has not run yet
        assert (lane.in_use, lane.waiting) == (1, others_waiting)
        granted.cancel()
        with pytest.raises(asyncio.CancelledError):
            await granted
        await asyncio.gather(*others)
        assert admitted == [f"other{i}" for i in range(others_waiting)]
        assert (lane.in_use, lane.waiting) == (0, 0)
        # The slot is free again: the fast path takes it.
        await lane.acquire()
        assert lane.in_use == 1

    run_virtual(main())


def test_a_timeout_on_the_wait_leaves_no_trace_in_the_lane() -> None:
    async def main() -> None:
        lane = Lane("llm", 1)
        await lane.acquire()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(3):
                await lane.acquire()
        assert (lane.in_use, lane.waiting) == (1, 0)
        lane.release()
        assert lane.in_use == 0

    run_virtual(main())


def test_many_cancelled_waiters_do_not_pile_up_in_the_queues() -> None:
    async def main() -> None:
        lane = Lane("llm", 1)
        await lane.acquire()
        for _ in range(20):
            tasks = [asyncio.create_task(lane.acquire()) for _ in range(100)]
            await asyncio.sleep(0)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert lane.waiting == 0
        assert len(lane._heap) <= 64 and len(lane._fifo) <= 64
        lane.release()
        assert lane.in_use == 0

    run_virtual(main())


job = st.fixed_dictionaries(
    {
        "arrive": st.floats(0, 5),
        "hold": st.floats(0, 2),
        "priority": st.integers(-2, 2),
        "deadline": st.none() | st.floats(0, 10),
        "cancel_at": st.none() | st.floats(0, 8),
    }
)


@settings(max_examples=80, deadline=None)
@given(
    jobs=st.lists(job, min_size=1, max_size=40),
    concurrency=st.integers(1, 4),
    aging_s=st.sampled_from([0.25, 1.0, 1e9]),
)
def test_concurrency_is_never_exceeded_and_no_slot_leaks_under_random_load(
    jobs: list[dict[str, Any]], concurrency: int, aging_s: float
) -> None:
    async def main() -> None:
        lane = Lane("tools", concurrency, aging_s=aging_s)
        loop = asyncio.get_running_loop()
        active = 0
        entered = 0
        peak = 0

        async def run(spec: dict[str, Any]) -> None:
            nonlocal active, entered, peak
            await asyncio.sleep(spec["arrive"])
            async with lane.slot(spec["priority"], spec["deadline"]):
                active += 1
                entered += 1
                peak = max(peak, active)
                assert active <= concurrency
                assert lane.in_use <= concurrency
                try:
                    await asyncio.sleep(spec["hold"])
                finally:
                    active -= 1

        tasks = []
        for spec in jobs:
            task = asyncio.create_task(run(spec))
            if spec["cancel_at"] is not None:
                loop.call_later(spec["cancel_at"], task.cancel)
            tasks.append(task)
        await asyncio.gather(*tasks, return_exceptions=True)
        stats = lane.stats()
        assert (stats.in_use, stats.waiting) == (0, 0)
        assert peak <= concurrency
        assert stats.admitted_total >= entered
        if not any(spec["cancel_at"] is not None for spec in jobs):
            assert entered == stats.admitted_total == len(jobs)

    run_virtual(main())


def test_growing_a_lane_admits_more_waiters_at_once() -> None:
    async def main() -> None:
        lane = Lane("llm", 1)
        await lane.acquire()
        tasks = [asyncio.create_task(lane.acquire()) for _ in range(4)]
        await asyncio.sleep(0)
        lane.resize(3)
        assert (lane.concurrency, lane.in_use, lane.waiting) == (3, 3, 2)
        await asyncio.sleep(0)
        assert sum(t.done() for t in tasks) == 2
        for _ in range(3):
            lane.release()
        await asyncio.gather(*tasks)
        for _ in range(2):
            lane.release()
        assert (lane.in_use, lane.waiting) == (0, 0)

    run_virtual(main())


def test_shrinking_a_lane_lets_holders_finish_and_admits_no_one_until_below_the_limit() -> None:
    async def main() -> None:
        lane = Lane("llm", 3)
        for _ in range(3):
            await lane.acquire()
        waiters = [asyncio.create_task(lane.acquire()) for _ in range(2)]
        await asyncio.sleep(0)
        lane.resize(1)
        assert (lane.in_use, lane.waiting) == (3, 2)
        lane.release()
        lane.release()
        assert (lane.in_use, lane.waiting) == (1, 2)
        lane.release()
        assert (lane.in_use, lane.waiting) == (1, 1)
        await waiters[0]
        assert not waiters[1].done()
        lane.release()
        await waiters[1]
        lane.release()
        assert lane.stats() == LaneStats("llm", 1, 0, 0, 5, 0.0)

    run_virtual(main())


def test_stats_report_the_longest_wait_in_loop_time() -> None:
    async def main() -> LaneStats:
        lane = Lane("sandbox", 1)
        await lane.acquire()
        waiter = asyncio.create_task(lane.acquire())
        await asyncio.sleep(5)
        lane.release()
        await waiter
        return lane.stats()

    assert run_virtual(main()) == LaneStats("sandbox", 1, 1, 0, 2, 5.0)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_a_lane_needs_a_positive_integer_concurrency(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"lane 'llm': concurrency must be an integer >= 1"):
        Lane("llm", bad)
    lane = Lane("llm", 2)
    with pytest.raises(ValueError, match="concurrency must be"):
        lane.resize(bad)
    assert lane.concurrency == 2


def test_a_lane_needs_a_positive_aging_interval() -> None:
    with pytest.raises(ValueError, match="aging_s must be > 0"):
        Lane("llm", 1, aging_s=0)


def test_release_without_acquire_is_an_error_that_names_the_lane() -> None:
    with pytest.raises(RuntimeError, match="lane 'llm': release"):
        Lane("llm", 1).release()


def test_lanes_are_created_on_first_use_with_the_default_concurrency() -> None:
    lanes = Lanes(default_concurrency=4, ceiling=16, aging_s=0.5)
    llm = lanes.get("llm")
    assert lanes.get("llm") is llm
    assert llm.concurrency == 4
    assert "llm" in lanes and "tools" not in lanes
    tools = lanes.configure("tools", 8)
    assert tools.concurrency == 8
    assert lanes.configure("llm", 2) is llm
    assert llm.concurrency == 2
    assert [lane.name for lane in lanes] == ["llm", "tools"]
    assert len(lanes) == 2
    assert [s.name for s in lanes.stats()] == ["llm", "tools"]
    assert lanes.stats()[1] == LaneStats("tools", 8, 0, 0, 0, 0.0)


def test_configuring_a_lane_above_the_ceiling_is_refused_naming_lane_value_and_ceiling() -> None:
    lanes = Lanes(default_concurrency=4, ceiling=16)
    lanes.get("llm")
    with pytest.raises(ValueError, match=r"lane 'llm': concurrency 17 exceeds the ceiling 16"):
        lanes.configure("llm", 17)
    assert lanes.get("llm").concurrency == 4
    with pytest.raises(ValueError, match="ceiling 16"):
        lanes.configure("sandbox", 100)
    assert "sandbox" not in lanes


def test_a_default_concurrency_above_the_ceiling_is_refused() -> None:
    with pytest.raises(ValueError, match="default_concurrency 32 exceeds the ceiling 16"):
        Lanes(default_concurrency=32, ceiling=16)
