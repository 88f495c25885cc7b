"""The host side: a pool of warm zygotes, and the supervisor of every run.

`Pool.run(task, callbacks)` is the whole sandbox as the rest of yool sees it. It makes a
fresh workdir, hands a zygote the task's descriptors, and then supervises from the host,
which is the only place a sleeper, a SIGTERM-ignoring process or an output flood can be
stopped: a wall clock that escalates SIGTERM -> SIGKILL over the task's process group,
its cgroup and the zygote's orphans; a byte cap on stdout+stderr; a cap on the workdir's
size. It serves the code's callbacks, reads back the files it made (never following a
symlink) and removes the workdir. Nothing here blocks the event loop: pipes and sockets are
non-blocking, and disk work and process starts run in worker threads.

The pool probes the machine when it starts and refuses to start (fails closed) below the
policy's level; zygotes are started lazily, off the loop, and replaced if one dies.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from yool.sandbox import bwrap, mounts, workdir
from yool.sandbox.cgroups import TaskGroup
from yool.sandbox.probe import BWRAP, CGROUPS, LANDLOCK, SECCOMP, Probe, SandboxUnavailable, probe
from yool.sandbox.spec import (
    DISK_LIMIT,
    EXITED,
    OUTPUT_LIMIT,
    SANDBOX_ERROR,
    SIGNALLED,
    TIMEOUT,
    ChildSpec,
    Limits,
    RunResult,
    Task,
)

log = logging.getLogger("yool.sandbox")

Callbacks = Callable[[str, dict[str, Any]], Awaitable[Any]]
"""`await callbacks(op, args)` answers one callback; raise `CallbackRefused` to refuse it."""

TERM_GRACE_S = 0.5
READY_TIMEOUT_S = 30.0
DRAIN_S = 1.0
DISK_POLL_S = 0.05
RUNS_PER_ZYGOTE = 4
MAX_CODE = 200_000  # bytes of code on the wire
MAX_CALLBACK_LINE = 1 << 20
MAX_CALLBACKS = 10_000
BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
DEV_READ = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/etc/ld.so.cache")


class CallbackRefused(Exception):
    """A callback the allowlist or the caller's capabilities do not allow."""


@dataclass(frozen=True, slots=True)
class Config:
    """The sandbox's knobs (from the policy: `Config.from_policy`)."""

    level: int = CGROUPS
    zygotes: int = 2
    limits: Limits = field(default_factory=Limits)
    uid: int = 65534
    python: str = sys.executable
    ro_paths: tuple[str, ...] = ()  # more read-only (and executable) paths for every task

    @classmethod
    def from_policy(cls, policy: Any) -> Config:
        limits = Limits(
            wall_s=float(policy.sandbox_timeout_s),
            cpu_s=max(1, int(policy.sandbox_timeout_s + 0.999)),
            memory_bytes=int(policy.sandbox_memory_mb) << 20,
            output_bytes=int(policy.sandbox_output_kb) << 10,
            disk_bytes=int(policy.sandbox_disk_mb) << 20,
            procs=int(policy.sandbox_procs),
        )
        return cls(
            level=int(policy.sandbox_level),
            zygotes=int(policy.sandbox_zygotes),
            limits=limits,
            uid=int(policy.sandbox_uid),
        )


