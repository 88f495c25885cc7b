"""Capabilities: the only authority a process has.

A capability is an unguessable reference to a resource (a process, a device,
the right to spawn, a lane) with a set of rights and caveats. Only the kernel
mints. A holder may derive a weaker one (rights only narrow, caveats such as
expiry only accumulate), hand it on with a message, or revoke it; revocation
is transitive over everything derived, and a process's capabilities all die
with it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from yool.kernel.errors import CapError

# Interned right sets: most capabilities share one of a handful of combinations.
_RIGHTS: dict[frozenset[str], frozenset[str]] = {}


def rights_of(names: Iterable[str]) -> frozenset[str]:
    key = frozenset((names,)) if isinstance(names, str) else frozenset(names)  # "send" ≠ s,e,n,d
    return _RIGHTS.setdefault(key, key)


class Cap:
    """One capability. Lives in the table until revoked; never handed to userland."""

    __slots__ = (
        "caveats",
        "derived",
        "expires",
        "kind",
        "owner",
        "parent",
        "ref",
        "rights",
        "target",
    )

    def __init__(
        self,
        ref: str,
        owner: int,
        kind: str,
        target: Any,
        rights: frozenset[str],
        expires: float | None,
        parent: str | None,
        caveats: tuple[Mapping[str, Any], ...] = (),
    ) -> None:
        self.ref = ref
        self.owner = owner
        self.kind = kind
        self.target = target
        self.rights = rights
        self.expires = expires
        self.parent = parent
        # Device-specific restrictions (e.g. a files root), accumulated by derive and never
        # stripped; the kernel hands them to the driver on open, which must enforce them all.
        self.caveats = caveats
        self.derived: set[str] | None = None


@dataclass(frozen=True, slots=True)
class CapInfo:
    """What a holder may see of one of its capabilities."""

    ref: str
    kind: str
    target: Any
    rights: frozenset[str]
    expires: float | None
    caveats: tuple[Mapping[str, Any], ...] = ()


def new_ref() -> str:
    """96 random bits: a reference cannot be guessed, only received."""
    return "cap_" + os.urandom(12).hex()


class CapTable:
    __slots__ = ("_caps", "_now", "_owned")

    def __init__(self, now: Callable[[], float]) -> None:
        self._caps: dict[str, Cap] = {}
        # owner pid -> kind -> refs: revoke-on-exit and "holds a spawn cap" stay
        # proportional to what that owner holds, never to the whole table.
        self._owned: dict[int, dict[str, set[str]]] = {}
        self._now = now

    def __len__(self) -> int:
        return len(self._caps)

    # -- kernel only -------------------------------------------------------

    def mint(
        self,
        owner: int,
        kind: str,
        target: Any,
        rights: Iterable[str],
        *,
        expires: float | None = None,
        parent: str | None = None,
        caveats: tuple[Mapping[str, Any], ...] = (),
    ) -> str:
        ref = new_ref()
        self._caps[ref] = Cap(ref, owner, kind, target, rights_of(rights), expires, parent, caveats)
        self._own(owner, kind, ref)
        return ref

    # -- the checks every privileged trap passes --------------------------

    def lookup(self, ref: str) -> Cap | None:
        """The live capability behind `ref`, or None if unknown, revoked or expired."""
        cap = self._caps.get(ref)
        if cap is None or (cap.expires is not None and self._now() >= cap.expires):
            return None
        return cap

    def require(self, holder: int, ref: object, right: str, kind: str | None = None) -> Cap:
        cap = self._caps.get(ref) if isinstance(ref, str) else None
        if cap is None:
            raise CapError(f"capability {_show(ref)} is unknown or revoked")
        if cap.owner != holder:
            raise CapError(f"capability {_show(ref)} is not held by pid {holder}")
        if right not in cap.rights:
            have = ", ".join(sorted(cap.rights)) or "none"
            raise CapError(f"capability {_show(ref)} lacks right {right!r} (has: {have})")
        if kind is not None and cap.kind != kind:
            raise CapError(f"capability {_show(ref)} is a {cap.kind} capability, not {kind}")
        if cap.expires is not None and self._now() >= cap.expires:
            raise CapError(f"capability {_show(ref)} has expired")
        return cap

    def holds_kind(self, pid: int, kind: str, right: str | None = None) -> str | None:
        """A live capability of `kind` held by `pid` (with `right`), if any."""
        refs = self._owned.get(pid, {}).get(kind)
        if refs:
            now = self._now()
            for ref in refs:
                cap = self._caps[ref]
                if (cap.expires is None or now < cap.expires) and (
                    right is None or right in cap.rights
                ):
                    return ref
        return None

    def held_by(self, pid: int) -> Iterator[CapInfo]:
        now = self._now()
        for refs in self._owned.get(pid, {}).values():
            for ref in refs:
                cap = self._caps[ref]
                if cap.expires is None or now < cap.expires:
                    yield CapInfo(ref, cap.kind, cap.target, cap.rights, cap.expires, cap.caveats)

    # -- what a holder may do --------------------------------------------

    def derive(
        self,
        holder: int,
        ref: str,
        rights: Iterable[str] | None = None,
        *,
        expires: float | None = None,
        owner: int | None = None,
        caveat: Mapping[str, Any] | None = None,
    ) -> str:
        """A weaker copy of `ref`: a subset of its rights, its caveats plus the new ones."""
        parent = self.require_held(holder, ref)
        want = parent.rights if rights is None else rights_of(rights)
        extra = want - parent.rights
        if extra:
            raise CapError(
                f"cannot derive right(s) {', '.join(sorted(extra))} from {_show(ref)}: "
                f"it grants only {', '.join(sorted(parent.rights)) or 'none'}"
            )
        if parent.expires is not None and (expires is None or expires > parent.expires):
            expires = parent.expires  # a caveat is never stripped by re-deriving
        child = self.mint(
            holder if owner is None else owner,
            parent.kind,
            parent.target,
            want,
            expires=expires,
            parent=ref,
            caveats=parent.caveats + ((MappingProxyType(dict(caveat)),) if caveat else ()),
        )
        if parent.derived is None:
            parent.derived = set()
        parent.derived.add(child)
        return child

    def require_held(self, holder: int, ref: object) -> Cap:
        cap = self.lookup(ref) if isinstance(ref, str) else None
        if cap is None:
            raise CapError(f"capability {_show(ref)} is unknown, revoked or expired")
        if cap.owner != holder:
            raise CapError(f"capability {_show(ref)} is not held by pid {holder}")
        return cap

    def transfer(self, holder: int, ref: str, to: int) -> None:
        cap = self.require_held(holder, ref)
        self._disown(cap)
        cap.owner = to
        self._own(to, cap.kind, ref)

    def revoke(self, ref: str) -> int:
        """Revoke `ref` and everything derived from it; returns how many died."""
        cap = self._caps.get(ref)
        if cap is None:
            return 0
        if cap.parent is not None:
            up = self._caps.get(cap.parent)
            if up is not None and up.derived is not None:
                up.derived.discard(ref)
        count = 0
        stack = [cap]
        while stack:  # iterative: a long delegation chain must not hit the recursion limit
            c = stack.pop()
            del self._caps[c.ref]
            self._disown(c)
            count += 1
            if c.derived:
                stack.extend(self._caps[r] for r in c.derived if r in self._caps)
        return count

    def revoke_owned(self, pid: int) -> int:
        by_kind = self._owned.get(pid)
        if not by_kind:
            return 0
        refs = [ref for refs in by_kind.values() for ref in refs]
        return sum(self.revoke(ref) for ref in refs)

    # -- owner index ------------------------------------------------------

    def _own(self, pid: int, kind: str, ref: str) -> None:
        by_kind = self._owned.get(pid)
        if by_kind is None:
            by_kind = self._owned[pid] = {}
        refs = by_kind.get(kind)
        if refs is None:
            by_kind[kind] = {ref}
        else:
            refs.add(ref)

    def _disown(self, cap: Cap) -> None:
        by_kind = self._owned.get(cap.owner)
        if by_kind is None:
            return
        refs = by_kind.get(cap.kind)
        if refs is not None:
            refs.discard(cap.ref)
            if not refs:
                del by_kind[cap.kind]
                if not by_kind:
                    del self._owned[cap.owner]


def _show(ref: object) -> str:
    """Name a reference in an error without echoing a megabyte of garbage."""
    text = repr(ref)
    return text if len(text) <= 48 else text[:45] + "..."
