"""Lazy hierarchical batch spawn: depth x branching logical agents, real only while they work.

`Batch` declares `branching ** depth` logical agents under a controller (32^4 = 1,048,576) in
constant time and memory: an agent is an index whose place in the tree is its digits in base
`branching`, and nothing exists for it until work for it arrives. Work is a tuple
`[agent_index, ...]` on the batch's lane; `serve` drains the lane with a `LanePool` and hands
each task to its agent, materialising it first. At most `threshold` agents
(`YOOL_COMPRESSION_THRESHOLD`) are materialised at once: beyond that the least recently used
idle agent is compressed to a token (its state, task count and spend as compact JSON), written
to the store's `batch_tokens` table when there is a store (`tokens_in_store` reads them back),
and restored from the token on its next task. `load_batch` reads a batch's spec and tokens back
after a restart, and a `Batch` made with them carries on where it was (`persist` writes the
tokens of the agents still materialised, e.g. as its controller ends).

Work can be claimed (a `results` lane given): a task is then moved to the lane's claims lane
`<lane>/claimed` as `(*task, starts)` before anything is done for it, and its result is put
on `results` in the same write that drops its claim (on a durable lane: one transaction each).
So across a crash a task is waiting, claimed, or done, never two of them. A claim found by the
next `serve` (its server was SIGKILLed mid-task, or its controller stopped) is started once
more as `(*task, 2)`, so the handler can say so honestly in its result; one interrupted again
is reported through `reject` and not run a third time. Nothing is silently done twice.

Budgets come from the controller: each materialised agent has a kernel `Account` whose parent
is the controller's, so whatever an agent spends is charged to the controller and every
ancestor, all or nothing, and an agent can never spend what the controller has not got. A
restored agent's account carries its spend so far without charging it twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from yool.kernel.accounts import Account, Budget
from yool.policy import RuntimePolicy
from yool.tuplespace.pool import LanePool
from yool.tuplespace.space import Tup, TupleSpace

if TYPE_CHECKING:
    from yool.kernel.store import Store

__all__ = [
    "MAX_AGENTS",
    "Agent",
    "Batch",
    "BatchError",
    "check_shape",
    "load_batch",
    "tokens_in_store",
]

MAX_AGENTS: Final = 2**40
_dumps: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class BatchError(ValueError):
    """A batch that cannot be declared or an agent index outside it."""


def check_shape(depth: int, branching: int) -> int:
    """The number of agents of a depth x branching batch, or BatchError saying why not."""
    if not 1 <= depth <= 16 or not 1 <= branching <= 4096:
        raise BatchError("depth must be 1..16 and branching 1..4096")
    size: int = branching**depth
    if size > MAX_AGENTS:
        raise BatchError(f"{branching}^{depth} = {size} agents is more than {MAX_AGENTS}")
    return size


class Agent:
    """One materialised logical agent: its place in the tree, its state and its account."""

    __slots__ = ("account", "busy", "index", "lock", "path", "state", "tasks")

    def __init__(self, index: int, path: tuple[int, ...], account: Account) -> None:
        self.index = index
        self.path = path
        self.account = account
        self.state: dict[str, Any] = {}
        self.tasks = 0
        self.busy = 0
        self.lock: asyncio.Lock | None = None  # made by a serial `serve`, only if it is needed

    def token(self) -> str:
        a = self.account
        return _dumps(
            {
                "i": self.index,
                "n": self.tasks,
                "s": self.state,
                "u": [a.tokens, a.usd, a.tool_calls],
            }
        )


# Both return the task's result tuple when the batch has a `results` lane (else None).
AgentHandler = Callable[[Agent, Tup], Awaitable[Sequence[Any] | None]]
Reject = Callable[[Tup, str], Awaitable[Sequence[Any] | None]]


class Batch:
    """`branching ** depth` lazy agents fed from `lane` (see the module doc)."""

    def __init__(
        self,
        space: TupleSpace,
        *,
        depth: int,
        branching: int,
        lane: str,
        controller: Account,
        policy: RuntimePolicy,
        budget: Budget | None = None,
        threshold: int | None = None,
        store: Store | None = None,
        batch_id: str | None = None,
        tokens: dict[int, str] | None = None,
        now: Callable[[], float] | None = None,
        meta: dict[str, Any] | None = None,
        results: str | None = None,
    ) -> None:
        size = check_shape(depth, branching)
        self.id = batch_id or "batch_" + os.urandom(6).hex()
        self.space = space
        self.depth = depth
        self.branching = branching
        self.size = size
        self.lane = lane
        self.controller = controller
        self.budget = budget  # each agent's own limit, under the controller's
        self.threshold = threshold or policy.compression_threshold
        self.policy = policy
        self.meta = dict(meta or {})  # what its owner keeps with the spec (lanes, budget)
        self._store = store
        self._now = now or (lambda: asyncio.get_running_loop().time())
        self.active: OrderedDict[int, Agent] = OrderedDict()  # least recently used first
        self.tokens: dict[int, str] = dict(tokens or {})  # compressed agents, by index
        self.materialised = 0  # agents made (fresh or restored), over the batch's life
        self.restored = 0
        self.compressed = 0
        self.peak_active = 0
        self._freed = asyncio.Event()
        self._idle_s: float | None = None
        self._idle: asyncio.TimerHandle | None = None  # armed by a task ending, never periodic
        # With a results lane, tasks are claimed (see `serve`): `claims` holds the started ones.
        self.results = results
        self.claims = None if results is None else f"{lane}/claimed"
        self.rerun = 0  # claims started again after an interruption
        self.abandoned = 0  # claims interrupted at their second start, reported, not rerun
        space.declare(lane)
        if self.claims is not None:
            space.declare(self.claims, durable=space.is_durable(lane))
        if store is not None:
            store.write_later(partial(_put_batch, batch=self.id, spec=_dumps(self.spec())))

    def spec(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "branching": self.branching,
            "agents": self.size,
            "lane": self.lane,
            "threshold": self.threshold,
            **({"meta": self.meta} if self.meta else {}),
        }

    def path(self, index: int) -> tuple[int, ...]:
        """The agent's place in the tree: its index's digits in base `branching`."""
        if not 0 <= index < self.size:
            raise BatchError(f"agent index {index} is outside 0..{self.size - 1}")
        digits = []
        for _ in range(self.depth):
            index, d = divmod(index, self.branching)
            digits.append(d)
        return tuple(reversed(digits))

    # -- materialise, compress, restore ------------------------------------------------

    async def acquire(self, index: int) -> Agent:
        """The agent at `index`, materialised (restored from its token if it has one)."""
        agent = self.active.get(index)
        if agent is not None:
            self.active.move_to_end(index)
            agent.busy += 1
            return agent
        path = self.path(index)
        while len(self.active) >= self.threshold and not self._compress_one():
            self._freed.clear()
            await self._freed.wait()  # every agent is busy: wait for one to finish
            agent = self.active.get(index)
            if agent is not None:
                self.active.move_to_end(index)
                agent.busy += 1
                return agent
        account = Account(self.controller, self.budget, self._now())
        agent = Agent(index, path, account)
        token = self.tokens.pop(index, None)
        if token is not None:
            data = json.loads(token)
            agent.tasks, agent.state = data["n"], data["s"]
            # Already charged up the tree when spent: carried, not charged again.
            account.tokens, account.usd, account.tool_calls = data["u"]
            self.restored += 1
        self.materialised += 1
        agent.busy = 1
        self.active[index] = agent
        self.peak_active = max(self.peak_active, len(self.active))
        return agent

    def release(self, agent: Agent) -> None:
        agent.busy -= 1
        if agent.busy == 0:
            self._freed.set()
            if self._idle_s is not None and self._idle is None:
                loop = asyncio.get_running_loop()
                self._idle = loop.call_later(self._idle_s, self._on_idle)

    def _on_idle(self) -> None:
        """The idle timer: compress the agents idle now; a busy one re-arms it as it ends."""
        self._idle = None
        self.compress_idle()

    def _compress_one(self) -> bool:
        for index, agent in self.active.items():  # least recently used first
            if agent.busy == 0:
                del self.active[index]
                token = agent.token()
                self.tokens[index] = token
                self.compressed += 1
                if self._store is not None:
                    self._store.write_later(
                        partial(_put_token, batch=self.id, agent=index, token=token)
                    )
                return True
        return False

    def persist(self) -> int:
        """Write the token of every materialised agent to the store, keeping them active."""
        if self._store is None:
            return 0
        for index, agent in self.active.items():
            self._store.write_later(
                partial(_put_token, batch=self.id, agent=index, token=agent.token())
            )
        return len(self.active)

    def compress_idle(self) -> int:
        """Compress every idle materialised agent (e.g. when the lane runs dry)."""
        n = 0
        while self._compress_one():
            n += 1
        return n

    # -- serving ------------------------------------------------------------------------

    async def serve(
        self,
        handler: AgentHandler,
        *,
        arity: int = 2,
        wait_s: float | None = 0.0,
        reject: Reject | None = None,
        batch_size: int | None = None,
        serial: bool = False,
        idle_s: float | None = None,
    ) -> int:
        """Drain the lane: each tuple `[index, ...]` runs `handler(agent, tuple)`.

        A tuple naming no agent of the batch goes to `reject(tuple, why)` when given (else it
        fails its pool batch). `wait_s`: how long the lane may be quiet before serving ends
        (None: never; then nothing waits on a timer while the lane is empty). `batch_size`
        (default the policy's small-task size) is how many tuples one worker takes at once:
        1 for tasks that are not small, so they run side by side. `serial`: one task at a time
        per agent (its next task sees what its last one left in its state). `idle_s`: idle
        agents are compressed this long after the last task ended; the timer is armed only by
        a task ending, so a quiet batch does no periodic work.

        Without `results`, tasks are taken from the lane; if serving is cancelled the ones
        taken but not finished go back (at least once). With `results` (see the module doc)
        the handler and `reject` get the claim `(*t, starts)` and return the result tuple,
        which is put on `results` in the same write that settles the claim; a cancelled
        serve puts back only the tasks it had not started, and the next serve first deals
        with the claims left by an earlier one (`recover`).
        """
        self._idle_s = idle_s
        claims = self.claims

        async def one(t: Tup) -> None:
            """Run one task (or claim); its id goes in `started` as its handler is called."""
            index = t[0]
            if type(index) is not int or not 0 <= index < self.size:
                why = f"the first field is an agent index 0..{self.size - 1}"
                if reject is None:
                    raise BatchError(f"work tuple {t!r}: {why}")
                result = await reject(t, why)
                if claims is not None:
                    self.space.settle(claims, t, self.results, result)
                return
            agent = await self.acquire(index)
            try:
                started.add(id(t))
                try:
                    if serial:
                        if agent.lock is None:
                            agent.lock = asyncio.Lock()
                        async with agent.lock:
                            result = await handler(agent, t)
                    else:
                        result = await handler(agent, t)
                except Exception as e:
                    if claims is None or reject is None:
                        raise
                    # Started, so not retried blindly: reported with its result instead.
                    result = await reject(t, f"failed: {type(e).__name__}: {e}")
                agent.tasks += 1
                if claims is not None:
                    self.space.settle(claims, t, self.results, result)
            finally:
                self.release(agent)

        started: set[int] = set()

        async def run(batch: list[Tup]) -> None:
            for n, t in enumerate(batch):
                try:
                    await one(t)
                except Exception:
                    raise  # the pool puts the batch back (a bounded number of times)
                except BaseException:  # cancelled, or the process exits: nothing is lost
                    for left in batch[n:]:
                        if claims is None:
                            self.space.out_nowait(self.lane, left)
                        elif id(left) not in started:
                            self.space.unclaim(claims, left, self.lane)
                    raise  # a claim started stays: the next serve's `recover` sees it
                finally:
                    started.discard(id(t))

        pool = LanePool(self.space, self.lane, run, self.policy, arity=arity, claims=claims)
        if batch_size is not None:
            pool.batch_size = batch_size
        self.pool = pool
        recovering = [asyncio.ensure_future(run([c])) for c in await self.recover(reject, arity)]
        try:
            done = await pool.drain(wait_s=wait_s)
            await asyncio.gather(*recovering)
        finally:
            for task in recovering:
                task.cancel()
            await asyncio.gather(*recovering, return_exceptions=True)
            if self._idle is not None:
                self._idle.cancel()
                self._idle = None
        return done + len(recovering)

    async def recover(self, reject: Reject | None, arity: int = 2) -> list[Tup]:
        """The claims an earlier serve left (its server died, or it was stopped mid-task).

        Each was started once and never settled, so it may have done part or all of its work:
        it is started once more, as `(*t, 2)` (committed first), so the handler can say so.
        One left at its second start is not run a third time: it is settled with what
        `reject(claim, "interrupted ...")` returns. Returns the claims to run again.
        """
        claims = self.claims
        if claims is None:
            return []
        again: list[Tup] = []
        for c in self.space.scan(claims, [None] * (arity + 1), limit=1_000_000):
            if type(c[-1]) is int and c[-1] < 2:
                got = self.space.reclaim(claims, c)
                if got is not None:
                    again.append(got)
                    self.rerun += 1
            else:
                why = "interrupted twice (the server stopped while it ran); not started again"
                result = None if reject is None else await reject(c, why)
                self.space.settle(claims, c, self.results, result)
                self.abandoned += 1
        if again and self.space.is_durable(claims):
            await self.space.committed()
        return again

    def stats(self) -> dict[str, Any]:
        return {
            **self.spec(),
            "id": self.id,
            "active": len(self.active),
            "peak_active": self.peak_active,
            "materialised": self.materialised,
            "restored": self.restored,
            "compressed": self.compressed,
            "tokens": len(self.tokens),
            "rerun": self.rerun,
            "abandoned": self.abandoned,
        }


def _put_batch(conn: sqlite3.Connection, batch: str, spec: str) -> None:
    conn.execute("INSERT OR REPLACE INTO batches (batch, spec) VALUES (?, ?)", (batch, spec))


def _put_token(conn: sqlite3.Connection, batch: str, agent: int, token: str) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO batch_tokens (batch, agent, token) VALUES (?, ?, ?)",
        (batch, agent, token),
    )


def load_batch(
    conn: sqlite3.Connection, batch: str
) -> tuple[dict[str, Any], dict[int, str]] | None:
    """A declared batch's spec and durable tokens, or None (run it with `Store.read`)."""
    row = conn.execute("SELECT spec FROM batches WHERE batch = ?", (batch,)).fetchone()
    if row is None:
        return None
    return json.loads(row[0]), tokens_in_store(conn, batch)


def tokens_in_store(conn: sqlite3.Connection, batch: str) -> dict[int, str]:
    """The durable tokens of one batch, by agent index (run it with `Store.read`)."""
    rows = conn.execute("SELECT agent, token FROM batch_tokens WHERE batch = ?", (batch,))
    return {int(agent): str(token) for agent, token in rows}
