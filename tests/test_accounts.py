"""Hierarchical accounts: all-or-nothing charges up the tree, the concurrent `children`
cap, reservations, inherited wall budgets, `remaining()` and budget validation."""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yool.kernel import (
    Budget,
    Cost,
    Driver,
    Handle,
    Kernel,
    KernelError,
    QuotaExceeded,
    Reply,
    Sys,
    quota,
)
from yool.kernel.accounts import Account

Run = Callable[[Coroutine[Any, Any, Any]], Any]


def usage(a: Account) -> tuple[int, float, int]:
    return (a.tokens, a.usd, a.tool_calls)


async def idle(sys: Sys) -> None:
    await sys.recv()


async def quick(sys: Sys) -> None:
    await sys.sleep(0.5)


async def sleeper(sys: Sys) -> None:
    await sys.sleep(1000)


# -- charges ---------------------------------------------------------------------------


def test_a_charge_lands_on_the_account_and_every_ancestor() -> None:
    root = Account(None, Budget(tokens=1000), 0.0)
    mid = Account(root, None, 0.0)
    leaf = Account(mid, Budget(usd=5.0), 0.0)
    other = Account(root, None, 0.0)
    leaf.charge(Cost(tokens=10, usd=0.5, tool_calls=1))
    assert usage(leaf) == usage(mid) == usage(root) == (10, 0.5, 1)
    assert usage(other) == (0, 0.0, 0)


def test_a_charge_beyond_an_ancestors_quota_is_refused_and_charges_nothing() -> None:
    root = Account(None, Budget(tokens=100), 0.0)
    mid = Account(root, Budget(tool_calls=2), 0.0)
    leaf = Account(mid, None, 0.0)
    leaf.charge(Cost(tokens=90, tool_calls=2))
    with pytest.raises(QuotaExceeded, match=r"tool_calls \(2 used \+ 1 requested > 2") as e:
        leaf.charge(Cost(tokens=5, tool_calls=1))  # tokens would fit, tool calls do not
    assert e.value.resource == "tool_calls"
    with pytest.raises(QuotaExceeded, match="tokens"):
        leaf.charge(Cost(tokens=11))
    assert usage(leaf) == usage(mid) == usage(root) == (90, 0.0, 2)
    leaf.charge(Cost(tokens=10))  # exactly to the limit is fine
    assert root.tokens == 100


LIMIT = st.one_of(st.none(), st.integers(0, 40))
QUARTERS = st.integers(0, 16).map(lambda q: q / 4)  # exact in binary: sums are exact


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_charges_over_random_trees_are_all_or_nothing(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 8), label="nodes")
    parents: list[int | None] = [None]
    parents += [data.draw(st.integers(0, i - 1)) for i in range(1, n)]
    accounts: list[Account] = []
    for i in range(n):
        budget = data.draw(
            st.one_of(
                st.none(),
                st.builds(
                    Budget,
                    tokens=LIMIT,
                    usd=st.one_of(st.none(), QUARTERS),
                    tool_calls=st.one_of(st.none(), st.integers(0, 6)),
                ),
            )
        )
        up = parents[i]
        accounts.append(Account(None if up is None else accounts[up], budget, 0.0))

    def chain(i: int) -> list[int]:
        out: list[int] = []
        j: int | None = i
        while j is not None:
            out.append(j)
            j = parents[j]
        return out

    subtree = {j: [i for i in range(n) if j in chain(i)] for j in range(n)}
    own: list[tuple[int, float, int]] = [(0, 0.0, 0)] * n

    def fits(a: Account, c: Cost) -> bool:
        b = a.budget
        return b is None or (
            (b.tokens is None or a.tokens + c.tokens <= b.tokens)
            and (b.usd is None or a.usd + c.usd <= b.usd)
            and (b.tool_calls is None or a.tool_calls + c.tool_calls <= b.tool_calls)
        )

    for _ in range(data.draw(st.integers(1, 30), label="charges")):
        i = data.draw(st.integers(0, n - 1))
        cost = Cost(
            tokens=data.draw(st.integers(0, 20)),
            usd=data.draw(QUARTERS),
            tool_calls=data.draw(st.integers(0, 3)),
        )
        expected = all(fits(accounts[j], cost) for j in chain(i))
        before = [usage(a) for a in accounts]
        try:
            accounts[i].charge(cost)
            accepted = True
        except QuotaExceeded:
            accepted = False
        assert accepted == expected
        if not accepted:
            assert [usage(a) for a in accounts] == before
            continue
        t, u, c = own[i]
        own[i] = (t + cost.tokens, u + cost.usd, c + cost.tool_calls)
        for j in range(n):
            want = tuple(sum(own[k][m] for k in subtree[j]) for m in range(3))
            assert usage(accounts[j]) == want


