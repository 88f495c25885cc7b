"""The Ray transport: yool nodes as Ray actors, envelopes as actor calls (`yool[ray]`).

Every yool node has one named Ray actor, `yool-node:<id>` in namespace `yool`, that peers
call with envelopes (`envelope(sender, [bytes, ...])`):

* a node *hosted* in Ray is a `YoolNode` async actor pinned to a Ray node (`start_node`); it
  runs a whole yool `Session` (kernel, store, gateway) on the actor's event loop, so an
  envelope call hands its bytes straight to the gateway on the kernel's own loop;
* a node that is a Ray *driver* (the MCP server's session with `YOOL_CLUSTER=ray`) cannot be
  called, so it starts a small `_Inbox` actor on its own Ray node under its name, and
  long-polls it (`take()`) for what peers sent.

Sending never blocks: each peer has a bounded pending queue drained in order by one task that
looks the peer's actor up by name, then makes one call at a time with everything pending (at
most `BATCH`), so per peer envelopes arrive in order and at most once. A full queue refuses
the new envelope (the gateway raises it to the sender); a full inbox pushes back the same way
(the caller keeps what was not taken). While a peer is up, a `watch()` call stays pending on
its actor: Ray fails it the moment the actor dies (its Ray node removed or lost, the actor
killed), and the peer is then reported down at once — remote monitors get `noconnection` —
what was pending is dropped, and sends are refused until an actor of that name is back.
A peer whose actor is only unreachable is reported down after `down_after_s`.

Code runs (`code_run`) become Ray tasks when `YOOL_CLUSTER=ray` (`RaySandboxPool`): each run
asks Ray for `RUN_CPUS` CPUs and the sandbox's memory ceiling, is spread over the cluster's
nodes, and runs in the yool sandbox (a warm zygote pool per Ray worker) of the node it lands
on; the run sees that node's id in `YOOL_RAY_NODE_ID`.

Ray is an optional extra: nothing imports this module unless `YOOL_CLUSTER=ray`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future as ThreadFuture
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from yool.cluster.transport import (
    DEFAULT_DOWN_AFTER_S,
    DEFAULT_MAX_PENDING,
    Link,
    PeerState,
    QueuedTransport,
    Transport,
)
from yool.sandbox.pool import Config as SandboxConfig
from yool.sandbox.pool import Pool
from yool.sandbox.spec import Limits, RunResult, Task

if TYPE_CHECKING:
    from yool.policy import RuntimePolicy
    from yool.sandbox.pool import Callbacks

log = logging.getLogger("yool.cluster.ray")

NAMESPACE = "yool"
BATCH = 256  # envelopes per actor call
INBOX_LIMIT = 8192  # envelopes a driver's inbox holds before it pushes back
RUN_CPUS = 1.0  # CPUs a code run asks Ray for
RUN_NODE_ENV = "YOOL_RAY_NODE_ID"
_LOOKUP_BASE_S = 0.05
_LOOKUP_MAX_S = 1.0


def actor_name(node: str) -> str:
    """The Ray actor name peers call to reach yool node `node`."""
    return f"yool-node:{node}"


def _ray() -> Any:
    """The `ray` module, imported on first use (it takes a second or two)."""
    import ray

    return ray


def _loopback(address: str | None) -> bool:
    host = (address or "").rpartition(":")[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def connect(address: str | None = None) -> None:
    """Join the Ray cluster at `address` as a driver (no-op inside a Ray worker or if joined).

    On a loopback address Ray would still advertise this host's external IP, which a
    sandboxed or firewalled host may not route to itself; `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`
    keeps a one-host cluster on 127.0.0.1 (it must be set before Ray is imported)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if _loopback(address):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = _ray()
    if ray.is_initialized():
        return
    ray.init(
        address=address or None,
        namespace=NAMESPACE,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )


def _here() -> str:
    """The Ray node id of this process."""
    node: str = _ray().get_runtime_context().get_node_id()
    return node


def _pinned(node_id: str) -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


# -- the transport ---------------------------------------------------------------------


@dataclass(slots=True)
class _Peer(Link):
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    handle: Any = None  # its actor, once looked up