def runtime_paths() -> list[str]:
    """What the code may read (and execute): the system libraries and this Python runtime."""
    import yool
    from yool.sandbox.seccomp import load_module

    paths = {"/usr", "/lib", "/lib64", "/bin", "/etc/ld.so.cache"}
    paths |= {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        with contextlib.suppress(KeyError):
            paths.add(sysconfig.get_paths()[key])
    paths.add(os.path.dirname(os.path.dirname(os.path.abspath(yool.__file__))))
    with contextlib.suppress(ImportError, OSError, RuntimeError):  # no seccomp: not needed
        paths.add(os.path.dirname(os.path.abspath(load_module().__file__)))
    paths.add(os.path.dirname(os.path.realpath(sys.executable)))
    return sorted(p for p in paths if os.path.exists(p))


# -- one run ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Run:
    tid: int
    loop: asyncio.AbstractEventLoop
    started: asyncio.Future[int] = field(init=False)
    exited: asyncio.Future[dict[str, Any]] = field(init=False)
    stop: asyncio.Future[str] = field(init=False)  # a limit was hit: its reason
    host_pid: int | None = None
    pidfd: int | None = None
    group: TaskGroup | None = None
    layers: list[str] = field(default_factory=list)
    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)
    truncated: bool = False

    def __post_init__(self) -> None:
        self.started = self.loop.create_future()
        self.exited = self.loop.create_future()
        self.stop = self.loop.create_future()

    def limit(self, reason: str) -> None:
        if not self.stop.done():
            self.stop.set_result(reason)

    def signal(self, sig: int) -> None:
        """Signal the task's leader and its process group, while its pid is surely ours."""
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
            except (ProcessLookupError, OSError):
                return  # gone (and reaped): its number may belong to someone else now
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.host_pid or 0, sig)
        if sig == signal.SIGKILL and self.group is not None:
            self.group.kill()

    def close(self) -> None:
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = None


# -- a zygote ------------------------------------------------------------------------------


class _Zygote:
    def __init__(self, proc: subprocess.Popen[bytes], ctl: socket.socket) -> None:
        self.proc = proc
        self.ctl = ctl
        self.runs: dict[int, _Run] = {}
        self.alive = True
        self.reader: asyncio.Task[None] | None = None
        self.info: dict[str, Any] = {}

    async def read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await loop.sock_recv(self.ctl, 1 << 16)
                if not data:
                    break
                msg = json.loads(data)
                run = self.runs.get(int(msg.get("id", -1)))
                if run is None:
                    continue
                if msg["op"] == "started" and not run.started.done():
                    run.started.set_result(int(msg["pid"]))
                elif msg["op"] == "exited" and not run.exited.done():
                    run.exited.set_result(msg)
        except (OSError, ValueError) as e:
            log.warning("sandbox: zygote %s: %s", self.proc.pid, e)
        finally:
            self.alive = False
            for run in self.runs.values():
                if not run.exited.done():
                    run.exited.set_exception(RuntimeError("the zygote died"))

    async def send(self, msg: dict[str, Any] | bytes, fds: list[int]) -> None:
        data = msg if isinstance(msg, bytes) else json.dumps(msg).encode()
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        loop = asyncio.get_running_loop()
        while True:
            try:
                self.ctl.sendmsg([data], anc)
                return
            except BlockingIOError:
                await _ready(loop, self.ctl, write=True)

    async def kill(self, tid: int, sig: int) -> None:
        if self.alive:
            with contextlib.suppress(OSError):
                await self.send({"op": "kill", "id": tid, "sig": sig}, [])

    def terminate(self) -> None:
        self.alive = False
        with contextlib.suppress(OSError):
            self.ctl.close()
        with contextlib.suppress(OSError):
            self.proc.kill()


# -- the pool --------------------------------------------------------------------------------


