"""The sandbox as a kernel device: code runs opened through a capability, journaled, charged.

A read is one run: `{"code": str, "lang": "python"|"sh", "files": {path: text},
"timeout_s": s, "subprocess": bool, "env": {name: value}}`; the reply is the run's result
(`yool.sandbox.RunResult.to_json()`: stdout, stderr, exit, reason, resource use, the layers
that were active, the files it made). It costs one tool call, reserved before the run, and
the kernel journals it like any device read, so a replayed process gets the recorded run
back without running anything.

The code's callbacks (`yool.kv_get(...)` and friends, see `yool.sandbox.client`) are
answered here, host-side, as the process that asked for the run and only with what that
process holds: `kv_*` need its kv device capability (and `kv_put` the write right), `send`
a send capability over the target pid; `remember`/`recall` act on its own working memory,
`lesson_*` on the session's lessons when the device was given them. A capability may narrow
all this with caveats: `{"callbacks": [...]}` (a subset of `CALLBACKS`),
`{"subprocess": false}` and `{"timeout_s": s}` (a ceiling).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from yool.kernel.accounts import Cost
from yool.kernel.devices import Driver, Handle, Reply
from yool.kernel.errors import DriverError, KernelError
from yool.sandbox.pool import CallbackRefused, Pool
from yool.sandbox.probe import SandboxUnavailable
from yool.sandbox.spec import Lang, Limits, Task

if TYPE_CHECKING:
    from yool.kernel.kernel import Kernel

ONE_RUN = Cost(tool_calls=1)
CALLBACKS = (
    "kv_get",
    "kv_put",
    "kv_keys",
    "send",
    "remember",
    "recall",
    "lesson_remember",
    "lesson_recall",
)
MAX_CODE_CHARS = 100_000
MAX_ENV = 64
_RESERVED_ENV = frozenset({"PATH", "HOME", "TMPDIR", "PWD", "LD_PRELOAD", "LD_LIBRARY_PATH"})


class SandboxDriver(Driver):
    name = "sandbox"
    lane = "sandbox"

    def __init__(self, pool: Pool, kernel: Kernel, lessons: Any = None) -> None:
        self.pool = pool
        self.kernel = kernel
        self.lessons = lessons

    async def open(self, pid: int, params: dict[str, Any]) -> Handle:
        allowed = set(CALLBACKS)
        subprocess_ok = True
        timeout_cap = math.inf
        for caveat in params.get("caveats") or ():
            if "callbacks" in caveat:
                allowed &= set(caveat["callbacks"])
            if caveat.get("subprocess") is False:
                subprocess_ok = False
            if "timeout_s" in caveat:
                timeout_cap = min(timeout_cap, float(caveat["timeout_s"]))
        if self.lessons is None:
            allowed -= {"lesson_remember", "lesson_recall"}
        return _SandboxHandle(self, pid, frozenset(allowed), subprocess_ok, timeout_cap)


class _SandboxHandle(Handle):
    __slots__ = ("_allowed", "_d", "_kv", "_pid", "_subprocess", "_timeout_cap")

    def __init__(
        self,
        driver: SandboxDriver,
        pid: int,
        allowed: frozenset[str],
        subprocess_ok: bool,
        timeout_cap: float,
    ) -> None:
        self._d = driver
        self._pid = pid
        self._allowed = allowed
        self._subprocess = subprocess_ok
        self._timeout_cap = timeout_cap
        self._kv: dict[bool, Handle] = {}

    def estimate(self, request: Any) -> Cost:
        return ONE_RUN

    async def read(self, request: Any) -> Reply:
        task = self._task(request)
        try:
            result = await self._d.pool.run(task, self._callback)
        except SandboxUnavailable as e:
            raise DriverError(f"sandbox unavailable: {e}") from None
        return Reply(result.to_json(), ONE_RUN)

    def _task(self, request: Any) -> Task:
        if not isinstance(request, Mapping):
            raise DriverError('sandbox: a run is {"code": "...", ...}')
        unknown = set(request) - {"code", "lang", "files", "timeout_s", "subprocess", "env"}
        if unknown:
            raise DriverError(f"sandbox: unknown field(s) {', '.join(sorted(unknown))}")
        code = request.get("code")
        if not isinstance(code, str) or not code.strip():
            raise DriverError("sandbox: code must be a non-empty string")
        if len(code) > MAX_CODE_CHARS:
            raise DriverError(f"sandbox: code is {len(code)} chars; at most {MAX_CODE_CHARS}")
        raw_lang = request.get("lang") or "python"
        if raw_lang not in ("python", "sh"):
            raise DriverError(f"sandbox: lang must be python or sh, got {raw_lang!r}")
        lang: Lang = "sh" if raw_lang == "sh" else "python"
        files = request.get("files") or {}
        if not isinstance(files, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in files.items()
        ):
            raise DriverError("sandbox: files must map relative paths to text")
        env = request.get("env") or {}
        if not isinstance(env, Mapping) or len(env) > MAX_ENV:
            raise DriverError(f"sandbox: env must be an object of at most {MAX_ENV} names")
        for k, v in env.items():
            if not isinstance(k, str) or not k.isidentifier() or not isinstance(v, str):
                raise DriverError(f"sandbox: env {k!r} must be a NAME with a text value")
            if k in _RESERVED_ENV:
                raise DriverError(f"sandbox: env {k} is set by the sandbox")
        wants_sub = bool(request.get("subprocess")) or lang == "sh"
        if wants_sub and not self._subprocess:
            raise DriverError("sandbox: this capability does not allow subprocesses (or sh)")
        base = self._d.pool.config.limits
        timeout = request.get("timeout_s")
        wall = base.wall_s if timeout is None else float(timeout)
        if not 0 < wall <= 600:
            raise DriverError(f"sandbox: timeout_s must be in (0, 600], got {timeout!r}")
        wall = min(wall, self._timeout_cap)
        limits = Limits(
            wall_s=wall,
            cpu_s=max(1, math.ceil(wall)),
            memory_bytes=base.memory_bytes,
            output_bytes=base.output_bytes,
            disk_bytes=base.disk_bytes,
            procs=base.procs,
            open_files=base.open_files,
        )
        return Task(
            code=code,
            lang=lang,
            files=dict(files),
            env=dict(env),
            subprocess=wants_sub,
            limits=limits,
        )

    # -- callbacks, as the calling process ------------------------------------------------

    async def _callback(self, op: str, args: dict[str, Any]) -> Any:
        if op not in CALLBACKS:
            raise CallbackRefused(f"no callback {op!r} (there are: {', '.join(CALLBACKS)})")
        if op not in self._allowed:
            offered = ", ".join(sorted(self._allowed)) or "none"
            raise CallbackRefused(f"{op}: not allowed by this sandbox capability ({offered})")
        p = self._d.kernel.procs.get(self._pid)
        if p is None or p.sys is None or p.reason is not None:
            raise CallbackRefused(f"{op}: the calling process {self._pid} has ended")
        sys = p.sys
        try:
            if op.startswith("kv_"):
                return await self._kv_call(op, args)
            if op == "send":
                to, text = int(args["to"]), str(args["text"])
                refs = [
                    c.ref
                    for c in sys.caps("process")
                    if c.target == to and "send" in c.rights and c.target != self._pid
                ]
                if not refs:
                    raise CallbackRefused(f"send: pid {self._pid} may not message pid {to}")
                return await sys.send(refs[0], {"from": self._pid, "text": text})
            if op == "remember":
                return await sys.remember(str(args["text"]))
            if op == "recall":
                found = await sys.recall(str(args["query"]), int(args.get("k", 4)))
                return [{"id": s.id, "body": s.body} for s in found]
            return await self._lessons(op, args)
        except KeyError as e:
            raise CallbackRefused(f"{op}: missing argument {e}") from None
        except KernelError as e:
            raise CallbackRefused(f"{op}: {e}") from None

    async def _kv_call(self, op: str, args: dict[str, Any]) -> Any:
        write = op == "kv_put"
        sys = self._d.kernel.procs[self._pid].sys
        assert sys is not None
        right = "write" if write else "read"
        held = [c for c in sys.caps("device") if c.target == "kv" and right in c.rights]
        if not held:
            raise CallbackRefused(f"{op}: pid {self._pid} holds no kv capability with {right}")
        handle = self._kv.get(write)
        if handle is None:
            driver = self._d.kernel.drivers["kv"]
            handle = await driver.open(self._pid, {"caveats": _caveats(held[0].caveats)})
            self._kv[write] = handle
        if op == "kv_get":
            return (await handle.read({"op": "get", "key": str(args["key"])})).value
        if op == "kv_keys":
            return (await handle.read({"op": "keys", "prefix": str(args.get("prefix", ""))})).value
        req = {"op": "put", "key": str(args["key"]), "value": args.get("value")}
        return (await handle.write(req)).value

    async def _lessons(self, op: str, args: dict[str, Any]) -> Any:
        lessons = self._d.lessons
        if op == "lesson_remember":
            lesson, new = await lessons.remember(str(args["text"]), tags=args.get("tags") or ())
            return {"lesson": lesson.to_json(), "new": new}
        found = await lessons.recall(str(args["query"]), k=int(args.get("k", 5)))
        return [lesson.to_json() for lesson in found]


def _caveats(caveats: Iterable[Any] | None) -> list[Any]:
    return list(caveats or ())
