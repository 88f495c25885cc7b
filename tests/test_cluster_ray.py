"""yool over Ray on this machine: a local two-node Ray cluster (`ray.cluster_utils.Cluster`),
yool nodes as Ray actors pinned to Ray nodes, the MCP server's session joining as a driver.
Remote spawn, messages and monitors through the real MCP client; a Ray node removed under a
running agent ends it with `noconnection`; agents and sandboxed code runs fanned out over
both Ray nodes; the transport's own contract (order, backpressure, a peer's death).

Ray is the optional extra `yool[ray]`, which the test extras include. Without it every test
here is skipped, except under CI, where a missing Ray is an error."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stdio_servers import on_fake_anthropic, server_env, tool_error, tool_result

MARK = f"yool-ray-test-{uuid.uuid4().hex[:12]}"
# Set before Ray is imported: no usage reporting; a one-host cluster stays on 127.0.0.1; and a
# mark in the environment every Ray process inherits, to prove none outlives the tests.
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["YOOLTEST_RAY_MARK"] = MARK

try:
    import ray
except ImportError:
    # The test extras bring Ray, so CI (which installs them) must not pass by skipping.
    if os.environ.get("CI"):
        raise
    pytest.skip(
        "Ray is not installed: pip install -e '.[test]' (or 'yool[ray]') to run the Ray tests",
        allow_module_level=True,
    )

from ray.cluster_utils import Cluster  # noqa: E402

from yool.cluster import ray as yray  # noqa: E402

KEY = "test-cluster-key-0123456789"
SMALL = {"num_cpus": 1, "object_store_memory": 80 * 1024 * 1024, "node_ip_address": "127.0.0.1"}
# No dashboard, autoscaler monitor or log monitor: a head starts in about half the time.
LEAN_HEAD = {"include_dashboard": False, "no_monitor": True, "include_log_monitor": False}

pytestmark = pytest.mark.timeout(150)


def _marked_pids() -> list[int]:
    """Processes started by this module's Ray cluster (they all carry MARK)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if MARK.encode() in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


@dataclass
class RayCluster:
    cluster: Any
    head: str  # Ray node ids
    b: str

    @property
    def address(self) -> str:
        return str(self.cluster.address)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    c = Cluster(
        initialize_head=True,
        head_node_args={**SMALL, **LEAN_HEAD, "resources": {"yool-head": 1}},
    )
    try:
        b = c.add_node(**SMALL, resources={"yool-b": 1})
        ray.init(address=c.address, namespace=yray.NAMESPACE, log_to_driver=False)
        c.wait_for_nodes()
        assert len(_marked_pids()) >= 4  # the leak check below sees Ray's processes
        yield RayCluster(c, c.head_node.node_id, b.node_id)
    finally:
        ray.shutdown()
        c.shutdown()
        # Nothing of Ray outlives the tests: no raylet, GCS, agent or worker is left.
        deadline = time.monotonic() + 15
        while _marked_pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _marked_pids()
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
        assert not left, f"Ray processes left running after shutdown: {left}"


def _node_env(home: Path, name: str, **extra: str) -> dict[str, str]:
    env = server_env(
        home,
        YOOL_CLUSTER="ray",
        YOOL_NODE_ID=name,
        YOOL_CLUSTER_KEY=KEY,
        YOOL_CLUSTER_DOWN_AFTER_S="0.5",
        **extra,
    )
    return env


def _yool_env(home: Path, **extra: str) -> dict[str, str]:
    """Only the yool variables (a YoolNode actor's process has Ray's own environment)."""
    return {
        k: v
        for k, v in _node_env(home, "x", **extra).items()
        if k.startswith(("YOOL_", "ANTHROPIC_"))
    }


@contextlib.asynccontextmanager
async def _mcp(home: Path, env: dict[str, str], mode: str) -> AsyncIterator[Any]:
    import sys as _sys

    from mcp.client import Client
    from mcp.client.stdio import StdioServerParameters

    await asyncio.to_thread(home.mkdir, parents=True, exist_ok=True)
    params = StdioServerParameters(
        command=_sys.executable, args=["-m", "yool", "server", "--stdio"], env=env, cwd=str(home)
    )
    async with Client(params, mode=mode) as client:  # type: ignore[arg-type]
        yield client


async def _peer_up(client: Any, node: str, within_s: float = 30) -> None:
    async with asyncio.timeout(within_s):
        while True:
            metrics = (await tool_result(client, "metrics"))["metrics"]
            peers = (metrics.get("cluster") or {}).get("peers", [])
            if any(p["node"] == node and p["up"] for p in peers):
                return
            await asyncio.sleep(0.1)


