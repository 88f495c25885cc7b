"""Programs on the kernel: supervisors, nurseries and the name service.

Everything here uses only `Sys`, like any other process.
"""

from yool.userland.names import (
    Lookup,
    Register,
    Registered,
    Resolved,
    Unregister,
    lookup,
    name_service,
    register,
    unregister,
)
from yool.userland.nursery import Nursery, NurseryError
from yool.userland.supervisor import (
    ChildInfo,
    Children,
    ChildSpec,
    SpecError,
    SupervisorSpec,
    WhichChildren,
    grant_caps,
    start_supervisor,
    supervise,
    which_children,
)

__all__ = [
    "ChildInfo",
    "ChildSpec",
    "Children",
    "Lookup",
    "Nursery",
    "NurseryError",
    "Register",
    "Registered",
    "Resolved",
    "SpecError",
    "SupervisorSpec",
    "Unregister",
    "WhichChildren",
    "grant_caps",
    "lookup",
    "name_service",
    "register",
    "start_supervisor",
    "supervise",
    "unregister",
    "which_children",
]
