"""The yool kernel: processes, capabilities, accounts, lanes, memory, journal, store.

Programs reach it only through `Sys`; the host holds `Kernel.init`.
"""

from yool.kernel.accounts import Budget, Cost
from yool.kernel.devices import Driver, Handle, Reply
from yool.kernel.errors import (
    CapError,
    DriverError,
    KernelError,
    ProcessExit,
    QuotaExceeded,
    ReplayError,
)
from yool.kernel.introspect import ProcInfo
from yool.kernel.kernel import Kernel
from yool.kernel.messages import Child, Down, Exit, Message, Term
from yool.kernel.process import INIT
from yool.kernel.reasons import (
    DEADLINE,
    INTERRUPTED,
    NOPROC,
    NORMAL,
    SHUTDOWN,
    ExitReason,
    fault,
    killed,
    quota,
)
from yool.kernel.snapshots import ABI_VERSION
from yool.kernel.sys import Sys

__all__ = [
    "ABI_VERSION",
    "DEADLINE",
    "INIT",
    "INTERRUPTED",
    "NOPROC",
    "NORMAL",
    "SHUTDOWN",
    "Budget",
    "CapError",
    "Child",
    "Cost",
    "Down",
    "Driver",
    "DriverError",
    "Exit",
    "ExitReason",
    "Handle",
    "Kernel",
    "KernelError",
    "Message",
    "ProcInfo",
    "ProcessExit",
    "QuotaExceeded",
    "ReplayError",
    "Reply",
    "Sys",
    "Term",
    "fault",
    "killed",
    "quota",
]
