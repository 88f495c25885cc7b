"""Capabilities: unguessable refs, kernel-only minting, narrowing-only derivation,
expiry, transfer with messages, transitive revocation and revoke-all on exit."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yool.kernel import CapError, Driver, Handle, Kernel, KernelError, Reply, Sys
from yool.kernel.caps import CapTable

Run = Callable[[Coroutine[Any, Any, Any]], Any]

RIGHTS = ("send", "monitor", "link", "kill")


class Clock:
    """A hand-moved time source for a bare CapTable."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


async def idle(sys: Sys) -> None:
    await sys.recv()


async def collect(sys: Sys, got: list[Any]) -> None:
    while True:
        msg = await sys.recv()
        got.append((msg.sender, msg.body, msg.caps))


# -- refs ------------------------------------------------------------------------------


def test_refs_are_distinct_long_random_strings() -> None:
    table = CapTable(Clock())
    refs = [table.mint(1, "process", 2, ("send",)) for _ in range(5000)]
    assert len(set(refs)) == len(refs)
    for ref in refs:
        assert re.fullmatch(r"cap_[0-9a-f]{24}", ref), ref  # 96 random bits
    # Random, not a counter: the bits are balanced and consecutive refs share no prefix.
    bits = "".join(f"{int(r[4:], 16):096b}" for r in refs)
    assert 0.47 < bits.count("1") / len(bits) < 0.53
    assert sum(a[:10] == b[:10] for a, b in itertools.pairwise(refs)) < 5


def test_only_the_kernel_mints_sys_has_no_mint_trap() -> None:
    assert not [name for name in dir(Sys) if "mint" in name.lower()]
    assert not hasattr(Sys, "grant")


# -- derive ----------------------------------------------------------------------------


def test_derive_narrows_rights_and_keeps_kind_and_target() -> None:
    table = CapTable(Clock())
    root = table.mint(1, "process", 9, RIGHTS)
    narrow = table.derive(1, root, ("send",))
    cap = table.lookup(narrow)
    assert cap is not None
    assert cap.rights == {"send"}
    assert (cap.kind, cap.target, cap.parent) == ("process", 9, root)
    assert table.derive(1, narrow, ()) != narrow  # deriving "nothing" is allowed, still fresh


def test_derive_refuses_to_amplify_with_an_error_naming_the_extra_rights() -> None:
    table = CapTable(Clock())
    send_only = table.mint(1, "process", 9, ("send",))
    before = len(table)
    with pytest.raises(CapError, match=r"cannot derive right\(s\) kill, link .*grants only send"):
        table.derive(1, send_only, ("send", "kill", "link"))
    assert len(table) == before


def test_derived_expiry_never_outlives_the_parent() -> None:
    table = CapTable(Clock())
    short = table.mint(1, "process", 9, RIGHTS, expires=10.0)
    for asked in (None, 11.0, 1e9):
        cap = table.lookup(table.derive(1, short, expires=asked))
        assert cap is not None and cap.expires == 10.0
    cap = table.lookup(table.derive(1, short, expires=4.0))
    assert cap is not None and cap.expires == 4.0


