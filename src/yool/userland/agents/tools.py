"""An agent's tools, built only from the capabilities its process holds.

A sub-agent gets a tool exactly when it holds the authority behind it:

- a files device capability: `read_file`, `list_files`, `search_files`, and
  `write_file` only where the capability was granted read-write;
- the key-value device: `kv_get`, `kv_keys`, and `kv_put` if the capability has
  the write right;
- a tools device: the named tools the agent's spec describes (`AgentSpec.tools`);
- the sandbox device: `run_code`, Python (and sh, unless the capability forbids
  subprocesses) in a fresh empty directory with no network, within the capability's
  timeout and callbacks;
- the tuples device with lane capabilities: `tuple_out` (write), `tuple_in` (take),
  `tuple_rd` and `tuple_scan` (read);
- process capabilities with the send right: `send_message` to those pids;
- a spawn capability: `delegate`, which spawns a sub-agent with a task, derived
  (never wider) copies of this agent's capabilities, optionally narrowed to
  sub-paths, and part of its budget, then waits for its `AgentResult`.

Every tool runs through a device or a kernel trap, so it is charged, journaled
and refused exactly as the kernel says. Lessons recall is not a tool yet: the
lessons store comes later, and `Toolbox.add` is the hook it will use.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from yool.drivers.llm.types import ToolSpec
from yool.kernel.accounts import Budget
from yool.kernel.errors import DriverError, KernelError, ProcessExit, QuotaExceeded
from yool.kernel.sys import Sys
from yool.userland.agents.spec import AgentResult, AgentSpec

Run = Callable[[dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Tool:
    spec: ToolSpec
    run: Run
    investigate: bool = False  # a raw look-up (read/search): counts toward the delegate steer


@dataclass(slots=True)
class Toolbox:
    tools: dict[str, Tool] = field(default_factory=dict)

    def add(self, tool: Tool) -> None:
        if tool.spec.name in self.tools:
            raise KernelError(f"tool {tool.spec.name!r} is offered twice")
        self.tools[tool.spec.name] = tool

    def specs(self, without: frozenset[str] = frozenset()) -> tuple[ToolSpec, ...]:
        return tuple(t.spec for n, t in self.tools.items() if n not in without)

    def investigative(self) -> frozenset[str]:
        return frozenset(n for n, t in self.tools.items() if t.investigate)

    async def call(self, name: str, args: dict[str, Any]) -> tuple[Any, bool]:
        """(result, is_error). Tool failures become error results the model can read;
        quota, kill and cancellation propagate: they end the agent, truthfully."""
        tool = self.tools.get(name)
        if tool is None:
            return f"error: no tool {name!r} (offered: {', '.join(self.tools) or 'none'})", True
        try:
            return await tool.run(args), False
        except (ProcessExit, QuotaExceeded):
            raise
        except KernelError as e:
            return f"error: {e}", True
        except (TypeError, ValueError, KeyError) as e:
            return f"error: bad arguments for {name}: {e}", True


def _schema(required: tuple[str, ...] = (), **props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(required)}


_STR = {"type": "string"}


def _arg(args: dict[str, Any], key: str, default: Any = None) -> Any:
    value = args.get(key, default)
    if value is None:
        raise ValueError(f"missing argument {key!r}")
    return value


# -- files -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Root:
    handle: str
    root: str
    mode: str


def _pick(roots: list[_Root], path: str, write: bool = False) -> _Root:
    """The handle whose root holds `path` (relative paths: the first root)."""
    for r in roots:
        if write and r.mode != "rw":
            continue
        if not os.path.isabs(path) or path == r.root or path.startswith(r.root + os.sep):
            return r
    # Let the first suitable handle refuse it, with the driver's own message.
    suitable = [r for r in roots if r.mode == "rw"] if write else roots
    if not suitable:
        raise KernelError(f"{path!r}: no granted root is writable")
    return suitable[0]


async def _files_tools(sys: Sys, box: Toolbox, devices: list[tuple[str, bool]]) -> str | None:
    """Add the file tools; returns the first root (relative paths resolve against it)."""
    roots: list[_Root] = []
    for dev, writable in devices:
        handle = None
        if writable:  # read-write where the driver and every caveat allow it, else read-only
            with contextlib.suppress(DriverError):
                handle = await sys.open(dev, mode="rw")
        if handle is None:
            handle = await sys.open(dev, mode="r")
        info = await sys.read(handle, {"op": "info"})
        roots.append(_Root(handle, info["root"], info["mode"]))
    if not roots:
        return None
    where = ", ".join(
        f"{r.root} ({'read-write' if r.mode == 'rw' else 'read-only'})" for r in roots
    )

    async def read_file(args: dict[str, Any]) -> Any:
        path = str(_arg(args, "path"))
        return await sys.read(_pick(roots, path).handle, {"op": "read", "path": path})

    async def list_files(args: dict[str, Any]) -> Any:
        path = str(args.get("path") or ".")
        return await sys.read(_pick(roots, path).handle, {"op": "list", "path": path})

    async def search_files(args: dict[str, Any]) -> Any:
        path = str(args.get("path") or ".")
        req = {"op": "search", "pattern": str(_arg(args, "pattern")), "path": path}
        return await sys.read(_pick(roots, path).handle, req)

    async def write_file(args: dict[str, Any]) -> Any:
        path = str(_arg(args, "path"))
        req = {"op": "write", "path": path, "content": str(_arg(args, "content"))}
        return await sys.write(_pick(roots, path, write=True).handle, req)

    path = {"type": "string", "description": "relative to the root, or absolute inside it"}
    box.add(
        Tool(
            ToolSpec(
                "read_file", f"Read a text file under {where}.", _schema(("path",), path=path)
            ),
            read_file,
            investigate=True,
        )
    )
    box.add(
        Tool(
            ToolSpec("list_files", f"List a directory under {where}.", _schema(path=path)),
            list_files,
        )
    )
    box.add(
        Tool(
            ToolSpec(
                "search_files",
                f"Grep (regex) files under {where}; returns path:line: text.",
                _schema(("pattern",), pattern=_STR, path=path),
            ),
            search_files,
            investigate=True,
        )
    )
    if any(r.mode == "rw" for r in roots):
        rw_roots = ", ".join(r.root for r in roots if r.mode == "rw")
        box.add(
            Tool(
                ToolSpec(
                    "write_file",
                    f"Write a text file (replacing it) under {rw_roots}.",
                    _schema(("path", "content"), path=path, content=_STR),
                ),
                write_file,
            )
        )
    return roots[0].root


# -- key-value, tools device, peers ----------------------------------------------------------


async def _kv_tools(sys: Sys, box: Toolbox, dev: str, writable: bool) -> None:
    h = await sys.open(dev)

    async def kv_get(args: dict[str, Any]) -> Any:
        return await sys.read(h, {"op": "get", "key": str(_arg(args, "key"))})

    async def kv_keys(args: dict[str, Any]) -> Any:
        return await sys.read(h, {"op": "keys", "prefix": str(args.get("prefix") or "")})

    async def kv_put(args: dict[str, Any]) -> Any:
        return await sys.write(
            h, {"op": "put", "key": str(_arg(args, "key")), "value": args.get("value")}
        )

    box.add(
        Tool(
            ToolSpec(
                "kv_get",
                "Get a value from the shared key-value store.",
                _schema(("key",), key=_STR),
            ),
            kv_get,
        )
    )
    box.add(Tool(ToolSpec("kv_keys", "List keys with a prefix.", _schema(prefix=_STR)), kv_keys))
    if writable:
        box.add(
            Tool(
                ToolSpec(
                    "kv_put",
                    "Store a JSON value under a key.",
                    _schema(("key", "value"), key=_STR, value={}),
                ),
                kv_put,
            )
        )


async def _device_tools(sys: Sys, box: Toolbox, dev: str, specs: tuple[ToolSpec, ...]) -> None:
    h = await sys.open(dev, tools=[t.name for t in specs])
    for spec in specs:

        async def run(args: dict[str, Any], name: str = spec.name) -> Any:
            return await sys.read(h, {"tool": name, "args": args})

        box.add(Tool(spec, run))


def _peer_tools(sys: Sys, box: Toolbox, spec: AgentSpec) -> None:
    """`send_message` to the processes it holds send capabilities for (not its reply channel)."""
    peers: dict[int, str] = {}
    for c in sys.caps("process"):
        if "send" in c.rights and c.target != sys.pid and c.ref != spec.reply_to:
            peers.setdefault(int(c.target), c.ref)
    if not peers:
        return

    async def send_message(args: dict[str, Any]) -> Any:
        to = int(_arg(args, "to"))
        ref = peers.get(to)
        if ref is None:
            raise ValueError(f"no peer {to}; you may message: {sorted(peers)}")
        delivered = await sys.send(ref, {"from": sys.pid, "text": str(_arg(args, "text"))})
        return "delivered" if delivered else f"pid {to} has exited; not delivered"

    who = ", ".join(str(p) for p in sorted(peers))
    box.add(
        Tool(
            ToolSpec(
                "send_message",
                f"Send a text message to a peer process (pids: {who}).",
                _schema(("to", "text"), to={"type": "integer"}, text=_STR),
            ),
            send_message,
        )
    )


# -- tuple space ------------------------------------------------------------------------------


async def _tuple_tools(sys: Sys, box: Toolbox, dev: str) -> None:
    """Lane tools for the rights this agent's lane capabilities hold (the device checks them)."""
    rights = {r for c in sys.caps("lane") for r in c.rights}
    if not rights:
        return
    h = await sys.open(dev)
    lane = {"type": "string"}
    tpl = {"type": "array", "description": "null = any; {type|gte|lt|prefix: x}"}

    async def tuple_out(args: dict[str, Any]) -> Any:
        req = {"op": "out", "lane": str(_arg(args, "lane")), "tuple": _arg(args, "tuple")}
        return await sys.write(h, req)

    def waiting(op: str) -> Run:
        async def run(args: dict[str, Any]) -> Any:
            req = {"op": op, "lane": str(_arg(args, "lane")), "template": _arg(args, "template")}
            req["wait_s"] = float(args.get("wait_s") or 0)
            return await sys.read(h, req)

        return run

    async def tuple_scan(args: dict[str, Any]) -> Any:
        req = {"op": "scan", "lane": str(_arg(args, "lane")), "template": _arg(args, "template")}
        return await sys.read(h, req)

    wait = {"type": "number"}
    if "write" in rights:
        box.add(
            Tool(
                ToolSpec(
                    "tuple_out",
                    "Put a tuple (JSON array) on a lane.",
                    _schema(("lane", "tuple"), lane=lane, tuple={"type": "array"}),
                ),
                tuple_out,
            )
        )
    if "take" in rights:
        box.add(
            Tool(
                ToolSpec(
                    "tuple_in",
                    "Take a tuple matching template from a lane, waiting up to wait_s.",
                    _schema(("lane", "template"), lane=lane, template=tpl, wait_s=wait),
                ),
                waiting("in"),
            )
        )
    if "read" in rights:
        box.add(
            Tool(
                ToolSpec(
                    "tuple_rd",
                    "Read (leave) a tuple matching template, waiting up to wait_s.",
                    _schema(("lane", "template"), lane=lane, template=tpl, wait_s=wait),
                ),
                waiting("rd"),
            )
        )
        box.add(
            Tool(
                ToolSpec(
                    "tuple_scan",
                    "Tuples on a lane matching template.",
                    _schema(("lane", "template"), lane=lane, template=tpl),
                ),
                tuple_scan,
                investigate=True,
            )
        )


