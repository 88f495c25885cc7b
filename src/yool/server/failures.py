"""What a front end tells its caller when an operation fails, in one wording for all.

An `OpError` is the caller's to fix and says how; a kernel refusal names itself; a model
validator's `ValueError` names its field. Anything else is a crash: the front end logs it
and reports no internals. Shared by the MCP and LSP servers, so it imports neither SDK.
"""

from __future__ import annotations

from yool.kernel import KernelError
from yool.tools.table import OpError


def failure_message(e: Exception) -> str | None:
    """What the caller is told of a failed operation; None for a crash (not the caller's)."""
    if isinstance(e, OpError):
        return str(e)
    if isinstance(e, KernelError):
        return f"{type(e).__name__}: {e}"
    if isinstance(e, ValueError):  # a model validator's message names its field
        return str(e)
    return None