class RayTransport(QueuedTransport[_Peer]):
    """Envelopes as Ray actor calls; see the module docstring."""

    kind = "ray"

    def __init__(
        self,
        node: str,
        *,
        peers: list[str] | None = None,
        address: str | None = None,
        hosted: bool = False,
        max_pending: int = DEFAULT_MAX_PENDING,
        down_after_s: float = DEFAULT_DOWN_AFTER_S,
    ) -> None:
        super().__init__(node, max_pending, down_after_s)
        self._address = address
        self._hosted = hosted  # True: a YoolNode actor calls `receive`; False: own inbox
        self._initial = [p for p in (peers or []) if p and p != node]
        self._inbox: Any = None
        self._poll: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(connect, self._address)
        if not self._hosted:
            ray = _ray()
            # Named after this node, on this Ray node: it lives and dies with this driver.
            self._inbox = _Inbox.options(
                name=actor_name(self.node),
                namespace=NAMESPACE,
                scheduling_strategy=_pinned(_here()),
            ).remote(INBOX_LIMIT)
            await self._inbox.ready.remote()
            self._poll = asyncio.get_running_loop().create_task(self._drain_inbox(ray))
        for name in self._initial:
            self.add_peer(name)

    async def close(self) -> None:
        if self._closed:
            return
        tasks = self._stop_links()
        if self._poll is not None:
            self._poll.cancel()
            tasks.append(self._poll)
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._inbox is not None:
            with contextlib.suppress(Exception):  # peers' watches fail: they see us go
                _ray().kill(self._inbox)
            self._inbox = None

    def add_peer(self, node: str) -> None:
        """Route envelopes for `node` to its actor (looked up by name until it exists)."""
        if self._closed or node == self.node or node in self._peers:
            return
        peer = self._peers[node] = _Peer(node)
        peer.task = asyncio.get_running_loop().create_task(self._pump(peer))

    # -- sending ------------------------------------------------------------------

    def _wake(self, peer: _Peer) -> None:
        peer.wake.set()

    async def _pump(self, peer: _Peer) -> None:
        """Find the peer's actor, watch it, deliver what is pending in order; on its death
        report it down and look for a new one."""
        ray = _ray()
        attempt = 0
        while not self._closed:
            try:
                peer.handle = await asyncio.to_thread(
                    ray.get_actor, actor_name(peer.node), NAMESPACE
                )
            except ValueError:  # no such actor (yet, or any more)
                peer.handle = None
            if peer.handle is not None:
                attempt = 0
                died = await self._serve_peer(ray, peer)
                peer.handle = None
                if self.closed():
                    return
                self._lost(peer, died=died)
                self._stats["reconnects"] += 1
            delay = random.uniform(0, min(_LOOKUP_MAX_S, _LOOKUP_BASE_S * 2**attempt))
            attempt = min(attempt + 1, 30)
            await asyncio.sleep(delay)

    async def _serve_peer(self, ray: Any, peer: _Peer) -> bool:
        """Deliver to `peer.handle` until it fails; True if its actor died."""
        watch: asyncio.Future[Any] = asyncio.ensure_future(peer.handle.watch.remote())
        try:
            ready = asyncio.ensure_future(peer.handle.ready.remote())
            await asyncio.wait({ready, watch}, return_when="FIRST_COMPLETED")
            if not ready.done():
                ready.cancel()
                watch.result()  # raises why it ended
                raise ConnectionError("the peer's watch ended")
            ready.result()
            self._connected(peer)
            while True:
                while peer.pending:
                    batch = [peer.pending[i] for i in range(min(BATCH, len(peer.pending)))]
                    call = asyncio.ensure_future(peer.handle.envelope.remote(self.node, batch))
                    done, _ = await asyncio.wait({call, watch}, return_when="FIRST_COMPLETED")
                    if call not in done:
                        call.cancel()
                        watch.result()  # the watch ended first: why
                        raise ConnectionError("the peer's watch ended")
                    taken = int(call.result())
                    for _ in range(taken):
                        peer.pending.popleft()
                    self._stats["sent"] += taken
                    if taken < len(batch):
                        await asyncio.sleep(0.01)  # its inbox is full: back off a little
                peer.wake.clear()
                wake = asyncio.ensure_future(peer.wake.wait())
                try:
                    await asyncio.wait({wake, watch}, return_when="FIRST_COMPLETED")
                finally:
                    wake.cancel()
                if watch.done():
                    watch.result()
                    raise ConnectionError("the peer's watch ended")
        except asyncio.CancelledError:
            raise
        except ray.exceptions.ActorDiedError as e:
            log.debug("ray %s -> %s: the actor died: %s", self.node, peer.node, str(e)[:200])
            return True
        except Exception as e:  # unavailable, a broken call: lost, maybe back soon
            log.debug("ray %s -> %s: %r", self.node, peer.node, e)
            return False
        finally:
            watch.cancel()

    # -- receiving ------------------------------------------------------------------

    def receive(self, sender: str, batch: list[bytes]) -> None:
        """Envelopes from `sender`, on the loop thread (a hosting actor's call, or the inbox
        poll); an unknown sender gets a route back, as a TCP listener dials back."""
        if self._closed:
            return
        if sender not in self._peers and isinstance(sender, str) and sender:
            self.add_peer(sender)
        for data in batch:
            if isinstance(data, bytes):
                self._stats["received"] += 1
                self.deliver(sender, data)

    async def _drain_inbox(self, ray: Any) -> None:
        while not self._closed:
            try:
                got = await self._inbox.take.remote()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # our own inbox died: nothing reaches us any more
                log.warning("ray %s: the inbox actor failed: %r", self.node, e)
                return
            for sender, batch in got:
                self.receive(sender, batch)

    # -- status -------------------------------------------------------------------

    def peers(self) -> list[PeerState]:
        return [
            PeerState(p.node, p.up, f"ray:{actor_name(p.node)}", len(p.pending), p.down)
            for p in self._peers.values()
        ]