# -- code -----------------------------------------------------------------------------------


def _run_result(value: dict[str, Any]) -> dict[str, Any]:
    """What the model reads of a run: the driver's reply (which the journal keeps whole)
    less resource use and layers, and less the fields that say nothing happened."""
    out = {k: value.get(k) for k in ("reason", "exit_code", "stdout", "stderr")}
    for key in ("signal", "truncated", "files", "error"):
        if value.get(key):
            out[key] = value[key]
    return out


async def _code_tool(sys: Sys, box: Toolbox, dev: str) -> None:
    caveats = next((c.caveats for c in sys.caps("device") if c.ref == dev), None) or ()
    sh = not any(c.get("subprocess") is False for c in caveats)
    h = await sys.open(dev)

    async def run_code(args: dict[str, Any]) -> Any:
        request: dict[str, Any] = {"code": str(_arg(args, "code"))}
        for key in ("lang", "files", "timeout_s"):
            if args.get(key) is not None:
                request[key] = args[key]
        return _run_result(await sys.read(h, request))

    props: dict[str, Any] = {
        "code": _STR,
        "files": {"type": "object", "description": "input files: relative path -> text"},
        "timeout_s": {"type": "number"},
    }
    if sh:
        props["lang"] = {"enum": ["python", "sh"]}
    box.add(
        Tool(
            ToolSpec(
                "run_code",
                f"Run {'Python or sh' if sh else 'Python'} in a sandbox: a fresh empty dir (not "
                "the workspace; pass inputs as files), no network. Returns output, exit, files.",
                _schema(("code",), **props),
            ),
            run_code,
        )
    )