async def echo(sys: Any, boot: Any) -> None:
    """Exported image: echoes to its requester until told to stop."""
    while True:
        msg = await sys.recv()
        if msg.body == "stop":
            return
        await sys.send(boot.reply, {"echo": msg.body})


def test_ray_transport_delivers_in_order_refuses_when_full_and_reports_a_dead_actor(
    cluster: RayCluster, real: Any
) -> None:
    from yool.cluster.gateway import Gateway
    from yool.kernel import Down, Kernel, KernelError, Sys

    async def client(k: Kernel) -> Sys:
        started: asyncio.Future[Sys] = asyncio.get_running_loop().create_future()

        async def main(sys: Sys) -> None:
            started.set_result(sys)
            await asyncio.Event().wait()

        k.init.spawn(main, name="client")
        return await started

    async def go() -> None:
        # Two driver-side nodes in this process, each with its inbox actor on the head node.
        async with Kernel() as ka, Kernel() as kb:
            ta = yray.RayTransport("ta", peers=["tb", "nowhere"], max_pending=256)
            tb = yray.RayTransport("tb", down_after_s=0.5)
            ga, gb = Gateway(ka, ta, KEY.encode()), Gateway(kb, tb, KEY.encode())
            gb.export("echo", echo)
            await gb.start()
            await ga.start()
            me = await client(ka)
            ref = await ga.spawn_proxy(me, "tb", "echo")
            for i in range(200):  # more than one batch in flight at a time: still in order
                me.send_nowait(ref, i)
            got = [(await me.recv(timeout=30)).body for _ in range(200)]
            assert got == [{"echo": i} for i in range(200)]
            # b learned its route back from what a sent: both see each other up
            assert {p.node: p.up for p in tb.peers()} == {"ta": True}
            # a node that never came up: its queue holds max_pending, then refuses the new one
            assert all(ta.send("nowhere", b"x") for _ in range(256))
            assert not ta.send("nowhere", b"x")
            assert {p.node: p.pending for p in ta.peers()}["nowhere"] == 256
            assert ta.stats()["refused"] == 1
            # b goes away (its inbox actor ends): a's monitor gets noconnection promptly
            me.monitor(ref)
            t0 = time.monotonic()
            await gb.close()
            down = (await me.recv(timeout=15, match=lambda b: isinstance(b, Down))).body
            assert (down.node, down.reason.kind) == ("tb", "noconnection")
            assert time.monotonic() - t0 < 5
            with pytest.raises(KernelError, match="unreachable or backlogged"):
                me.send_nowait(ref, "anyone?")
            await ga.close()
            # what was pending for "nowhere" (and anything still queued for b) is dropped
            assert ta.stats()["dropped"] >= 256
            assert all(p.pending == 0 for p in ta.peers())

    real(go())