class Pool:
    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.probe: Probe | None = None
        self._zygotes: list[_Zygote] = []
        self._ids = itertools.count(1)
        self._slots = asyncio.Semaphore(self.config.zygotes * RUNS_PER_ZYGOTE)
        self._start_lock = asyncio.Lock()
        self._root: str | None = None
        self._ro: list[str] = []
        self._nproc_base = 0
        self._setup: dict[str, Any] | None = None  # the zygotes' start-up (see zygote.py)
        self._closed = False
        self.runs = 0

    # -- start-up ------------------------------------------------------------------------

    async def start(self) -> Probe:
        """Probe, check the level (fail closed), and have every zygote warm. Idempotent."""
        if self._closed:
            raise SandboxUnavailable("the sandbox pool is closed")
        async with self._start_lock:
            if self.probe is None:
                found = await asyncio.to_thread(probe, self.config.uid)
                found.check(self.config.level)
                self._root = await asyncio.to_thread(self._make_root, found)
                self._ro = [*await asyncio.to_thread(runtime_paths), *self.config.ro_paths]
                self._nproc_base = await asyncio.to_thread(_threads_of, self._run_uid(found))
                self._setup = await asyncio.to_thread(self._zygote_setup, found)
                self.probe = found
            self._zygotes = [z for z in self._zygotes if z.alive]
            missing = self.config.zygotes - len(self._zygotes)
            if missing > 0:
                made = await asyncio.gather(*(self._spawn() for _ in range(missing)))
                self._zygotes.extend(made)
            return self.probe

    def _zygote_setup(self, p: Probe) -> dict[str, Any] | None:
        """Root without bubblewrap, from a runtime the dropped uid cannot reach: expose it."""
        if p.bwrap is not None or p.drop_to is None or self._root is None:
            return None
        uid, gid = p.drop_to
        needed = [*self._ro, self._root]
        return {"expose": needed, "uid": uid, "gid": gid} if mounts.plan(needed, uid, gid) else None

    def _run_uid(self, p: Probe) -> int:
        return p.drop_to[0] if p.drop_to else os.getuid()

    def _make_root(self, p: Probe) -> str:
        _sweep_stale_roots()
        root = tempfile.mkdtemp(prefix=f"yool-sandbox-{os.getpid()}-")
        os.chmod(root, 0o711)  # the dropped uid may pass through, not list
        return root

    async def _spawn(self) -> _Zygote:
        p = self.probe
        assert p is not None and self._root is not None
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (parent, child):
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        argv = [self.config.python, "-I", "-m", "yool.sandbox.zygote", str(child.fileno())]
        env = dict(BASE_ENV, PYTHONDONTWRITEBYTECODE="1")
        if self._setup is not None:
            argv.append(json.dumps(self._setup))
        if p.bwrap is not None:
            argv = bwrap.command(
                p.bwrap,
                argv,
                read_only=self._ro,
                writable=[self._root],
                privileged=p.root,
                env=env,
            )
        try:
            proc = await asyncio.to_thread(
                subprocess.Popen,
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=[child.fileno()],
                env=env,
                start_new_session=True,
            )
        finally:
            child.close()
        parent.setblocking(False)
        z = _Zygote(proc, parent)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                data = await loop.sock_recv(parent, 1 << 16)
            if not data:
                raise SandboxUnavailable(f"a zygote did not start: {await _stderr(proc)}")
            z.info = json.loads(data)
        except BaseException:
            z.terminate()
            await asyncio.to_thread(_reap, proc)
            raise
        z.reader = asyncio.create_task(z.read_loop(), name="yool-sandbox-zygote")
        return z

    def _pick(self) -> _Zygote:
        live = [z for z in self._zygotes if z.alive]
        if not live:
            raise SandboxUnavailable("no sandbox zygote is running")
        return min(live, key=lambda z: len(z.runs))

    async def close(self) -> None:
        """Kill every zygote (and with them every running task) and remove the work root."""
        self._closed = True
        zygotes, self._zygotes = self._zygotes, []
        for z in zygotes:
            z.terminate()
            if z.reader is not None:
                z.reader.cancel()
        for z in zygotes:
            await asyncio.to_thread(_reap, z.proc)
        if self._root is not None:
            await asyncio.to_thread(workdir.remove, self._root)
            self._root = None

    # -- a run ---------------------------------------------------------------------------

    async def run(self, task: Task, callbacks: Callbacks | None = None) -> RunResult:
        """Run `task` under every available layer; see the module docstring."""
        p = await self.start()
        async with self._slots:
            p = await self.start()  # a zygote may have died while we waited
            tid = next(self._ids)
            assert self._root is not None
            path = os.path.join(self._root, f"t{tid}")
            t0 = time.perf_counter()
            run = _Run(tid, asyncio.get_running_loop())
            try:
                await asyncio.to_thread(self._prepare, p, run, path, task)
            except (workdir.WorkdirError, OSError) as e:
                return RunResult(SANDBOX_ERROR, error=str(e))
            files: dict[str, str] = {}
            try:
                result = await self._run(p, run, path, task, callbacks)
            finally:
                files = await asyncio.to_thread(_finish, run, path, task.files)
            result.files = files
            result.wall_ms = round((time.perf_counter() - t0) * 1000, 3)
            self.runs += 1
            return result

    def _prepare(self, p: Probe, run: _Run, path: str, task: Task) -> None:
        """The workdir and the task's cgroup (in a worker thread)."""
        workdir.make(path, task.files, p.drop_to)
        if p.cgroup is not None and p.available(CGROUPS):
            try:
                name = f"yool-{os.getpid()}-{run.tid}"
                run.group = TaskGroup(p.cgroup, name, task.limits.procs, task.limits.memory_bytes)
            except OSError as e:
                workdir.remove(path)
                raise OSError(e.errno, f"cgroup: {e}") from None

    def _spec(self, p: Probe, tid: int, path: str, task: Task) -> ChildSpec:
        allow = task.subprocess or task.lang == "sh"
        env = dict(BASE_ENV, HOME=path, TMPDIR=path, PWD=path)
        env.update(task.env)
        slots = self.config.zygotes * RUNS_PER_ZYGOTE
        return ChildSpec(
            id=tid,
            code=task.code,
            lang=task.lang,
            workdir=path,
            env=env,
            limits={
                "cpu_s": task.limits.cpu_s,
                "memory_bytes": task.limits.memory_bytes,
                "disk_bytes": task.limits.disk_bytes,
                "open_files": task.limits.open_files,
            },
            allow_fork=allow,
            allow_exec=allow,
            uid=p.drop_to[0] if p.drop_to else None,
            gid=p.drop_to[1] if p.drop_to else None,
            nproc=self._nproc_base + task.limits.procs * slots,
            landlock_abi=p.landlock_abi if p.available(LANDLOCK) else 0,
            seccomp=p.available(SECCOMP),
            read_only=[*self._ro, *DEV_READ],
            read_write_files=["/dev/null"],
        )

    async def _run(
        self, p: Probe, run: _Run, path: str, task: Task, callbacks: Callbacks | None
    ) -> RunResult:
        tid = run.tid
        spec = self._spec(p, tid, path, task).to_json()
        message = json.dumps({"op": "run", "spec": spec}).encode()  # encoded once
        if len(message) > MAX_CODE:
            return RunResult(SANDBOX_ERROR, error=f"code: longer than {MAX_CODE} bytes")
        z = self._pick()
        out_r, out_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        err_r, err_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        host_cb, child_cb = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        host_cb.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        host_cb.setblocking(False)
        z.runs[tid] = run
        helpers: list[asyncio.Task[Any]] = []
        try:
            try:
                await z.send(message, [out_w, err_w, child_cb.fileno()])
            finally:
                os.close(out_w)
                os.close(err_w)
                child_cb.close()
            cap = task.limits.output_bytes
            helpers = [
                asyncio.create_task(_drain(out_r, run, run.out, cap)),
                asyncio.create_task(_drain(err_r, run, run.err, cap)),
                asyncio.create_task(self._serve(host_cb, run, callbacks)),
                asyncio.create_task(_watch_disk(path, run, task.limits.disk_bytes)),
            ]
            return await self._supervise(z, run, task, helpers)
        except asyncio.CancelledError:
            await self._kill(z, run, signal.SIGKILL)
            raise
        finally:
            for h in helpers:
                h.cancel()
            for h in helpers:
                with contextlib.suppress(BaseException):
                    await h
            z.runs.pop(tid, None)
            run.close()
            host_cb.close()

    async def _supervise(
        self, z: _Zygote, run: _Run, task: Task, helpers: list[asyncio.Task[Any]]
    ) -> RunResult:
        reason: str | None = None
        waits: list[asyncio.Future[Any]] = [run.exited, run.stop]
        done, _ = await asyncio.wait(
            waits, timeout=task.limits.wall_s, return_when="FIRST_COMPLETED"
        )
        if run.exited not in done:
            if run.stop in done:
                reason = run.stop.result()
                await self._kill(z, run, signal.SIGKILL)
            else:
                reason = TIMEOUT
                await self._kill(z, run, signal.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(run.exited), TERM_GRACE_S)
                if not run.exited.done():
                    await self._kill(z, run, signal.SIGKILL)
        try:
            async with asyncio.timeout(5.0):
                ended = await run.exited
        except (TimeoutError, RuntimeError) as e:
            z.terminate()  # a zygote that cannot report its child is not to be trusted
            return _result(run, SANDBOX_ERROR, error=f"the zygote failed: {e}")
        if run.stop.done() and reason is None:
            reason = run.stop.result()  # the flood ended it, or it ended as it was stopped
        await self._kill(z, run, signal.SIGKILL)  # whatever it left behind
        drains = helpers[:2]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*drains, return_exceptions=True), DRAIN_S)
        status, sig = ended.get("status"), ended.get("signal")
        if reason is None:
            # No layers reported: it never got as far as running the code.
            reason = SANDBOX_ERROR if not run.layers else SIGNALLED if sig is not None else EXITED
        res = _result(run, reason, status, sig)
        res.cpu_ms = round(float(ended.get("cpu_ms") or 0.0), 3)
        res.max_rss_kb = int(ended.get("max_rss_kb") or 0)
        if run.group is not None:
            peak = run.group.memory_peak()
            res.memory_peak_kb = None if peak is None else peak // 1024
        if reason == SANDBOX_ERROR and res.error is None:
            res.error = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "set-up"
        return res

    async def _kill(self, z: _Zygote, run: _Run, sig: int) -> None:
        run.signal(sig)
        await z.kill(run.tid, sig)

    async def _serve(self, sock: socket.socket, run: _Run, callbacks: Callbacks | None) -> None:
        """The task's socket: the hello (who it is, then go), its layers, its callbacks."""
        loop = asyncio.get_running_loop()
        data, pid = await _recv_creds(loop, sock)
        if not data.startswith(b'{"hello"') or pid is None:
            run.limit(SANDBOX_ERROR)
            return
        run.host_pid = pid
        with contextlib.suppress(OSError):
            run.pidfd = os.pidfd_open(pid)
        if run.group is not None:
            try:
                # A thread: a v1 migration waits for an RCU grace period now and then.
                await asyncio.to_thread(run.group.add, pid)
            except OSError as e:
                log.warning("sandbox: could not place pid %s in its cgroup: %s", pid, e)
                run.limit(SANDBOX_ERROR)
                return
        await loop.sock_sendall(sock, b'{"go":1}\n')
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_CALLBACK_LINE)
        calls = 0
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                msg = json.loads(line)
                if not isinstance(msg, dict):
                    return
                if "layers" in msg and not run.layers:
                    run.layers = [str(x) for x in msg["layers"]][:16]
                    if self.probe is not None and self.probe.available(BWRAP):
                        run.layers.append("bwrap")  # the zygote it came from runs in it
                    if run.group is not None:
                        run.layers.append("cgroups")
                    continue
                calls += 1
                reply = await _answer(msg, callbacks, calls)
                writer.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
                await writer.drain()
        except (ValueError, OSError, asyncio.LimitOverrunError):
            return
        finally:
            writer.transport.abort()


