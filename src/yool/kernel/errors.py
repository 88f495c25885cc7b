"""The kernel's exceptions: what a process sees when a trap refuses it."""

from __future__ import annotations


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
    """A device operation failed (live, or as recorded in the journal)."""


class ProcessExit(BaseException):
    """Unwinds a process that exits (or was killed) from wherever it is.

    A BaseException so that a process's own `except Exception` cannot swallow it.
    """

    def __init__(self, reason: object) -> None:
        self.reason = reason
        super().__init__(str(reason))
