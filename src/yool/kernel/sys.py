"""`Sys`: the one bridge through which a process touches the kernel.

A process is an async function `async def main(sys: Sys, *args)`. Everything
it may do (spawn, message, watch, signal, open devices, remember, spend) is a
trap on its `Sys`, and every privileged trap is checked against the
capabilities this process holds. A process that was killed finds every trap
raising `ProcessExit`, so it cannot keep acting after its death; a stopped
process waits at its next trap until it is continued.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, NoReturn

from yool.kernel.accounts import Budget
from yool.kernel.caps import CapInfo
from yool.kernel.context import Context, Segment, Summarizer
from yool.kernel.errors import CapError, KernelError, ProcessExit
from yool.kernel.messages import Child, Down, Exit, Message
from yool.kernel.process import TRAP_EXIT, TRAP_TERM, Image, Process
from yool.kernel.reasons import NOPROC, NORMAL, ExitReason, killed

if TYPE_CHECKING:
    from yool.kernel.kernel import Kernel

SELF_RIGHTS = ("send", "monitor")


class Sys:
    __slots__ = ("_k", "_p", "restored")

    def __init__(self, kernel: Kernel, proc: Process, restored: dict[str, Any] | None = None):
        self._k = kernel
        self._p = proc
        self.restored = restored  # the snapshot this process was restored from, if any

    def __repr__(self) -> str:
        return f"<Sys pid={self._p.pid} {self._p.name!r}>"

    # -- who am I --------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self._p.pid

    @property
    def parent(self) -> int:
        return self._p.parent

    @property
    def name(self) -> str:
        return self._p.name

    def now(self) -> float:
        """Kernel time in seconds (virtual under the virtual clock)."""
        return self._k.loop.time()

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._k.ended(self._p, task)

    def _me(self) -> Process:
        p = self._p
        if p.reason is not None:
            raise ProcessExit(p.reason)
        return p

    async def checkpoint(self) -> None:
        """Wait here while stopped; die here if killed. Every blocking trap does this."""
        p = self._me()
        while p.stopped is not None:
            await p.stopped
            self._me()

    # -- processes -------------------------------------------------------------

    def spawn(
        self,
        image: str | Image,
        *args: Any,
        name: str | None = None,
        budget: Budget | None = None,
        caps: Iterable[str] = (),
        link: bool = False,
        monitor: bool = False,
        priority: int = 0,
        deadline: float | None = None,
    ) -> Child:
        """Start a child; returns its pid and a send/monitor/link/kill capability over it.

        `caps` are handed over (moved) to the child; `deadline` is in seconds from now.
        """
        p = self._me()
        k = self._k
        if k.caps.holds_kind(p.pid, "spawn", "spawn") is None:
            raise CapError(f"pid {p.pid} holds no spawn capability")
        return k.spawn(
            p,
            image,
            args,
            name=name,
            budget=budget,
            caps=caps,
            link=link,
            monitor=monitor,
            priority=priority,
            deadline=deadline,
        )

    def exit(self, reason: ExitReason = NORMAL) -> NoReturn:
        raise ProcessExit(reason)

    def self_ref(self, rights: Iterable[str] = SELF_RIGHTS) -> str:
        """A capability over this process, to hand to others so they can reach it."""
        p = self._me()
        return self._k.caps.mint(p.pid, "process", p.pid, rights)

    # -- messages ----------------------------------------------------------------

    async def send(self, ref: str, body: Any, caps: tuple[str, ...] = ()) -> bool:
        """Deliver `body`, blocking while the receiver's mailbox is full.

        Returns False if the receiver had already died (the message is dropped,
        as in Erlang). Capabilities in `caps` move to the receiver. Over a `remote`
        capability (a process on another node) the body goes to the node gateway instead:
        never blocking (a full or unreachable peer raises `KernelError`), and never with
        `caps`, which cannot cross the wire.
        """
        try:
            p, target_pid, caps = self._address(ref, caps)
        except CapError:
            if self._remote(ref, "send") is None:
                raise
            return self._send_remote(ref, body, caps)
        if p.stopped is not None:
            await self.checkpoint()
        k = self._k
        target = k.procs.get(target_pid)
        while (
            target is not None
            and target.queue is not None  # no queue: the receiver is waiting or idle, never full
            and target.reason is None
            and k.mailbox_full(target)
        ):
            fut: asyncio.Future[None] = k.loop.create_future()
            if target.senders is None:
                target.senders = deque()
            target.senders.append(fut)
            try:
                await fut
                self._me()
            except BaseException:
                if fut.done() and not fut.cancelled():
                    _wake_sender(target)  # we were given room we will not use: pass it on
                raise
            finally:
                if not fut.done():
                    fut.cancel()
            target = k.procs.get(target_pid)
        return self._hand_over(p, target, body, caps)

    def send_nowait(self, ref: str, body: Any, caps: tuple[str, ...] = ()) -> bool:
        """Like `send`, but raise `KernelError` instead of waiting for room."""
        try:
            p, target_pid, caps = self._address(ref, caps)
        except CapError:
            if self._remote(ref, "send") is None:
                raise
            return self._send_remote(ref, body, caps)
        target = self._k.procs.get(target_pid)
        if target is not None and target.reason is None and self._k.mailbox_full(target):
            raise KernelError(f"mailbox of pid {target.pid} is full")
        return self._hand_over(p, target, body, caps)

    def _address(self, ref: str, caps: tuple[str, ...]) -> tuple[Process, int, tuple[str, ...]]:
        """Check the send right and that every capability to hand over is held."""
        p = self._me()
        k = self._k
        target_pid: int = k.caps.require(p.pid, ref, "send", "process").target
        if caps:
            caps = tuple(dict.fromkeys(caps))  # the same cap twice moves once
            for c in caps:
                k.caps.require_held(p.pid, c)
        return p, target_pid, caps

    def _remote(self, ref: str, right: str) -> Any:
        """The remote capability behind `ref` held with `right` (checked), or None if `ref`
        is not a remote capability at all (the caller re-raises its own error then)."""
        k = self._k
        cap = k.caps.lookup(ref) if isinstance(ref, str) else None
        if cap is None or cap.kind != "remote" or cap.owner != self._p.pid:
            return None
        k.caps.require(self._p.pid, ref, right, "remote")
        if k.gateway is None:
            raise KernelError("this kernel is not in a cluster: no route to another node")
        return cap

    def _send_remote(self, ref: str, body: Any, caps: tuple[str, ...]) -> bool:
        p = self._me()
        cap = self._remote(ref, "send")
        if caps:
            raise KernelError(
                f"send: capabilities cannot cross the wire to node {cap.target[0]!r}; "
                "send plain data (the remote node grants its own authority)"
            )
        gateway = self._k.gateway
        assert gateway is not None
        gateway.send(p.pid, cap.target, body)
        self._k.counters.sent += 1
        return True

    def _hand_over(
        self, p: Process, target: Process | None, body: Any, caps: tuple[str, ...]
    ) -> bool:
        k = self._k
        if target is None or target.reason is not None:
            k.counters.dropped += 1
            return False
        for c in caps:
            k.caps.require_held(p.pid, c)  # all still held (send may have waited): all or none
        for c in caps:
            k.caps.transfer(p.pid, c, target.pid)
        k.deliver(target, Message(p.pid, body, caps))
        k.counters.sent += 1
        return True

    def recv(
        self,
        timeout: float | None = None,
        match: Callable[[Any], bool] | None = None,
    ) -> Awaitable[Message]:
        """The oldest message (whose body satisfies `match`, if given); await it.

        Raises TimeoutError if none arrives within `timeout` seconds. A plain
        function returning an awaitable: a parked process then holds only a
        small frame and a future, which is most of what an idle process costs.
        """
        p = self._me()
        if p.stopped is None:
            q = p.queue
            if q:
                msg = _take(q, match)
                if msg is not None:
                    self._taken(p)
                    return _ready(msg)
            if timeout is None:
                fut: asyncio.Future[Message] = self._k.loop.create_future()
                p.waiter = fut
                p.match = match
                return self._park(p, fut)
        return self._recv_slow(timeout, match)

    async def _park(self, p: Process, fut: asyncio.Future[Message]) -> Message:
        try:
            msg = await fut
        except BaseException:
            _requeue(p, fut)
            raise
        self._k.counters.received += 1
        if p.stopped is not None:
            await self.checkpoint()
        return msg

    async def _recv_slow(
        self, within: float | None, match: Callable[[Any], bool] | None
    ) -> Message:
        """recv with a timeout, or by a stopped process."""
        await self.checkpoint()
        p = self._p
        q = p.queue
        if q:
            msg = _take(q, match)
            if msg is not None:
                self._taken(p)
                return msg
        if within is not None and within <= 0:
            raise TimeoutError(f"pid {p.pid}: no message")
        fut: asyncio.Future[Message] = self._k.loop.create_future()
        p.waiter = fut
        p.match = match
        try:
            async with asyncio.timeout(within):
                msg = await fut
        except TimeoutError:
            if not fut.done() or fut.cancelled():
                _requeue(p, fut)
                raise
            # Delivered in the same instant the timeout fired, before it: it arrived in
            # time. (Putting it back at the front could reorder a selective receive.)
            msg = fut.result()
        except BaseException:
            _requeue(p, fut)
            raise
        self._k.counters.received += 1
        if p.stopped is not None:
            await self.checkpoint()
        return msg

    def _taken(self, p: Process) -> None:
        self._k.counters.received += 1
        q = p.queue
        if q is not None and not q:
            p.queue = None  # an idle process keeps no empty queue around
        if p.senders:
            _wake_sender(p)

    def pending(self) -> int:
        return self._p.pending()

    # -- links, monitors, signals ------------------------------------------------

    def monitor(self, ref: str) -> None:
        """Receive `Down(pid, reason)` when the process behind `ref` dies (at once if dead).

        Over a `remote` capability: `Down(pid, reason, node)` from the node gateway, with
        reason `noconnection` if that node becomes unreachable first."""
        p = self._me()
        k = self._k
        try:
            target_pid: int = k.caps.require(p.pid, ref, "monitor", "process").target
        except CapError:
            remote = self._remote(ref, "monitor")
            if remote is None or k.gateway is None:
                raise
            k.gateway.monitor(p.pid, remote.target)
            return
        target = k.procs.get(target_pid)
        if target is None or target.reason is not None:
            reason = target.reason if target is not None else k._reaped.get(target_pid)
            k.deliver(p, Message(target_pid, Down(target_pid, reason or NOPROC)), force=True)
            return
        if target.monitors is None:
            target.monitors = {p.pid}
        else:
            target.monitors.add(p.pid)

    def demonitor(self, ref: str) -> None:
        p = self._me()
        k = self._k
        try:
            target = k.procs.get(k.caps.require(p.pid, ref, "monitor", "process").target)
        except CapError:
            remote = self._remote(ref, "monitor")
            if remote is None or k.gateway is None:
                raise
            k.gateway.demonitor(p.pid, remote.target)
            return
        if target is not None and target.monitors:
            target.monitors.discard(p.pid)

    def link(self, ref: str) -> None:
        """Die with the other process (or get `Exit` messages, if trapping exits)."""
        p = self._me()
        k = self._k
        target_pid: int = k.caps.require(p.pid, ref, "link", "process").target
        target = k.procs.get(target_pid)
        if target is None or target.reason is not None:
            reason = target.reason if target is not None else k._reaped.get(target_pid)
            reason = reason or NOPROC
            if p.trap & TRAP_EXIT:
                k.deliver(p, Message(target_pid, Exit(target_pid, reason)), force=True)
            elif not reason.normal:
                k.kill(p.pid, killed(target_pid))
                self._me()
            return
        (p.links if p.links is not None else _set(p, "links")).add(target_pid)
        (target.links if target.links is not None else _set(target, "links")).add(p.pid)

    def unlink(self, ref: str) -> None:
        p = self._me()
        k = self._k
        target_pid: int = k.caps.require(p.pid, ref, "link", "process").target
        target = k.procs.get(target_pid)
        if p.links:
            p.links.discard(target_pid)
        if target is not None and target.links:
            target.links.discard(p.pid)

    def trap_exits(self, on: bool = True) -> None:
        """Turn linked processes' deaths into `Exit` messages instead of dying too."""
        p = self._me()
        p.trap = (p.trap | TRAP_EXIT) if on else (p.trap & ~TRAP_EXIT)

    def trap_term(self, on: bool = True) -> None:
        """Turn the terminate signal into a `Term` message instead of exiting `shutdown`."""
        p = self._me()
        p.trap = (p.trap | TRAP_TERM) if on else (p.trap & ~TRAP_TERM)

    def _signal(self, ref: str, sig: str) -> bool:
        p = self._me()
        k = self._k
        try:
            target: int = k.caps.require(p.pid, ref, "kill", "process").target
        except CapError:
            remote = self._remote(ref, "kill")
            if remote is None or k.gateway is None:
                raise
            k.gateway.signal(p.pid, remote.target, sig)
            return True
        done = k.signal(target, sig, by=p.pid)
        self._me()  # signalled itself
        return done

    def kill(self, ref: str) -> bool:
        """End the process now with reason `killed(by=me)`. False if already dead."""
        return self._signal(ref, "kill")

    def term(self, ref: str) -> bool:
        """Ask the process to exit: `Term` if it traps term, else it exits `shutdown`."""
        return self._signal(ref, "term")

    def stop(self, ref: str) -> bool:
        """Suspend the process at its next trap until `cont`."""
        return self._signal(ref, "stop")

    def cont(self, ref: str) -> bool:
        return self._signal(ref, "cont")

    async def wait(self, ref: str) -> ExitReason:
        """The exit reason of the process behind `ref`, waiting if needed (also after death)."""
        p = self._me()
        k = self._k
        target: int = k.caps.require(p.pid, ref, "monitor", "process").target
        reason = await k.wait(target)
        await self.checkpoint()
        return reason

    # -- names -------------------------------------------------------------------

    def register(self, name: str) -> None:
        """Claim `name` for this process (first come; freed when it dies)."""
        p = self._me()
        if not isinstance(name, str) or not name:
            raise KernelError("register: name must be a non-empty string")
        names = self._k.names
        owner = names.get(name)
        if owner is not None and owner != p.pid and owner in self._k.procs:
            raise KernelError(f"name {name!r} is already registered by pid {owner}")
        names[name] = p.pid

    def unregister(self, name: str) -> None:
        p = self._me()
        if self._k.names.get(name) == p.pid:
            del self._k.names[name]

    def whereis(self, name: str) -> str | None:
        """A send/monitor capability over the process registered as `name`, if any."""
        p = self._me()
        k = self._k
        owner = k.names.get(name)
        if owner is None or owner not in k.procs:
            return None
        return k.caps.mint(p.pid, "process", owner, SELF_RIGHTS)

    # -- capabilities ------------------------------------------------------------

    def derive(
        self,
        ref: str,
        rights: Iterable[str] | None = None,
        *,
        expires_in: float | None = None,
        caveat: Mapping[str, Any] | None = None,
    ) -> str:
        """A weaker copy of a capability you hold: fewer rights, an expiry, and/or a caveat.

        A caveat is a device-specific restriction (e.g. `{"root": "docs", "mode": "r"}` for
        the files device); it is added to the parent's, never replaces them, and the driver
        receives them all as `params["caveats"]` when the capability is opened.
        """
        p = self._me()
        if expires_in is not None and not expires_in >= 0:
            raise KernelError(f"expires_in must be >= 0 seconds, got {expires_in!r}")
        expires = None if expires_in is None else self.now() + expires_in
        return self._k.caps.derive(p.pid, ref, rights, expires=expires, caveat=caveat)

    def revoke(self, ref: str) -> int:
        """Revoke a capability you hold and everything derived from it."""
        p = self._me()
        self._k.caps.require_held(p.pid, ref)
        return self._k.caps.revoke(ref)

    def caps(self, kind: str | None = None) -> list[CapInfo]:
        p = self._me()
        return [c for c in self._k.caps.held_by(p.pid) if kind is None or c.kind == kind]

    def cap(self, kind: str, target: Any = None, right: str | None = None) -> str | None:
        """A capability you hold of `kind` (over `target`, with `right`), if any."""
        for c in self.caps(kind):
            if (target is None or c.target == target) and (right is None or right in c.rights):
                return c.ref
        return None

    # -- devices -----------------------------------------------------------------

    async def open(self, device: str, **params: Any) -> str:
        """Open a device you hold a capability for; returns a handle capability."""
        p = self._me()
        k = self._k
        cap = k.caps.require(p.pid, device, "open", "device")
        driver = k.drivers.get(cap.target)
        if driver is None:
            raise KernelError(f"no driver {cap.target!r} is installed")
        await self.checkpoint()
        params.pop("caveats", None)  # only the kernel says what the capability allows
        if cap.caveats:
            params["caveats"] = cap.caveats
        handle = await driver.open(p.pid, params)
        self._me()
        rights = cap.rights & {"read", "write"}
        ref = k.caps.mint(p.pid, "handle", cap.target, rights)
        if p.handles is None:
            p.handles = {}
        p.handles[ref] = handle
        return ref

    async def read(self, handle: str, request: Any = None) -> Any:
        return await self._io(handle, "read", request)

    async def write(self, handle: str, data: Any) -> Any:
        return await self._io(handle, "write", data)

    async def _io(self, ref: str, op: str, payload: Any) -> Any:
        p = self._me()
        if p.stopped is not None:
            await self.checkpoint()
        k = self._k
        cap = k.caps.require(p.pid, ref, op, "handle")
        handle = p.handles.get(ref) if p.handles is not None else None
        if handle is None:
            raise CapError(f"handle {ref[:16]}... is closed")
        value = await k.io(p, handle, k.drivers[cap.target], op, payload)
        self._me()
        return value

    async def close(self, handle: str) -> None:
        p = self._me()
        self._k.caps.require_held(p.pid, handle)
        h = p.handles.pop(handle, None) if p.handles is not None else None
        self._k.caps.revoke(handle)
        if h is not None:
            await h.close()

    # -- scheduling --------------------------------------------------------------

    def lane(self, name: str) -> AbstractAsyncContextManager[None]:
        """Wait for a slot in lane `name`, ordered by this process's priority and deadline."""
        p = self._me()
        return self._k.lanes.get(name).slot(p.priority, p.deadline)

    def set_priority(self, priority: int) -> None:
        self._me().priority = int(priority)

    def set_deadline(self, seconds: float | None) -> None:
        """Be killed with reason `deadline` this many seconds from now (None: no deadline)."""
        self._k.set_deadline(self._me(), seconds)

    async def sleep(self, seconds: float) -> None:
        self._me()
        await asyncio.sleep(seconds)
        await self.checkpoint()

    # -- working memory ----------------------------------------------------------

    def _context(self) -> Context:
        p = self._me()
        if p.context is None:
            b = p.account.budget
            p.context = Context(ceiling=None if b is None else b.mem, summarizer=self._k.summarizer)
        return p.context

    def set_summarizer(self, fn: Summarizer | None) -> None:
        """Replace paged-out segments by `fn`'s summary of them (e.g. an LLM's) from now on."""
        self._context().summarizer = fn

    async def remember(self, body: Any, *, tokens: int | None = None, pin: bool = False) -> str:
        return await self._context().remember(body, tokens=tokens, pin=pin)

    async def recall(self, query: str, k: int = 4) -> list[Segment]:
        return await self._context().recall(query, k)

    def pin(self, segment: str, on: bool = True) -> None:
        self._context().pin(segment, on)

    def forget(self, segment: str) -> None:
        self._context().forget(segment)

    def working_set(self) -> list[Segment]:
        p = self._me()
        return [] if p.context is None else p.context.working_set()

    # -- budget and housekeeping --------------------------------------------------

    def budget(self) -> dict[str, float | None]:
        """What this process may still spend (the tightest of its own and its ancestors')."""
        return self._me().account.remaining(self.now())

    def usage(self) -> dict[str, float]:
        return self._me().account.usage()

    def on_cleanup(self, fn: Callable[[], Any]) -> None:
        """Run `fn` when this process dies, however it dies (kill included)."""
        p = self._me()
        if p.cleanups is None:
            p.cleanups = []
        p.cleanups.append(fn)

    def log(self, message: str, **fields: Any) -> None:
        self._k.events.emit("log", self._me().pid, {"message": message, **fields})


async def _ready(msg: Message) -> Message:
    return msg


def _requeue(p: Process, fut: asyncio.Future[Message]) -> None:
    """recv was interrupted: stop waiting, and keep a message that arrived meanwhile."""
    if p.waiter is fut:
        p.waiter = None
        p.match = None
    if fut.done() and not fut.cancelled():
        if p.queue is None:
            p.queue = deque()
        p.queue.appendleft(fut.result())
    else:
        fut.cancel()


def _wake_sender(p: Process) -> None:
    """There is room in `p`'s mailbox: let the longest-blocked live sender retry."""
    senders = p.senders
    while senders:
        fut = senders.popleft()
        if not fut.done():
            fut.set_result(None)
            break
    if not senders:
        p.senders = None


def _take(q: deque[Message], match: Callable[[Any], bool] | None) -> Message | None:
    if match is None:
        return q.popleft()
    for i, msg in enumerate(q):
        try:
            ok = match(msg.body)
        except Exception:
            ok = False
        if ok:
            del q[i]
            return msg
    return None


def _set(p: Process, attr: str) -> set[int]:
    s: set[int] = set()
    setattr(p, attr, s)
    return s
