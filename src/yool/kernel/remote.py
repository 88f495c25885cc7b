"""What the kernel asks of a node gateway: the other end of a `remote` capability.

A `remote` capability (kind "remote", target `(node, pid)`) names a process on another
node. The kernel never moves anything across machines itself: `Sys.send`, `Sys.monitor`
and the signal traps hand a remote target to the gateway attached as `kernel.gateway`
(`yool.cluster.gateway.Gateway`), which seals it into an envelope. Only plain data goes:
capabilities never cross the wire, so a send with `caps` over a remote capability is
refused here, before the gateway sees it.
"""

from __future__ import annotations

from typing import Any, Protocol

RemoteTarget = tuple[str, int]  # (node id, pid on that node)


class Remote(Protocol):
    node: str

    def send(self, sender: int, target: RemoteTarget, body: Any) -> None:
        """Queue `body` for the remote pid; raise `KernelError` if refused (peer down,
        backlogged, not JSON)."""

    def monitor(self, watcher: int, target: RemoteTarget) -> None:
        """Deliver `Down(pid, reason, node)` to `watcher` when the remote process dies or its
        node becomes unreachable (`noconnection`)."""

    def demonitor(self, watcher: int, target: RemoteTarget) -> None: ...

    def signal(self, sender: int, target: RemoteTarget, sig: str) -> None:
        """Ask the remote node to signal its process (it checks its own grants)."""
