"""The name service: register, lookup (send-only), unregister, cleanup when the owner dies."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from yool.kernel import CapError, Kernel, Sys
from yool.userland import Register, Registered, lookup, name_service, register, unregister


async def server(sys: Sys, names: str, name: str, results: list[Any]) -> None:
    """Register as `name`, then echo each message body into `results`; exit on "stop"."""
    results.append(("registered", await register(sys, names, name)))
    while True:
        msg = await sys.recv()
        if msg.body == "stop":
            return
        if msg.body == "unregister":
            await unregister(sys, names, name)
            continue
        results.append(msg.body)


async def start(k: Kernel) -> str:
    return k.init.spawn(name_service, name="names").ref


def serve(k: Kernel, names: str, name: str, results: list[Any]) -> str:
    """Spawn a server holding its own send capability over the name service."""
    mine = k.init.derive(names, ("send",))
    return k.init.spawn(server, mine, name, results, caps=(mine,)).ref


def test_register_then_lookup_gives_a_send_only_capability(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            names = await start(k)
            got: list[Any] = []
            serve(k, names, "db", got)
            await asyncio.sleep(0.1)
            assert got == [("registered", True)]
            ref = await lookup(k.init, names, "db")
            assert ref is not None
            assert await k.init.send(ref, "hello")
            await asyncio.sleep(0.1)
            assert got[-1] == "hello"
            with pytest.raises(CapError, match="lacks right 'kill'"):
                k.init.kill(ref)
            with pytest.raises(CapError, match="cannot derive right"):
                k.init.derive(ref, ("send", "monitor"))
            assert await lookup(k.init, names, "nobody") is None

    virtual(main())


def test_names_are_first_come(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            names = await start(k)
            first: list[Any] = []
            second: list[Any] = []
            serve(k, names, "db", first)
            await asyncio.sleep(0.1)
            serve(k, names, "db", second)
            await asyncio.sleep(0.1)
            assert first == [("registered", True)]
            assert second == [("registered", False)]
            ref = await lookup(k.init, names, "db")
            assert ref is not None
            await k.init.send(ref, "to the first")
            await asyncio.sleep(0.1)
            assert first[-1] == "to the first" and second == [("registered", False)]

    virtual(main())


def test_owner_death_removes_the_name_and_revokes_what_lookups_gave(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            names = await start(k)
            got: list[Any] = []
            owner = serve(k, names, "db", got)
            await asyncio.sleep(0.1)
            ref = await lookup(k.init, names, "db")
            assert ref is not None
            k.init.kill(owner)
            await asyncio.sleep(0.1)
            assert await lookup(k.init, names, "db") is None
            with pytest.raises(CapError, match="unknown or revoked"):
                await k.init.send(ref, "anyone there?")
            again: list[Any] = []
            serve(k, names, "db", again)  # the name is free again
            await asyncio.sleep(0.1)
            assert again == [("registered", True)]

    virtual(main())


def test_only_the_owner_can_unregister(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            names = await start(k)
            got: list[Any] = []
            owner = serve(k, names, "db", got)
            await asyncio.sleep(0.1)
            await unregister(k.init, names, "db")  # not the owner: ignored
            await asyncio.sleep(0.1)
            assert await lookup(k.init, names, "db") is not None
            await k.init.send(owner, "unregister")
            await asyncio.sleep(0.1)
            assert await lookup(k.init, names, "db") is None

    virtual(main())


def test_the_service_holds_no_capabilities_for_names_that_are_gone(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            names = await start(k)
            await asyncio.sleep(0)
            baseline = len(k.caps)
            owners = []
            for i in range(50):
                owners.append(serve(k, names, f"svc{i}", []))
            await asyncio.sleep(0.1)
            for i in range(50):
                assert await lookup(k.init, names, f"svc{i}") is not None
            assert len(k.caps) > baseline + 100
            for ref in owners:
                await k.init.send(ref, "stop")
            await asyncio.sleep(0.1)
            for ref in owners:
                k.init.revoke(ref)
            assert len(k.caps) == baseline
            assert await lookup(k.init, names, "svc0") is None

    virtual(main())


def test_a_registration_without_monitor_right_is_refused(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            names = await start(k)
            send_only = k.init.self_ref(("send",))
            await k.init.send(names, Register("host", 7), caps=(send_only,))
            reply = await k.init.recv(5.0, match=lambda b: isinstance(b, Registered))
            assert reply.body == Registered("host", 7, False)
            assert await lookup(k.init, names, "host") is None

    virtual(main())