_HOSTED: dict[str, RayTransport] = {}  # node id -> the transport a YoolNode actor feeds
_hosting: str | None = None  # set by YoolNode while its session starts


def make_transport(policy: RuntimePolicy) -> Transport:
    """`YOOL_CLUSTER=ray`: the transport of this node (hosted when inside a `YoolNode`)."""
    from yool.cluster import node_id

    name = node_id(policy)
    peers = [p.strip() for p in policy.cluster_peers.split(",") if p.strip()]
    hosted = _hosting == name
    transport = RayTransport(
        name,
        peers=peers,
        address=policy.ray_address,
        hosted=hosted,
        max_pending=policy.cluster_max_pending,
        down_after_s=policy.cluster_down_after_s,
    )
    if hosted:
        _HOSTED[name] = transport
    return transport


def status(policy: RuntimePolicy, *, within_s: float = 3.0) -> dict[str, Any]:
    """For `yool cluster status`: is the Ray cluster at YOOL_RAY_ADDRESS up, and which yool
    nodes (`yool-node:*` actors, and the peers YOOL_CLUSTER_PEERS names) answer."""
    import importlib.util
    import socket

    if importlib.util.find_spec("ray") is None:
        return {"ok": False, "problem": "YOOL_CLUSTER=ray needs Ray: pip install 'yool[ray]'"}
    address = policy.ray_address
    out: dict[str, Any] = {"ray_address": address or ""}
    ray = _ray()
    joined = False
    if not ray.is_initialized():
        if not address:
            return {
                **out,
                "ok": False,
                "problem": "set YOOL_RAY_ADDRESS to the cluster's host:port",
            }
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=within_s).close()
        except (OSError, ValueError) as e:
            return {**out, "ok": False, "problem": f"YOOL_RAY_ADDRESS={address}: unreachable ({e})"}
        connect(address)
        joined = True
    try:
        out["ray_nodes"] = sum(1 for n in ray.nodes() if n.get("Alive"))
        prefix = actor_name("")
        names = {
            str(a["name"])[len(prefix) :]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a.get("namespace") == NAMESPACE and str(a.get("name", "")).startswith(prefix)
        }
        names |= {p.strip() for p in policy.cluster_peers.split(",") if p.strip()}
        rows = []
        for name in sorted(names):
            try:
                handle = ray.get_actor(actor_name(name), NAMESPACE)
                ray.get(handle.ready.remote(), timeout=within_s)
                up = True
            except Exception:  # not there, dead, or not answering in time
                up = False
            rows.append({"node": name, "address": f"ray:{actor_name(name)}", "reachable": up})
        out["peers"] = rows
        wanted = {p.strip() for p in policy.cluster_peers.split(",") if p.strip()}
        if not all(r["reachable"] for r in rows if r["node"] in wanted):
            out["ok"] = False  # (only ever lowered: the caller's other checks stand)
    finally:
        if joined:
            ray.shutdown()
    return out