async def _answer(msg: dict[str, Any], callbacks: Callbacks | None, calls: int) -> dict[str, Any]:
    rid = msg.get("id")
    op, args = msg.get("call"), msg.get("args")
    if not isinstance(op, str) or not isinstance(args, dict):
        return {"id": rid, "error": 'a callback is {"call": op, "args": {...}}'}
    if callbacks is None:
        return {"id": rid, "error": f"callbacks are not available here (asked for {op!r})"}
    if calls > MAX_CALLBACKS:
        return {"id": rid, "error": f"more than {MAX_CALLBACKS} callbacks in one run"}
    try:
        value = await callbacks(op, args)
        json.dumps(value)
    except CallbackRefused as e:
        return {"id": rid, "error": str(e)}
    except (TypeError, ValueError) as e:
        return {"id": rid, "error": f"{op}: {e}"}
    except Exception as e:
        return {"id": rid, "error": f"{op} failed: {type(e).__name__}: {e}"}
    return {"id": rid, "ok": value}


def _result(
    run: _Run,
    reason: str,
    status: int | None = None,
    sig: int | None = None,
    error: str | None = None,
) -> RunResult:
    return RunResult(
        reason=reason,
        exit_code=status,
        signal=sig,
        stdout=run.out.decode(errors="replace"),
        stderr=run.err.decode(errors="replace"),
        truncated=run.truncated,
        layers=list(run.layers),
        error=error,
    )


