"""Agents on other nodes: what `spawn(node=...)` does, and what a node does when asked.

Asking node (the MCP client's): `spawn_agent` starts a local stand-in process (a *stub*)
under the session, then asks the peer's gateway to start image `agent` with the spawn
arguments. The stub has a real local pid, so every MCP tool works on a remote agent as on a
local one: `wait` waits for the stub, `send` gives it a message it forwards over its remote
capability, `signal` kill kills the stub (which forwards the kill), stop/cont/term are
forwarded, `inspect` and `trace` ask the serving node (which answers only about the agents
it runs or ran for the asker, the last `REMEMBERED` of them). The stub relays the remote
`AgentResult` to the session and ends with the remote agent's own exit reason, or
`noconnection` when its node becomes unreachable. `ps` shows the remote agent's `node/pid`.

Budgets hold across nodes: the remote agent's token, USD and tool-call budgets, and its
deadline, are capped at what the stub may still spend here (the session's budget left, at
spawn), and what it spends is charged to the stub's account, so up the asking session's
tree, as a local agent's would be. The serving node reports the agent's running totals after
each of its steps and with its result (totals, so a lost or repeated report charges nothing
twice); a report that overdraws a budget here ends the stub with `quota(<meter>)`, which
kills the agent. So agents running at once on other nodes pass the asker's budget by at most
a step each, as local ones do by at most a call each.

Serving node: `agent` is exported by a spawner that validates the arguments as `SpawnArgs`
and starts the agent with this node's own `start_agent`: the devices, paths and budget it
gets are this node's grants (paths inside this node's workspace, under this node's session
budget too). Its result and then its exit go back to the stub, in that order (the exit is
reported by the session's `Down`, after the result it forwarded).
"""

from __future__ import annotations

import contextlib
import itertools
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from yool.cluster import load_key, make_transport
from yool.cluster.gateway import Gateway
from yool.kernel import Down, ExitReason, Kernel, KernelError, Sys, quota
from yool.kernel.accounts import FREE, Cost
from yool.tools.introspection import INSPECT, TRACE
from yool.userland.agents import AgentResult

if TYPE_CHECKING:
    from yool.tools.agents import SpawnArgs
    from yool.tools.session import AgentRecord, Session

AGENT_IMAGE = "agent"
ANY_NODE = "any"
REMEMBERED = 4096  # agents run for peers whose inspect and trace are still answered


@dataclass(slots=True)
class RemoteLink:
    """What a stub knows of the agent it stands in for."""

    node: str
    pid: int | None = None
    ref: str | None = None  # the stub's remote capability over it
    ended: bool = False
    charged: Cost = FREE  # of its reported spend, what the stub's account has been charged

    def charge(self, kernel: Kernel, stub: int, totals: Any) -> str | None:
        """Charge the stub what the agent spent since the last report (`totals` are its
        running totals); returns the meter that overdrew, if any. Nonsense charges nothing."""
        try:
            t = Cost(int(totals["tokens"]), float(totals["usd"]), int(totals["tool_calls"]))
        except (KeyError, TypeError, ValueError):
            return None
        was = self.charged
        self.charged = _high_water(was, t)
        delta = Cost(
            self.charged.tokens - was.tokens,
            self.charged.usd - was.usd,
            self.charged.tool_calls - was.tool_calls,
        )
        if not delta:
            return None
        try:
            return kernel.spent_elsewhere(stub, delta)
        except KernelError:
            return None


@dataclass(slots=True)
class Served:
    """An agent this node runs for a peer: who asked, and what it has been told was spent."""

    node: str
    stub: int  # the asker's stand-in, where reports go
    reported: Cost = FREE

    def totals(self, record: AgentRecord) -> dict[str, Any] | None:
        """The agent's running totals if they grew since the last report (never shrinking:
        a call's hold that is refunded later is not taken back)."""
        record.refresh()
        was = self.reported
        now = _high_water(was, Cost(record.tokens, record.usd, record.tool_calls))
        if now == was:
            return None
        self.reported = now
        return now.to_json()


def _high_water(was: Cost, now: Cost) -> Cost:
    """Each meter's larger figure: running totals only ever grow."""
    return Cost(
        max(was.tokens, now.tokens), max(was.usd, now.usd), max(was.tool_calls, now.tool_calls)
    )