def test_children_slots_are_taken_up_the_tree_all_or_nothing() -> None:
    root = Account(None, Budget(children=2), 0.0)
    mid = Account(root, Budget(children=5), 0.0)
    root.open_child()  # for mid itself
    mid.open_child()  # a grandchild: root now counts 2 live descendants
    with pytest.raises(QuotaExceeded, match=r"children \(2 live of 2 allowed\)"):
        mid.open_child()
    assert (root.children, mid.children) == (2, 1)
    mid.close_child()
    mid.open_child()
    assert (root.children, mid.children) == (2, 1)


# -- reservations ----------------------------------------------------------------------


def test_reserve_holds_settle_replaces_and_cancel_refunds() -> None:
    root = Account(None, Budget(tokens=100), 0.0)
    leaf = Account(root, None, 0.0)
    hold = leaf.reserve(Cost(tokens=60))
    assert (leaf.tokens, root.tokens) == (60, 60)
    with pytest.raises(QuotaExceeded, match="tokens"):
        leaf.reserve(Cost(tokens=50))  # the hold counts against the budget
    assert hold.settle(Cost(tokens=30)) is None
    assert root.tokens == 30
    with pytest.raises(KernelError, match="already settled"):
        hold.settle(Cost(tokens=1))
    dropped = leaf.reserve(Cost(tokens=70))
    assert root.tokens == 100
    dropped.cancel()
    dropped.cancel()  # idempotent
    assert root.tokens == 30


def test_settle_records_an_overshoot_and_reports_the_overdrawn_meter() -> None:
    root = Account(None, Budget(tokens=100, usd=1.0), 0.0)
    leaf = Account(root, None, 0.0)
    hold = leaf.reserve(Cost(tokens=50, usd=0.5))
    assert hold.settle(Cost(tokens=130, usd=0.25)) == "tokens"  # the money is spent anyway
    assert (leaf.tokens, root.tokens) == (130, 130)
    assert root.overdrawn() == leaf.overdrawn() == "tokens"
    with pytest.raises(QuotaExceeded):
        leaf.charge(Cost(tokens=1))
    assert leaf.remaining(0.0)["tokens"] == 0


# -- through the kernel: driver costs --------------------------------------------------


class Meter(Driver):
    """A device whose read costs `request` tokens; `estimate` is what it reserves up front."""

    name = "meter"

    def __init__(self) -> None:
        self.calls: list[Any] = []

    async def open(self, pid: int, params: dict[str, Any]) -> Handle:
        return MeterHandle(self, params.get("estimate"))


class MeterHandle(Handle):
    def __init__(self, meter: Meter, estimate: int | None) -> None:
        self.meter = meter
        self.guess = estimate

    async def read(self, request: Any) -> Reply:
        self.meter.calls.append(request)
        return Reply(request, Cost(tokens=request, tool_calls=1))

    def estimate(self, request: Any) -> Cost | None:
        return None if self.guess is None else Cost(tokens=self.guess)


def test_driver_costs_are_charged_to_the_process_and_every_ancestor(virtual: Run) -> None:
    async def worker(sys: Sys, device: str) -> None:
        h = await sys.open(device)
        for _ in range(3):
            await sys.read(h, 10)

    async def manager(sys: Sys, device: str) -> None:
        w = sys.spawn(worker, device, caps=(device,))
        assert (await sys.wait(w.ref)).normal
        assert sys.usage()["tokens"] == 30

    async def main() -> None:
        async with Kernel(budget=Budget(tokens=10_000)) as k:
            host = k.init
            device = k.register_driver(Meter())
            spawn = host.cap("spawn")
            assert spawn is not None
            m = host.spawn(
                manager, device, budget=Budget(tokens=100), caps=(host.derive(spawn), device)
            )
            assert (await host.wait(m.ref)).normal
            assert host.usage()["tokens"] == 30
            assert host.usage()["tool_calls"] == 3
            assert k.metrics()["charged_total"]["tokens"] == 30

    virtual(main())


