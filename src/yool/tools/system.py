"""System operations: the effective policy and the kernel's metrics."""

from __future__ import annotations

from typing import Any

from yool.tools.table import Args, Call, Result, operation


class NoArgs(Args):
    pass


class PolicyView(Result):
    values: dict[str, Any]
    sources: dict[str, str]


@operation("system", read_only=True)
async def policy(call: Call, args: NoArgs) -> PolicyView:
    """The effective runtime policy (YOOL_* variables) and where each value came from."""
    rows = call.session.policy.describe()
    return PolicyView(
        values={row.env: row.value for row in rows},
        sources={row.env: row.source for row in rows},
    )


class Metrics(Result):
    metrics: dict[str, Any]


@operation("system", read_only=True)
async def metrics(call: Call, args: NoArgs) -> Metrics:
    """Kernel counters: processes, messages, exits by reason, spend, lanes, store."""
    data = call.session.kernel.metrics()
    if call.session.cluster is not None:  # this node, its peers, envelope faults (no key)
        data["cluster"] = call.session.cluster.status()
    return Metrics(metrics=data)