def test_sys_derive_refuses_amplifying_a_held_capability(virtual: Run) -> None:
    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            child = host.spawn(idle)
            send_only = host.derive(child.ref, ["send"])
            with pytest.raises(CapError, match="cannot derive right"):
                host.derive(send_only, ["send", "kill"])
            with pytest.raises(CapError, match="lacks right 'kill'"):
                host.kill(send_only)
            assert host.kill(child.ref)

    virtual(main())


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_no_sequence_of_derive_expire_transfer_revoke_amplifies_or_extends(
    data: st.DataObject,
) -> None:
    """Whatever happens, every live cap has a subset of its parent's rights (so of its
    root's), an expiry no later than its parent's, and a live parent."""
    clock = Clock()
    table = CapTable(clock)
    pids = st.integers(1, 4)
    rights = st.frozensets(st.sampled_from(RIGHTS))
    expiry = st.one_of(st.none(), st.floats(0, 100, allow_nan=False))
    roots: dict[str, tuple[frozenset[str], float | None]] = {}
    refs: list[str] = []
    for _ in range(data.draw(st.integers(1, 3), label="roots")):
        r, e = data.draw(rights), data.draw(expiry)
        ref = table.mint(data.draw(pids), "process", 7, r, expires=e)
        roots[ref] = (frozenset(r), e)
        refs.append(ref)

    def check() -> None:
        for ref in refs:
            cap = table.lookup(ref)
            if cap is None:
                continue
            node = cap
            while node.parent is not None:
                up = table.lookup(node.parent)
                assert up is not None, "a live capability outlived its parent"
                assert node.rights <= up.rights
                if up.expires is not None:
                    assert node.expires is not None and node.expires <= up.expires
                assert (node.kind, node.target) == (up.kind, up.target)
                node = up
            assert node.ref in roots
            root_rights, root_expires = roots[node.ref]
            assert cap.rights <= root_rights == node.rights
            if root_expires is not None:
                assert cap.expires is not None and cap.expires <= root_expires

    for _ in range(data.draw(st.integers(0, 40), label="ops")):
        op = data.draw(st.sampled_from(["derive", "attenuate", "transfer", "revoke", "tick"]))
        ref = data.draw(st.sampled_from(refs))
        cap = table.lookup(ref)
        holder = cap.owner if cap is not None and data.draw(st.booleans()) else data.draw(pids)
        size = len(table)
        if op in ("derive", "attenuate"):
            want = data.draw(rights) if op == "derive" else None
            expires = data.draw(expiry) if op == "attenuate" else None
            ok = cap is not None and cap.owner == holder and (want is None or want <= cap.rights)
            if ok:
                refs.append(table.derive(holder, ref, want, expires=expires))
            else:
                with pytest.raises(CapError):
                    table.derive(holder, ref, want, expires=expires)
                assert len(table) == size
        elif op == "transfer":
            to = data.draw(pids)
            if cap is not None and cap.owner == holder:
                table.transfer(holder, ref, to)
                assert cap.owner == to
            else:
                with pytest.raises(CapError):
                    table.transfer(holder, ref, to)
        elif op == "revoke":
            table.revoke(ref)
            assert table.lookup(ref) is None
        else:
            clock.t += data.draw(st.floats(0, 30, allow_nan=False))
        check()


# -- revoke ----------------------------------------------------------------------------


def test_revoke_is_transitive_over_everything_derived() -> None:
    table = CapTable(Clock())
    root = table.mint(1, "process", 9, RIGHTS)
    a = table.derive(1, root, ("send", "kill"))
    b = table.derive(1, a, ("send",))
    c = table.derive(1, a, ("kill",), owner=2)
    sibling = table.derive(1, root, ("monitor",))
    assert table.revoke(a) == 3
    assert [table.lookup(r) is None for r in (a, b, c)] == [True, True, True]
    assert table.lookup(root) is not None and table.lookup(sibling) is not None
    assert table.revoke(a) == 0  # revoking twice is harmless


def test_revoking_a_chain_of_ten_thousand_derivations_does_not_recurse() -> None:
    table = CapTable(Clock())
    root = table.mint(1, "process", 9, RIGHTS)
    ref = root
    chain = [root]
    for _ in range(10_000):
        ref = table.derive(1, ref)
        chain.append(ref)
    assert table.revoke(root) == 10_001
    assert all(table.lookup(r) is None for r in chain)
    assert len(table) == 0


def test_revoke_all_of_an_owner_kills_a_long_chain_held_by_others() -> None:
    table = CapTable(Clock())
    root = table.mint(1, "process", 9, RIGHTS)
    ref = root
    for i in range(10_000):
        ref = table.derive(1 if i == 0 else 2, ref, owner=2)
    assert len(table) == 10_001
    assert table.revoke_owned(1) == 10_001
    assert len(table) == 0
    assert list(table.held_by(2)) == []


# -- expiry ----------------------------------------------------------------------------


def test_an_expired_capability_is_refused(virtual: Run) -> None:
    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            got: list[Any] = []
            child = host.spawn(collect, got)
            short = host.derive(child.ref, ["send"], expires_in=5)
            assert await host.send(short, "early")
            await host.sleep(6)
            with pytest.raises(CapError, match="expired"):
                await host.send(short, "late")
            with pytest.raises(CapError, match="expired"):
                host.derive(short)
            assert short not in [c.ref for c in host.caps()]
            assert [body for _, body, _ in got] == ["early"]

    virtual(main())


