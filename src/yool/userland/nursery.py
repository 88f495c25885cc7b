"""Nurseries: structured concurrency for a process's children.

    async with Nursery(sys) as n:
        n.spawn(fetch, url_a)
        n.spawn(fetch, url_b)
    # here every child has exited

Leaving the block waits for every child. The first child to exit abnormally
cancels the scope: the others are terminated (exit `shutdown`; a child that
traps term is killed after `shutdown_s`) and the block raises `NurseryError`
naming that child and its reason. If the body raises, the children are
terminated the same way and the body's exception propagates.

The nursery watches its children with monitors and takes only the `Down`
notices of its own children out of the mailbox (selective receive), so the
process's other messages stay where they are. The body is not interrupted by
a failing child: the failure is acted on when the block ends. If the block
is cancelled (an enclosing `asyncio.timeout`, say), the children are killed
at once. The nursery's capabilities over its children are revoked when the
block ends (they have all exited); `n.reasons` keeps how each one ended.

Results: a process exits with a reason, not a value, and the nursery keeps to
that (`n.reasons` after the block). A child with a result to report sends it
as a message, e.g. to `sys.self_ref(("send",))` passed in its args.

If the process holding the nursery is itself killed while the block is open,
the kernel's orphan rule applies: its children live on under init.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from yool.kernel.accounts import Budget
from yool.kernel.errors import CapError, ProcessExit
from yool.kernel.messages import Child, Down
from yool.kernel.process import Image
from yool.kernel.reasons import ExitReason
from yool.kernel.sys import Sys


class NurseryError(Exception):
    """A child of the nursery exited abnormally and the scope was cancelled."""

    def __init__(self, name: str, pid: int, reason: ExitReason) -> None:
        self.name = name
        self.pid = pid
        self.reason = reason
        super().__init__(
            f"nursery child {name!r} (pid {pid}) exited {reason}; the other children were stopped"
        )


class Nursery:
    """An `async with` scope that every child it spawns must exit before it ends."""

    def __init__(self, sys: Sys, *, shutdown_s: float = 5.0) -> None:
        if isinstance(shutdown_s, bool) or not isinstance(shutdown_s, int | float):
            raise ValueError(f"shutdown_s must be a number of seconds, got {shutdown_s!r}")
        if not shutdown_s >= 0:
            raise ValueError(f"shutdown_s must be >= 0 seconds, got {shutdown_s!r}")
        self._sys = sys
        self._shutdown_s = float(shutdown_s)
        self._live: dict[int, tuple[str, str]] = {}  # pid -> (name, capability)
        self._refs: list[str] = []
        self._open = False
        self._closed = False
        self._kill_at: float | None = None
        self._cancelled = False
        self.failure: NurseryError | None = None
        self.reasons: dict[int, ExitReason] = {}

    async def __aenter__(self) -> Nursery:
        if self._open or self._closed:
            raise RuntimeError("a Nursery can be entered only once")
        self._open = True
        return self

    def spawn(
        self,
        image: str | Image,
        *args: Any,
        name: str | None = None,
        budget: Budget | None = None,
        caps: Iterable[str] = (),
        priority: int = 0,
        deadline: float | None = None,
    ) -> Child:
        """Start a child in this scope (see `Sys.spawn`)."""
        if not self._open or self._closed:
            raise RuntimeError("spawn in a nursery only inside its `async with` block")
        child = self._sys.spawn(
            image,
            *args,
            name=name,
            budget=budget,
            caps=caps,
            monitor=True,
            priority=priority,
            deadline=deadline,
        )
        ref = child.ref
        self._refs.append(ref)
        self._live[child.pid] = (name or _image_name(image), ref)
        return child

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        try:
            if exc is None or isinstance(exc, Exception):
                if exc is not None:
                    self._cancel()
                await self._join()
            else:
                await self._abandon()  # cancelled (e.g. an outer timeout), or we were killed
        except BaseException:
            await self._abandon()
            raise
        finally:
            self._release()
        if exc is None and self.failure is not None:
            raise self.failure

    def _mine(self, body: Any) -> bool:
        return isinstance(body, Down) and body.pid in self._live

    async def _join(self) -> None:
        sys = self._sys
        while self._live:
            timeout = None if self._kill_at is None else max(0.0, self._kill_at - sys.now())
            try:
                msg = await sys.recv(timeout, match=self._mine)
            except TimeoutError:
                self._kill_at = None
                for _name, ref in list(self._live.values()):
                    sys.kill(ref)  # their Down notices arrive at once
                continue
            down: Down = msg.body
            name, _ref = self._live.pop(down.pid)
            self.reasons[down.pid] = down.reason
            if not down.reason.normal and not self._cancelled:
                self.failure = NurseryError(name, down.pid, down.reason)
                self._cancel()

    async def _abandon(self) -> None:
        """Kill every child now: we may not wait (being cancelled) or act (being dead)."""
        sys = self._sys
        try:
            for _name, ref in list(self._live.values()):
                sys.kill(ref)
            while self._live:  # their Down notices are already here; take them
                down: Down = (await sys.recv(0, match=self._mine)).body
                self._live.pop(down.pid)
                self.reasons[down.pid] = down.reason
        except (ProcessExit, TimeoutError):
            pass  # dead ourselves: the kernel has revoked what we held

    def _cancel(self) -> None:
        """Terminate every live child; whoever traps term gets `shutdown_s` to finish."""
        sys = self._sys
        self._cancelled = True
        for _name, ref in list(self._live.values()):
            sys.term(ref)
        if self._live:
            grace = self._shutdown_s
            self._kill_at = None if math.isinf(grace) else sys.now() + grace

    def _release(self) -> None:
        """Drop our capabilities over the children: they have all exited by now."""
        refs, self._refs = self._refs, []
        for ref in refs:
            try:
                self._sys.revoke(ref)
            except CapError:
                pass
            except ProcessExit:
                return  # we are dying: the kernel revokes everything we hold


def _image_name(image: str | Image) -> str:
    if isinstance(image, str):
        return image
    named = getattr(image, "image_name", None)
    if isinstance(named, str) and named:
        return named
    return f"{image.__module__}:{image.__qualname__}"