class ClusterNode:
    """The session's side of the cluster: `session.cluster` while the session runs."""

    def __init__(self, session: Session, gateway: Gateway) -> None:
        self.session = session
        self.gateway = gateway
        self._next = itertools.count()
        self._served: dict[int, Served] = {}  # local agent pid -> who it runs for
        # local agent pid -> the node it ran for, live or ended (the most recent REMEMBERED)
        self._ran_for: OrderedDict[int, str] = OrderedDict()
        gateway.export_spawner(AGENT_IMAGE, self._serve, reports_exit=True)
        gateway.answer_queries(INSPECT, self._inspect_for)
        gateway.answer_queries(TRACE, self._trace_for)

    @classmethod
    async def attach(cls, session: Session) -> ClusterNode:
        policy = session.policy
        transport = make_transport(policy)
        gateway = Gateway(
            session.kernel, transport, load_key(policy), window_s=policy.cluster_window_s
        )
        node = cls(session, gateway)
        await gateway.start()
        return node

    async def close(self) -> None:
        await self.gateway.close()

    @property
    def node(self) -> str:
        return self.gateway.node

    def pick(self, wanted: str) -> str:
        """The node to run on: `wanted`, or for "any" the next of this node and the peers
        that are up, in turn (so a fan-out spreads over the cluster)."""
        if wanted == ANY_NODE:
            up = sorted({self.node, *(p.node for p in self.gateway.transport.peers() if p.up)})
            return up[next(self._next) % len(up)]
        known = {p.node for p in self.gateway.transport.peers()}
        if wanted not in known:
            raise KernelError(
                f"no peer node {wanted!r} (known: {', '.join(sorted(known)) or 'none'}; "
                f"this node is {self.node!r}); use one of them or 'any'"
            )
        return wanted

    # -- asking a peer ------------------------------------------------------------------

    async def spawn_agent(self, args: SpawnArgs) -> AgentRecord:
        """Start `args` as an agent on `args.node`; track it here under a stub's pid."""
        from yool.tools.session import AgentRecord

        session = self.session
        assert args.node is not None
        node = self.pick(args.node)
        link = RemoteLink(node)
        reply_to = session.sys.self_ref(("send",))
        stub = session.sys.spawn(
            _stub,
            self,
            link,
            reply_to,
            name=f"agent@{node}:{_title(args.task)}",
            caps=(reply_to,),
            monitor=True,
        )
        remote_args = self._within_budget(stub.pid, args)
        try:
            pid, info = await self.gateway.spawn_with_info(
                node, AGENT_IMAGE, [remote_args], reply=stub.pid
            )
        except BaseException:
            link.ended = True
            session.sys.kill(stub.ref)
            raise
        link.pid = pid
        link.ref = self.gateway.proxy(stub.pid, node, pid)
        record = session.track(
            AgentRecord(
                pid=stub.pid,
                task=args.task,
                spawn=args.model_dump(),
                persona=args.persona,
                provider=str(info.get("provider") or args.provider or ""),
                model=info.get("model") if isinstance(info.get("model"), str) else args.model,
                node=f"{node}/{pid}",
                ref=stub.ref,
            )
        )
        return record

    def _within_budget(self, stub: int, args: SpawnArgs) -> dict[str, Any]:
        """The spawn arguments for the peer, their budget and deadline capped at what the
        stub (so the session) has left here."""
        kernel = self.session.kernel
        left = kernel.proc(stub).account.remaining(kernel.loop.time())
        out = args.model_dump(exclude={"node"}, exclude_defaults=True)
        for meter in ("tokens", "usd", "tool_calls"):
            limit = left[meter]
            if limit is not None:
                key = f"budget_{meter}"
                asked = out.get(key)
                capped = limit if asked is None else min(asked, limit)
                out[key] = int(capped) if meter != "usd" else capped
        wall = left["wall_s"]
        if wall is not None and wall > 0:
            asked = out.get("deadline_s")
            out["deadline_s"] = wall if asked is None else min(asked, wall)
        return out

    def signal(self, record: AgentRecord, sig: str) -> None:
        """stop, cont, term: forwarded to the remote agent (kill ends the stub locally)."""
        assert record.remote is not None
        self.gateway.signal(record.pid, record.remote, sig)

    async def ask_about(self, record: AgentRecord, query: str, args: dict[str, Any]) -> Any:
        """Ask the node that runs (or ran) the agent `record` stands in for about it."""
        assert record.remote is not None
        node, pid = record.remote
        answer = await self.gateway.ask(node, query, {**args, "pid": pid}, within_s=10.0)
        if not isinstance(answer, dict):
            raise KernelError(f"{query} on node {node!r}: a malformed answer")
        return answer

    def _stub_ended(self, link: RemoteLink) -> None:
        """The stub died first (killed here): kill what it stood in for."""
        if not link.ended and link.pid is not None:
            link.ended = True
            with contextlib.suppress(KernelError):
                self.gateway.signal(0, (link.node, link.pid), "kill")

    # -- serving a peer -----------------------------------------------------------------

    async def _serve(
        self, node: str, args: list[Any], reply_pid: int
    ) -> tuple[int, dict[str, Any]]:
        from yool.tools.agents import SpawnArgs, start_agent
        from yool.tools.table import OpError

        session = self.session
        try:
            spawn_args = SpawnArgs.model_validate(args[0] if len(args) == 1 else None)
        except ValidationError as e:
            raise KernelError(f"spawn arguments: {e.errors()[0].get('msg', e)}") from None
        if spawn_args.node is not None:
            raise KernelError("node: a remote agent runs on the node that was asked")
        await session.warm(spawn_args.provider)
        try:
            record = start_agent(session, spawn_args, origin={"node": node, "stub": reply_pid})
        except OpError as e:
            raise KernelError(str(e)) from None
        self._served[record.pid] = Served(node, reply_pid)
        self._ran_for[record.pid] = node
        while len(self._ran_for) > REMEMBERED:
            self._ran_for.popitem(last=False)
        return record.pid, {"provider": record.provider, "model": record.model}

    def _ran_for_asker(self, node: str, args: dict[str, Any]) -> int:
        """The pid asked about, if it is an agent this node runs (or ran) for `node`: a peer
        learns of nothing else here."""
        pid = args.get("pid")
        if type(pid) is not int or self._ran_for.get(pid) != node:
            raise KernelError(f"pid {pid!r} is not an agent this node runs for {node!r}")
        return pid

    async def _inspect_for(self, node: str, args: dict[str, Any]) -> Any:
        from yool.tools.introspection import inspect_of

        seen = await inspect_of(self.session, self._ran_for_asker(node, args))
        return seen.model_dump(mode="json", exclude_none=True)

    async def _trace_for(self, node: str, args: dict[str, Any]) -> Any:
        from yool.tools.introspection import MAX_EVENTS, recent_events

        pid = self._ran_for_asker(node, args)
        n, kinds = args.get("n", 50), args.get("kinds")
        if type(n) is not int or not 1 <= n <= MAX_EVENTS:
            raise KernelError(f"n must be an integer from 1 to {MAX_EVENTS}")
        if kinds is not None and not (
            isinstance(kinds, list) and all(isinstance(k, str) for k in kinds)
        ):
            raise KernelError("kinds must be a list of event kinds")
        wanted = frozenset(kinds) if kinds else None
        events, source = await recent_events(self.session, pid, n, wanted)
        return {"events": events, "source": source}

    def agent_step(self, record: AgentRecord) -> None:
        """Session hook after each step of an agent: one served for a peer reports what it
        has spent so far to its stub there."""
        served = self._served.get(record.pid)
        if served is not None:
            totals = served.totals(record)
            if totals is not None:
                self._tell(served, {"spent": totals})

    def agent_result(self, record: AgentRecord, result: AgentResult) -> None:
        """Session hook for every `AgentResult`: one served for a peer goes back to it,
        with what it spent in all (a remote agent's own, relayed by its stub, needs
        nothing: the stub charged its account before relaying it)."""
        served = self._served.get(record.pid)
        if served is None:
            return
        served.totals(record)
        answer = {"answer": result.answer, "steps": result.steps, "reason": result.reason}
        self._tell(served, {"result": answer, "spent": served.reported.to_json()})

    def _tell(self, served: Served, body: dict[str, Any]) -> None:
        with contextlib.suppress(KernelError):  # unreachable: the stub gets noconnection
            self.gateway.send(0, (served.node, served.stub), body)

    def agent_down(self, record: AgentRecord, reason: ExitReason) -> None:
        """Session hook: an agent served for a peer exited: its exit goes back after."""
        if self._served.pop(record.pid, None) is not None:
            self.gateway.exited(record.pid, reason)

    def status(self) -> dict[str, Any]:
        return {**self.gateway.status(), "serving": len(self._served)}