async def _drain(fd: int, run: _Run, sink: bytearray, cap: int) -> None:
    """Read a pipe to EOF into `sink`, stopping the run when stdout+stderr pass `cap`."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                await _ready(loop, fd)
                continue
            if not chunk:
                return
            room = cap - len(run.out) - len(run.err)
            if len(chunk) > room:
                sink += chunk[: max(room, 0)]
                run.truncated = True
                run.limit(OUTPUT_LIMIT)
                return
            sink += chunk
    finally:
        os.close(fd)


async def _watch_disk(path: str, run: _Run, cap: int) -> None:
    while True:
        await asyncio.sleep(DISK_POLL_S)
        if await asyncio.to_thread(workdir.usage, path) > cap:
            run.limit(DISK_LIMIT)
            return


async def _recv_creds(
    loop: asyncio.AbstractEventLoop, sock: socket.socket
) -> tuple[bytes, int | None]:
    """One message and the sender's pid in our pid namespace (SCM_CREDENTIALS)."""
    size = struct.calcsize("3i")
    while True:
        try:
            data, anc, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(size))
            break
        except BlockingIOError:
            await _ready(loop, sock)
    pid = None
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("3i", payload[:size])[0]
    return data, pid


def _finish(run: _Run, path: str, inputs: dict[str, str]) -> dict[str, str]:
    """After a run (in a worker thread): read back its files, remove its workdir and cgroup."""
    try:
        return workdir.collect(path, inputs)
    finally:
        workdir.remove(path)
        if run.group is not None:
            run.group.remove()


