"""Sealed envelopes: the only thing that travels between yool kernels.

An envelope is one JSON object `{"body", "from", "node", "nonce", "to", "ts", "mac"}`:
`node`/`to` name the recipient node and pid (pid 0 is the receiving gateway's control
channel), `from` the sending node, `nonce` a value never reused by its sender, `ts` the
sender's wall clock in seconds, `body` any JSON value, and `mac` the HMAC-SHA256 (hex)
under the cluster's shared key of the canonical encoding of all the rest: JSON with
sorted keys, no whitespace, UTF-8. On the wire the envelope is exactly that canonical text
with `,"mac":"<64 hex>"` spliced in before its closing brace, so the receiver checks the MAC
over the very bytes that were signed (no re-encoding: one JSON pass per side).
`open_envelope` checks, in this order:

1. it has the shape `<canonical text>,"mac":"<hex>"}` (else `malformed`);
2. the MAC over those bytes, in constant time (`hmac.compare_digest`): a forged or
   tampered envelope fails here (`forged`) before anything of it is parsed, believed or
   remembered; then it must parse with those fields and types (else `malformed`);
3. it is addressed to this node (`misrouted`: an envelope for another node replayed here);
4. freshness: `ts` within `window_s` of our clock either way (`stale`, `future`), which
   tolerates that much clock skew;
5. the nonce has not been seen within the window (`replay`), by a `NonceGuard` of bounded
   memory.

There are no capabilities in an envelope, by construction: a body is plain data, and the
receiving gateway mints whatever authority an inbound request gets from its own grants.
Pure: no I/O, no clock of its own (callers pass `now`), so the rules are easy to test.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Literal

FaultKind = Literal["malformed", "forged", "misrouted", "stale", "future", "replay"]
MAX_ENVELOPE_BYTES = 4 * 1024 * 1024
_FIELDS = ("node", "to", "from", "nonce", "ts", "body")


class EnvelopeError(ValueError):
    """An envelope that must be dropped; `kind` says why (never echoes the key)."""

    def __init__(self, kind: FaultKind, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind: FaultKind = kind


@dataclass(frozen=True, slots=True)
class Envelope:
    """An opened, verified envelope."""

    node: str  # the recipient node (ours)
    to: int  # the recipient pid; 0 = the gateway's control channel
    sender: str  # the sending node
    nonce: str
    ts: float
    body: Any


def canonical(value: Any) -> bytes:
    """The one byte string both ends compute the MAC over."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


_MAC_OPEN = b',"mac":"'
_MAC_LEN = 64  # hex digits of SHA-256
_SUFFIX = len(_MAC_OPEN) + _MAC_LEN + 2  # ,"mac":"<hex>"}


def _mac(key: bytes, signed: bytes) -> bytes:
    return hmac.new(key, signed, hashlib.sha256).hexdigest().encode()


def new_nonce() -> str:
    """128 random bits: unique per envelope without coordination between senders."""
    return os.urandom(16).hex()


def seal(
    key: bytes,
    node: str,
    to: int,
    body: Any,
    *,
    sender: str,
    nonce: str | None = None,
    ts: float | None = None,
) -> bytes:
    """One envelope for pid `to` on `node`, as bytes (one line: no newline inside).

    Raises `ValueError`/`TypeError` if `body` is not plain JSON data.
    """
    fields: dict[str, Any] = {
        "node": node,
        "to": to,
        "from": sender,
        "nonce": new_nonce() if nonce is None else nonce,
        "ts": time.time() if ts is None else ts,
        "body": body,
    }
    signed = canonical(fields)
    return signed[:-1] + _MAC_OPEN + _mac(key, signed) + b'"}'


class NonceGuard:
    """Remembers the nonces seen within the freshness window, in at most `cap` entries.

    Keyed by the envelope's own timestamp: an entry can be forgotten once its `ts` is out
    of the window, because such an envelope is refused as stale anyway. If more than `cap`
    fresh nonces arrive, the oldest is forgotten and the guard's floor rises to its `ts`:
    from then on anything at or below the floor is refused too, so forgetting a nonce never
    lets it be replayed (a burst costs a little freshness, never safety).
    """

    __slots__ = ("_heap", "_seen", "cap", "floor", "window_s")

    def __init__(self, window_s: float, cap: int = 1 << 16) -> None:
        if cap < 1:
            raise ValueError("cap must be >= 1")
        self.window_s = window_s
        self.cap = cap
        self.floor = float("-inf")
        self._seen: set[str] = set()
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, nonce: str, ts: float, now: float) -> bool:
        """True the first time `nonce` is seen (and it is above the floor); else False."""
        heap, seen = self._heap, self._seen
        horizon = now - self.window_s
        while heap and heap[0][0] < horizon:
            seen.discard(heapq.heappop(heap)[1])
        if ts <= self.floor or nonce in seen:
            return False
        seen.add(nonce)
        heapq.heappush(heap, (ts, nonce))
        while len(seen) > self.cap:
            old_ts, old = heapq.heappop(heap)
            seen.discard(old)
            self.floor = max(self.floor, old_ts)
        return True


def open_envelope(
    key: bytes, data: bytes, *, node: str, now: float, window_s: float, guard: NonceGuard
) -> Envelope:
    """Verify one envelope addressed to `node`; raise `EnvelopeError` if it must be dropped."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError("malformed", f"{len(data)} bytes is over the limit")
    if (
        len(data) <= _SUFFIX
        or data[-_SUFFIX : -_SUFFIX + len(_MAC_OPEN)] != _MAC_OPEN
        or data[-2:] != b'"}'
    ):
        raise EnvelopeError("malformed", "no MAC at the end")
    signed = data[:-_SUFFIX] + b"}"
    if not hmac.compare_digest(_mac(key, signed), data[-_MAC_LEN - 2 : -2]):
        raise EnvelopeError("forged", "bad MAC")
    try:
        raw = json.loads(signed)
    except (ValueError, UnicodeDecodeError):
        raise EnvelopeError("malformed", "not JSON") from None
    if not isinstance(raw, dict) or set(raw) != set(_FIELDS):
        raise EnvelopeError("malformed", "wrong fields")
    to, ts = raw["to"], raw["ts"]
    if (
        not isinstance(raw["node"], str)
        or not isinstance(raw["from"], str)
        or not isinstance(raw["nonce"], str)
        or type(to) is not int
        or to < 0
        or type(ts) not in (int, float)
        or not math.isfinite(ts)
    ):
        raise EnvelopeError("malformed", "a field has the wrong type")
    if raw["node"] != node:
        raise EnvelopeError("misrouted", f"addressed to node {raw['node'][:64]!r}")
    if ts < now - window_s:
        raise EnvelopeError("stale", f"{now - ts:.1f}s old (window {window_s}s)")
    if ts > now + window_s:
        raise EnvelopeError("future", f"{ts - now:.1f}s ahead (window {window_s}s)")
    if not guard.admit(raw["nonce"], float(ts), now):
        raise EnvelopeError("replay", f"nonce seen before from {raw['from'][:64]!r}")
    return Envelope(raw["node"], to, raw["from"], raw["nonce"], float(ts), raw["body"])