async def _stub(sys: Sys, node: ClusterNode, link: RemoteLink, reply_to: str) -> None:
    """Stands in for an agent on `link.node`: relays its result, forwards local messages,
    and ends with its exit reason (or `noconnection`)."""
    sys.on_cleanup(lambda: node._stub_ended(link))
    while True:
        msg = await sys.recv()
        body = msg.body
        if isinstance(body, Down) and body.node == link.node:
            link.ended = True
            sys.exit(body.reason)  # its own reason, noconnection, or noproc if b forgot it
        if msg.sender == 0 and isinstance(body, dict) and ("spent" in body or "result" in body):
            over = link.charge(node.session.kernel, sys.pid, body.get("spent"))
            r = body.get("result")
            if isinstance(r, dict):
                spent = link.charged
                result = AgentResult(
                    answer=str(r.get("answer", "")),
                    steps=int(r.get("steps", 0)),
                    tokens=spent.tokens,
                    usd=spent.usd,
                    reason=str(r.get("reason", "")),
                    pid=sys.pid,
                )
                await sys.send(reply_to, result)
            elif over is not None:  # the budget here is spent: the agent there is stopped
                sys.exit(quota(over))
        elif msg.sender != 0 and link.ref is not None and not link.ended:
            with contextlib.suppress(KernelError):  # a lost message, as to a dead process
                sys.send_nowait(link.ref, body if isinstance(body, str) else str(body))


def _title(task: str) -> str:
    line = " ".join(task.split())
    return line[:32] + ("…" if len(line) > 32 else "")
