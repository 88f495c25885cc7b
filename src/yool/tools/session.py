"""The session: one kernel, its store and devices, and the process every agent hangs under.

A front end (the MCP server, the LSP server, `yool run`) opens one `Session` and hands it to
each operation. The session is itself a kernel process under init: it holds the policy's
budget (`YOOL_BUDGET_*`), so everything its agents spend is drawn from it and a session can
never spend past it; it receives every agent's result and `Down` notice in its mailbox.

What outlives a restart lives in the store on `YOOL_HOME`: process rows, journals, events
(which carry each agent's transcript) and one agent record per spawn under the `agents`
namespace, so `ps`, `resume`, `replay` and `fork` work on agents of an earlier server.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from sys import modules as loaded_modules
from typing import Any

from yool.drivers.files import FilesDriver
from yool.drivers.kv import KVDriver
from yool.drivers.llm.driver import LLMDriver
from yool.drivers.llm.factory import PROVIDERS, configured_providers, make_provider
from yool.drivers.llm.provider import Provider, ProviderError
from yool.drivers.llm.sampling import SamplingProvider
from yool.drivers.sandbox import SandboxDriver
from yool.drivers.tuples import TuplesDriver
from yool.kernel import INIT, INTERRUPTED, Budget, Down, ExitReason, Kernel, Message, Sys
from yool.kernel.accounts import Account
from yool.kernel.events import Event
from yool.kernel.store import ProcessRow, Store
from yool.memory.lessons import Lessons
from yool.personas.registry import PersonaRegistry
from yool.policy import RuntimePolicy
from yool.sandbox import Config as SandboxConfig
from yool.sandbox import Pool as SandboxPool
from yool.tools.host import HostRequests
from yool.tools.table import OpError
from yool.tuplespace import LANE_RIGHTS, TupleSpace
from yool.userland.agents import AgentResult, register_agents
from yool.userland.agents.react import TURN

log = logging.getLogger("yool.session")

AGENTS_NS = "agents"  # store kv namespace of agent records, keyed by zero-padded pid


_SDK_MODULES = {"anthropic": "yool.drivers.llm.anthropic", "openai": "yool.drivers.llm.openai"}


ACTIVE = ("running", "stopped")  # live in this session
UNFINISHED = (*ACTIVE, "elsewhere")  # not ended, here or under another server


def agent_key(pid: int) -> str:
    return f"{pid:012d}"


@dataclass(slots=True)
class AgentRecord:
    """What the session knows of one agent; `to_json` is what survives a restart."""

    pid: int
    task: str
    spawn: dict[str, Any]  # the spawn arguments, to resume or fork it as it was started
    persona: str | None = None
    provider: str = ""
    model: str | None = None
    # running | stopped | exited | interrupted | elsewhere (live under another server)
    status: str = "running"
    reason: dict[str, Any] | None = None
    answer: str | None = None
    result: str | None = None  # AgentResult.reason: completed, stalled, step_limit, ...
    steps: int = 0
    tokens: int = 0
    usd: float = 0.0
    tool_calls: int = 0
    started: float = field(default_factory=time.time)
    ended: float | None = None
    origin: dict[str, Any] | None = None  # {"resumed"|"replayed"|"forked": pid, ...}
    resumed_as: int | None = None  # an interrupted agent continued by `resume` as this pid
    node: str | None = None  # "node/pid" of an agent running on another cluster node
    account: Account | None = None  # live only
    done: asyncio.Future[ExitReason] | None = None  # live only
    ref: str | None = None  # live only: the session's capability over the agent

    @property
    def remote(self) -> tuple[str, int] | None:
        """(node, pid there) of an agent running on another cluster node; None if local."""
        if self.node is None:
            return None
        node, _, pid = self.node.partition("/")
        return node, int(pid)

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "task": self.task,
            "spawn": self.spawn,
            "persona": self.persona,
            "provider": self.provider,
            "model": self.model,
            "status": self.status,
            "reason": self.reason,
            "answer": self.answer,
            "result": self.result,
            "steps": self.steps,
            "tokens": self.tokens,
            "usd": self.usd,
            "tool_calls": self.tool_calls,
            "started": self.started,
            "ended": self.ended,
            "origin": self.origin,
            "resumed_as": self.resumed_as,
            "node": self.node,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AgentRecord:
        known = set(cls.__slots__) - {"account", "done", "ref"}
        return cls(**{k: v for k, v in data.items() if k in known})

    def refresh(self) -> None:
        """Take the live account's figures."""
        if self.account is not None:
            used = self.account.usage()
            self.tokens = int(used["tokens"])
            self.usd = float(used["usd"])
            self.tool_calls = int(used["tool_calls"])