# -- delegation -----------------------------------------------------------------------------


def _share(remaining: float | None, share: float, asked: Any) -> float | None:
    if remaining is None:
        return None if asked is None else float(asked)
    cap = remaining * share
    return cap if asked is None else min(cap, float(asked))


def _delegate_tool(sys: Sys, box: Toolbox, spec: AgentSpec, base: str | None) -> None:
    async def delegate(args: dict[str, Any]) -> Any:
        task = str(_arg(args, "task"))
        paths = args.get("paths") or []
        if not isinstance(paths, list):
            raise ValueError("paths must be a list of {path, mode}")
        granted: list[str] = []
        try:
            granted.extend(_child_caps(sys, spec, paths, base))
            left = sys.budget()
            tokens = _share(left.get("tokens"), spec.child_share, args.get("tokens"))
            usd = _share(left.get("usd"), spec.child_share, None)
            calls = _share(left.get("tool_calls"), spec.child_share, None)
            budget = Budget(
                tokens=None if tokens is None else int(tokens),
                usd=usd,
                tool_calls=None if calls is None else int(calls),
            )
            reply = sys.self_ref(("send",))
            granted.append(reply)
            child_spec = replace(spec, reply_to=reply, depth=spec.depth + 1)
            from yool.userland.agents.react import react_agent  # the image; imports us

            child = sys.spawn(
                react_agent, task, child_spec, name="agent", budget=budget, caps=granted
            )
        except BaseException:
            for ref in granted:  # spawn did not take them: nothing half-handed remains
                with contextlib.suppress(KernelError):
                    sys.revoke(ref)
            raise
        reason = await sys.wait(child.ref)
        result: AgentResult | None = None
        try:
            msg = await sys.recv(
                timeout=0, match=lambda b: isinstance(b, AgentResult) and b.pid == child.pid
            )
            result = msg.body
        except TimeoutError:
            pass
        if result is not None and reason.normal:
            return {"answer": result.answer, "steps": result.steps, "reason": result.reason}
        partial = f"; partial answer: {result.answer}" if result and result.answer else ""
        raise KernelError(f"sub-agent {child.pid} ended {reason}{partial}")

    box.add(
        Tool(
            ToolSpec(
                "delegate",
                "Hand a self-contained sub-task to a sub-agent (it gets your tools, narrowed to "
                "`paths` if given, and part of your budget); returns its distilled answer.",
                _schema(
                    ("task",),
                    task=_STR,
                    paths={
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"path": _STR, "mode": {"enum": ["r", "rw"]}},
                            "required": ["path"],
                        },
                    },
                    tokens={"type": "integer", "description": "token budget for the sub-agent"},
                ),
            ),
            delegate,
        )
    )