def test_an_unaffordable_estimate_is_refused_before_the_call_is_sent(virtual: Run) -> None:
    meter = Meter()
    seen: list[Any] = []

    async def worker(sys: Sys, device: str) -> None:
        h = await sys.open(device, estimate=10)
        await sys.read(h, 25)
        try:
            await sys.read(h, 1)  # 25 spent + 10 reserved > 30
        except QuotaExceeded as e:
            seen.append(e.resource)
        seen.append(sys.usage()["tokens"])

    async def main() -> None:
        async with Kernel() as k:
            device = k.register_driver(meter)
            w = k.init.spawn(worker, device, budget=Budget(tokens=30), caps=(device,))
            assert (await k.init.wait(w.ref)).normal
            assert meter.calls == [25]
            assert seen == ["tokens", 25]

    virtual(main())


def test_an_overshooting_call_is_recorded_and_ends_the_process_with_quota(virtual: Run) -> None:
    async def worker(sys: Sys, device: str) -> None:
        h = await sys.open(device, estimate=10)
        await sys.read(h, 40)  # reserved 10, really cost 40 of a 30 budget

    async def main() -> None:
        async with Kernel() as k:
            device = k.register_driver(Meter())
            w = k.init.spawn(worker, device, budget=Budget(tokens=30), caps=(device,))
            assert await k.init.wait(w.ref) == quota("tokens")
            assert k.init.usage()["tokens"] == 40

    virtual(main())


def test_spend_made_elsewhere_is_recorded_up_the_tree_even_past_a_limit(virtual: Run) -> None:
    """What an agent on another node spent is charged to the process standing in for it."""

    async def main() -> None:
        async with Kernel(budget=Budget(tokens=100)) as k:
            parent = k.init.spawn(idle, budget=Budget(usd=1.0))
            stub = k.proc(parent.pid)
            child = k.init.spawn(idle)
            assert k.spent_elsewhere(parent.pid, Cost(tokens=60, usd=0.25)) is None
            assert usage(stub.account) == (60, 0.25, 0)
            assert k.init.usage()["tokens"] == 60
            # the money is gone: recorded past the root's limit, the meter named, a quota event
            assert k.spent_elsewhere(parent.pid, Cost(tokens=50, tool_calls=2)) == "tokens"
            assert k.init.usage()["tokens"] == 110
            assert [e.data for e in k.trace(pid=parent.pid) if e.kind == "quota"] == [
                {"resource": "tokens", "cost": {"tokens": 50, "usd": 0.0, "tool_calls": 2}}
            ]
            assert k.counters.charged["tokens"] == 110
            # and everything under the root is now refused further spend
            with pytest.raises(QuotaExceeded):
                k.proc(child.pid).account.charge(Cost(tokens=1))
            for bad in (Cost(tokens=-1), Cost(usd=math.nan)):
                with pytest.raises(KernelError, match="invalid cost"):
                    k.spent_elsewhere(parent.pid, bad)
            assert k.init.usage()["tokens"] == 110

    virtual(main())


# -- the children cap through spawn ----------------------------------------------------


def test_children_is_a_concurrent_cap_so_spawn_and_reap_can_loop_forever(virtual: Run) -> None:
    async def loop(sys: Sys, rounds: int, out: list[Any]) -> None:
        for _ in range(rounds):
            a, b = sys.spawn(quick), sys.spawn(quick)
            out.append((await sys.wait(a.ref), await sys.wait(b.ref)))
        out.append(sys.usage()["children"])

    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            spawn = host.cap("spawn")
            assert spawn is not None
            out: list[Any] = []
            p = host.spawn(loop, 100, out, budget=Budget(children=2), caps=(host.derive(spawn),))
            assert (await host.wait(p.ref)).normal
            assert len(out) == 101
            assert all(a.normal and b.normal for a, b in out[:100])
            assert out[100] == 0
            assert host.usage()["children"] == 0

    virtual(main())


