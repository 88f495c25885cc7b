"""The kernel: the process table and everything that happens to a process.

Processes are asyncio tasks; the kernel gives each a pid (never reused, even
across restarts on the same database), an account, a mailbox and a `Sys`,
the one bridge through which it touches anything. The kernel delivers
messages, runs links, monitors and signals, kills at deadlines, moves
capabilities, journals driver I/O and keeps the event log. It knows nothing of
LLMs, MCP or the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import logging
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from yool.kernel import introspect, snapshots
from yool.kernel.accounts import Account, Budget, Cost, Reservation
from yool.kernel.caps import CapTable
from yool.kernel.context import Summarizer
from yool.kernel.devices import Driver, Handle, Reply
from yool.kernel.errors import DriverError, KernelError, ProcessExit, QuotaExceeded, ReplayError
from yool.kernel.events import Event, EventLog
from yool.kernel.introspect import ProcInfo
from yool.kernel.journal import Cursor, Entry, Journal, Source, digest
from yool.kernel.lanes import ADMISSION, Admission, Lanes
from yool.kernel.messages import Child, Down, Exit, Message, Term
from yool.kernel.process import INIT, TRAP_EXIT, TRAP_TERM, Image, Process
from yool.kernel.reasons import (
    DEADLINE,
    INTERRUPTED,
    NORMAL,
    SHUTDOWN,
    ExitReason,
    fault,
    killed,
    quota,
)
from yool.kernel.remote import Remote
from yool.kernel.sys import Sys

if TYPE_CHECKING:
    from yool.kernel.store import Store
    from yool.policy import RuntimePolicy

log = logging.getLogger("yool.kernel")

PID_BLOCK = 8192
PID_BLOCK_MAX = 1 << 20
PID_RUNWAY_S = 4.0  # a top-up holds this many seconds of spawns at the current rate
REAPED_KEEP = 65_536
PROCESS_RIGHTS = ("send", "monitor", "link", "kill")
FULL_GC_EVERY = 1000  # middle-generation collections per full collection (CPython: 10)


@dataclass
class Counters:
    spawned: int = 0
    sent: int = 0
    received: int = 0
    dropped: int = 0  # sends to a process that had already died
    replayed: int = 0
    exits: dict[str, int] = field(default_factory=dict)
    charged: dict[str, float] = field(
        default_factory=lambda: {"tokens": 0, "usd": 0.0, "tool_calls": 0}
    )


class Kernel:
    """Construct inside a running event loop; `async with Kernel() as k:` shuts it down."""

    def __init__(
        self,
        *,
        store: Store | None = None,
        budget: Budget | None = None,
        record: bool | None = None,
        mailbox_limit: int = 1024,
        events_ring: int = 4096,
        lane_concurrency: int = 8,
        lane_ceiling: int = 256,
        aging_s: float = 1.0,
        tune_gc: bool = True,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        # Python's full collections walk the whole heap; with hundreds of thousands of
        # long-lived processes they dominate spawn time. Keep them rare while we run.
        self._gc_before = gc.get_threshold() if tune_gc else None
        if tune_gc:
            young, middle, _ = self._gc_before  # type: ignore[misc]
            gc.set_threshold(young, middle, FULL_GC_EVERY)
        self._callback_context = contextvars.Context()
        now = self.loop.time
        self._now = now
        wall = getattr(self.loop, "wall", None)
        self.wall: Callable[[], float] = wall if callable(wall) else time.time
        self.store = store
        self.caps = CapTable(now)
        self.lanes = Lanes(lane_concurrency, lane_ceiling, aging_s)
        self.journal = Journal(store)
        self.record = store is not None if record is None else record
        self.mailbox_limit = mailbox_limit
        self.procs: dict[int, Process] = {}
        self.summarizer: Summarizer | None = None  # default for every process's working memory
        self.images: dict[str, Image] = {}
        self._image_names: dict[Image, str] = {}
        self.drivers: dict[str, Driver] = {}
        self.names: dict[str, int] = {}
        self.gateway: Remote | None = None  # a node gateway, when this kernel is in a cluster
        self.counters = Counters()
        self.interrupted: list[int] = []
        self._reaped: OrderedDict[int, ExitReason] = OrderedDict()
        self._exit_waiters: dict[int, list[asyncio.Future[ExitReason]]] = {}
        self._closing = False
        self._next_pid = 2
        self._pid_end: int | None = None  # None: no store, pids are unbounded
        self._topping_up = False
        self._spare_block: range | None = None
        self._block_start = 0  # first pid of the block in use, and when it came into use
        self._block_t0 = time.monotonic()
        start_seq = 0
        if store is not None:
            self.interrupted = store.mark_interrupted()
            start_seq = store.max_event_seq()
            block = store.reserve_pids(PID_BLOCK)
            self._next_pid, self._pid_end = max(block.start, 2), block.stop
            self._block_start = block.start
            # The first spare is asked for now, while the writer is idle, and large: a
            # spawn storm right after boot outruns a lagging writer's answer otherwise.
            self._topping_up = True
            store.reserve_pids_later(PID_BLOCK * 8, self._spare_ready)
        self.events = EventLog(events_ring, self.wall, start_seq)
        if store is not None:
            self.events.sinks.append(self._persist_event)
        root = Account(None, budget, now())
        init = Process(INIT, 0, "init", "init", (), root, now())
        init.sys = Sys(self, init)
        self.procs[INIT] = init
        self._init = init
        self.caps.mint(INIT, "spawn", None, ("spawn",))
        self.events.emit(
            "boot", INIT, {"interrupted": self.interrupted} if self.interrupted else None
        )

    @classmethod
    def from_policy(
        cls,
        policy: RuntimePolicy,
        store: Store | None = None,
        *,
        root_budget: bool = True,
        tune_gc: bool = True,
    ) -> Kernel:
        """A kernel tuned by `policy`; init holds the policy's budget unless `root_budget`
        is false (a front end that gives it to a session process instead)."""
        return cls(
            store=store,
            budget=Budget.from_policy(policy) if root_budget else None,
            mailbox_limit=policy.mailbox_limit,
            events_ring=policy.events_ring,
            lane_concurrency=policy.lane_concurrency,
            lane_ceiling=policy.max_lane_concurrency,
            aging_s=policy.aging_s,
            tune_gc=tune_gc,
        )

    async def __aenter__(self) -> Kernel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    @property
    def init(self) -> Sys:
        """The host's own process: it holds the root budget and every root capability."""
        assert self._init.sys is not None
        return self._init.sys

    # -- images and drivers ---------------------------------------------------

    def register_image(self, name: str, image: Image) -> None:
        """Make `image` spawnable (and restorable, and remotely spawnable) by name."""
        current = self.images.get(name)
        if current is not None and current is not image:
            raise KernelError(f"image name {name!r} is already registered to another function")
        self.images[name] = image

    def register_driver(
        self, driver: Driver, rights: Iterable[str] = ("open", "read", "write")
    ) -> str:
        """Install a driver; init receives the device capability, which it returns."""
        if driver.name in self.drivers:
            raise KernelError(f"driver {driver.name!r} is already registered")
        self.drivers[driver.name] = driver
        return self.caps.mint(INIT, "device", driver.name, rights)

    def _resolve(self, image: str | Image) -> tuple[str, Image]:
        if isinstance(image, str):
            fn = self.images.get(image)
            if fn is None:
                known = ", ".join(sorted(self.images)) or "none"
                raise KernelError(f"no image named {image!r} (registered: {known})")
            return image, fn
        if not callable(image):
            raise KernelError(f"spawn needs an async function or an image name, got {image!r}")
        name = self._image_names.get(image)
        if name is None:
            name = getattr(image, "image_name", None) or f"{image.__module__}:{image.__qualname__}"
            if self.images.setdefault(name, image) is not image:
                name = f"{name}#{id(image):x}"  # two different functions with one qualname
                self.images.setdefault(name, image)
            self._image_names[image] = name
        return name, image

    # -- pids -------------------------------------------------------------------

    def _alloc_pid(self) -> int:
        pid = self._next_pid
        end = self._pid_end
        if end is None:
            self._next_pid = pid + 1
            return pid
        store = self.store
        assert store is not None
        if pid >= end:
            block = self._spare_block or store.reserve_pids(PID_BLOCK)  # sync only if behind
            self._spare_block = None
            pid, self._pid_end = block.start, block.stop
            self._block_start, self._block_t0 = pid, time.monotonic()
        elif (
            self._spare_block is None
            and not self._topping_up
            and (pid - self._block_start) * 8 >= end - self._block_start
        ):
            # Ask early (an eighth in) and for enough pids to last PID_RUNWAY_S at the
            # current rate: under a spawn storm the writer lags, and the loop must never
            # wait for it on the sync path above.
            self._topping_up = True
            rate = (pid - self._block_start) / max(time.monotonic() - self._block_t0, 1e-3)
            size = int(min(PID_BLOCK_MAX, max(PID_BLOCK, rate * PID_RUNWAY_S)))
            store.reserve_pids_later(size, self._spare_ready)
        self._next_pid = pid + 1
        return pid

    def _spare_ready(self, block: range) -> None:
        """Called from the store's writer thread with the next durable pid block."""

        def adopt() -> None:
            self._topping_up = False
            self._spare_block = block

        # If the loop is gone, the block stays reserved and is never handed out.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(adopt)

    # -- spawning ---------------------------------------------------------------

    def spawn(
        self,
        parent: Process,
        image: str | Image,
        args: tuple[Any, ...],
        *,
        name: str | None = None,
        budget: Budget | None = None,
        caps: Iterable[str] = (),
        link: bool = False,
        monitor: bool = False,
        priority: int = 0,
        deadline: float | None = None,
        cursor: Cursor | None = None,
        restored: dict[str, Any] | None = None,
    ) -> Child:
        if self._closing:
            raise KernelError("the kernel is shutting down")
        image_name, fn = self._resolve(image)
        handed = tuple(dict.fromkeys(caps)) if caps else ()  # the same cap twice moves once
        for ref in handed:
            self.caps.require_held(parent.pid, ref)
        if deadline is not None and not deadline >= 0:
            raise KernelError(f"deadline must be >= 0 seconds, got {deadline!r}")
        parent.account.open_child()  # QuotaExceeded("children") leaves nothing behind
        now = self._now()
        try:
            pid = self._alloc_pid()
            account = Account(parent.account, budget, now)
            if (
                cursor is None
                and parent.pid != INIT
                and (self.record or parent.journal is not None)
            ):
                # Journal the spawn even before the parent's first I/O, and before the
                # child exists: a strict replay that diverges here leaves no half-child.
                if parent.journal is None:
                    parent.journal = Cursor(parent.pid)
                cursor = self._spawn_entry(parent, pid, image_name)
        except BaseException:
            parent.account.close_child()
            raise
        p = Process(pid, parent.pid, name or image_name, image_name, args, account, now)
        p.priority = priority
        for ref in handed:
            self.caps.transfer(parent.pid, ref, pid)
        self.procs[pid] = p
        if parent.kids is None:
            parent.kids = {pid}
        else:
            parent.kids.add(pid)
        if link:
            p.links = {parent.pid}
            if parent.links is None:
                parent.links = {pid}
            else:
                parent.links.add(pid)
        if monitor:
            p.monitors = {parent.pid}
        if deadline is not None:
            p.deadline = now + deadline
        if p.deadline is not None or account.wall_deadline is not None:
            self._arm_timer(p)
        p.journal = cursor
        sys = p.sys = Sys(self, p, restored)
        try:
            coro: Any = fn(sys, *args)  # Any: an image may break its own type
        except Exception as e:  # e.g. wrong arity: the child faults, no half-spawned entry
            coro = _fail(e)
        if type(coro) is not CoroutineType and not asyncio.iscoroutine(coro):
            coro = _fail(KernelError(f"image {image_name!r} is not an async function"))
        task = p.task = self.loop.create_task(coro)
        task.add_done_callback(sys._ended, context=self._callback_context)
        self.counters.spawned += 1
        self.events.emit("spawn", pid, {"parent": parent.pid, "name": p.name})
        if self.store is not None:
            self.store.put_process(
                pid, parent.pid, image_name, p.name, "running", self.wall(), _meta(args)
            )
        return Child(pid, lambda: self.caps.mint(parent.pid, "process", pid, PROCESS_RIGHTS))

    def _spawn_entry(self, parent: Process, pid: int, image_name: str) -> Cursor | None:
        """Journal the spawn in the parent's stream; a replayed parent finds its child's."""
        cur = parent.journal
        assert cur is not None
        op = cur.op
        cur.op += 1
        d = digest("spawn", image_name)
        recorded = cur.recorded(op)
        child: Cursor | None = Cursor(pid)
        if recorded is not None and recorded.digest == d and cur.source is not None:
            origin = int(recorded.result["spawned"])
            child = Cursor(pid, cur.source, origin)
        elif cur.source is not None:
            if cur.source.strict:
                # The child cannot exist in a strict replay; the parent faults at its next trap.
                raise ReplayError(
                    f"replay diverged at op {op} of pid {parent.pid}: spawn of {image_name!r} "
                    "was not recorded here"
                )
            cur.source = None
        self.journal.append(cur.stream, op, Entry(d, {"spawned": pid}, None))
        return child

    def _arm_timer(self, p: Process) -> None:
        when = p.deadline
        wall = p.account.wall_deadline
        reason = DEADLINE
        if wall is not None and (when is None or wall < when):
            when, reason = wall, quota("wall")
        if p.timer is not None:
            p.timer.cancel()
            p.timer = None
        if when is not None:
            p.timer = self.loop.call_at(when, self.kill, p.pid, reason)

    def ended(self, p: Process, task: asyncio.Task[Any]) -> None:
        """The process's task finished: work out the one true reason, then clean up."""
        if task.cancelled():
            if p.reason is None:
                self._exit(p, SHUTDOWN)  # cancelled from outside the kernel
            return
        e = task.exception()
        if e is None:
            reason = NORMAL
        elif isinstance(e, ProcessExit):
            reason = e.reason if isinstance(e.reason, ExitReason) else NORMAL
        elif isinstance(e, QuotaExceeded):
            reason = quota(e.resource)
        elif isinstance(e, asyncio.CancelledError):
            reason = SHUTDOWN
        else:
            reason = fault(e)
            if p.reason is None:
                self.events.emit(
                    "fault", p.pid, {"error": reason.detail, "traceback": _short_traceback(e)}
                )
        self._exit(p, reason)

    # -- death ------------------------------------------------------------------

    def kill(self, pid: int, reason: ExitReason) -> bool:
        """End `pid` now with `reason`; False if it was not alive."""
        p = self.procs.get(pid)
        if p is None or pid == INIT or p.reason is not None:
            return False
        self._exit(p, reason)
        return True

    def _exit(self, first: Process, first_reason: ExitReason) -> None:
        # A worklist, not recursion: a chain of links may be arbitrarily long.
        work: deque[tuple[Process, ExitReason]] = deque([(first, first_reason)])
        while work:
            p, reason = work.popleft()
            if p.reason is not None:
                continue
            p.reason = reason
            pid = p.pid
            if p.timer is not None:
                p.timer.cancel()
                p.timer = None
            del self.procs[pid]
            self._reaped[pid] = reason
            if len(self._reaped) > REAPED_KEEP:
                self._reaped.popitem(last=False)
            if p.account.parent is not None:
                p.account.parent.close_child()
            self.caps.revoke_owned(pid)
            if p.waiter is not None:
                p.waiter = None
            if p.senders:
                for fut in p.senders:
                    if not fut.done():
                        fut.set_result(None)
                p.senders = None
            if p.stopped is not None and not p.stopped.done():
                p.stopped.set_result(None)
            parent = self.procs.get(p.parent)
            if parent is not None and parent.kids is not None:
                parent.kids.discard(pid)
            if p.kids:
                init = self._init
                for kid_pid in p.kids:
                    kid = self.procs.get(kid_pid)
                    if kid is not None:
                        kid.parent = INIT
                        if init.kids is None:
                            init.kids = set()
                        init.kids.add(kid_pid)
                p.kids = None
            if p.links:
                for other_pid in p.links:
                    other = self.procs.get(other_pid)
                    if other is None:
                        continue
                    if other.links is not None:
                        other.links.discard(pid)
                    if other.trap & TRAP_EXIT:
                        self.deliver(other, Message(pid, Exit(pid, reason)), force=True)
                    elif not reason.normal and other_pid != INIT:
                        # In a shutdown every process ends with the shutdown's reason (OTP:
                        # the exit signal carries `shutdown`), whichever of a pair goes first.
                        work.append((other, reason if self._closing else killed(pid)))
                p.links = None
            if p.monitors:
                for watcher_pid in p.monitors:
                    watcher = self.procs.get(watcher_pid)
                    if watcher is not None:
                        self.deliver(watcher, Message(pid, Down(pid, reason)), force=True)
                p.monitors = None
            waiters = self._exit_waiters.pop(pid, None)
            if waiters:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(reason)
            if self.names:
                for name in [n for n, owner in self.names.items() if owner == pid]:
                    del self.names[name]
            if p.cleanups:
                for fn in reversed(p.cleanups):
                    try:
                        fn()
                    except Exception as e:
                        self.events.emit("fault", pid, {"error": f"cleanup failed: {e!r}"})
                p.cleanups = None
            if p.handles:
                handles = list(p.handles.values())
                p.handles = None
                self.loop.create_task(_close_all(handles))
            key = reason.kind
            self.counters.exits[key] = self.counters.exits.get(key, 0) + 1
            self.events.emit("exit", pid, {"reason": reason.to_json(), "name": p.name})
            if self.store is not None:
                self.store.end_process(pid, "exited", reason.to_json(), self.wall())
            task = p.task
            if task is not None and not task.done() and task is not _current_task():
                task.cancel()

    # -- messages ---------------------------------------------------------------

    def deliver(self, p: Process, msg: Message, *, force: bool = False) -> None:
        waiter = p.waiter
        if waiter is not None and waiter.done():
            # The wait was cancelled (a timeout or a cancel at this very instant) and the
            # receiver has not resumed yet: queue the message, so it is not lost.
            p.waiter = None
            p.match = None
            waiter = None
        if waiter is not None and (p.match is None or _matches(p.match, msg.body)):
            p.waiter = None
            p.match = None
            waiter.set_result(msg)
            return
        q = p.queue
        if q is None:
            p.queue = deque((msg,))
        else:
            q.append(msg)

    def mailbox_full(self, p: Process) -> bool:
        q = p.queue
        if q is None:
            return False
        limit = p.account.budget.mailbox if p.account.budget is not None else None
        return len(q) >= (limit if limit is not None else self.mailbox_limit)

    def post(self, pid: int, body: Any, sender: int = 0) -> bool:
        """Deliver from outside any process (the host, a transport); never blocks."""
        p = self.procs.get(pid)
        if p is None or p.reason is not None:
            return False
        if self.mailbox_full(p):
            self.events.emit("fault", pid, {"error": "mailbox full: external message dropped"})
            return False
        self.deliver(p, Message(sender, body))
        return True

    # -- signals ------------------------------------------------------------------

    def signal(self, pid: int, sig: str, by: int = 0) -> bool:
        """kill, term (catchable), stop, cont. False if `pid` was not alive."""
        p = self.procs.get(pid)
        if p is None or p.reason is not None or pid == INIT:
            return False
        if sig == "kill":
            self.events.emit("signal", pid, {"signal": sig, "by": by})
            self._exit(p, killed(by))
        elif sig == "term":
            self.events.emit("signal", pid, {"signal": sig, "by": by})
            if p.trap & TRAP_TERM:
                self.deliver(p, Message(by, Term(by)), force=True)
            else:
                self._exit(p, SHUTDOWN)
        elif sig == "stop":
            if p.stopped is None:
                p.stopped = self.loop.create_future()
                self.events.emit("signal", pid, {"signal": sig, "by": by})
        elif sig == "cont":
            fut = p.stopped
            if fut is not None:
                p.stopped = None
                if not fut.done():
                    fut.set_result(None)
                self.events.emit("signal", pid, {"signal": sig, "by": by})
        else:
            raise KernelError(f"unknown signal {sig!r}: use kill, term, stop or cont")
        return True

    def set_deadline(self, p: Process, seconds: float | None) -> None:
        if seconds is not None and not seconds >= 0:
            raise KernelError(f"deadline must be >= 0 seconds, got {seconds!r}")
        p.deadline = None if seconds is None else self._now() + seconds
        self._arm_timer(p)

    async def wait(self, pid: int) -> ExitReason:
        """The exit reason of `pid`, waiting for it if it is alive (works after death too)."""
        p = self.procs.get(pid)
        if p is None or p.reason is not None:
            return await self.reason_of(pid)
        fut: asyncio.Future[ExitReason] = self.loop.create_future()
        self._exit_waiters.setdefault(pid, []).append(fut)
        try:
            return await fut
        finally:
            waiters = self._exit_waiters.get(pid)
            if waiters is not None and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._exit_waiters[pid]

    async def reason_of(self, pid: int) -> ExitReason:
        reason = self._reaped.get(pid)
        if reason is not None:
            return reason
        if self.store is not None:
            store = self.store
            await store.aflush()
            row = await store.read(lambda _c: store.process(pid))
            if row is not None and row.reason:
                return ExitReason.from_json(row.reason)
            if row is not None and pid in self.interrupted:
                return INTERRUPTED
        raise KernelError(f"no process {pid} is known to this kernel")

    # -- device I/O ---------------------------------------------------------------

    async def io(self, p: Process, handle: Handle, driver: Driver, op: str, payload: Any) -> Any:
        """One journaled, accounted, lane-admitted device operation."""
        account = p.account
        over = account.overdrawn()
        if over is not None:
            raise QuotaExceeded(over, "budget already spent")
        estimate = handle.estimate(payload) if op == "read" else None
        hold = account.reserve(estimate) if estimate else None  # refused ⇒ nothing sent
        try:
            reply = await self._journaled(p, f"{driver.name}.{op}", payload, handle, driver, op)
        except BaseException as e:
            spent = getattr(e, "cost", None) if isinstance(e, DriverError) else None
            if hold is not None:
                hold.cancel()
            if isinstance(spent, Cost) and spent:
                self._charge(p, driver, spent, None)  # it ran: failing does not make it free
            raise
        return self._charge(p, driver, reply.cost, hold, reply.value)

    def _charge(
        self, p: Process, driver: Driver, cost: Cost, hold: Reservation | None, value: Any = None
    ) -> Any:
        if not _valid_cost(cost):
            if hold is not None:
                hold.cancel()
            raise DriverError(f"driver {driver.name!r} reported an invalid cost {cost!r}")
        over = self._record_spend(p, cost, hold)
        if over is not None:
            raise QuotaExceeded(over, "the last call's actual cost passed the budget")
        return value

    def spent_elsewhere(self, pid: int, cost: Cost) -> str | None:
        """Record on `pid`'s account (and so up its tree) what it spent outside this kernel:
        an agent on another node that `pid` stands in for. The money is gone, so it is
        recorded even past a limit; returns the meter it overdrew, if any."""
        if not _valid_cost(cost):
            raise KernelError(f"an invalid cost {cost!r}: every meter must be a number >= 0")
        return self._record_spend(self.proc(pid), cost, None)

    def _record_spend(self, p: Process, cost: Cost, hold: Reservation | None) -> str | None:
        if cost:
            c = self.counters.charged
            c["tokens"] += cost.tokens
            c["usd"] += cost.usd
            c["tool_calls"] += cost.tool_calls
        account = p.account
        over = (
            hold.settle(cost)
            if hold is not None
            else (account.overdrawn() if account.force(cost) else None)
        )
        if over is not None:
            self.events.emit("quota", p.pid, {"resource": over, "cost": cost.to_json()})
        return over

    async def _journaled(
        self, p: Process, kind: str, payload: Any, handle: Handle, driver: Driver, op: str
    ) -> Reply:
        cur = p.journal
        if cur is None:
            if not self.record:
                return await self._live(p, handle, driver, op, payload)
            cur = p.journal = Cursor(p.pid)
        n = cur.op
        cur.op += 1
        d = digest(kind, payload)
        recorded = cur.recorded(n)
        if recorded is not None and recorded.digest == d:
            self.counters.replayed += 1
            self.journal.append(cur.stream, n, recorded)
            if recorded.error is not None:
                raise DriverError(recorded.error)
            res = recorded.result
            return Reply(res.get("value") if isinstance(res, dict) else res)
        if cur.source is not None:
            if cur.source.strict:
                what = "has no entry" if recorded is None else "diverged from its entry"
                raise ReplayError(
                    f"replay of pid {cur.origin} {what} at op {n} ({kind}); "
                    "strict replay makes no live calls"
                )
            cur.source = None  # recover: the journal ends here, continue live
            self.events.emit("recovered", p.pid, {"op": n})
        try:
            reply = await self._live(p, handle, driver, op, payload)
        except Exception as e:
            # Replayed as DriverError(error): keep a DriverError's own text, so the
            # replayed process sees the very message the original saw.
            error = str(e) if isinstance(e, DriverError) else f"{type(e).__name__}: {e}"
            self.journal.append(cur.stream, n, Entry(d, None, error))
            raise
        self.journal.append(
            cur.stream, n, Entry(d, {"value": reply.value, "cost": reply.cost.to_json()}, None)
        )
        return reply

    async def _live(
        self, p: Process, handle: Handle, driver: Driver, op: str, payload: Any
    ) -> Reply:
        call = handle.read if op == "read" else handle.write
        lane = driver.lane
        if lane is None:
            reply = await call(payload)
        elif driver.admits_itself:
            token = ADMISSION.set(Admission(self.lanes.get(lane), p.priority, p.deadline))
            try:
                reply = await call(payload)
            finally:
                ADMISSION.reset(token)
        else:
            async with self.lanes.get(lane).slot(p.priority, p.deadline):
                reply = await call(payload)
        if not isinstance(reply, Reply):
            raise DriverError(f"driver {driver.name!r} returned {type(reply).__name__}, not Reply")
        return reply

    # -- replay, snapshot, restore ------------------------------------------------

    async def replay(
        self,
        origin: int,
        image: str | None = None,
        *,
        strict: bool = True,
        parent: int = INIT,
        args: tuple[Any, ...] | None = None,
        caps: Iterable[str] = (),
        keep_ops: int | None = None,
    ) -> Child:
        """Run a recorded process again from its journal (strict: zero live driver calls).

        Capabilities are not journaled: `caps` (held by `parent`) are handed to the
        replayed process, as they were handed to the original at its spawn. `keep_ops`
        answers only the origin's first ops from the journal (a fork: the rest runs live).
        """
        plan = await self.plan_replay(origin, image, strict=strict, args=args, keep_ops=keep_ops)
        return self.spawn_replay(plan, parent=parent, caps=caps)

    async def plan_replay(
        self,
        origin: int,
        image: str | None = None,
        *,
        strict: bool = True,
        args: tuple[Any, ...] | None = None,
        keep_ops: int | None = None,
    ) -> ReplayPlan:
        """Load what `spawn_replay` needs, so the spawn itself can happen synchronously."""
        if keep_ops is not None and keep_ops < 0:
            raise KernelError(f"keep_ops must be >= 0, got {keep_ops}")
        streams = await self.journal.load_tree(origin)
        if keep_ops is not None:
            streams[origin] = {op: e for op, e in streams.get(origin, {}).items() if op < keep_ops}
        if strict and not streams.get(origin):
            raise ReplayError(f"no journal recorded for pid {origin}")
        info = await self._recorded_process(origin)
        image = image or (info.image if info is not None else None)
        if image is None:
            raise ReplayError(f"pid {origin} is unknown here: name the image to replay")
        run_args = (
            args
            if args is not None
            else tuple((info.meta or {}).get("args", ()) if info is not None else ())
        )
        return ReplayPlan(origin, image, run_args, Source(streams, strict))

    def spawn_replay(
        self,
        plan: ReplayPlan,
        *,
        parent: int = INIT,
        args: tuple[Any, ...] | None = None,
        caps: Iterable[str] = (),
        name: str | None = None,
        budget: Budget | None = None,
        monitor: bool = False,
        priority: int = 0,
        deadline: float | None = None,
    ) -> Child:
        """Spawn the replay `plan` describes under `parent` (`args` replace the plan's)."""
        parent_p = self.proc(parent)
        pid_cursor = Cursor(0, plan.source, plan.origin)
        child = self.spawn(
            parent_p,
            plan.image,
            plan.args if args is None else args,
            name=name,
            budget=budget,
            caps=caps,
            monitor=monitor,
            priority=priority,
            deadline=deadline,
            cursor=pid_cursor,
        )
        pid_cursor.stream = child.pid
        return child

    async def _recorded_process(self, pid: int) -> Any:
        if self.store is None:
            return None
        store = self.store
        await store.aflush()
        return await store.read(lambda _c: store.process(pid))

    # -- snapshots and introspection ------------------------------------------------

    def snapshot(self, pid: int) -> dict[str, Any]:
        """The durable state of a live process, as JSON (see `yool.kernel.snapshots`)."""
        return snapshots.snapshot(self, pid)

    async def restore(
        self, snap: dict[str, Any], *, parent: int = INIT, caps: Iterable[str] = ()
    ) -> Child:
        """Start a new process from a snapshot; `caps` are re-granted by the restorer."""
        return await snapshots.restore(self, snap, parent=parent, caps=caps)

    def ps(self) -> list[ProcInfo]:
        return introspect.ps(self)

    def info(self, p: Process) -> ProcInfo:
        return introspect.info(self, p)

    def inspect(self, pid: int) -> dict[str, Any]:
        return introspect.inspect(self, pid)

    def trace(self, n: int = 50, pid: int | None = None) -> list[Event]:
        return self.events.tail(n, pid)

    def metrics(self) -> dict[str, Any]:
        return introspect.metrics(self)

    def prometheus(self) -> str:
        """The metrics in Prometheus text exposition format."""
        return introspect.prometheus(self)

    def proc(self, pid: int) -> Process:
        p = self.procs.get(pid)
        if p is None:
            raise KernelError(f"no live process {pid}")
        return p

    # -- persistence and shutdown ---------------------------------------------------

    def _persist_event(self, ev: Event) -> None:
        assert self.store is not None
        self.store.append_event(ev.seq, ev.ts, ev.kind, ev.pid, ev.data)

    async def shutdown(self, reason: ExitReason = SHUTDOWN) -> None:
        """Stop every process with `reason`, wait for them to unwind, flush the store."""
        if self._closing:
            return
        self._closing = True
        tasks = [p.task for p in self.procs.values() if p.task is not None]
        for p in list(self.procs.values()):
            if p.pid != INIT:
                self._exit(p, reason)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.events.emit("shutdown", INIT, {"reason": reason.to_json()})
        if self._gc_before is not None:
            gc.set_threshold(*self._gc_before)
        if self.store is not None:
            await self.store.aflush()


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """A recorded run loaded and ready to spawn again: see `Kernel.plan_replay`."""

    origin: int
    image: str
    args: tuple[Any, ...]
    source: Source


def _meta(args: tuple[Any, ...]) -> dict[str, Any] | None:
    """Plain arguments are kept with the process row so a replay can pass them again."""
    if not args:
        return None
    if all(a is None or isinstance(a, str | int | float | bool) for a in args):
        return {"args": list(args)}
    return None


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def _matches(match: Callable[[Any], bool], body: Any) -> bool:
    try:
        return bool(match(body))
    except Exception:
        return False  # a broken predicate must not break the sender


async def _fail(error: Exception) -> None:
    raise error


async def _close_all(handles: list[Any]) -> None:
    for h in handles:
        try:
            await h.close()
        except Exception as e:
            log.warning("closing a device handle failed: %r", e)


def _short_traceback(e: BaseException, limit: int = 6) -> str:
    return "".join(traceback.format_exception(type(e), e, e.__traceback__, limit=-limit))[-4000:]


def _valid_cost(cost: object) -> bool:
    return isinstance(cost, Cost) and cost.tokens >= 0 and cost.usd >= 0 and cost.tool_calls >= 0
