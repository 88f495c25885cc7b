"""The device interface: how drivers plug into the kernel.

A driver is opened only through a device capability; it returns a handle the
process reads from and writes to through its `Sys`. Each operation reports
what it cost so the kernel can charge the process and its ancestors, may
estimate its cost up front so an unaffordable call is refused before it is
sent, and names the lane whose slots it needs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, NamedTuple

from yool.kernel.accounts import FREE, Cost
from yool.kernel.errors import DriverError


class Reply(NamedTuple):
    value: Any
    cost: Cost = FREE


class Handle:
    """One process's open device. Override what the device supports."""

    async def read(self, request: Any) -> Reply:
        raise DriverError(f"{type(self).__name__} is not readable")

    async def write(self, data: Any) -> Reply:
        raise DriverError(f"{type(self).__name__} is not writable")

    def estimate(self, request: Any) -> Cost | None:
        """The most a read of `request` may cost, reserved before it is sent."""
        return None

    async def close(self) -> None:
        return None


class Driver(ABC):
    """A device the kernel can hand out. `lane` names the slots its calls need.

    By default the kernel holds a slot of `lane` for the whole of each operation. A driver
    that sets `admits_itself` takes the slots itself (per attempt, say, so that a retry's
    backoff holds none): the kernel then only sets `yool.kernel.lanes.ADMISSION` (the lane,
    the process's priority and deadline) for the duration of the operation.
    """

    name: str = "device"
    lane: str | None = None
    admits_itself: bool = False

    @abstractmethod
    async def open(self, pid: int, params: dict[str, Any]) -> Handle:
        """A fresh handle for process `pid`; `params` come from the opener."""
