"""`yool cluster status`: this node's cluster configuration, and which peers answer.

Run beside (or without) a server: it reads the policy, never the key's value (only whether
one is set and loads), and for TCP tries a connection to this node's listener and to each
configured peer. A running server reports the live view (peers up, pending, envelope
faults) in the `metrics` tool's `cluster` field.
"""

from __future__ import annotations

import importlib
import socket
from typing import TYPE_CHECKING, Any

from yool.cluster import ClusterError, load_key, node_id, tcp_peers

if TYPE_CHECKING:
    from yool.policy import RuntimePolicy

PROBE_TIMEOUT_S = 1.0


def _reachable(host: str, port: int) -> bool:
    if port == 0:
        return False
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def status(policy: RuntimePolicy) -> dict[str, Any]:
    """What `yool cluster status --json` prints; `ok` is false when something is wrong."""
    out: dict[str, Any] = {"cluster": policy.cluster, "ok": True}
    if policy.cluster == "off":
        out["note"] = "single machine (set YOOL_CLUSTER=tcp or ray to join a cluster)"
        return out
    out["node"] = node_id(policy)
    try:
        load_key(policy)
        out["key"] = "set (redacted)"
    except ClusterError as e:
        out["key"] = "missing"
        out["ok"] = False
        out["problem"] = str(e)
    if policy.cluster == "tcp":
        from yool.cluster.tcp import parse_address

        try:
            listen = parse_address(policy.cluster_listen)
            peers = tcp_peers(policy.cluster_peers)
        except (ClusterError, ValueError) as e:
            out["ok"] = False
            out["problem"] = str(e)
            return out
        out["listen"] = f"{listen[0]}:{listen[1]}"
        out["listening"] = _reachable(*listen)  # a server of this node is up
        rows = []
        for name, (host, port) in peers.items():
            up = _reachable(host, port)
            rows.append({"node": name, "address": f"{host}:{port}", "reachable": up})
            out["ok"] = out["ok"] and up
        out["peers"] = rows
    else:
        try:
            ray_module = importlib.import_module("yool.cluster.ray")
        except ImportError as e:
            out["ok"] = False
            out["problem"] = f"YOOL_CLUSTER=ray needs Ray: pip install 'yool[ray]' ({e})"
            return out
        probe = getattr(ray_module, "status", None)
        if callable(probe):
            out.update(probe(policy))
    return out


def render(found: dict[str, Any]) -> str:
    """The table `yool cluster status` prints."""
    lines = [f"cluster   {found['cluster']}"]
    for key in ("node", "key", "listen", "listening", "note", "problem"):
        if key in found:
            lines.append(f"{key:<9} {found[key]}")
    for peer in found.get("peers", []):
        state = "reachable" if peer.get("reachable", peer.get("up")) else "UNREACHABLE"
        lines.append(f"peer      {peer['node']:<16} {peer.get('address', ''):<24} {state}")
    return "\n".join(lines)
