"""Multi-node yool: sealed envelopes between kernels, over TCP or Ray.

Nothing here loads on a single machine (`YOOL_CLUSTER=off`, the default). With `tcp` or
`ray`, the session attaches a node gateway (`yool.cluster.gateway`) to its kernel over the
transport `make_transport` picks; see /work/brief/CLUSTER.md for the interfaces.
"""

from __future__ import annotations

import importlib
import socket
from typing import TYPE_CHECKING

from yool.cluster.transport import PeerState, Transport

if TYPE_CHECKING:
    from yool.policy import RuntimePolicy

__all__ = ["ClusterError", "PeerState", "Transport", "load_key", "make_transport", "node_id"]


class ClusterError(ValueError):
    """The cluster is misconfigured: the message names the variable and the fix."""


def node_id(policy: RuntimePolicy) -> str:
    return policy.node_id or socket.gethostname()


def load_key(policy: RuntimePolicy) -> bytes:
    """The shared HMAC key, from YOOL_CLUSTER_KEY or YOOL_CLUSTER_KEY_FILE (never echoed)."""
    if policy.cluster_key is not None and policy.cluster_key_file is not None:
        raise ClusterError("set only one of YOOL_CLUSTER_KEY and YOOL_CLUSTER_KEY_FILE")
    if policy.cluster_key is not None:
        key = policy.cluster_key.get_secret_value().encode()
    elif policy.cluster_key_file is not None:
        try:
            key = policy.cluster_key_file.expanduser().read_bytes().strip()
        except OSError as e:
            raise ClusterError(
                f"YOOL_CLUSTER_KEY_FILE: cannot read {str(policy.cluster_key_file)!r} "
                f"({e.strerror}); point it at a readable file holding the key"
            ) from None
    else:
        raise ClusterError(
            f"YOOL_CLUSTER={policy.cluster} needs a shared key: set YOOL_CLUSTER_KEY or "
            "YOOL_CLUSTER_KEY_FILE (the same on every node, at least 16 bytes)"
        )
    if len(key) < 16:
        raise ClusterError("the cluster key is shorter than 16 bytes: use a longer one")
    return key


def tcp_peers(text: str) -> dict[str, tuple[str, int]]:
    """`a=host:port,b=host:port` -> {"a": (host, port), ...}."""
    from yool.cluster.tcp import parse_address

    peers: dict[str, tuple[str, int]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, address = item.partition("=")
        if not sep or not name.strip():
            raise ClusterError(f"YOOL_CLUSTER_PEERS: {item!r} is not name=host:port")
        try:
            peers[name.strip()] = parse_address(address)
        except ValueError as e:
            raise ClusterError(f"YOOL_CLUSTER_PEERS: {e}") from None
    return peers


def make_transport(policy: RuntimePolicy) -> Transport:
    """The transport `YOOL_CLUSTER` names, configured from the policy."""
    if policy.cluster == "tcp":
        from yool.cluster.tcp import TcpTransport, parse_address

        try:
            listen = parse_address(policy.cluster_listen)
        except ValueError as e:
            raise ClusterError(f"YOOL_CLUSTER_LISTEN: {e}") from None
        return TcpTransport(
            node_id(policy),
            listen=listen,
            peers=tcp_peers(policy.cluster_peers),
            max_pending=policy.cluster_max_pending,
            down_after_s=policy.cluster_down_after_s,
        )
    if policy.cluster == "ray":
        try:
            ray_module = importlib.import_module("yool.cluster.ray")
        except ImportError as e:
            raise ClusterError(
                f"YOOL_CLUSTER=ray needs Ray: pip install 'yool[ray]' ({e})"
            ) from None
        made: Transport = ray_module.make_transport(policy)
        return made
    raise ClusterError(f"YOOL_CLUSTER={policy.cluster}: no transport (use tcp or ray)")
