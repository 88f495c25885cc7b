"""The kernel's exceptions: what a process sees when a trap refuses it."""

from __future__ import annotations

from typing import Any


class KernelError(Exception):
    """A trap was used wrongly (unknown pid, bad argument, dead process)."""


class CapError(KernelError):
    """A capability is missing, revoked, expired, not held, or lacks the right."""


class QuotaExceeded(KernelError):
    """A charge would pass a limit of the process or one of its ancestors."""

    def __init__(self, resource: str, detail: str = "") -> None:
        self.resource = resource
        super().__init__(f"quota exceeded: {resource}" + (f" ({detail})" if detail else ""))


class ReplayError(KernelError):
    """Strict replay found no journal entry, or the request diverged from the recorded one."""


class DriverError(KernelError):
    """A device operation failed (live, or as recorded in the journal).

    `cost` is what the failed operation consumed anyway (a tool that ran, then
    raised); it is charged like a successful call's.
    """

    def __init__(self, message: str, cost: Any = None) -> None:
        super().__init__(message)
        self.cost = cost


class ProcessExit(BaseException):
    """Unwinds a process that exits (or was killed) from wherever it is.

    A BaseException so that a process's own `except Exception` cannot swallow it.
    """

    def __init__(self, reason: object) -> None:
        self.reason = reason
        super().__init__(str(reason))
