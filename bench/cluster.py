"""Cluster figures: remote message round trips and remote spawn latency, per transport.

TCP: node b runs in its own process (this script with `--serve-b PORT`), node a here; both on
127.0.0.1 with real sockets, sealed envelopes and the nonce guard on. A round trip is a send
over a remote capability to an echo process on b and the wait for its reply; a spawn is
`Gateway.spawn_proxy` of an exported image until its pid is known. Prints one JSON object
per figure, each with a `transport` field. The Ray figures come from `ray_figures()` (the
marked block at the bottom, kept by the Ray transport's owner).
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import emit
from yool.cluster.gateway import Gateway, RemoteBoot
from yool.cluster.tcp import TcpTransport
from yool.cluster.transport import Transport
from yool.kernel import Kernel, Sys

KEY = b"bench-cluster-key-0123456789"
ROUNDTRIPS = 5_000
SPAWNS = 300
ROUNDS = 3


async def echo(sys: Sys, boot: RemoteBoot) -> None:
    """Exported on b: answer every message to the requester."""
    while True:
        msg = await sys.recv()
        sys.send_nowait(boot.reply, msg.body)


async def quit_at_once(sys: Sys, boot: RemoteBoot) -> None:
    return None


async def serve_b(port: int) -> None:
    async with Kernel(mailbox_limit=1 << 16) as k:
        gw = Gateway(k, TcpTransport("b", listen=("127.0.0.1", port)), KEY)
        gw.export("echo", echo)
        gw.export("quit", quit_at_once)
        await gw.start()
        print("ready", flush=True)
        await asyncio.Event().wait()


async def figures(
    t: Transport, *, roundtrips: int, spawns: int, rt_note: str, spawn_note: str
) -> list[dict[str, Any]]:
    """Node a (this process) over `t` to node b, which exports `echo` and `quit`."""
    async with Kernel(mailbox_limit=1 << 16) as k:
        gw = Gateway(k, t, KEY)
        await gw.start()
        ready: asyncio.Future[Sys] = k.loop.create_future()

        async def client(sys: Sys) -> None:
            ready.set_result(sys)
            await asyncio.Event().wait()

        k.init.spawn(client)
        me = await ready
        ref = await gw.spawn_proxy(me, "b", "echo")  # also waits for the connection
        rates = []
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            for i in range(roundtrips):
                me.send_nowait(ref, i)
                await me.recv()
            rates.append(roundtrips / (time.perf_counter() - t0))
        spawn_ms = []
        for _ in range(spawns):
            t0 = time.perf_counter()
            await gw.spawn("b", "quit", reply=me.pid, watch=False)
            spawn_ms.append((time.perf_counter() - t0) * 1000)
        await gw.close()
    rates.sort()
    spawn_ms.sort()
    return [
        {
            "bench": "remote_roundtrips_per_s",
            "value": statistics.median(rates),
            "unit": "roundtrips/s",
            "transport": t.kind,
            "min": rates[0],
            "max": rates[-1],
            "roundtrips": roundtrips,
            "rounds": ROUNDS,
            "note": rt_note,
        },
        {
            "bench": "remote_spawn_ms",
            "value": statistics.median(spawn_ms),
            "unit": "ms",
            "transport": t.kind,
            "p90": spawn_ms[int(len(spawn_ms) * 0.9)],
            "spawns": spawns,
            "note": spawn_note,
        },
    ]


async def tcp_figures(port: int) -> list[dict[str, Any]]:
    return await figures(
        TcpTransport("a", peers={"b": ("127.0.0.1", port)}, max_pending=1 << 16),
        roundtrips=ROUNDTRIPS,
        spawns=SPAWNS,
        rt_note="two processes on 127.0.0.1, sequential send+reply, sealed and verified",
        spawn_note="exported image on the other process, until its pid is known",
    )


def tcp() -> list[dict[str, Any]]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    b = subprocess.Popen(
        [sys.executable, str(Path(__file__)), "--serve-b", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert b.stdout is not None and b.stdout.readline().strip() == "ready"
        return asyncio.run(tcp_figures(port))
    finally:
        b.kill()
        b.wait()


# -- Ray figures: kept by the Ray transport's owner ------------------------------------------
RAY_ROUNDTRIPS = 1_000
RAY_SPAWNS = 100


async def _ray_setup_b(session: Any) -> None:
    """Runs in node b's actor (pickled by value from this script): the bench's images."""
    session.cluster.gateway.export("echo", echo)
    session.cluster.gateway.export("quit", quit_at_once)


async def ray_node_figures(address: str) -> list[dict[str, Any]]:
    """Node a is this process, a Ray driver with its inbox actor; node b a `YoolNode` actor
    (a whole Session) pinned to the cluster's second Ray node."""
    from yool.cluster.ray import RayTransport

    note = "local 2-node ray.cluster_utils.Cluster; a = driver + inbox actor, b = YoolNode actor"
    return await figures(
        RayTransport("a", peers=["b"], address=address, max_pending=1 << 16),
        roundtrips=RAY_ROUNDTRIPS,
        spawns=RAY_SPAWNS,
        rt_note=note + ", sequential send+reply as actor calls, sealed and verified",
        spawn_note=note + ", exported image on b, until its pid is known",
    )


def ray_figures() -> list[dict[str, Any]]:
    """Figures of the same shape for `transport: "ray"`; [] when Ray is not installed."""
    import os
    import tempfile

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # stay on 127.0.0.1
    try:
        import ray
        from ray.cluster_utils import Cluster
    except ImportError:
        return []
    from ray import cloudpickle

    from yool.cluster import ray as yray

    if __name__ != "__main__":  # imported: b's actor cannot import this script by name
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    small = {"num_cpus": 1, "object_store_memory": 80 << 20, "node_ip_address": "127.0.0.1"}
    t0 = time.perf_counter()
    lean = {"include_dashboard": False, "no_monitor": True, "include_log_monitor": False}
    cluster = Cluster(initialize_head=True, head_node_args={**small, **lean})
    try:
        b = cluster.add_node(**small)
        ray.init(address=cluster.address, namespace=yray.NAMESPACE, log_to_driver=False)
        start_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as home:
            env = {"YOOL_HOME": home, "YOOL_CLUSTER_KEY": KEY.decode(), "YOOL_PROVIDER": "scripted"}
            t0 = time.perf_counter()
            node_b = yray.start_node("b", ray_node=b.node_id, env=env, setup=_ray_setup_b)
            node_s = time.perf_counter() - t0
            try:
                figures = asyncio.run(ray_node_figures(cluster.address))
            finally:
                yray.stop_node(node_b)
    finally:
        ray.shutdown()
        cluster.shutdown()
    for figure in figures:
        figure["cluster_start_s"] = round(start_s, 1)
        figure["node_start_s"] = round(node_s, 1)
    return figures


# -- end of the Ray block ---------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-b":
        asyncio.run(serve_b(int(sys.argv[2])))
        return
    for figure in [*tcp(), *ray_figures()]:
        fig = dict(figure)
        emit(fig.pop("bench"), fig.pop("value"), fig.pop("unit"), **fig)


if __name__ == "__main__":
    main()
