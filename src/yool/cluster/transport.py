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

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

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
            import logging

            logging.getLogger("yool.cluster").exception("on_envelope failed")

    def peer_event(self, node: str, up: bool) -> None:
        """Report a peer up or down to the gateway; never raises into the transport."""
        cb = self._on_peer
        if cb is None:
            return
        try:
            cb(node, up)
        except Exception:
            import logging

            logging.getLogger("yool.cluster").exception("on_peer failed")
