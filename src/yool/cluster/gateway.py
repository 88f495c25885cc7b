"""The node gateway: one per kernel, the trust boundary between it and the wire.

Outbound, it seals what a process sends over a `remote` capability into an envelope and
hands it to the transport; inbound, it opens every envelope (MAC, freshness, replay: see
`yool.cluster.envelope`), drops and logs as a fault anything that fails, and turns what is
left into local kernel actions. Authority never crosses the wire: an envelope names a pid
or an image, and what it may do is decided here, from this node's own grants:

* a peer may spawn only an image this node `export`ed, and the new process gets only the
  devices that export grants, plus a `remote` capability back to the requester;
* a peer may message, monitor or signal only the processes exposed to it (those it
  spawned here, and the local processes that asked it for something and await a reply);
* a peer's `down` is delivered only to a local process that monitors that remote pid.

Envelopes to pid 0 are the control channel: `spawn`/`spawned`, `monitor`/`demonitor`,
`down`, `signal`, and `ask`/`answer` for the questions this node answers (`answer_queries`:
each handler decides what the asking node may learn, e.g. only of the processes it spawned).
Data envelopes carry `{"s": sender pid, "m": body}` to a pid and are delivered with sender 0
and the plain body. Remote monitors end with `Down(pid, reason, node)`: the real exit reason
when the remote process died, `noconnection` when the transport reports its node unreachable.

Backpressure across nodes: a remote send never blocks. It is refused at once (`KernelError`)
when the peer's transport queue is full or the peer is down; a message that reaches a full
mailbox on the receiving node is dropped there and logged as a fault (the kernel's `post`),
like a message to a process that died.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from yool.cluster.envelope import EnvelopeError, NonceGuard, new_nonce, open_envelope, seal
from yool.cluster.transport import Transport
from yool.kernel import INIT, Down, ExitReason, Kernel, KernelError, Message, Sys
from yool.kernel.events import Event
from yool.kernel.process import Image
from yool.kernel.reasons import NOCONNECTION, NOPROC
from yool.kernel.remote import RemoteTarget

log = logging.getLogger("yool.cluster")

PROXY_RIGHTS = ("send", "monitor", "kill")
MIN_KEY_BYTES = 16
SIGNALS = frozenset({"kill", "term", "stop", "cont"})

# (requesting node, args, requester pid awaiting replies) -> the local pid it started, or
# (pid, info): info is plain data handed back to the requester (e.g. the provider it runs on)
Spawner = Callable[[str, list[Any], int], Awaitable[int | tuple[int, dict[str, Any]]]]
# (asking node, arguments) -> the answer, plain JSON data; raising refuses with the message
Query = Callable[[str, dict[str, Any]], Awaitable[Any]]
MAX_ANSWER_BYTES = 1024 * 1024
# How long a request waits for a peer that is not connected before it is refused: long
# enough for a dial's backoff (2 s at most) while both nodes start, short of a request's own
# timeout, so a peer that is not there is said at once, and nothing is left queued for it.
CONNECT_GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class RemoteBoot:
    """The first argument of a process spawned for a peer by an exported image."""

    node: str  # who asked
    reply: str  # a remote capability (send, monitor) over the requester's process
    devices: dict[str, str] = field(default_factory=dict)  # device name -> capability


@dataclass(slots=True)
class _Pending:
    """A request to `node` awaiting its `spawned` or `answer` (matched by correlation id)."""

    node: str
    watcher: int | None  # spawn: the local pid that monitors what starts
    future: asyncio.Future[dict[str, Any]]


class Gateway:
    """Attach with `await Gateway(kernel, transport, key).start()`; see the module docstring."""

    def __init__(
        self,
        kernel: Kernel,
        transport: Transport,
        key: bytes,
        *,
        window_s: float = 30.0,
        spawn_timeout_s: float = 60.0,
        connect_grace_s: float = CONNECT_GRACE_S,
    ) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise KernelError(f"the cluster key must be at least {MIN_KEY_BYTES} bytes")
        self.kernel = kernel
        self.transport = transport
        self.node = transport.node
        self._key = key  # never logged, never in status or errors
        self.window_s = window_s
        self.spawn_timeout_s = spawn_timeout_s
        self.connect_grace_s = connect_grace_s
        self._up_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.guard = NonceGuard(window_s)
        self._exports: dict[str, Spawner] = {}
        self._self_reporting: set[str] = set()  # exports whose exits their exporter reports
        self._deferred: set[int] = set()  # pids whose exit the exporter will report
        self._exposed: dict[int, set[str]] = {}  # local pid -> peers that may address it
        self._watched_by: dict[int, set[tuple[str, int]]] = {}  # local pid -> remote watchers
        self._watching: dict[str, dict[int, set[int]]] = {}  # node -> remote pid -> local pids
        self._queries: dict[str, Query] = {}
        self._pending: dict[str, _Pending] = {}  # correlation id -> request awaiting a reply
        self._tasks: set[asyncio.Task[None]] = set()
        self.faults: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self._closed = False

    def __repr__(self) -> str:
        return f"<Gateway node={self.node!r} transport={self.transport.kind}>"

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        if self.kernel.gateway is not None:
            raise KernelError("this kernel already has a gateway")
        self.transport.bind(self._inbound, self._peer)
        self.kernel.events.sinks.append(self._event)
        self.kernel.gateway = self
        await self.transport.start()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.kernel.gateway is self:
            self.kernel.gateway = None
        with contextlib.suppress(ValueError):
            self.kernel.events.sinks.remove(self._event)
        waiting: list[asyncio.Future[Any]] = [p.future for p in self._pending.values()]
        waiting += [w for ws in self._up_waiters.values() for w in ws]
        for future in waiting:
            if not future.done():
                future.set_exception(KernelError("the node gateway closed"))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.transport.close()

    # -- what this node offers --------------------------------------------------------

    def export_spawner(self, name: str, spawner: Spawner, *, reports_exit: bool = False) -> None:
        """Let peers start `name` here: `spawner(node, args, reply_pid)` returns the pid.

        With `reports_exit`, the exporter calls `exited(pid, reason)` itself when what it
        started is over (e.g. after it sent the result back), instead of the gateway
        reporting the process's exit the moment it happens."""
        self._exports[name] = spawner
        if reports_exit:
            self._self_reporting.add(name)
        else:
            self._self_reporting.discard(name)

    def answer_queries(self, name: str, handler: Query) -> None:
        """Let peers ask `name`: `handler(node, args)` returns plain JSON data (at most
        `MAX_ANSWER_BYTES` of it), or raises to refuse with its message."""
        self._queries[name] = handler

    def exposed_to(self, pid: int, node: str) -> bool:
        """Whether `node` may address local `pid` (it spawned it, or awaits its replies)."""
        return node in self._exposed.get(pid, ())

    def exited(self, pid: int, reason: ExitReason) -> None:
        """Report `pid`'s end to the peers that watch it (for `reports_exit` exports)."""
        self._deferred.discard(pid)
        self._exited(pid, reason)

    def export(self, name: str, image: Image, grant: Iterable[str] = ()) -> None:
        """Let peers spawn `image` by `name`; it may open only the devices in `grant` (and
        spawn, if "spawn" is in it). It runs under init as `image(sys, boot, *args)`."""
        granted = tuple(grant)

        async def spawner(node: str, args: list[Any], reply_pid: int) -> int:
            k = self.kernel
            init = k.init
            caps: list[str] = []
            devices: dict[str, str] = {}
            try:
                for device in granted:
                    kind, target = ("spawn", None) if device == "spawn" else ("device", device)
                    base = init.cap(kind, target)
                    if base is None:
                        raise KernelError(f"image {name!r} grants {device!r}, not installed here")
                    ref = init.derive(base)
                    caps.append(ref)
                    if device != "spawn":
                        devices[device] = ref
                reply = k.caps.mint(INIT, "remote", (node, reply_pid), ("send", "monitor"))
                caps.append(reply)
                child = init.spawn(
                    image, RemoteBoot(node, reply, devices), *args, name=f"{name}@{node}", caps=caps
                )
            except BaseException:
                for ref in caps:
                    if k.caps.lookup(ref) is not None:
                        k.caps.revoke(ref)
                raise
            return child.pid

        self._exports[name] = spawner

    def expose(self, pid: int, node: str) -> None:
        """Let `node` message, monitor and signal local `pid` (until it dies)."""
        peers = self._exposed.get(pid)
        if peers is None:
            self._exposed[pid] = {node}
        else:
            peers.add(node)

    # -- asking a peer ------------------------------------------------------------------

    async def spawn(
        self,
        node: str,
        image: str,
        args: Iterable[Any] = (),
        *,
        reply: int,
        watch: bool = True,
        within_s: float | None = None,
    ) -> int:
        """Start exported `image` on `node`; its replies go to local pid `reply`, which also
        monitors it when `watch` (registered atomically with the spawn). Returns its pid."""
        pid, _ = await self.spawn_with_info(
            node, image, args, reply=reply, watch=watch, within_s=within_s
        )
        return pid

    async def spawn_with_info(
        self,
        node: str,
        image: str,
        args: Iterable[Any] = (),
        *,
        reply: int,
        watch: bool = True,
        within_s: float | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """`spawn`, and what the peer's spawner said about what it started."""
        if node == self.node:
            raise KernelError(f"node {node!r} is this node: spawn it locally")
        self.expose(reply, node)
        body = {"$": "spawn", "image": image, "args": list(args), "reply": reply, "watch": watch}
        answer = await self._request(
            node, body, "spawn", watcher=reply if watch else None, within_s=within_s
        )
        error = answer.get("error")
        if error is not None:
            raise KernelError(f"spawn on node {node!r} refused: {str(error)[:500]}")
        pid, info = answer.get("pid"), answer.get("info")
        if type(pid) is not int:
            raise KernelError(f"spawn on node {node!r}: a malformed answer")
        return pid, info if isinstance(info, dict) else {}

    async def ask(
        self, node: str, query: str, args: dict[str, Any], *, within_s: float | None = None
    ) -> Any:
        """Ask `node` the question it answers as `query` (see `answer_queries`)."""
        if node == self.node:
            raise KernelError(f"node {node!r} is this node: ask it locally")
        answer = await self._request(
            node, {"$": "ask", "q": query, "args": args}, query, within_s=within_s
        )
        error = answer.get("error")
        if error is not None:
            raise KernelError(f"{query} on node {node!r} refused: {str(error)[:500]}")
        return answer.get("value")

    async def _request(
        self,
        node: str,
        body: dict[str, Any],
        what: str,
        *,
        watcher: int | None = None,
        within_s: float | None = None,
    ) -> dict[str, Any]:
        limit = self.spawn_timeout_s if within_s is None else within_s
        await self._connected(node, what, min(limit, self.connect_grace_s))
        corr = new_nonce()
        fut: asyncio.Future[dict[str, Any]] = self.kernel.loop.create_future()
        self._pending[corr] = _Pending(node, watcher, fut)
        try:
            self._control(node, {**body, "corr": corr})
            async with asyncio.timeout(limit):
                return await fut
        except TimeoutError:
            raise KernelError(f"{what} on node {node!r}: no answer in time") from None
        finally:
            self._pending.pop(corr, None)

    async def _connected(self, node: str, what: str, grace_s: float) -> None:
        """Return once `node` is connected; refuse if it is not within `grace_s`."""
        state = next((p for p in self.transport.peers() if p.node == node), None)
        if state is None or state.up or state.down:
            return  # up: go; unknown or reported down: the send refuses it at once, saying so
        waiter: asyncio.Future[None] = self.kernel.loop.create_future()
        self._up_waiters.setdefault(node, []).append(waiter)
        try:
            async with asyncio.timeout(grace_s):
                await waiter
        except TimeoutError:
            raise KernelError(
                f"{what} on node {node!r}: not connected (no connection in {grace_s:g} s); "
                "check that its server runs and that YOOL_CLUSTER_PEERS names it correctly"
            ) from None
        finally:
            waiters = self._up_waiters.get(node)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._up_waiters[node]

    async def spawn_proxy(
        self, sys: Sys, node: str, image: str, *args: Any, watch: bool = True
    ) -> str:
        """Spawn on `node` for process `sys` (which monitors it when `watch`); returns a
        remote capability over it (send, monitor, kill) held by `sys`."""
        pid = await self.spawn(node, image, args, reply=sys.pid, watch=watch)
        return self.proxy(sys.pid, node, pid)

    def proxy(self, owner: int, node: str, pid: int, rights: Iterable[str] = PROXY_RIGHTS) -> str:
        """A remote capability over `node`'s `pid`, minted for local `owner`."""
        return self.kernel.caps.mint(owner, "remote", (node, pid), rights)

    # -- the kernel's side (yool.kernel.remote.Remote) -----------------------------------

    def send(self, sender: int, target: RemoteTarget, body: Any) -> None:
        node, pid = target
        self.expose(sender, node)  # the receiver may answer the sender
        self._emit(node, pid, {"s": sender, "m": body})

    def monitor(self, watcher: int, target: RemoteTarget) -> None:
        node, pid = target
        self._watching.setdefault(node, {}).setdefault(pid, set()).add(watcher)
        try:
            self._control(node, {"$": "monitor", "watcher": watcher, "target": pid})
        except KernelError:
            self._deliver_down(node, pid, NOCONNECTION)

    def demonitor(self, watcher: int, target: RemoteTarget) -> None:
        node, pid = target
        watchers = self._watching.get(node, {}).get(pid)
        if watchers is not None:
            watchers.discard(watcher)
        with contextlib.suppress(KernelError):
            self._control(node, {"$": "demonitor", "watcher": watcher, "target": pid})

    def signal(self, sender: int, target: RemoteTarget, sig: str) -> None:
        if sig not in SIGNALS:
            raise KernelError(f"unknown signal {sig!r}: use kill, term, stop or cont")
        node, pid = target
        self._control(node, {"$": "signal", "pid": pid, "sig": sig, "by": sender})

    # -- the wire -----------------------------------------------------------------------

    def _emit(self, node: str, to: int, body: Any) -> None:
        if self._closed:
            raise KernelError("the node gateway is closed")
        try:
            data = seal(self._key, node, to, body, sender=self.node, ts=self.kernel.wall())
        except (TypeError, ValueError) as e:
            raise KernelError(f"send: only plain JSON data can go to another node ({e})") from None
        if not self.transport.send(node, data):
            self.counters["refused"] += 1
            raise KernelError(
                f"send: node {node!r} is unreachable or backlogged (refused); try again later"
            )
        self.counters["sent"] += 1

    def _control(self, node: str, body: dict[str, Any]) -> None:
        self._emit(node, 0, body)

    def _fault(self, kind: str, node: str, detail: str = "") -> None:
        """Dropped: counted, logged, and a `fault` event in the trace (never the key)."""
        self.faults[kind] += 1
        text = f"cluster: dropped a {kind} envelope from {node[:64]!r}"
        if detail:
            text += f": {detail[:200]}"
        log.warning("%s", text)
        self.kernel.events.emit("fault", INIT, {"error": text, "cluster": kind})

    def _inbound(self, claimed: str, data: bytes) -> None:
        k = self.kernel
        try:
            env = open_envelope(
                self._key,
                data,
                node=self.node,
                now=k.wall(),
                window_s=self.window_s,
                guard=self.guard,
            )
        except EnvelopeError as e:
            self._fault(e.kind, claimed, str(e))
            return
        self.counters["received"] += 1
        self.transport.authenticated(env.sender)
        body = env.body
        if env.to != 0:
            if env.sender not in self._exposed.get(env.to, ()):
                self._fault("unauthorized", env.sender, f"pid {env.to} is not exposed to it")
                return
            if not isinstance(body, dict) or "m" not in body:
                self._fault("malformed", env.sender, "a data envelope without a body")
                return
            if not k.post(env.to, body["m"], sender=0):
                k.counters.dropped += 1
            return
        if not isinstance(body, dict) or not isinstance(body.get("$"), str):
            self._fault("malformed", env.sender, "a control envelope without a verb")
            return
        try:
            self._handle(env.sender, body)
        except (KeyError, TypeError, ValueError) as e:
            self._fault("malformed", env.sender, f"{body.get('$')}: {e!r}")

    def _handle(self, node: str, m: dict[str, Any]) -> None:
        verb = m["$"]
        k = self.kernel
        if verb == "spawn":
            self._start(self._spawn_for(node, m))
        elif verb == "spawned" or verb == "answer":
            pending = self._pending.get(str(m["corr"]))
            if pending is None or pending.node != node or pending.future.done():
                # Late (the asker gave up) or not ours: what it started has nobody to
                # answer to, so it is killed rather than left running (and spending) there.
                if verb == "spawned" and type(m.get("pid")) is int:
                    with contextlib.suppress(KernelError):
                        self._control(node, {"$": "signal", "pid": m["pid"], "sig": "kill"})
                return
            pid = m.get("pid")
            if verb == "spawned" and pending.watcher is not None and type(pid) is int:
                self._watching.setdefault(node, {}).setdefault(pid, set()).add(pending.watcher)
            pending.future.set_result(m)
        elif verb == "ask":
            self._start(self._answer(node, str(m["corr"]), str(m["q"]), m.get("args")))
        elif verb == "monitor":
            target, watcher = _int(m["target"]), _int(m["watcher"])
            p = k.procs.get(target)
            if node not in self._exposed.get(target, ()) or p is None or p.reason is not None:
                reason = k._reaped.get(target, NOPROC) if p is None else (p.reason or NOPROC)
                if node not in self._exposed.get(target, ()):
                    reason = NOPROC  # not theirs to watch: as if it did not exist
                with contextlib.suppress(KernelError):
                    self._control(
                        node,
                        {
                            "$": "down",
                            "watcher": watcher,
                            "pid": target,
                            "reason": reason.to_json(),
                        },
                    )
                return
            self._watched_by.setdefault(target, set()).add((node, watcher))
        elif verb == "demonitor":
            watchers = self._watched_by.get(_int(m["target"]))
            if watchers is not None:
                watchers.discard((node, _int(m["watcher"])))
        elif verb == "down":
            pid, watcher = _int(m["pid"]), _int(m["watcher"])
            local = self._watching.get(node, {}).get(pid)
            if local is None or watcher not in local:
                return  # nobody here asked: ignore
            local.discard(watcher)
            if not local:
                del self._watching[node][pid]
            p = k.procs.get(watcher)
            if p is not None:
                reason = ExitReason.from_json(m["reason"])
                k.deliver(p, Message(0, Down(pid, reason, node)), force=True)
        elif verb == "signal":
            pid, sig = _int(m["pid"]), str(m["sig"])
            if node not in self._exposed.get(pid, ()) or sig not in SIGNALS:
                self._fault("unauthorized", node, f"signal {sig[:16]!r} to pid {pid}")
                return
            k.signal(pid, sig, by=0)
        else:
            self._fault("malformed", node, f"unknown verb {verb[:32]!r}")

    async def _spawn_for(self, node: str, m: dict[str, Any]) -> None:
        corr, reply_pid = str(m["corr"]), _int(m["reply"])
        name, args = str(m["image"]), m.get("args", [])
        spawner = self._exports.get(name)
        answer: dict[str, Any] = {"$": "spawned", "corr": corr}
        if spawner is None or not isinstance(args, list):
            known = ", ".join(sorted(self._exports)) or "none"
            answer["error"] = f"no exported image {name[:64]!r} (exported: {known})"
        else:
            try:
                started = await spawner(node, args, reply_pid)
            except Exception as e:  # its message goes back; the key is never in it
                answer["error"] = str(e)[:500] or type(e).__name__
            else:
                pid = started if isinstance(started, int) else started[0]
                if not isinstance(started, int):
                    answer["info"] = started[1]
                answer["pid"] = pid
                self.expose(pid, node)
                if m.get("watch"):
                    self._watched_by.setdefault(pid, set()).add((node, reply_pid))
                if name in self._self_reporting:
                    self._deferred.add(pid)
                else:
                    p = self.kernel.procs.get(pid)
                    if p is None or p.reason is not None:
                        self._exited(pid, self.kernel._reaped.get(pid, NOPROC))
        with contextlib.suppress(KernelError):
            self._control(node, answer)

    async def _answer(self, node: str, corr: str, query: str, args: Any) -> None:
        handler = self._queries.get(query)
        answer: dict[str, Any] = {"$": "answer", "corr": corr}
        if handler is None or not isinstance(args, dict):
            known = ", ".join(sorted(self._queries)) or "none"
            answer["error"] = f"no question {query[:64]!r} is answered here (answered: {known})"
        else:
            try:
                value = await handler(node, args)
                size = len(json.dumps(value, separators=(",", ":")))
            except Exception as e:  # its message goes back; the key is never in it
                answer["error"] = str(e)[:500] or type(e).__name__
            else:
                if size > MAX_ANSWER_BYTES:
                    answer["error"] = f"the answer is {size} bytes, over {MAX_ANSWER_BYTES}"
                else:
                    answer["value"] = value
        with contextlib.suppress(KernelError):
            self._control(node, answer)

    def _start(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = self.kernel.loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- deaths and outages -------------------------------------------------------------

    def _event(self, ev: Event) -> None:
        """Event sink: a local process's exit reaches the peers that monitor it."""
        if ev.kind != "exit" or ev.pid is None:
            return
        if ev.pid in self._deferred:
            return  # its exporter reports it (after what it still has to send)
        if ev.pid in self._watched_by or ev.pid in self._exposed:
            data = ev.data or {}
            self._exited(ev.pid, ExitReason.from_json(data.get("reason", {"kind": "normal"})))

    def _exited(self, pid: int, reason: ExitReason) -> None:
        self._exposed.pop(pid, None)
        for node, watcher in self._watched_by.pop(pid, ()):
            with contextlib.suppress(KernelError):  # unreachable: they get noconnection
                self._control(
                    node, {"$": "down", "watcher": watcher, "pid": pid, "reason": reason.to_json()}
                )

    def _peer(self, node: str, up: bool) -> None:
        """Transport event: a peer that went down ends every monitor on it (noconnection)."""
        self.kernel.events.emit("node", INIT, {"node": node, "up": up})
        if up:
            for waiter in self._up_waiters.pop(node, ()):
                if not waiter.done():
                    waiter.set_result(None)
            return
        for pid in list(self._watching.get(node, {})):
            self._deliver_down(node, pid, NOCONNECTION)
        self._watching.pop(node, None)
        for watchers in self._watched_by.values():
            for entry in [e for e in watchers if e[0] == node]:
                watchers.discard(entry)
        for pending in self._pending.values():
            if pending.node == node and not pending.future.done():
                pending.future.set_exception(KernelError(f"node {node!r} became unreachable"))

    def _deliver_down(self, node: str, pid: int, reason: ExitReason) -> None:
        watchers = self._watching.get(node, {}).pop(pid, set())
        for watcher in watchers:
            p = self.kernel.procs.get(watcher)
            if p is not None:
                self.kernel.deliver(p, Message(0, Down(pid, reason, node)), force=True)

    # -- status -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """For `yool cluster status` and metrics: no key, no envelope contents."""
        return {
            "node": self.node,
            "transport": self.transport.kind,
            "peers": [
                {"node": p.node, "up": p.up, "address": p.address, "pending": p.pending}
                for p in self.transport.peers()
            ],
            "exports": sorted(self._exports),
            "remote_monitors": sum(len(w) for w in self._watched_by.values()),
            "monitoring": sum(len(w) for m in self._watching.values() for w in m.values()),
            "sent": self.counters["sent"],
            "received": self.counters["received"],
            "refused": self.counters["refused"],
            "faults": dict(self.faults),
            "transport_stats": self.transport.stats(),
        }


def _int(value: Any) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an integer pid, got {type(value).__name__}")
    return value