def is_llm_read(result: Any) -> bool:
    """Whether a journal entry's result is an LLM reply (`{"value": LLMResponse, "cost"}`)."""
    if not isinstance(result, dict) or "cost" not in result:
        return False
    value = result.get("value")
    return isinstance(value, dict) and {"text", "tool_calls", "stop", "usage"} <= value.keys()


def llm_steps(entries: Iterable[tuple[int, Any]]) -> list[int]:
    """The ops of the LLM replies among `(op, result)` journal entries, in order."""
    return sorted(op for op, result in entries if is_llm_read(result))


class Session:
    """Open with `async with Session.open(policy) as s:`; see the module docstring."""

    def __init__(
        self,
        policy: RuntimePolicy,
        kernel: Kernel,
        workspace: Path,
        environ: Mapping[str, str],
    ) -> None:
        self.policy = policy
        self.kernel = kernel
        self.workspace = workspace
        self.environ = environ
        self.agents: dict[int, AgentRecord] = {}
        self.personas = PersonaRegistry(workspace, kernel.store)
        self.sampling = SamplingProvider(None, configured=configured_providers(environ))
        self.host = HostRequests()  # sampling requests for clients answered between calls
        self._llm_devices: dict[str, str] = {}
        self._providers: list[Provider] = []  # provider name -> device cap held by session
        self._sys: Sys | None = None
        self._sandbox_handle: str | None = None
        self._inbox: asyncio.Task[None] | None = None
        self.cluster: Any = None  # yool.cluster.agents.ClusterNode when YOOL_CLUSTER is on
        self.started = time.time()

    # -- lifecycle ------------------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        policy: RuntimePolicy,
        *,
        workspace: Path | None = None,
        environ: Mapping[str, str] | None = None,
        in_memory: bool = False,
    ) -> AsyncIterator[Session]:
        """A running session on `policy.home` (or in memory); shut down cleanly on exit."""
        env = os.environ if environ is None else environ
        store: Store | None = None
        if not in_memory:
            policy.home.mkdir(parents=True, exist_ok=True)
            store = await asyncio.to_thread(Store.open, policy.db_path)
        kernel = Kernel.from_policy(policy, store, root_budget=False, tune_gc=False)
        session = cls(policy, kernel, (workspace or Path.cwd()).resolve(), env)
        try:
            await session._start()
            yield session
        finally:
            await session.close()

    async def _start(self) -> None:
        k = self.kernel
        self.lessons = Lessons.open(k.store, self.workspace)  # in memory without a store
        register_agents(k)
        init = k.init
        files = k.register_driver(FilesDriver({self.workspace: "rw"}))
        kv = k.register_driver(KVDriver(k.store))
        # Zygotes start on the first code run, not here: most sessions never run code.
        self.sandbox_pool = SandboxPool(SandboxConfig.from_policy(self.policy))
        if self.policy.cluster == "ray":  # code runs are Ray tasks placed over the cluster
            from yool.cluster.ray import RaySandboxPool

            self.sandbox_pool = RaySandboxPool(self.sandbox_pool.config)
        sandbox = k.register_driver(SandboxDriver(self.sandbox_pool, k, self.lessons))
        # The tuple space: durable lanes come back from the store before anyone can ask.
        self.tuples = TupleSpace(k.store, queue_maxsize=self.policy.queue_maxsize)
        await self.tuples.load()
        tuples = k.register_driver(TuplesDriver(self.tuples, k.caps))
        budget = Budget.from_policy(self.policy)
        self._root_files = init.derive(files)
        self._root_kv = init.derive(kv)
        self._root_sandbox = init.derive(sandbox)
        handed = (
            init.derive(init.cap("spawn") or ""),
            self._root_files,
            self._root_kv,
            self._root_sandbox,
        )
        child = init.spawn(_session_main, self, name="session", budget=budget, caps=handed)
        self._sys = k.procs[child.pid].sys
        self._root_tuples = init.derive(tuples)
        k.caps.transfer(INIT, self._root_tuples, child.pid)
        # Every lane, every right: the session's own; agents get derived (narrower) copies.
        self._root_lanes = k.caps.mint(child.pid, "lane", "*", LANE_RIGHTS)
        k.events.sinks.append(self._observe)
        await self._load_records()
        await self.personas.load()
        if self.policy.cluster != "off":  # imported only then: one machine loads none of it
            from yool.cluster.agents import ClusterNode

            self.cluster = await ClusterNode.attach(self)

    async def close(self) -> None:
        with contextlib.suppress(ValueError):
            self.kernel.events.sinks.remove(self._observe)
        for record in self.agents.values():
            if record.status in ACTIVE:
                record.refresh()
        if self.cluster is not None:
            await self.cluster.close()  # peers see this node go: noconnection
        await self.kernel.shutdown()
        pool: SandboxPool | None = getattr(self, "sandbox_pool", None)
        if pool is not None:
            await pool.close()  # kills every zygote and any run still going
        for provider in self._providers:
            with contextlib.suppress(Exception):  # closing a connection pool must not lose data
                await provider.aclose()
        self._persist_all()
        lessons: Lessons | None = getattr(self, "lessons", None)
        if lessons is not None:
            lessons.close()  # queues the uses counted since the last write
        store = self.kernel.store
        if store is not None:
            await store.aflush()
            await asyncio.to_thread(store.close)

    # -- the session process ----------------------------------------------------------

    @property
    def sys(self) -> Sys:
        assert self._sys is not None, "the session is not started"
        return self._sys

    @property
    def pid(self) -> int:
        return self.sys.pid

    @property
    def files_device(self) -> str:
        return self._root_files

    @property
    def kv_device(self) -> str:
        return self._root_kv

    @property
    def tuples_device(self) -> str:
        return self._root_tuples

    @property
    def lane_cap(self) -> str:
        """The session's capability over every lane (read, take, write)."""
        return self._root_lanes

    @property
    def sandbox_device(self) -> str:
        return self._root_sandbox

    async def sandbox_handle(self) -> str:
        """The session process's open sandbox handle (opened on first use)."""
        if self._sandbox_handle is None:
            self._sandbox_handle = await self.sys.open(self._root_sandbox)
        return self._sandbox_handle

    def llm_device(self, provider: str | None) -> tuple[str, str]:
        """(driver name, device cap held by the session) for `provider` (None: the policy's).

        The driver is made on first use, so a provider without its key fails only when an
        agent asks for it, with the variable to set and the providers that are configured.
        """
        name = (provider or self.policy.provider).strip().lower()
        if name not in PROVIDERS:
            raise OpError(f"provider: unknown provider {provider!r}; use one of {PROVIDERS}")
        cap = self._llm_devices.get(name)
        driver = "llm" if name == self.policy.provider else f"llm.{name}"
        if cap is None:
            made: Provider
            if name == "sampling":
                made = self.sampling
            else:
                try:
                    made = make_provider(name, self.policy, environ=self.environ)
                except ProviderError as e:
                    raise OpError(f"provider: {e}") from None
            self._providers.append(made)
            dev = self.kernel.register_driver(
                LLMDriver(made, self.policy, name=driver, lanes=self.kernel.lanes)
            )
            cap = self.kernel.init.derive(dev)
            self.kernel.caps.transfer(INIT, cap, self.pid)
            self._llm_devices[name] = cap
        return driver, cap

    async def warm(self, provider: str | None) -> None:
        """Import the provider's SDK off the event loop (seconds, once) before it is made."""
        name = (provider or self.policy.provider).strip().lower()
        module = _SDK_MODULES.get(name)
        if module is not None and module not in loaded_modules:
            await asyncio.to_thread(importlib.import_module, module)

    @property
    def can_sample(self) -> bool:
        """The front end set a sampling callback: the current client can sample."""
        return self.sampling.callback is not None

    def configured_providers(self) -> list[str]:
        out = configured_providers(self.environ)
        if self.sampling.callback is not None:
            out.append("sampling")
        return out

    # -- agent records ----------------------------------------------------------------

    def track(self, record: AgentRecord) -> AgentRecord:
        """Start following a freshly spawned agent."""
        p = self.kernel.procs.get(record.pid)
        record.account = p.account if p is not None else None
        record.done = self.kernel.loop.create_future()
        self.agents[record.pid] = record
        self._persist(record)
        return record

    def record(self, pid: int) -> AgentRecord:
        record = self.agents.get(pid)
        if record is None:
            raise OpError(f"pid: no agent {pid} is known to this session (see `ps`)")
        if record.status in ACTIVE:
            record.refresh()
            p = self.kernel.procs.get(pid)
            if p is not None:
                record.status = "stopped" if p.state == "stopped" else "running"
        return record

    def live_ref(self, pid: int) -> str:
        """The session's capability over a live agent, or an OpError saying why there is none."""
        record = self.record(pid)
        if record.status == "elsewhere":
            raise OpError(
                f"pid: agent {pid} runs under another yool server on this YOOL_HOME; "
                "act on it from there"
            )
        if record.ref is None or record.status not in ACTIVE:
            raise OpError(f"pid: agent {pid} is not running (status: {record.status})")
        return record.ref

    def usage(self) -> dict[str, Any]:
        """The session process's spend and what is left of the policy's budget."""
        p = self.kernel.procs.get(self.pid)
        if p is None:
            return {"pid": self.pid, "tokens": 0, "usd": 0.0, "tool_calls": 0, "remaining": {}}
        used = p.account.usage()
        return {
            "pid": self.pid,
            "tokens": int(used["tokens"]),
            "usd": round(float(used["usd"]), 6),
            "tool_calls": int(used["tool_calls"]),
            "remaining": p.account.remaining(self.kernel.loop.time()),
        }

    def persona_prompt(self, name: str) -> str:
        """The system prompt of persona `name` (OpError naming the known ones if none)."""
        return self.personas.get(name).prompt

    def _persist(self, record: AgentRecord) -> None:
        store = self.kernel.store
        if store is not None:
            store.kv_put(AGENTS_NS, agent_key(record.pid), record.to_json())

    def _persist_all(self) -> None:
        for record in self.agents.values():
            self._persist(record)

    async def _load_records(self) -> None:
        store = self.kernel.store
        if store is None:
            return

        def load(_conn: Any) -> list[tuple[Any, int, ProcessRow | None]]:
            out: list[tuple[Any, int, ProcessRow | None]] = []
            for key in store.kv_keys(AGENTS_NS):
                data = store.kv_get(AGENTS_NS, key)
                steps, row = 0, None
                if isinstance(data, dict) and data.get("status") in ACTIVE:
                    row = store.process(data["pid"])
                    # its live step count died with its server: count its journaled steps
                    steps = len(llm_steps((r.op, r.result) for r in store.journal(data["pid"])))
                out.append((data, steps, row))
            return out

        for data, steps, row in await store.read(load):
            if not isinstance(data, dict):
                continue
            record = AgentRecord.from_json(data)
            if record.status in ACTIVE:
                record.steps = max(record.steps, steps)
                if row is not None and row.ended is None:
                    # Still running under another live yool on this YOOL_HOME: leave it be.
                    record.status = "elsewhere"
                else:
                    # Its server went away while it ran (the kernel marked its row).
                    record.status = "interrupted"
                    record.reason = INTERRUPTED.to_json()
                    self._persist(record)
            self.agents[record.pid] = record

    def _observe(self, ev: Event) -> None:
        """Event sink: count steps from the agents' transcript entries."""
        if ev.kind == "log" and ev.data is not None and ev.data.get("message") == TURN:
            record = self.agents.get(ev.pid or 0)
            if record is not None and ev.data.get("role") == "assistant":
                record.steps += 1
                if self.cluster is not None:
                    self.cluster.agent_step(record)

    def _on_message(self, msg: Message) -> None:
        body = msg.body
        if isinstance(body, AgentResult):
            record = self.agents.get(body.pid)
            if record is not None:
                record.answer = body.answer
                record.result = body.reason
                record.steps = max(record.steps, body.steps)
                if self.cluster is not None:
                    self.cluster.agent_result(record, body)
        elif isinstance(body, Down):
            record = self.agents.get(body.pid)
            if record is None:
                return
            record.refresh()
            record.account = None
            record.ref = None
            record.status = "exited"
            record.reason = body.reason.to_json()
            record.ended = time.time()
            self._persist(record)
            if record.done is not None and not record.done.done():
                record.done.set_result(body.reason)
            if self.cluster is not None:
                self.cluster.agent_down(record, body.reason)


async def _session_main(sys: Sys, session: Session) -> None:
    """The session process: collects its agents' results and exit notices, forever."""
    while True:
        msg = await sys.recv()
        try:
            session._on_message(msg)
        except Exception:  # one odd message must never take the session down
            log.exception("session: could not handle a message from pid %s", msg.sender)