async def _ready(
    loop: asyncio.AbstractEventLoop, fd: int | socket.socket, write: bool = False
) -> None:
    """Wait until `fd` is readable (or writable)."""
    fut: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await fut
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


def _sweep_stale_roots() -> None:
    """Remove the work roots of pools whose process died without closing them (ours only)."""
    tmp = tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for name in os.listdir(tmp):
            parts = name.split("-")
            if len(parts) < 4 or parts[:2] != ["yool", "sandbox"] or not parts[2].isdigit():
                continue
            path = os.path.join(tmp, name)
            with contextlib.suppress(OSError):
                if os.lstat(path).st_uid != os.getuid() or os.path.exists(f"/proc/{parts[2]}"):
                    continue
                workdir.remove(path)


def _threads_of(uid: int) -> int:
    """How many tasks (threads) `uid` runs now: RLIMIT_NPROC counts them all."""
    n = 0
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/status") as f:
                    status = f.read()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if int(fields.get("Uid", "-1").split()[0]) == uid:
                n += int(fields.get("Threads", "1"))
    return n


def _reap(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    if proc.stderr is not None:
        proc.stderr.close()


async def _stderr(proc: subprocess.Popen[bytes]) -> str:
    def read() -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.stderr is None:
            return ""
        text = proc.stderr.read().decode(errors="replace").strip()
        return text.splitlines()[-1] if text else f"exit {proc.returncode}"

    return await asyncio.to_thread(read)
