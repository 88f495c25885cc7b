"""A name service: a process that maps names to capabilities, the capability-passing way.

The kernel's own registry (`sys.register`/`whereis`) is first-come and global:
anyone may look anything up. This service hands out only what it was given:
a process registers by sending it a capability over itself, and a lookup is
answered with a send-only capability derived from that one. So

- whoever can reach the service can find a name, but never gets more than send;
- what a lookup handed out lasts only as long as the registration: unregistering,
  or the owner's death (the service monitors owners), revokes it transitively;
- names are first-come; the owner may register several.

`Register` names the sender: the capability it carries must be over the sender
with send and monitor rights, as `register` sends it (one without monitor is
refused: the service could never clean that name up).

Start it with `sys.spawn(name_service, name="names")` and give clients a send
capability over it. Clients use `register`, `unregister` and `lookup`.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from typing import Any, NoReturn

from yool.kernel.errors import CapError, KernelError
from yool.kernel.messages import Down, Message
from yool.kernel.sys import Sys

_tags = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Register:
    """Claim `name`; the message's one capability is over the sender (send + monitor)."""

    name: str
    tag: int


@dataclass(frozen=True, slots=True)
class Registered:
    name: str
    tag: int
    ok: bool  # False: someone else holds the name


@dataclass(frozen=True, slots=True)
class Unregister:
    name: str


@dataclass(frozen=True, slots=True)
class Lookup:
    """Resolve `name`; the message's one capability is where to send `Resolved`."""

    name: str
    tag: int


@dataclass(frozen=True, slots=True)
class Resolved:
    """The answer to `Lookup`; if found, the message carries a send capability."""

    name: str
    tag: int
    found: bool


@dataclass(slots=True)
class _Entry:
    owner: int
    cap: str  # over the owner, held by the service; lookups are derived from it


@dataclass(slots=True)
class _Names:
    sys: Sys
    entries: dict[str, _Entry] = field(default_factory=dict)
    owned: dict[int, set[str]] = field(default_factory=dict)

    def handle(self, msg: Message) -> None:
        body = msg.body
        unused = list(msg.caps)
        if isinstance(body, Down):
            for name in self.owned.pop(body.pid, ()):
                self._drop(name)
        elif isinstance(body, Register) and msg.caps:
            if self._register(msg.sender, body, msg.caps[0]):
                unused.remove(msg.caps[0])
        elif isinstance(body, Unregister):
            entry = self.entries.get(body.name)
            if entry is not None and entry.owner == msg.sender:
                self._unregister(body.name)
        elif isinstance(body, Lookup) and msg.caps:
            self._lookup(body, msg.caps[0])
        _revoke(self.sys, unused)

    def _register(self, owner: int, body: Register, cap: str) -> bool:
        """Keep `cap` (True) if the name is now ours; always answer through it."""
        sys = self.sys
        name = body.name
        entry = self.entries.get(name)
        fresh = isinstance(name, str) and bool(name) and entry is None
        if fresh and owner not in self.owned:
            try:
                sys.monitor(cap)  # the owner's death arrives as Down(owner)
            except CapError:
                fresh = False  # no monitor right: a name we could never clean up is refused
        ok = fresh or (entry is not None and entry.owner == owner)
        # If the registrant's mailbox is full it learns the outcome by lookup instead.
        with contextlib.suppress(KernelError):
            sys.send_nowait(cap, Registered(name, body.tag, ok))
        if fresh:
            self.entries[name] = _Entry(owner, cap)
            self.owned.setdefault(owner, set()).add(name)
        return fresh

    def _unregister(self, name: str) -> None:
        entry = self.entries[name]
        names = self.owned.get(entry.owner)
        if names is not None:
            names.discard(name)
            if not names:
                del self.owned[entry.owner]
                with contextlib.suppress(CapError):
                    self.sys.demonitor(entry.cap)
        self._drop(name)

    def _drop(self, name: str) -> None:
        entry = self.entries.pop(name, None)
        if entry is not None:
            _revoke(self.sys, [entry.cap])  # and every send capability a lookup derived

    def _lookup(self, body: Lookup, reply: str) -> None:
        sys = self.sys
        entry = self.entries.get(body.name)
        give: tuple[str, ...] = ()
        if entry is not None:
            give = (sys.derive(entry.cap, ("send",)),)
        try:
            sys.send_nowait(reply, Resolved(body.name, body.tag, bool(give)), caps=give)
        except KernelError:
            _revoke(sys, give)


async def name_service(sys: Sys) -> NoReturn:
    """The name service image: answer `Register`, `Unregister` and `Lookup` forever."""
    names = _Names(sys)
    while True:
        names.handle(await sys.recv())


def _revoke(sys: Sys, refs: list[str] | tuple[str, ...]) -> None:
    for ref in refs:
        with contextlib.suppress(CapError):
            sys.revoke(ref)


# -- clients ---------------------------------------------------------------------


async def register(
    sys: Sys,
    names: str,
    name: str,
    timeout: float = 5.0,  # noqa: ASYNC109 - bounded like a gen_server call
) -> bool:
    """Register the calling process as `name`; False if another process holds it."""
    tag = next(_tags)
    me = sys.self_ref(("send", "monitor"))
    if not await _send(sys, names, Register(name, tag), me):
        raise KernelError("register: the name service is not running")
    msg = await sys.recv(timeout, match=lambda b: isinstance(b, Registered) and b.tag == tag)
    ok: bool = msg.body.ok
    return ok


async def unregister(sys: Sys, names: str, name: str) -> None:
    """Give up `name` (only its owner can); what lookups handed out is revoked."""
    await sys.send(names, Unregister(name))


async def lookup(
    sys: Sys,
    names: str,
    name: str,
    timeout: float = 5.0,  # noqa: ASYNC109 - bounded like a gen_server call
) -> str | None:
    """A send capability over the process registered as `name`, or None."""
    tag = next(_tags)
    reply = sys.self_ref(("send",))
    if not await _send(sys, names, Lookup(name, tag), reply):
        raise KernelError("lookup: the name service is not running")
    msg = await sys.recv(timeout, match=lambda b: isinstance(b, Resolved) and b.tag == tag)
    return msg.caps[0] if msg.body.found and msg.caps else None


async def _send(sys: Sys, to: str, body: Any, cap: str) -> bool:
    """Send with `cap` attached; if it never left us, revoke it."""
    try:
        sent = await sys.send(to, body, caps=(cap,))
    except BaseException:
        _revoke(sys, [cap])
        raise
    if not sent:
        _revoke(sys, [cap])
    return sent
