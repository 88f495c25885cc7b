"""The virtual clock loop: time jumps to the next timer exactly and in order; waits for threads."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yool.kernel.clock import DEFAULT_EPOCH, VirtualClockLoop, run_virtual, wall_time


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=2e-9)


def test_an_hour_long_sleep_takes_no_real_time_and_reports_the_hour() -> None:
    async def main() -> float:
        await asyncio.sleep(3600)
        return asyncio.get_running_loop().time()

    started = time.perf_counter()
    assert _close(run_virtual(main()), 3600.0)
    assert time.perf_counter() - started < 0.1


def test_time_starts_at_the_given_start_and_lands_exactly_after_a_sleep() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        before = loop.time()
        await asyncio.sleep(3600)
        return before, loop.time()

    before, after = run_virtual(main(), start=12.5)
    assert before == 12.5
    assert _close(after, 3612.5)


def test_far_in_the_future_timers_still_fire_where_float_spacing_exceeds_a_nanosecond() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        fired: asyncio.Future[float] = loop.create_future()
        loop.call_at(loop.time(), lambda: fired.set_result(loop.time()))
        at_once = await fired
        await asyncio.sleep(3600)
        return at_once, loop.time()

    at_once, after = run_virtual(main(), start=1e12)
    assert at_once == 1e12
    assert math.isclose(after, 1e12 + 3600, rel_tol=1e-15)


def test_timers_a_tenth_of_a_microsecond_apart_fire_in_order_at_their_own_instants() -> None:
    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        fired: list[tuple[str, float]] = []
        loop.call_at(1.0000001, lambda: fired.append(("later", loop.time())))
        loop.call_at(1.0, lambda: fired.append(("sooner", loop.time())))
        await asyncio.sleep(2)
        return fired

    fired = run_virtual(main())
    assert [name for name, _ in fired] == ["sooner", "later"]
    assert fired[0][1] == 1.0
    assert _close(fired[1][1], 1.0000001)


@settings(max_examples=60, deadline=None)
@given(
    delays=st.lists(
        st.floats(min_value=0.0, max_value=1e5, allow_nan=False, allow_infinity=False),
        min_size=1,
        max_size=40,
    ),
    start=st.sampled_from([0.0, 0.1, 1234.5678, 1e6]),
)
def test_random_timers_fire_in_sorted_order_at_exact_virtual_times(
    delays: list[float], start: float
) -> None:
    async def main() -> tuple[list[float], list[tuple[int, float]]]:
        loop = asyncio.get_running_loop()
        fired: list[tuple[int, float]] = []
        due = [loop.time() + d for d in delays]

        def fire(i: int) -> None:
            fired.append((i, loop.time()))

        for i, d in enumerate(delays):
            loop.call_later(d, fire, i)
        await asyncio.sleep(max(delays) + 1)
        return due, fired

    due, fired = run_virtual(main(), start=start)
    assert sorted(i for i, _ in fired) == list(range(len(delays)))
    order = [due[i] for i, _ in fired]  # equal instants may fire in either order
    assert order == sorted(order)
    for i, at in fired:
        assert _close(at, due[i]), (i, at, due[i])


def test_asyncio_timeout_expires_at_the_exact_virtual_instant() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.sleep(10)
        return loop.time()

    assert _close(run_virtual(main(), start=100.0), 105.0)


def test_wait_for_times_out_at_the_exact_virtual_instant() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), 2.5)
        return loop.time()

    assert _close(run_virtual(main()), 2.5)


def test_a_real_thread_job_finishes_before_a_longer_virtual_timeout_fires() -> None:
    def work() -> str:
        time.sleep(0.05)
        return "done"

    async def main() -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(5):
            result = await asyncio.to_thread(work)
        return result, loop.time()

    result, at = run_virtual(main())
    assert result == "done"
    # Virtual time followed real time while the thread worked: about 50 ms, far from 5 s.
    assert 0.04 <= at < 1.0


def test_virtual_time_jumps_again_once_thread_work_is_delivered() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualClockLoop)
        async with asyncio.timeout(60):
            await loop.run_in_executor(None, time.sleep, 0.01)
        assert not loop.threads_busy
        before = loop.time()
        await asyncio.sleep(3600)
        return before, loop.time()

    started = time.perf_counter()
    before, after = run_virtual(main())
    assert 0.005 <= before < 1.0
    assert _close(after, before + 3600)
    assert time.perf_counter() - started < 1.0


def test_call_soon_threadsafe_wakes_a_loop_with_nothing_scheduled_without_moving_time() -> None:
    async def main() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[int] = loop.create_future()

        def later() -> None:
            time.sleep(0.05)
            loop.call_soon_threadsafe(woken.set_result, 42)

        thread = threading.Thread(target=later)
        thread.start()
        value = await woken
        thread.join()
        return value, loop.time()

    assert run_virtual(main()) == (42, 0.0)


def test_advance_moves_time_forward_and_due_timers_fire_at_the_next_iteration() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualClockLoop)
        fired: asyncio.Future[float] = loop.create_future()
        loop.call_later(10, lambda: fired.set_result(loop.time()))
        loop.advance(25)
        return await fired, loop.time()

    assert run_virtual(main()) == (25.0, 25.0)


def test_advance_refuses_to_go_backwards() -> None:
    loop = VirtualClockLoop(start=5.0)
    try:
        with pytest.raises(ValueError, match="seconds must be >= 0"):
            loop.advance(-1)
        assert loop.time() == 5.0
    finally:
        loop.close()


def test_wall_clock_is_the_epoch_plus_virtual_time() -> None:
    async def main() -> tuple[float, float]:
        await asyncio.sleep(60)
        return wall_time(asyncio.get_running_loop()), wall_time()

    assert run_virtual(main()) == (DEFAULT_EPOCH + 60, DEFAULT_EPOCH + 60)
    loop = VirtualClockLoop(start=1.5, epoch=1000.0)
    try:
        assert loop.wall() == 1001.5
    finally:
        loop.close()


def test_wall_time_on_a_real_loop_is_the_real_wall_clock() -> None:
    async def main() -> float:
        return wall_time(asyncio.get_running_loop())

    before = time.time()
    seen = asyncio.run(main())
    assert before <= seen <= time.time()
    assert before <= wall_time() <= time.time()


def test_real_sockets_are_served_on_the_virtual_loop() -> None:
    async def main() -> bytes:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:  # no timers: virtual time does not wait for sockets
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"ping\n")
            line = await reader.readline()
            writer.close()
            await writer.wait_closed()
        return line

    assert run_virtual(main()) == b"ping\n"