# -- actors ---------------------------------------------------------------------------


class _InboxImpl:
    """A driver node's mailbox: peers `envelope(...)` into it, the driver `take()`s."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.queue: deque[tuple[str, list[bytes]]] = deque()
        self.count = 0
        self.wake = asyncio.Event()
        self.closed = asyncio.Event()

    async def ready(self) -> bool:
        return True

    async def envelope(self, sender: str, batch: list[bytes]) -> int:
        """Take what fits; the caller keeps (and retries) the rest."""
        room = max(0, self.limit - self.count)
        taken = batch[:room]
        if taken:
            self.queue.append((sender, taken))
            self.count += len(taken)
            self.wake.set()
        return len(taken)

    async def take(self) -> list[tuple[str, list[bytes]]]:
        while not self.queue:
            self.wake.clear()
            await self.wake.wait()
        out = list(self.queue)
        self.queue.clear()
        self.count = 0
        return out

    async def watch(self) -> None:
        """Pending while this node lives: Ray fails it for the caller when it dies."""
        await self.closed.wait()


class YoolNodeImpl:
    """A yool node as a Ray actor: a whole `Session` on the actor's event loop.

    Start with `start_node`; `call(op, args)` runs one operation of the table on its session
    (as `yool server` would for an MCP client), `stop()` closes the session."""

    def __init__(
        self,
        node: str,
        env: Mapping[str, str],
        workspace: str | None,
        setup: Callable[[Any], Awaitable[None]] | None = None,
    ) -> None:
        self.node = node
        self.env = dict(env)
        self.workspace = workspace
        self.setup = setup
        self.session: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self.started = asyncio.Event()
        self.closed = asyncio.Event()

    async def start(self) -> dict[str, Any]:
        global _hosting
        from yool.policy import RuntimePolicy
        from yool.tools import Session, load_all

        os.environ.update(self.env)  # this actor's own worker process
        os.environ["YOOL_CLUSTER"] = "ray"
        os.environ["YOOL_NODE_ID"] = self.node
        load_all()
        policy = RuntimePolicy.load()
        workspace = Path(self.workspace) if self.workspace else policy.home / "workspace"
        await asyncio.to_thread(workspace.mkdir, parents=True, exist_ok=True)
        stack = contextlib.AsyncExitStack()
        _hosting = self.node
        try:
            self.session = await stack.enter_async_context(
                Session.open(policy, workspace=workspace, environ=dict(os.environ))
            )
        finally:
            _hosting = None
        self._stack = stack
        if self.setup is not None:  # e.g. export more images on this node's gateway
            await self.setup(self.session)
        self.started.set()
        return {"node": self.node, "ray_node": _here(), "pid": os.getpid()}

    async def ready(self) -> bool:
        """Returns once the session is up (peers wait for it before sending)."""
        await self.started.wait()
        return True

    async def envelope(self, sender: str, batch: list[bytes]) -> int:
        transport = _HOSTED.get(self.node)
        if transport is None or transport.closed():
            return 0
        transport.receive(sender, batch)
        return len(batch)

    async def watch(self) -> None:
        await self.closed.wait()

    async def call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run operation `op` of the table on this node's session; its result as JSON."""
        from yool.tools import OPERATIONS, Call

        result = await OPERATIONS[op](Call(self.session, client="ray"), args)
        out: dict[str, Any] = result.model_dump(mode="json")
        return out

    async def stop(self) -> None:
        self.closed.set()
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        _HOSTED.pop(self.node, None)


def _actor_classes() -> tuple[Any, Any]:
    ray = _ray()
    return ray.remote(num_cpus=0)(_InboxImpl), ray.remote(num_cpus=0, max_restarts=0)(YoolNodeImpl)


class _LazyActor:
    """`ray.remote` applied on first use, so importing this module does not import Ray."""

    def __init__(self, index: int) -> None:
        self._index = index
        self._cls: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._cls is None:
            self._cls = _actor_classes()[self._index]
        return getattr(self._cls, name)


_Inbox: Any = _LazyActor(0)
YoolNode: Any = _LazyActor(1)


