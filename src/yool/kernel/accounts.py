"""Hierarchical accounts: what a process may spend, enforced up the whole tree.

Every charge (tokens, USD, tool calls) lands on the process's account and on
every ancestor's, all or nothing: a charge that any ancestor's remaining
budget cannot cover is refused and nothing is charged anywhere. `children` is
a concurrent cap (like a pids cgroup): a slot is taken at spawn and freed at
exit, so a supervisor can restart forever. Wall time is inherited: a child
never outlives its ancestors' wall budgets.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from yool.kernel.errors import KernelError, QuotaExceeded

if TYPE_CHECKING:
    from yool.policy import RuntimePolicy


@dataclass(frozen=True, slots=True)
class Budget:
    """Limits of one process (None = no limit of its own; ancestors' still apply)."""

    tokens: int | None = None
    usd: float | None = None
    tool_calls: int | None = None
    children: int | None = None  # live descendants at once
    wall_s: float | None = None
    mem: int | None = None  # working-memory ceiling, in tokens
    mailbox: int | None = None  # messages queued before senders block

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise KernelError(f"budget.{f.name} must be a number, got {value!r}")
            if value < 0 or value != value:
                raise KernelError(f"budget.{f.name} must be >= 0, got {value!r}")

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_policy(cls, policy: RuntimePolicy) -> Budget:
        """The session budget `YOOL_BUDGET_*` sets."""
        return cls(
            tokens=policy.budget_tokens,
            usd=policy.budget_usd,
            tool_calls=policy.budget_tool_calls,
            wall_s=policy.budget_wall_s,
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Budget:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


UNLIMITED = Budget()


@dataclass(frozen=True, slots=True)
class Cost:
    """What one driver operation consumed."""

    tokens: int = 0
    usd: float = 0.0
    tool_calls: int = 0

    def __bool__(self) -> bool:
        return bool(self.tokens or self.usd or self.tool_calls)

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.tokens + other.tokens, self.usd + other.usd, self.tool_calls + other.tool_calls
        )

    def to_json(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "usd": self.usd, "tool_calls": self.tool_calls}


FREE = Cost()


class Account:
    """One process's budget and the usage of its whole subtree."""

    __slots__ = ("budget", "children", "parent", "tokens", "tool_calls", "usd", "wall_deadline")

    def __init__(self, parent: Account | None, budget: Budget | None, now: float) -> None:
        self.parent = parent
        self.budget = budget if budget is not None and budget != UNLIMITED else None
        self.tokens = 0
        self.usd = 0.0
        self.tool_calls = 0
        self.children = 0
        wall: float | None = None
        if budget is not None and budget.wall_s is not None:
            wall = now + budget.wall_s
        inherited: float | None = parent.wall_deadline if parent is not None else None
        if inherited is not None and (wall is None or inherited < wall):
            wall = inherited
        self.wall_deadline: float | None = wall

    # -- charges ------------------------------------------------------------

    def check(self, cost: Cost) -> None:
        """Raise QuotaExceeded if `cost` does not fit everywhere up the tree."""
        a: Account | None = self
        while a is not None:
            b = a.budget
            if b is not None:
                if b.tokens is not None and cost.tokens and a.tokens + cost.tokens > b.tokens:
                    raise QuotaExceeded("tokens", _over(a.tokens, cost.tokens, b.tokens))
                if b.usd is not None and cost.usd and a.usd + cost.usd > b.usd + 1e-12:
                    raise QuotaExceeded("usd", _over(a.usd, cost.usd, b.usd))
                if (
                    b.tool_calls is not None
                    and cost.tool_calls
                    and a.tool_calls + cost.tool_calls > b.tool_calls
                ):
                    raise QuotaExceeded(
                        "tool_calls", _over(a.tool_calls, cost.tool_calls, b.tool_calls)
                    )
            a = a.parent

    def charge(self, cost: Cost) -> None:
        """All or nothing: either every account up the tree pays, or none does."""
        if cost:
            self.check(cost)
            self._apply(cost.tokens, cost.usd, cost.tool_calls)

    def force(self, cost: Cost) -> bool:
        """Record a spend that already happened; True if it left any budget overdrawn."""
        if not cost:
            return False
        self._apply(cost.tokens, cost.usd, cost.tool_calls)
        return self.overdrawn() is not None

    def refund(self, cost: Cost) -> None:
        if cost:
            self._apply(-cost.tokens, -cost.usd, -cost.tool_calls)

    def reserve(self, estimate: Cost) -> Reservation:
        """Hold `estimate` before a call is sent; settle on what it really cost."""
        self.charge(estimate)
        return Reservation(self, estimate)

    def overdrawn(self) -> str | None:
        """The first meter over its limit anywhere up the tree, if any."""
        a: Account | None = self
        while a is not None:
            b = a.budget
            if b is not None:
                if b.tokens is not None and a.tokens > b.tokens:
                    return "tokens"
                if b.usd is not None and a.usd > b.usd + 1e-12:
                    return "usd"
                if b.tool_calls is not None and a.tool_calls > b.tool_calls:
                    return "tool_calls"
            a = a.parent
        return None

    def _apply(self, tokens: int, usd: float, tool_calls: int) -> None:
        a: Account | None = self
        while a is not None:
            a.tokens += tokens
            a.usd += usd
            a.tool_calls += tool_calls
            a = a.parent

    # -- the concurrent children cap ----------------------------------------

    def open_child(self) -> None:
        """Take one live-descendant slot here and in every ancestor."""
        a: Account | None = self
        while a is not None:
            b = a.budget
            if b is not None and b.children is not None and a.children + 1 > b.children:
                raise QuotaExceeded("children", f"{a.children} live of {b.children} allowed")
            a = a.parent
        a = self
        while a is not None:
            a.children += 1
            a = a.parent

    def close_child(self) -> None:
        a: Account | None = self
        while a is not None:
            a.children -= 1
            a = a.parent

    # -- views ----------------------------------------------------------------

    def usage(self) -> dict[str, float]:
        return {
            "tokens": self.tokens,
            "usd": round(self.usd, 9),
            "tool_calls": self.tool_calls,
            "children": self.children,
        }

    def remaining(self, now: float) -> dict[str, float | None]:
        """The tightest remaining amount of each meter over this account and its ancestors."""
        out: dict[str, float | None] = {"tokens": None, "usd": None, "tool_calls": None}
        a: Account | None = self
        while a is not None:
            b = a.budget
            if b is not None:
                for meter, limit, used in (
                    ("tokens", b.tokens, a.tokens),
                    ("usd", b.usd, a.usd),
                    ("tool_calls", b.tool_calls, a.tool_calls),
                ):
                    if limit is not None:
                        left = max(0.0, limit - used)
                        cur = out[meter]
                        out[meter] = left if cur is None else min(cur, left)
            a = a.parent
        out["wall_s"] = None if self.wall_deadline is None else max(0.0, self.wall_deadline - now)
        return out


class Reservation:
    """A cost held against the tree until the real cost is known."""

    __slots__ = ("_account", "_held")

    def __init__(self, account: Account, held: Cost) -> None:
        self._account = account
        self._held: Cost | None = held

    def settle(self, actual: Cost) -> str | None:
        """Replace the hold by the actual spend; returns the meter overdrawn, if any.

        The actual spend is always recorded: the money is gone whether or not it
        fits. Overshoot is bounded by one reservation's error per process.
        """
        if self._held is None:
            raise KernelError("reservation already settled")
        self._account.refund(self._held)
        self._held = None
        return self._account.overdrawn() if self._account.force(actual) else None

    def cancel(self) -> None:
        if self._held is not None:
            self._account.refund(self._held)
            self._held = None


def _over(used: float, want: float, limit: float) -> str:
    return f"{used:g} used + {want:g} requested > {limit:g} allowed"