def _child_caps(sys: Sys, spec: AgentSpec, paths: list[Any], base: str | None) -> list[str]:
    """Derived copies of this agent's device capabilities (and spawn, if depth allows).

    Files capabilities get a root caveat when `paths` narrows them; a path no held
    files capability covers is refused by the driver when the child opens it. The tuples
    device goes with derived copies of every lane capability held (their rights and lane
    caveats kept), so a child's lanes are never wider than its parent's.
    """
    out: list[str] = []
    for c in sys.caps("device"):
        if c.target == spec.files_device and paths:
            for p in paths:
                if not isinstance(p, dict) or not isinstance(p.get("path"), str):
                    raise ValueError("each of paths is {path, mode}")
                out.append(
                    sys.derive(
                        c.ref, caveat={"root": _abs(base, p["path"]), "mode": p.get("mode", "r")}
                    )
                )
        elif c.target in (
            spec.llm_device,
            spec.files_device,
            spec.kv_device,
            spec.tools_device,
            spec.sandbox_device,
            "tuples",
        ):
            out.append(sys.derive(c.ref))  # a caveat only narrows: never wider than ours
    if sys.cap("device", "tuples") is not None:
        out.extend(sys.derive(c.ref) for c in sys.caps("lane"))
    if spec.depth + 1 < spec.max_depth:
        s = sys.cap("spawn")
        if s is not None:
            out.append(sys.derive(s))
    return out


def _abs(base: str | None, path: str) -> str:
    """A relative delegation path is relative to this agent's first files root."""
    if os.path.isabs(path):
        return path
    if base is None:
        raise ValueError(f"give an absolute path to delegate ({path!r})")
    return os.path.join(base, path)


# -- the whole toolbox ------------------------------------------------------------------------


async def build_toolbox(sys: Sys, spec: AgentSpec) -> Toolbox:
    """The tools this process's capabilities allow, nothing more."""
    box = Toolbox()
    files = [
        (c.ref, "write" in c.rights) for c in sys.caps("device") if c.target == spec.files_device
    ]
    base = await _files_tools(sys, box, files)
    kv = sys.cap("device", spec.kv_device)
    if kv is not None:
        await _kv_tools(
            sys, box, kv, writable=sys.cap("device", spec.kv_device, "write") is not None
        )
    tools = sys.cap("device", spec.tools_device)
    if tools is not None and spec.tools:
        await _device_tools(sys, box, tools, spec.tools)
    sandbox = sys.cap("device", spec.sandbox_device)
    if sandbox is not None:
        await _code_tool(sys, box, sandbox)
    tuples = sys.cap("device", "tuples")
    if tuples is not None:
        await _tuple_tools(sys, box, tuples)
    _peer_tools(sys, box, spec)
    if sys.cap("spawn") is not None and sys.cap("device", spec.llm_device) is not None:
        _delegate_tool(sys, box, spec, base)
    return box


def result_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
