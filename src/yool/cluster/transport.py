"""The transport interface: how sealed envelopes travel between yool nodes.

A transport moves opaque bytes (one sealed envelope each, see `yool.cluster.envelope`)
between named nodes; it knows nothing of keys, pids or capabilities. The node gateway
(`yool.cluster.gateway`) seals before `send` and verifies everything `on_envelope`
hands it, so a transport is never trusted: a forged or replayed envelope it delivers is
dropped by the gateway, not by the transport.

Implementations: `yool.cluster.tcp.TcpTransport` (newline-delimited envelopes over
asyncio streams, reconnect with backoff) and `yool.cluster.ray.RayTransport` (each node
a Ray actor; envelopes travel as actor calls). `YOOL_CLUSTER` selects one.

The contract every implementation keeps (also in /work/brief/CLUSTER.md):

* `start()` is awaited once inside the running event loop before any `send`; after it
  returns the node is reachable by its peers (listening/registered). `close()` is
  idempotent, stops reconnecting, drops what is pending (counted in `stats()["dropped"]`)
  and fires no more callbacks once it returns.
* `send(node, data)` never blocks and never raises for a transport condition: it returns
  True when the envelope was written or queued for `node`, False when it was refused
  (unknown node, transport closed, or the node's pending queue is full). Refusal is
  the backpressure signal: the caller decides (the gateway raises `KernelError` to the
  sending process, as the reference does). A full queue REFUSES the new envelope; it never
  drops an older one, so what was accepted is delivered in order or lost only with the
  connection (a closed/broken connection). `data` is one envelope's bytes, with no
  newline; each accepted envelope arrives at most once, as one `on_envelope` call.
* Each peer has a bounded pending queue of `max_pending` envelopes that holds what is
  sent while the peer is not (yet) connected; it drains in order when the peer comes up.
* Inbound: the transport calls `on_envelope(from_node, data)` on the event loop thread for
  every envelope that arrives, in arrival order per peer. `from_node` is what the peer
  claims to be (unauthenticated; the envelope's MAC is the authentication). The callback
  must not block; it never raises into the transport (the transport logs and goes on).
* Peer events: `on_peer(node, up)` on the loop thread: `up=True` when a connection to
  `node` is established (or re-established), `up=False` when `node` is deemed unreachable
  (the connection broke and could not be re-made within `down_after_s`, or heartbeats
  stopped for that long, or a Ray actor died). A down is reported once per outage; a later
  up may follow. Remote monitors turn `up=False` into `Down(pid, noconnection)`.
* `peers()` lists the nodes known to this transport (configured or seen) and whether each
  is up now; `stats()` returns counters (sent, received, refused, dropped, reconnects) for
  `yool cluster status`. Neither includes secrets.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger("yool.cluster")

OnEnvelope = Callable[[str, bytes], None]  # (claimed sender node, one envelope's bytes)
OnPeer = Callable[[str, bool], None]  # (node, up?)

DEFAULT_MAX_PENDING = 1024
DEFAULT_DOWN_AFTER_S = 3.0


@dataclass(frozen=True, slots=True)
class PeerState:
    """What `peers()` reports about one peer node."""

    node: str
    up: bool
    address: str = ""  # host:port, a Ray actor name...; informational only
    pending: int = 0  # envelopes queued for it now
    down: bool = False  # reported down (sends to it are refused until it is up again)


class Transport(ABC):
    """Moves envelope bytes between nodes; see the module docstring for the contract.

    Subclasses set `node` (this node's id) and call `self.deliver(...)` /
    `self.peer_event(...)` to fire the callbacks the gateway installs with `bind`.
    """

    kind: str = "transport"  # "tcp", "ray": shown by `yool cluster status` and the bench
    node: str
    max_pending: int = DEFAULT_MAX_PENDING
    down_after_s: float = DEFAULT_DOWN_AFTER_S

    _on_envelope: OnEnvelope | None = None
    _on_peer: OnPeer | None = None

    def bind(self, on_envelope: OnEnvelope, on_peer: OnPeer) -> None:
        """Install the inbound callbacks (the gateway does, before `start`)."""
        self._on_envelope = on_envelope
        self._on_peer = on_peer

    @abstractmethod
    async def start(self) -> None:
        """Listen/register and begin dialling the configured peers."""

    @abstractmethod
    async def close(self) -> None:
        """Stop everything; idempotent; no callbacks fire after it returns."""

    @abstractmethod
    def send(self, node: str, data: bytes) -> bool:
        """Queue one envelope for `node`; False if refused (backpressure, unknown, closed)."""

    @abstractmethod
    def peers(self) -> list[PeerState]:
        """The peers this transport knows, and whether each is up now."""

    def stats(self) -> dict[str, int]:
        """Counters for `yool cluster status` (no secrets)."""
        return {}

    def authenticated(self, node: str) -> None:
        """The gateway verified an envelope from `node`, inside the `on_envelope` call that
        delivered it: a transport may now trust what that connection said about `node`
        (e.g. TCP dials back the address its hello gave). Default: nothing."""
        return None

    # -- for implementations ---------------------------------------------------

    def deliver(self, node: str, data: bytes) -> None:
        """Hand one inbound envelope to the gateway; never raises into the transport."""
        cb = self._on_envelope
        if cb is None:
            return
        try:
            cb(node, data)
        except Exception:  # the gateway's problem must never break the connection
            log.exception("on_envelope failed")

    def peer_event(self, node: str, up: bool) -> None:
        """Report a peer up or down to the gateway; never raises into the transport."""
        cb = self._on_peer
        if cb is None:
            return
        try:
            cb(node, up)
        except Exception:
            log.exception("on_peer failed")


# -- what the queued transports share ----------------------------------------------------


@dataclass(slots=True)
class Link:
    """One peer as a queued transport sees it: what waits for it, and whether it is up."""

    node: str
    pending: deque[bytes] = field(default_factory=deque)
    up: bool = False
    seen: bool = False  # it has been up at least once
    down: bool = False  # reported down: sends are refused until it is up again
    task: asyncio.Task[None] | None = None  # the one task that delivers to it
    down_timer: asyncio.TimerHandle | None = None

    def cancel_down_timer(self) -> None:
        if self.down_timer is not None:
            self.down_timer.cancel()
            self.down_timer = None


L = TypeVar("L", bound=Link)


class QueuedTransport(Transport, Generic[L]):
    """A transport with one bounded, refusing queue and one delivering task per peer.

    The queue, the refusal rule, the up/down bookkeeping (a down is reported once per
    outage, `down_after_s` after the link was lost, or at once when the peer is known dead)
    and the counters are the contract's, so TCP and Ray keep them here, once; a subclass
    moves the bytes and says when a link is made or lost.
    """

    def __init__(self, node: str, max_pending: int, down_after_s: float) -> None:
        self.node = node
        self.max_pending = max_pending
        self.down_after_s = down_after_s
        self._peers: dict[str, L] = {}
        self._closed = False
        self._stats = {"sent": 0, "received": 0, "refused": 0, "dropped": 0, "reconnects": 0}

    def closed(self) -> bool:
        return self._closed

    def send(self, node: str, data: bytes) -> bool:
        peer = self._peers.get(node)
        if self._closed or peer is None or peer.down or len(peer.pending) >= self.max_pending:
            self._stats["refused"] += 1
            return False
        peer.pending.append(data)
        self._wake(peer)
        return True

    @abstractmethod
    def _wake(self, peer: L) -> None:
        """Something was queued for `peer`: wake its delivering task if it is idle."""

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    def _connected(self, peer: L) -> None:
        peer.cancel_down_timer()
        peer.down = False
        if not peer.up:
            peer.up = peer.seen = True
            self.peer_event(peer.node, True)

    def _lost(self, peer: L, *, died: bool = False) -> None:
        """The link to `peer` broke; `died`: the peer itself is known to be gone."""
        peer.up = False
        if died:
            peer.cancel_down_timer()
            if not peer.down:
                self._give_up(peer)
        elif peer.down_timer is None and not peer.down and peer.seen:
            loop = asyncio.get_running_loop()
            peer.down_timer = loop.call_later(self.down_after_s, self._give_up, peer)

    def _give_up(self, peer: L) -> None:
        peer.down_timer = None
        if peer.up or self._closed or peer.down:
            return
        peer.down = True
        self._stats["dropped"] += len(peer.pending)
        peer.pending.clear()
        self.peer_event(peer.node, False)

    def _stop_links(self) -> list[asyncio.Task[None]]:
        """Close: drop what is pending (counted) and cancel every peer's task (returned, for
        the caller to await once its own parts are stopped too)."""
        self._closed = True
        tasks: list[asyncio.Task[None]] = []
        for peer in self._peers.values():
            peer.cancel_down_timer()
            self._stats["dropped"] += len(peer.pending)
            peer.pending.clear()
            if peer.task is not None:
                peer.task.cancel()
                tasks.append(peer.task)
        return tasks
