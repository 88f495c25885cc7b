"""What travels between processes: messages and the kernel's notices.

A message carries its sender's pid, a body, and any capabilities handed over
with it. The kernel itself sends three notices: `Down` to a monitor when the
watched process dies, `Exit` to a linked process that traps exits, and `Term`
to a process that traps the catchable terminate signal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from yool.kernel.reasons import ExitReason


class Message(NamedTuple):
    sender: int  # 0 = the kernel
    body: Any
    caps: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Down:
    """A monitored process died."""

    pid: int
    reason: ExitReason


@dataclass(frozen=True, slots=True)
class Exit:
    """A linked process died (delivered only to processes trapping exits)."""

    pid: int
    reason: ExitReason


@dataclass(frozen=True, slots=True)
class Term:
    """Please finish up and exit (delivered only to processes trapping term)."""

    by: int


class Child(NamedTuple):
    """What `spawn` hands back: the new pid and a capability over it."""

    pid: int
    ref: str
