"""The process record: everything the kernel knows about one live process.

Kept deliberately small (slots, lazily created parts) because a kernel hosts
hundreds of thousands of idle processes: a mailbox queue, links, monitors,
children, working memory and device handles exist only once used.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from yool.kernel.messages import Message

if TYPE_CHECKING:
    from yool.kernel.accounts import Account
    from yool.kernel.context import Context
    from yool.kernel.journal import Cursor
    from yool.kernel.reasons import ExitReason
    from yool.kernel.sys import Sys

Image = Callable[..., Coroutine[Any, Any, Any]]

INIT = 1  # the host's own process; orphans are reparented to it

# States a process is in, as `ps` shows them.
RUNNING = "running"
WAITING = "waiting"  # blocked in recv
STOPPED = "stopped"
DEAD = "dead"


class Process:
    __slots__ = (
        "account",
        "args",
        "cleanups",
        "context",
        "deadline",
        "handles",
        "image",
        "journal",
        "kids",
        "links",
        "match",
        "monitors",
        "name",
        "parent",
        "pid",
        "priority",
        "queue",
        "reason",
        "senders",
        "started",
        "stopped",
        "sys",
        "task",
        "timer",
        "trap",
        "waiter",
    )

    def __init__(
        self,
        pid: int,
        parent: int,
        name: str,
        image: str,
        args: tuple[Any, ...],
        account: Account,
        started: float,
    ) -> None:
        self.pid = pid
        self.parent = parent
        self.name = name
        self.image = image
        self.args = args
        self.account = account
        self.started = started
        self.task: asyncio.Task[None] | None = None
        self.sys: Sys | None = None
        self.reason: ExitReason | None = None  # set once, at death
        self.priority = 0
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None  # deadline or wall-budget kill
        self.queue: deque[Message] | None = None
        self.waiter: asyncio.Future[Message] | None = None
        self.match: Callable[[Any], bool] | None = None
        self.senders: deque[asyncio.Future[None]] | None = None
        self.stopped: asyncio.Future[None] | None = None
        self.links: set[int] | None = None
        self.monitors: set[int] | None = None
        self.kids: set[int] | None = None
        self.trap = 0  # bit flags: TRAP_EXIT | TRAP_TERM
        self.context: Context | None = None
        self.handles: dict[str, Any] | None = None
        self.journal: Cursor | None = None
        self.cleanups: list[Callable[[], Any]] | None = None

    @property
    def alive(self) -> bool:
        return self.reason is None

    @property
    def state(self) -> str:
        if self.reason is not None:
            return DEAD
        if self.stopped is not None:
            return STOPPED
        if self.waiter is not None:
            return WAITING
        return RUNNING

    def pending(self) -> int:
        return 0 if self.queue is None else len(self.queue)


TRAP_EXIT = 1
TRAP_TERM = 2
