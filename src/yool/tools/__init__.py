"""The operations: one typed function per thing yool can do, for every front end.

`OPERATIONS` (filled by importing the group modules, see `load_all`) is the table the MCP
and LSP servers are generated from; `Session` is what every operation acts on.
"""

from yool.tools.session import AgentRecord, Session
from yool.tools.table import (
    GROUPS,
    OPERATIONS,
    Args,
    Call,
    Group,
    Operation,
    OpError,
    Result,
    enabled,
    load_all,
    operation,
)

__all__ = [
    "GROUPS",
    "OPERATIONS",
    "AgentRecord",
    "Args",
    "Call",
    "Group",
    "OpError",
    "Operation",
    "Result",
    "Session",
    "enabled",
    "load_all",
    "operation",
]