def test_mcp_spawn_on_a_ray_node_exchange_monitor_and_noconnection_when_the_node_is_killed(
    cluster: RayCluster, real: Any, tmp_path: Path
) -> None:
    from yool.testing import FakeProvider, Script, Turn
    from yool.testing.fake_provider import ThreadedFakeProvider

    # c's agents think for a while, so there is time to talk to them and to remove c under them
    slow = ThreadedFakeProvider(FakeProvider(Script([Turn.say("All done.")]), latency=2.5))
    env = _node_env(tmp_path / "a", "a", YOOL_CLUSTER_PEERS="c", YOOL_RAY_ADDRESS=cluster.address)
    c_env = _yool_env(tmp_path / "c", **on_fake_anthropic(slow.url, "sk-c"))

    c = cluster.cluster.add_node(**SMALL, resources={"yool-c": 1})  # (main thread only)

    async def go() -> None:
        # yool node c starts on the third Ray node while a's server starts
        # (its provider is made up front: the SDK's import would otherwise delay the first spawn)
        starting = asyncio.ensure_future(
            asyncio.to_thread(
                yray.start_node,
                "c",
                ray_node=c.node_id,
                env=c_env,
                setup=lambda session: session.warm("anthropic"),
            )
        )
        async with _mcp(tmp_path / "a", env, "legacy") as a:
            node_c = await starting  # a looks c up by name until it exists

            async def on_c(op: str, **args: Any) -> dict[str, Any]:
                out: dict[str, Any] = await node_c.call.remote(op, args)
                return out

            await _peer_up(a, "c")
            spawned = await tool_result(a, "spawn", task="summarise the repo", node="c", tools=[])
            pid = spawned["pid"]
            listed = {s["pid"]: s for s in (await tool_result(a, "ps"))["agents"]}
            where, _, remote_pid = listed[pid]["node"].partition("/")
            assert where == "c" and listed[pid]["status"] == "running"
            # on c it is an ordinary agent of c's session (in the actor), started for node a
            there = {s["pid"]: s for s in (await on_c("ps"))["agents"]}
            assert there[int(remote_pid)]["origin"]["node"] == "a"
            # a message from a's client reaches the agent's mailbox on c, and a's inspect
            # shows the agent as c sees it
            assert (await tool_result(a, "send", pid=pid, message="also check the tests"))[
                "delivered"
            ]
            for _ in range(100):
                seen = await tool_result(a, "inspect", pid=pid)
                if "also check the tests" in str(seen["process"]):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"message never reached c: {seen}")
            assert (seen["process"]["node"], seen["process"]["pid"]) == ("c", int(remote_pid))
            there = await on_c("inspect", pid=int(remote_pid))
            assert there["process"]["name"] == seen["process"]["name"]
            # it finishes on c: a's wait sees its answer and its true exit reason
            done = await tool_result(a, "wait", pids=[pid], timeout_s=30)
            assert done["done"], done
            agent = done["agents"][0]
            assert (agent["reason"], agent["result"], agent["answer"]) == (
                "normal",
                "completed",
                "All done.",
            )
            # the next one is still thinking when c's Ray node is killed outright (SIGKILL to
            # its raylet, agents and workers: Ray sees the actor unavailable, not cleanly dead)
            pid2 = (await tool_result(a, "spawn", task="a long one", node="c", tools=[]))["pid"]
            t0 = time.monotonic()
            await asyncio.to_thread(cluster.cluster.remove_node, c, allow_graceful=False)
            done = await tool_result(a, "wait", pids=[pid2], timeout_s=30)
            assert done["done"], done
            assert done["agents"][0]["reason"] == "noconnection"
            assert time.monotonic() - t0 < 10
            assert "node: " in await tool_error(a, "spawn", task="x", node="c", tools=[])

    try:
        real(go())
    finally:
        slow.stop()


@pytest.fixture(scope="module")
def node_b(cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """yool node b: a YoolNode actor (a whole session) pinned to Ray node b."""
    home = tmp_path_factory.mktemp("b")
    handle = yray.start_node("b", ray_node=cluster.b, env=_yool_env(home))
    try:
        yield handle
    finally:
        yray.stop_node(handle)


def test_yool_cluster_status_shows_which_ray_nodes_answer(
    cluster: RayCluster, node_b: Any, tmp_path: Path
) -> None:
    import json
    import subprocess
    import sys as _sys

    env = _node_env(tmp_path, "a", YOOL_CLUSTER_PEERS="b,nowhere", YOOL_RAY_ADDRESS=cluster.address)
    done = subprocess.run(
        [_sys.executable, "-m", "yool", "cluster", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr[-2000:]  # a configured peer does not answer
    found = json.loads(done.stdout)
    assert found["ray_nodes"] >= 2  # (a node killed by another test may not be noticed yet)
    assert {p["node"]: p["reachable"] for p in found["peers"]} == {"b": True, "nowhere": False}
    assert KEY not in done.stdout and found["key"] == "set (redacted)"


def test_mcp_agents_and_sandboxed_code_runs_fan_out_over_both_ray_nodes(
    cluster: RayCluster, node_b: Any, real: Any, tmp_path: Path
) -> None:
    env = _node_env(tmp_path / "a", "a", YOOL_CLUSTER_PEERS="b", YOOL_RAY_ADDRESS=cluster.address)
    code = (
        "import os, time\n"
        "time.sleep(1.5)\n"  # long enough that the runs overlap and need both nodes' CPUs
        "print(os.environ['YOOL_RAY_NODE_ID'])\n"
    )

    async def go() -> None:
        async with _mcp(tmp_path / "a", env, "auto") as a:
            await _peer_up(a, "b")
            pids = [
                (await tool_result(a, "spawn", task=f"task {i}", node="any", tools=[]))["pid"]
                for i in range(4)
            ]
            done = await tool_result(a, "wait", pids=pids, timeout_s=30)
            assert done["done"], done
            where = [s.get("node", "a/").partition("/")[0] for s in done["agents"]]
            assert sorted(where) == ["a", "a", "b", "b"]
            assert {s["answer"] for s in done["agents"]} == {f"Done: task {i}" for i in range(4)}
            runs = await asyncio.gather(*(tool_result(a, "code_run", code=code) for _ in range(4)))
            assert all(r["reason"] == "exited" and r["exit_code"] == 0 for r in runs), runs
            placed = [r["stdout"].strip() for r in runs]
            assert set(placed) == {cluster.head, cluster.b}, placed

    real(go())
