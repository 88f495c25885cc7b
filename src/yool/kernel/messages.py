"""What travels between processes: messages and the kernel's notices.

A message carries its sender's pid, a body, and any capabilities handed over
with it. The kernel itself sends three notices: `Down` to a monitor when the
watched process dies, `Exit` to a linked process that traps exits, and `Term`
to a process that traps the catchable terminate signal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from yool.kernel.reasons import ExitReason


class Message(NamedTuple):
    sender: int  # 0 = the kernel
    body: Any
    caps: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Down:
    """A monitored process died (`node`: the node it ran on, when it was a remote one)."""

    pid: int
    reason: ExitReason
    node: str | None = None


@dataclass(frozen=True, slots=True)
class Exit:
    """A linked process died (delivered only to processes trapping exits)."""

    pid: int
    reason: ExitReason


@dataclass(frozen=True, slots=True)
class Term:
    """Please finish up and exit (delivered only to processes trapping term)."""

    by: int


class Child:
    """What `spawn` hands back: the new pid and a capability over it.

    The capability is minted when first asked for, so a bulk spawn whose
    handles are dropped costs no capabilities at all.
    """

    __slots__ = ("_mint", "_ref", "pid")

    def __init__(self, pid: int, mint: Callable[[], str] | None = None, ref: str | None = None):
        self.pid = pid
        self._mint = mint
        self._ref = ref

    @property
    def ref(self) -> str:
        if self._ref is None:
            assert self._mint is not None
            self._ref = self._mint()
            self._mint = None
        return self._ref

    def __iter__(self) -> Iterator[Any]:
        return iter((self.pid, self.ref))

    def __repr__(self) -> str:
        return f"Child(pid={self.pid})"
