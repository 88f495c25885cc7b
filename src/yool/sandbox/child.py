"""The forked child: take the task's descriptors, wait for the host, apply every layer, run.

This runs in a process the zygote has just forked, so it must never return into the zygote's
loop: it always ends in `os._exit`. Layers go on in an order where each still has what it
needs: session and descriptors first, then the hello that lets the host place the child in
its cgroup, and while the host does that: rlimits, the uid drop, no-new-privs, non-dumpable,
Landlock, and seccomp last. Only once every requested layer is in place and the host has
said go (the child is in its cgroup) does it tell the host which are active and run the code;
a layer that fails stops the run (exit 125) rather than running the code with less.
"""

from __future__ import annotations

import builtins
import ctypes
import io
import os
import resource
import signal
import socket
import sys
import traceback
from typing import Any

from yool.sandbox import landlock, seccomp
from yool.sandbox.client import Client

CB_FD = 3
SANDBOX_FAILED = 125
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38

_libc = ctypes.CDLL(None, use_errno=True)
PROGRAMS: dict[tuple[bool, bool], bytes] = {}  # compiled seccomp programs (see `prepare`)


def prepare() -> None:
    """In the zygote, before any fork: compile the seccomp variants once."""
    for allow_exec in (False, True):
        PROGRAMS[(allow_exec, allow_exec)] = seccomp.build(allow_exec, allow_exec)


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def run(
    spec: dict[str, Any], out_fd: int, err_fd: int, cb_fd: int, *, detached: bool = False
) -> None:
    """Become the task (never returns). `detached`: a spare that has already `detach`ed."""
    code = SANDBOX_FAILED
    try:
        if not detached:
            detach()
        _descriptors(out_fd, err_fd, cb_fd)
        cb = socket.socket(fileno=CB_FD)
        cb.setblocking(True)
        client = Client(cb)
        client.hello()  # the host learns our pid (SCM_CREDENTIALS) and places us...
        layers = apply_layers(spec)  # ...while we confine ourselves: nothing of the code runs
        client.wait_go()  # until it has: the code starts inside its cgroup, or not at all
        client.started(layers)
        code = _execute(spec, client)
    except BaseException as e:  # a layer failed: say so, never run the code with less
        with _suppress():
            os.write(2, f"yool sandbox: {type(e).__name__}: {e}\n".encode())
    finally:
        os._exit(code)


def detach() -> None:
    """Leave the zygote's session, signal handlers and wake-up descriptor (no task needed)."""
    os.setsid()
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)


def _descriptors(out_fd: int, err_fd: int, cb_fd: int) -> None:
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    os.dup2(cb_fd, CB_FD)
    os.closerange(CB_FD + 1, 65536)


def apply_layers(spec: dict[str, Any]) -> list[str]:
    """Apply what `spec` asks for, in order; the names of the layers now in force."""
    active = ["supervisor"]
    os.umask(0o077)
    _rlimits(spec)
    active.append("rlimits")
    uid, gid = spec.get("uid"), spec.get("gid")
    if uid is not None and gid is not None:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        _drop_capabilities()
        if os.getuid() == 0 or os.geteuid() == 0:
            raise PermissionError("still root after the uid drop")
        active.append("privdrop")
    elif os.geteuid() != 0:
        active.append("privdrop")  # unprivileged already: nothing to give up
    os.chdir(spec["workdir"])  # as the dropped uid: the workdir is its own, mode 0700
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_DUMPABLE, 0)  # same-uid processes cannot ptrace us or read our /proc
    abi = int(spec.get("landlock_abi") or 0)
    if abi:
        work = spec["workdir"]
        landlock.restrict(abi, spec["read_only"], [work], spec["read_write_files"])
        active.append("landlock")
    if spec.get("seccomp"):
        allow = bool(spec["allow_exec"]), bool(spec["allow_fork"])
        program = PROGRAMS.get(allow) or seccomp.build(*allow)
        seccomp.load(program)
        active.append("seccomp")
    return active


def _rlimits(spec: dict[str, Any]) -> None:
    lim = spec["limits"]
    cpu = int(lim["cpu_s"])
    mem = int(lim["memory_bytes"])
    settings = [
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_AS, mem, mem),
        (resource.RLIMIT_FSIZE, int(lim["disk_bytes"]), int(lim["disk_bytes"])),
        (resource.RLIMIT_NOFILE, int(lim["open_files"]), int(lim["open_files"])),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_MEMLOCK, 0, 0),
        (resource.RLIMIT_MSGQUEUE, 0, 0),
        (resource.RLIMIT_STACK, 8 << 20, 8 << 20),
    ]
    nproc = spec.get("nproc")
    if nproc is not None:
        settings.append((resource.RLIMIT_NPROC, int(nproc), int(nproc)))
    for which, soft, hard in settings:
        _, old_hard = resource.getrlimit(which)
        if old_hard != resource.RLIM_INFINITY:
            hard = min(hard, old_hard)
            soft = min(soft, hard)
        resource.setrlimit(which, (soft, hard))


def _drop_capabilities() -> None:
    """Clear the inheritable set too (a uid change clears only permitted and effective)."""
    header = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option})")


def _execute(spec: dict[str, Any], client: Client) -> int:
    env = dict(spec["env"])
    if spec["lang"] == "sh":
        os.execve("/bin/sh", ["sh", "-c", spec["code"]], env)
    os.environ.clear()
    os.environ.update(env)
    sys.stdout = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
    )
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False),
        encoding="utf-8",
        errors="backslashreplace",
        write_through=True,
    )
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    sys.argv = ["<code>"]
    sys.path[:] = [p for p in sys.path if p]
    sys.path.insert(0, spec["workdir"])
    scope: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins, "yool": client}
    status = 0
    try:
        exec(compile(spec["code"], "<code>", "exec"), scope)
    except SystemExit as e:
        status = _exit_status(e.code)
    except BaseException as e:
        tb = e.__traceback__
        traceback.print_exception(type(e), e, tb.tb_next if tb is not None else None)
        status = 1
    with _suppress():
        sys.stdout.flush()
    with _suppress():
        sys.stderr.flush()
    return status


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with _suppress():
        print(code, file=sys.stderr)
    return 1


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True