def test_spawning_past_the_children_cap_leaves_nothing_behind(virtual: Run) -> None:
    async def main() -> None:
        async with Kernel() as k:
            out: list[Any] = []

            async def greedy(sys: Sys) -> None:
                a = sys.spawn(idle)
                b = sys.spawn(idle)
                before = (len(k.procs), k.counters.spawned, sys.usage(), len(k.caps))
                try:
                    sys.spawn(idle, name="one too many")
                except QuotaExceeded as e:
                    out.append(e.resource)
                after = (len(k.procs), k.counters.spawned, sys.usage(), len(k.caps))
                out.append(before == after)
                sys.kill(a.ref)
                c = sys.spawn(idle)
                out.append(c.pid == b.pid + 1)  # the refused spawn consumed no pid
                sys.spawn(idle)  # uncaught: the process ends with quota(children)

            host = k.init
            spawn = host.cap("spawn")
            assert spawn is not None
            g = host.spawn(greedy, budget=Budget(children=2), caps=(host.derive(spawn),))
            assert await host.wait(g.ref) == quota("children")
            assert out == ["children", True, True]
            assert not [p for p in k.procs.values() if p.name == "one too many"]

    virtual(main())


# -- wall time -------------------------------------------------------------------------


def test_a_wall_budget_kills_with_quota_wall_at_its_expiry(virtual: Run) -> None:
    async def main() -> None:
        async with Kernel() as k:
            c = k.init.spawn(sleeper, budget=Budget(wall_s=5))
            assert await k.init.wait(c.ref) == quota("wall")
            assert k.init.now() == 5.0

    virtual(main())


def test_a_child_dies_at_its_parents_wall_deadline_despite_a_larger_own_budget(
    virtual: Run,
) -> None:
    died: dict[str, float] = {}
    seen: list[Any] = []

    async def grandchild(sys: Sys) -> None:
        sys.on_cleanup(lambda: died.setdefault("grandchild", sys.now()))
        seen.append(sys.budget()["wall_s"])
        await sys.sleep(1000)

    async def middle(sys: Sys) -> None:
        await sys.sleep(1)
        g = sys.spawn(grandchild, budget=Budget(wall_s=50))
        seen.append(g.pid)
        await sys.sleep(1000)

    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            spawn = host.cap("spawn")
            assert spawn is not None
            m = host.spawn(middle, budget=Budget(wall_s=5), caps=(host.derive(spawn),))
            assert await host.wait(m.ref) == quota("wall")
            await host.sleep(1)
            assert seen[1] == 4.0  # remaining wall at t=1: the parent's deadline, not 50
            assert await k.reason_of(seen[0]) == quota("wall")
            assert died == {"grandchild": 5.0}

    virtual(main())


def test_remaining_shows_the_tightest_limit_up_the_tree() -> None:
    root = Account(None, Budget(tokens=100, usd=1.0, wall_s=60), 0.0)
    child = Account(root, Budget(tokens=1000, tool_calls=5, wall_s=100), 10.0)
    sibling = Account(root, None, 10.0)
    leaf = Account(child, None, 10.0)
    sibling.charge(Cost(tokens=30, usd=0.25))
    leaf.charge(Cost(tokens=5, tool_calls=2))
    assert leaf.remaining(20.0) == {
        "tokens": 65,
        "usd": 0.75,
        "tool_calls": 3,
        "wall_s": 40.0,
    }
    assert Account(None, None, 0.0).remaining(0.0) == {
        "tokens": None,
        "usd": None,
        "tool_calls": None,
        "wall_s": None,
    }


# -- validation ------------------------------------------------------------------------


FIELDS = ("tokens", "usd", "tool_calls", "children", "wall_s", "mem", "mailbox")


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("bad", [-1, -0.5, math.nan, True, "5"], ids=repr)
def test_budget_validation_names_the_field(field: str, bad: Any) -> None:
    with pytest.raises(KernelError, match=rf"budget\.{field} must be"):
        Budget(**{field: bad})


def test_budget_accepts_zero_and_round_trips_through_json() -> None:
    b = Budget(tokens=0, usd=0.5, children=3, wall_s=1.5)
    assert Budget.from_json(b.to_json()) == b
