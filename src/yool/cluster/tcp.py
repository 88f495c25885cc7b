"""The plain TCP transport: two or more hosts without Ray.

Each node listens on one TCP port and dials every peer it knows. A connection carries
newline-delimited envelopes one way, dialler to listener: the first line is a hello
(`{"hello": node, "listen": "host:port"}`), then one sealed envelope per line, and an empty
line as a heartbeat every `down_after_s / 3`, which the listener answers with an empty line:
a dialler that hears nothing for `down_after_s` treats the connection as lost even if the
socket looks open (a host that vanished without closing it). A listener that hears a hello
from a node it has no route to dials it back at the address it gave, once an envelope from
that node has proved authentic, so only one side needs to be told about the other.

Sending never blocks: each peer has a bounded pending queue drained, in order, by one
writer task per peer that connects, reconnects with exponential backoff and full jitter,
and waits for the socket to drain (so a slow peer fills the queue, not our memory). A full
queue REFUSES the new envelope (`send` returns False) and never drops older ones; the
gateway turns the refusal into an error for the sender. When a peer's connection is lost
and cannot be re-made within `down_after_s`, the peer is reported down once (remote
monitors then get `noconnection`), what was pending for it is dropped and counted, and
sends to it are refused until it is reachable again; reconnecting goes on in the
background, backing off to `backoff_max_s`. A peer that was never up is not reported down:
what is sent to it waits in its queue for its first connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
from dataclasses import dataclass

from yool.cluster.envelope import MAX_ENVELOPE_BYTES
from yool.cluster.transport import (
    DEFAULT_DOWN_AFTER_S,
    DEFAULT_MAX_PENDING,
    Link,
    PeerState,
    QueuedTransport,
)

log = logging.getLogger("yool.cluster.tcp")

HELLO_TIMEOUT_S = 5.0


def parse_address(text: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:port`) -> (host, port); ValueError says what is wrong."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port")
    return host.strip("[]"), int(port)


@dataclass(slots=True)
class _Peer(Link):
    host: str = ""
    port: int = 0
    waiter: asyncio.Future[bool] | None = None  # the writer, idle: True = data, False = beat
    heard: float = 0.0  # loop time the listener last answered a heartbeat
    attempt: int = 0  # reconnects since it last answered (the backoff's exponent)


class TcpTransport(QueuedTransport[_Peer]):
    kind = "tcp"

    def __init__(
        self,
        node: str,
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        peers: dict[str, tuple[str, int]] | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        down_after_s: float = DEFAULT_DOWN_AFTER_S,
        backoff_base_s: float = 0.05,
        backoff_max_s: float = 2.0,
    ) -> None:
        super().__init__(node, max_pending, down_after_s)
        self.heartbeat_s = max(down_after_s / 3, 0.05)
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._listen = listen
        self._initial = dict(peers or {})
        self._server: asyncio.Server | None = None
        self._inbound: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._delivering: tuple[str, tuple[str, int] | None] | None = None
        self.address: tuple[str, int] = listen

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self._listen[0], self._listen[1], limit=MAX_ENVELOPE_BYTES + 1024
        )
        sock = self._server.sockets[0].getsockname()
        self.address = (self._listen[0], int(sock[1]))
        for name, (host, port) in self._initial.items():
            self.add_peer(name, host, port)

    async def close(self) -> None:
        if self._closed:
            return
        tasks = self._stop_links()
        if self._server is not None:
            self._server.close()
        for w in list(self._inbound.values()):
            w.close()  # its reader sees the end and the handler returns (never cancelled:
            # asyncio's server callback would log a cancelled handler as an error)
        inbound = list(self._inbound)
        await asyncio.gather(*tasks, return_exceptions=True)
        if inbound:
            await asyncio.wait(inbound, timeout=1.0)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    def authenticated(self, node: str) -> None:
        """The gateway verified an envelope from `node` on the connection being delivered:
        only now is the hello's address believed and dialled back (replies need a route),
        so an unauthenticated connection can never make this node dial anywhere."""
        current = self._delivering
        if current is not None and current[0] == node and current[1] is not None:
            self.add_peer(node, *current[1])  # new, or restarted on another port
        peer = self._peers.get(node)
        if peer is not None and peer.down:
            peer.down = False  # it is evidently alive: queue for it again while we redial

    def add_peer(self, node: str, host: str, port: int) -> None:
        """Route envelopes for `node` to host:port (and start dialling it)."""
        if self._closed or node == self.node:
            return
        peer = self._peers.get(node)
        if peer is not None:
            if (peer.host, peer.port) == (host, port):
                return
            peer.host, peer.port = host, port  # the writer picks it up at its next dial
            return
        peer = self._peers[node] = _Peer(node, host=host, port=port)
        peer.task = asyncio.get_running_loop().create_task(self._pump(peer))

    # -- sending ------------------------------------------------------------------

    def _wake(self, peer: _Peer) -> None:
        waiter = peer.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    async def _pump(self, peer: _Peer) -> None:
        """Connect, say hello, write what is pending in order; reconnect with backoff."""
        while True:
            if self._closed:
                return
            writer: asyncio.StreamWriter | None = None
            try:
                async with asyncio.timeout(max(self.down_after_s, 1.0)):  # a vanished host
                    reader, writer = await asyncio.open_connection(peer.host, peer.port)
                hello = {"hello": self.node, "listen": f"{self.address[0]}:{self.address[1]}"}
                # the hello, then a heartbeat at once: its answer is what makes the peer up
                writer.write(json.dumps(hello).encode() + b"\n\n")
                await writer.drain()
                peer.heard = asyncio.get_running_loop().time()
                eof = asyncio.ensure_future(self._hear(peer, reader))
                eof.add_done_callback(functools.partial(_interrupt, peer))
                try:
                    await self._write_loop(peer, writer, eof)
                finally:
                    eof.cancel()
            except asyncio.CancelledError:
                raise
            except (OSError, ConnectionError, EOFError, TimeoutError) as e:
                log.debug("tcp %s -> %s: %r", self.node, peer.node, e)
            finally:
                if writer is not None:
                    writer.close()
            if self.closed():  # (a method: mypy would keep the narrowing from above)
                return
            self._lost(peer)
            ceiling = min(self.backoff_max_s, self.backoff_base_s * 2**peer.attempt)
            delay = random.uniform(0, ceiling)  # full jitter
            peer.attempt = min(peer.attempt + 1, 30)
            self._stats["reconnects"] += 1
            await asyncio.sleep(delay)

    async def _write_loop(
        self, peer: _Peer, writer: asyncio.StreamWriter, eof: asyncio.Future[None]
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while peer.pending:
                writer.write(peer.pending.popleft() + b"\n")
                self._stats["sent"] += 1
                if writer.transport.get_write_buffer_size() > 1 << 20:
                    await writer.drain()
            await writer.drain()
            if eof.done():
                raise EOFError("peer closed the connection")
            if peer.pending:
                continue
            waiter: asyncio.Future[bool] = loop.create_future()
            peer.waiter = waiter
            beat = loop.call_later(self.heartbeat_s, _set, waiter, False)
            try:
                data = await waiter  # EOFError when the peer closes the connection
            finally:
                beat.cancel()
                peer.waiter = None
            if not data:
                if loop.time() - peer.heard > self.down_after_s:
                    raise TimeoutError(f"no heartbeat from {peer.node} in {self.down_after_s}s")
                writer.write(b"\n")  # heartbeat; the listener answers each with one

    async def _hear(self, peer: _Peer, reader: asyncio.StreamReader) -> None:
        """The listener's side of the connection: heartbeat answers until EOF."""
        loop = asyncio.get_running_loop()
        if await reader.read(1024):
            peer.attempt = 0
            self._connected(peer)  # the listener answered: it is alive, not just accepting
            peer.heard = loop.time()
            while await reader.read(1024):
                peer.heard = loop.time()

    # -- receiving ------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._inbound[task] = writer
        try:
            line = await asyncio.wait_for(reader.readline(), HELLO_TIMEOUT_S)
            hello = json.loads(line)
            node = hello["hello"]
            if not isinstance(node, str) or not node:
                raise ValueError("bad hello")
            listen = hello.get("listen")
            back: tuple[str, int] | None = None
            if isinstance(listen, str):
                host, port = parse_address(listen)
                peer_host = (
                    writer.get_extra_info("peername")[0] if host in ("0.0.0.0", "::") else host
                )
                back = (peer_host, port)  # dialled once an envelope of node's is authentic
            while True:
                line = await reader.readline()
                if not line:
                    return
                line = line.rstrip(b"\n")
                if not line:
                    writer.write(b"\n")  # answer the heartbeat: the dialler sees we live
                else:
                    self._stats["received"] += 1
                    self._delivering = (node, back)
                    try:
                        self.deliver(node, line)
                    finally:
                        self._delivering = None
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bad or broken connection: drop it, keep serving
            log.debug("tcp %s: inbound connection dropped: %r", self.node, e)
        finally:
            self._inbound.pop(task, None)
            writer.close()

    # -- status -------------------------------------------------------------------

    def peers(self) -> list[PeerState]:
        return [
            PeerState(p.node, p.up, f"{p.host}:{p.port}", len(p.pending), p.down)
            for p in self._peers.values()
        ]


def _set(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


def _interrupt(peer: _Peer, _eof: object) -> None:
    """The connection's reader ended: wake the idle writer with the news."""
    waiter = peer.waiter
    if waiter is not None and not waiter.done():
        waiter.set_exception(EOFError("peer closed the connection"))