def test_sys_derive_rejects_a_negative_or_nan_expiry(virtual: Run) -> None:
    async def main() -> None:
        async with Kernel() as k:
            child = k.init.spawn(idle)
            for bad in (-1.0, float("nan")):
                with pytest.raises(KernelError, match="expires_in must be >= 0"):
                    k.init.derive(child.ref, expires_in=bad)

    virtual(main())


# -- transfer --------------------------------------------------------------------------


async def courier(sys: Sys) -> None:
    msg = await sys.recv()
    (ref,) = msg.caps
    assert ref in [c.ref for c in sys.caps("process")]
    await sys.send(ref, "relayed")
    await sys.recv()


def test_caps_sent_with_a_message_move_to_the_receiver(virtual: Run) -> None:
    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            got: list[Any] = []
            target = host.spawn(collect, got)
            relay = host.spawn(courier)
            to_target = host.derive(target.ref, ["send"])
            assert await host.send(relay.ref, "take this", caps=(to_target,))
            with pytest.raises(CapError, match="not held by pid 1"):
                await host.send(to_target, "mine?")
            assert to_target not in [c.ref for c in host.caps()]
            await host.sleep(1)
            assert got == [(relay.pid, "relayed", ())]

    virtual(main())


def test_sending_a_cap_you_do_not_hold_delivers_nothing(virtual: Run) -> None:
    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            got: list[Any] = []
            target = host.spawn(collect, got)
            with pytest.raises(CapError, match="unknown, revoked or expired"):
                await host.send(target.ref, "x", caps=("cap_" + "0" * 24,))
            await host.sleep(1)
            assert got == []

    virtual(main())


def test_handing_the_same_cap_twice_moves_it_once_and_delivers(virtual: Run) -> None:
    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            got: list[Any] = []
            target = host.spawn(collect, got)
            other = host.spawn(idle)
            gift = host.derive(other.ref, ["send"])
            assert await host.send(target.ref, "twice", caps=(gift, gift))
            await host.sleep(1)
            assert got == [(1, "twice", (gift,))]
            owners = {c.ref for c in k.caps.held_by(target.pid)}
            assert gift in owners

            spare = host.derive(other.ref, ["send"])
            child = host.spawn(idle, caps=(spare, spare))
            assert spare in {c.ref for c in k.caps.held_by(child.pid)}

    virtual(main())


# -- revoke-all on exit ----------------------------------------------------------------


async def deputy(sys: Sys, boss: str, target: str) -> None:
    gift = sys.derive(target, ["send"])
    await sys.send(boss, "gift", caps=(gift,))
    await sys.recv()  # then exit normally


def test_a_dead_process_loses_its_caps_including_those_it_derived_for_others(
    virtual: Run,
) -> None:
    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            got: list[Any] = []
            target = host.spawn(collect, got)
            boss = host.self_ref()
            to_target = host.derive(target.ref)
            dep = host.spawn(deputy, boss, to_target, caps=(boss, to_target))
            msg = await host.recv(timeout=5)
            (gift,) = msg.caps
            assert await host.send(gift, "works while the deputy lives")
            assert len(list(k.caps.held_by(dep.pid))) == 2
            await host.send(dep.ref, "go")
            assert (await host.wait(dep.ref)).normal
            assert list(k.caps.held_by(dep.pid)) == []
            with pytest.raises(CapError, match="unknown or revoked"):
                await host.send(gift, "after")
            await host.sleep(1)
            assert [body for _, body, _ in got] == ["works while the deputy lives"]

    virtual(main())


def test_revoke_by_the_holder_reaches_caps_derived_and_given_away(virtual: Run) -> None:
    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            target = host.spawn(idle)
            relay = host.spawn(idle)
            mine = host.derive(target.ref, ["send", "monitor"])
            given_away = host.derive(mine, ["send"])
            await host.send(relay.ref, "for you", caps=(given_away,))
            assert given_away in {c.ref for c in k.caps.held_by(relay.pid)}
            with pytest.raises(CapError, match="not held"):
                host.revoke(given_away)
            assert host.revoke(mine) == 2
            assert list(k.caps.held_by(relay.pid)) == []

    virtual(main())