def start_node(
    node: str,
    *,
    ray_node: str | None = None,
    env: Mapping[str, str] | None = None,
    workspace: str | None = None,
    setup: Callable[[Any], Awaitable[None]] | None = None,
    detached: bool = False,
    timeout_s: float = 120.0,
) -> Any:
    """Start yool node `node` as a `YoolNode` actor (pinned to Ray node `ray_node` if given)
    and wait until its session is up; returns the actor handle. `env` is its YOOL_* settings
    (YOOL_HOME, YOOL_CLUSTER_KEY...); `setup(session)`, if given, runs in the actor once the
    session is up, before peers are told it is ready (Ray pickles it to the actor); a
    `detached` node outlives its starter. Call from a Ray driver (`connect` first)."""
    ray = _ray()
    options: dict[str, Any] = {"name": actor_name(node), "namespace": NAMESPACE}
    if ray_node is not None:
        options["scheduling_strategy"] = _pinned(ray_node)
    if detached:  # outlives the driver that started it (stop it with `stop_node`)
        options["lifetime"] = "detached"
    handle = YoolNode.options(**options).remote(node, dict(env or {}), workspace, setup)
    ray.get(handle.start.remote(), timeout=timeout_s)
    return handle


def stop_node(handle: Any, timeout_s: float = 30.0) -> None:
    """Close a `YoolNode`'s session (its peers see it go), then end the actor."""
    ray = _ray()
    with contextlib.suppress(Exception):
        ray.get(handle.stop.remote(), timeout=timeout_s)
    with contextlib.suppress(Exception):
        ray.kill(handle)


# -- code runs as Ray tasks -------------------------------------------------------------


class _Worker:
    """One warm sandbox pool per Ray worker process, on a loop thread of its own (Ray task
    functions are synchronous; the pool is asyncio)."""

    lock: ClassVar[threading.Lock] = threading.Lock()
    loop: ClassVar[asyncio.AbstractEventLoop | None] = None
    pools: ClassVar[dict[str, Pool]] = {}

    @classmethod
    def run(cls, config: SandboxConfig, task: Task) -> dict[str, Any]:
        with cls.lock:
            if cls.loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="yool-sandbox", daemon=True).start()
                cls.loop = loop
            loop = cls.loop
        future: ThreadFuture[RunResult] = asyncio.run_coroutine_threadsafe(
            cls._run(config, task), loop
        )
        try:
            return future.result().to_json()
        except BaseException:  # Ray cancelled the task: the run is killed with it
            future.cancel()
            raise

    @classmethod
    async def _run(cls, config: SandboxConfig, task: Task) -> RunResult:
        key = repr(config)
        pool = cls.pools.get(key)
        if pool is None:
            pool = cls.pools[key] = Pool(config)
        return await pool.run(task)


def _run_on_node(config: SandboxConfig, task: Task) -> dict[str, Any]:
    """The Ray task: one sandboxed run on whichever node Ray placed it."""
    node = _here()
    out = _Worker.run(config, replace(task, env={**task.env, RUN_NODE_ENV: node}))
    out["ray_node"] = node
    return out


class RaySandboxPool(Pool):
    """The session's sandbox pool under `YOOL_CLUSTER=ray`: each run a Ray task asking for
    `RUN_CPUS` CPUs and the run's memory ceiling, spread over the cluster's nodes.

    The code's callbacks (`yool.kv_get(...)` ...) need the asking session's capabilities,
    which stay on its node: a placed run has none (they are refused, as with no device)."""

    def __init__(self, config: SandboxConfig, *, address: str | None = None) -> None:
        super().__init__(config)
        self._address = address
        self._remote: Any = None

    async def run(self, task: Task, callbacks: Callbacks | None = None) -> RunResult:
        if self._remote is None:
            address = self._address or os.environ.get("YOOL_RAY_ADDRESS")
            await asyncio.to_thread(connect, address)
            self._remote = _ray().remote(_run_on_node)
        limits: Limits = task.limits
        ref = self._remote.options(
            num_cpus=RUN_CPUS,
            memory=max(limits.memory_bytes, 1 << 20),
            scheduling_strategy="SPREAD",
            max_retries=0,  # a run is not idempotent: never run twice
        ).remote(self.config, task)
        try:
            out: dict[str, Any] = await ref
        except asyncio.CancelledError:
            _ray().cancel(ref)  # the run is killed where it runs
            raise
        out.pop("ray_node", None)
        return RunResult(**out)

    async def close(self) -> None:
        return None
