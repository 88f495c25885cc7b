"""Lane worker pools: bounded, adaptive fan-out over the tuples of one lane.

A `LanePool` drains a lane with up to `max_lane_concurrency` workers, of which only as many as
a kernel `Lane`'s slots run at once. The slots are sized by `AdaptiveConcurrency` (the one the
LLM driver sizes provider lanes with) from each batch's latency EWMA and error rate, starting
at `lane_concurrency`. Each worker takes up to `batch_small_task_size` tuples at once (small
tasks are run together: one scheduling round and one handler call per batch, not per task). A
batch whose tasks are all idempotent (the `idempotent` predicate) is hedged by the LLM
driver's `Hedger`: if it is slow, a second attempt races it and the first success wins.

A failed batch is put back on the lane at most `retries` times per pool, then reported in
`failed`; nothing is dropped silently.

With a `claims` lane, a task is never just taken: it is moved to `claims` as `(*t, starts)`
(`TupleSpace.claim_many`, one write on a durable lane, committed before the handler runs),
and the handler gets the claim. Whoever finishes the task settles its claim (see
`TupleSpace.settle`); a failed one is moved back to the lane (or dropped and reported in
`failed`), and a claim left when serving is cancelled or the process dies stays on `claims`,
so its owner can tell the tasks that were started from the ones that never were (`Batch`).
Idle workers of a claiming pool wait with `rd`, so an `out` is stored, then claimed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from yool.drivers.llm.resilience import AdaptiveConcurrency, Hedger
from yool.kernel.lanes import Lane
from yool.policy import RuntimePolicy
from yool.tuplespace.space import Tup, TupleSpace
from yool.tuplespace.templates import Template, key

__all__ = ["BatchHandler", "LanePool"]

BatchHandler = Callable[[list[Tup]], Awaitable[None]]


class LanePool:
    """Serve lane `lane` (tuples matching `template`) with `handler`, one batch at a time."""

    def __init__(
        self,
        space: TupleSpace,
        lane: str,
        handler: BatchHandler,
        policy: RuntimePolicy,
        *,
        template: Sequence[Any] | None = None,
        arity: int = 1,
        idempotent: Callable[[Tup], bool] | None = None,
        hedger: Hedger | None = None,
        retries: int = 1,
        claims: str | None = None,
    ) -> None:
        self.space = space
        self.lane = lane
        self.handler = handler
        self.policy = policy
        self.template = Template(template if template is not None else [None] * arity)
        self.slots = Lane(f"tuples:{lane}", policy.lane_concurrency)
        self.adaptive = AdaptiveConcurrency(
            self.slots, policy.lane_concurrency, policy.max_lane_concurrency
        )
        self.batch_size = policy.batch_small_task_size
        self.idempotent = idempotent
        self.hedger = hedger if hedger is not None else (Hedger() if idempotent else None)
        self.retries = retries
        self.claims = claims
        self.done = 0  # tasks handled
        self.batches = 0
        self.errors = 0
        self.failed: list[Tup] = []
        self._tries: dict[tuple[Any, ...], int] = {}
        self.peak = 0  # most batches in flight at once
        self._running = 0

    @property
    def concurrency(self) -> int:
        return self.adaptive.limit

    async def drain(self, *, wait_s: float | None = 0.0) -> int:
        """Serve until the lane has had no matching tuple for `wait_s` s (None: for ever, with
        no timer while it waits); returns the tasks done."""
        await self.space.prepare(self.lane, self.template)
        workers = [
            asyncio.ensure_future(self._worker(wait_s))
            for _ in range(self.policy.max_lane_concurrency)
        ]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        return self.done

    def _take(self, n: int) -> list[Tup]:
        if self.claims is None:
            return self.space.inp_many(self.lane, self.template, n)
        got = self.space.claim_many(self.lane, self.template, n, self.claims)
        return [(*t, 1) for t in got]

    async def _worker(self, wait_s: float | None) -> None:
        space, lane, tpl = self.space, self.lane, self.template
        while True:
            async with self.slots.slot():
                batch = self._take(self.batch_size)
                if not batch:
                    if wait_s is not None and wait_s <= 0:
                        return
                    if self.claims is not None:
                        if await space.rd(lane, tpl, wait_s) is None:
                            return
                        continue  # stored by now: claim it (another worker may be first)
                    first = await space.in_(lane, tpl, wait_s)
                    if first is None:
                        return
                    batch = [first, *space.inp_many(lane, tpl, self.batch_size - 1)]
                if self.claims is not None and space.is_durable(self.claims):
                    try:
                        await space.committed()  # on disk before anything is done for them
                    except BaseException:
                        for c in batch:  # never started: back on the lane
                            space.unclaim(self.claims, c, lane)
                        raise
                await self._run(batch)

    async def _run(self, batch: list[Tup]) -> None:
        loop = asyncio.get_running_loop()
        self._running += 1
        self.peak = max(self.peak, self._running)
        started = loop.time()
        ok = False
        try:
            if self.hedger is not None and self.idempotent and all(map(self.idempotent, batch)):
                await self.hedger.race(lambda: self.handler(batch))
            else:
                await self.handler(batch)
            ok = True
            self.done += len(batch)
        except Exception:
            self.errors += 1
            claims = self.claims
            for t in batch:
                task = t if claims is None else t[:-1]
                k = tuple(map(key, task))
                tries = self._tries.get(k, 0) + 1
                if tries > self.retries:
                    self._tries.pop(k, None)
                    if claims is None or self.space.settle(claims, t):
                        self.failed.append(task)
                else:
                    self._tries[k] = tries
                    if claims is None:
                        self.space.out_nowait(self.lane, t)
                    else:  # settled already by the handler: nothing to retry
                        self.space.unclaim(claims, t, self.lane)
        finally:
            self._running -= 1
            self.adaptive.record(loop.time() - started, ok=ok)
        self.batches += 1
