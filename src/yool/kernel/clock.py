"""A virtual clock for deterministic timing: an event loop whose time jumps instead of sleeping.

The kernel reads time only through the running loop (`loop.time()`, `call_at`,
`call_later`, `asyncio.sleep`, `asyncio.timeout`) and stamps events with
`wall_time(loop)`. Running it on a `VirtualClockLoop` makes deadlines, backoff
and aging tests instant and exact: whenever the loop would block waiting for its
next timer, virtual time jumps to that timer instead (like trio's MockClock with
autojump). Real I/O and threads still work: ready I/O is always served first,
a loop with no timers at all blocks on real I/O (so `call_soon_threadsafe` wakes
it), and while executor work (`run_in_executor`, `asyncio.to_thread`) is
outstanding, virtual time follows real time, so a thread's result is not
overtaken by a jump past a pending timeout. Sockets are not waited for: with a
timer pending, an idle poll jumps to it even if a reply is still in flight, so
keep real network I/O out from under virtual timeouts.

Usage (a conftest fixture is one way)::

    @pytest.fixture
    def virtual_loop() -> Iterator[VirtualClockLoop]:
        loop = VirtualClockLoop()
        yield loop
        loop.close()

    def test_backoff() -> None:
        async def main() -> float:
            await asyncio.sleep(3600)
            return asyncio.get_running_loop().time()

        assert run_virtual(main()) == 3600.0  # instantly
"""

from __future__ import annotations

import asyncio
import math
import selectors
import time
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import Executor
from selectors import SelectorKey
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

__all__ = ["DEFAULT_EPOCH", "VirtualClockLoop", "run_virtual", "wall_time"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

DEFAULT_EPOCH = 1_700_000_000.0
"""Wall-clock seconds that virtual time 0.0 corresponds to (2023-11-14T22:13:20Z)."""

_THREAD_POLL_S = 0.01
"""Longest real wait per loop iteration while threads work: bounds how far real time can lag."""


class _VirtualSelector(selectors.BaseSelector):
    """Serves real I/O, and turns the loop's wait-for-next-timer into a jump of virtual time."""

    def __init__(self, clock: VirtualClockLoop) -> None:
        self._real = selectors.DefaultSelector()
        self._clock = clock

    def register(self, fileobj: FileDescriptorLike, events: int, data: Any = None) -> SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: FileDescriptorLike) -> SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: FileDescriptorLike, events: int, data: Any = None) -> SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_key(self, fileobj: FileDescriptorLike) -> SelectorKey:
        return self._real.get_key(fileobj)

    def get_map(self) -> Mapping[FileDescriptorLike, SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None) -> list[tuple[SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or (timeout is not None and timeout <= 0):
            return ready
        if timeout is None:
            # Nothing is scheduled: only something real (I/O, another thread) can wake us.
            return self._real.select(None)
        if not self._clock.threads_busy:
            # `timeout` is exactly `next_timer.when - time()`; landing on it lets
            # `_run_once` (which adds `_clock_resolution`) collect that timer now.
            self._clock.advance(timeout)
            return []
        started = time.monotonic()
        ready = self._real.select(min(timeout, _THREAD_POLL_S))
        self._clock.advance(min(time.monotonic() - started, timeout))
        return ready


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose `time()` is virtual and jumps to the next timer when idle."""

    def __init__(self, *, start: float = 0.0, epoch: float = DEFAULT_EPOCH) -> None:
        self._now = float(start)
        self._epoch = float(epoch)
        self._thread_jobs = 0
        super().__init__(_VirtualSelector(self))
        self._base_resolution: float = self._clock_resolution
        self._fit_resolution()

    def time(self) -> float:
        return self._now

    def wall(self) -> float:
        """Virtual wall-clock seconds, so event timestamps are deterministic too."""
        return self._epoch + self._now

    def advance(self, seconds: float) -> None:
        """Move virtual time forward; timers that became due fire at the next iteration."""
        if not seconds >= 0:
            raise ValueError(f"advance(seconds): seconds must be >= 0, got {seconds!r}")
        self._now += seconds
        self._fit_resolution()

    def _fit_resolution(self) -> None:
        # `_run_once` collects timers with `when < time() + _clock_resolution`. Past
        # ~2**24 s a float's spacing exceeds 1 ns, the sum rounds back to time() and
        # a due timer would never be collected (the loop would spin at timeout 0).
        # Two ulps also cover a long jump that rounds to one ulp short of its timer.
        self._clock_resolution = max(self._base_resolution, 2 * math.ulp(self._now))

    @property
    def threads_busy(self) -> bool:
        """True while executor work this loop is waiting for has not been delivered yet."""
        return self._thread_jobs > 0

    def run_in_executor(
        self, executor: Executor | None, func: Callable[[*Ts], T], *args: *Ts
    ) -> asyncio.Future[T]:
        fut = super().run_in_executor(executor, func, *args)
        # Counted until the result is delivered into the loop (not merely computed),
        # so no virtual jump can slip in between the thread finishing and its waiter
        # waking. A cancelled wait stops counting: nobody is waiting for the thread.
        self._thread_jobs += 1
        fut.add_done_callback(self._thread_job_done)
        return fut

    def _thread_job_done(self, _fut: asyncio.Future[Any]) -> None:
        self._thread_jobs -= 1

    async def shutdown_default_executor(self, *args: Any, **kwargs: Any) -> None:
        # Joining the executor's threads is real work; on 3.12+ it also runs under
        # a timeout that a virtual jump would otherwise expire at once.
        self._thread_jobs += 1
        try:
            await super().shutdown_default_executor(*args, **kwargs)
        finally:
            self._thread_jobs -= 1


def wall_time(loop: asyncio.AbstractEventLoop | None = None) -> float:
    """Wall-clock seconds as the loop sees them: virtual on a `VirtualClockLoop`, else real.

    Without a loop, the running loop is used if there is one.
    """
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return time.time()
    if isinstance(loop, VirtualClockLoop):
        return loop.wall()
    wall = getattr(loop, "wall", None)
    return float(wall()) if callable(wall) else time.time()


def run_virtual(
    main: Coroutine[Any, Any, T], *, start: float = 0.0, epoch: float = DEFAULT_EPOCH
) -> T:
    """Run `main` to completion on a fresh `VirtualClockLoop`, like `asyncio.run`."""
    with asyncio.Runner(loop_factory=lambda: VirtualClockLoop(start=start, epoch=epoch)) as runner:
        return runner.run(main)