# -- refusals --------------------------------------------------------------------------


def test_using_a_cap_held_by_another_process_is_refused(virtual: Run) -> None:
    async def leak(sys: Sys, boss: str) -> None:
        mine = sys.self_ref()
        await sys.send(boss, mine)  # the ref as plain data, not handed over
        await sys.recv()

    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            boss = host.self_ref()
            host.spawn(leak, boss, caps=(boss,))
            msg = await host.recv(timeout=5)
            with pytest.raises(CapError, match="not held by pid 1"):
                await host.send(msg.body, "hi")

    virtual(main())


def test_forged_and_malformed_refs_are_refused_without_echoing_garbage(virtual: Run) -> None:
    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            for forged in ("cap_" + "ab" * 12, "", 42, None, "x" * 10_000):
                with pytest.raises(CapError, match="unknown or revoked") as e:
                    await host.send(forged, "hi")  # type: ignore[arg-type]
                assert len(str(e.value)) < 120

    virtual(main())


def test_wrong_kind_and_missing_right_are_refused_with_clear_messages(virtual: Run) -> None:
    class Echo(Driver):
        name = "echo"

        async def open(self, pid: int, params: dict[str, Any]) -> Handle:
            return EchoHandle()

    class EchoHandle(Handle):
        async def read(self, request: Any) -> Reply:
            return Reply(request)

    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            device = k.register_driver(Echo())
            with pytest.raises(CapError, match="is a device capability, not handle"):
                await host.read(device, "hi")
            spawn = host.cap("spawn")
            assert spawn is not None
            with pytest.raises(CapError, match=r"lacks right 'send' \(has: spawn\)"):
                await host.send(spawn, "hi")
            handle = await host.open(device)
            assert await host.read(handle, "hi") == "hi"
            read_only = host.derive(handle, ["read"])
            with pytest.raises(CapError, match=r"lacks right 'write' \(has: read\)"):
                await host.write(read_only, "x")

    virtual(main())


def test_a_bare_table_names_the_kind_mismatch() -> None:
    table = CapTable(Clock())
    dev = table.mint(1, "device", "llm", ("send",))
    with pytest.raises(CapError, match="is a device capability, not process"):
        table.require(1, dev, "send", "process")


# -- spawn capability ------------------------------------------------------------------


def test_spawn_without_a_spawn_cap_is_refused(virtual: Run) -> None:
    async def tries(sys: Sys) -> str:
        try:
            sys.spawn(idle)
        except CapError as e:
            return str(e)
        return "spawned"

    async def main() -> None:
        async with Kernel() as k:
            errors: list[str] = []

            async def child(sys: Sys) -> None:
                errors.append(await tries(sys))

            c = k.init.spawn(child)
            assert (await k.init.wait(c.ref)).normal
            assert errors == [f"pid {c.pid} holds no spawn capability"]
            assert len(k.procs) == 1

    virtual(main())


def test_a_child_given_a_derived_spawn_cap_can_spawn_until_it_is_revoked(virtual: Run) -> None:
    async def parent(sys: Sys, out: list[Any]) -> None:
        kid = sys.spawn(idle)
        out.append(kid.pid)
        await sys.recv()
        try:
            sys.spawn(idle)
        except CapError as e:
            out.append(str(e))

    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            root_spawn = host.cap("spawn")
            assert root_spawn is not None
            caretaker = host.derive(root_spawn)  # kept, so the delegation can be revoked
            delegated = host.derive(caretaker)
            out: list[Any] = []
            p = host.spawn(parent, out, caps=(delegated,))
            await host.sleep(1)
            assert out == [p.pid + 1]
            assert k.procs[p.pid + 1].parent == p.pid
            assert host.revoke(caretaker) == 2
            await host.send(p.ref, "again")
            assert (await host.wait(p.ref)).normal
            assert out[1] == f"pid {p.pid} holds no spawn capability"
            assert host.cap("spawn") == root_spawn  # init keeps its own

    virtual(main())
