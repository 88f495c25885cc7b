"""A warm zygote: a Python with the runtime imported that forks one child per task.

Started by the pool as `python -I -m yool.sandbox.zygote FD [SETUP]` (inside bubblewrap
where it works) with its control socket (SOCK_SEQPACKET) on descriptor FD and a minimal
environment. SETUP is JSON: `{"expose": [paths], "uid": u, "gid": g}` asks it (root, without
bubblewrap) to make those paths reachable by the uid its children drop to (`mounts.expose`)
before anything else.
It speaks JSON messages on that socket:

- pool -> zygote: `{"op": "run", "spec": {...}}` with the child's stdout, stderr and callback
  descriptors attached (SCM_RIGHTS); `{"op": "kill", "id": n, "sig": s}`.
- zygote -> pool: `{"op": "ready", ...}` once, `{"op": "started", "id", "pid"}`, and
  `{"op": "exited", "id", "status", "signal", "cpu_ms", "max_rss_kb"}` per child.

It is a child subreaper, so a task's orphans (a double-forked daemon) land here rather than
with init; any child that is not a live task's is killed on sight. On EOF from the pool it
kills every child and exits. Forking is cheap because the child shares the zygote's
already-imported modules copy-on-write: that is the whole point of the zygote.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import gc
import json
import os
import select
import signal
import socket
import sys
from typing import Any

PR_SET_CHILD_SUBREAPER = 36
CTL_FD = 3
MAX_MSG = 1 << 20
SWEEP_S = 0.1

# Pre-imported for the tasks: what they are likely to import costs nothing after the fork.
WARM = (
    *("abc", "argparse", "base64", "bisect", "collections", "contextlib", "copy", "csv"),
    *("dataclasses", "datetime", "decimal", "enum", "fractions", "functools", "hashlib"),
    *("heapq", "io", "itertools", "json", "math", "operator", "os", "pathlib", "pprint"),
    *("random", "re", "statistics", "string", "struct", "subprocess", "textwrap"),
    *("threading", "time", "traceback", "typing", "unicodedata", "uuid"),
)


def _warm() -> None:
    import importlib

    for name in WARM:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    from yool.sandbox import child, seccomp

    try:
        seccomp.load_module()  # resolves libseccomp now: the child could not (ldconfig, /tmp)
        child.prepare()
    except (ImportError, OSError, RuntimeError, ValueError):
        pass  # no seccomp here: the probe says so, and a child asked for it fails closed
    gc.collect()
    gc.freeze()  # what is here now is never touched by the collector: fewer copied pages


def _recv(ctl: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    fds = array.array("i")
    data, anc, _flags, _addr = ctl.recvmsg(MAX_MSG, socket.CMSG_SPACE(16 * fds.itemsize))
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    if not data:
        return None, list(fds)
    return json.loads(data), list(fds)


def _send(ctl: socket.socket, msg: dict[str, Any]) -> None:
    ctl.send(json.dumps(msg).encode())


def _setup(raw: str) -> None:
    setup = json.loads(raw)
    if setup.get("expose"):
        from yool.sandbox import mounts

        try:
            mounts.expose(setup["expose"], int(setup["uid"]), int(setup["gid"]))
        except OSError as e:
            print(
                f"yool sandbox: cannot make the runtime reachable by uid {setup['uid']} "
                f"without bubblewrap ({e}); install bubblewrap",
                file=sys.stderr,
            )
            raise SystemExit(1) from None


def main() -> None:
    ctl = socket.socket(fileno=int(sys.argv[1]) if len(sys.argv) > 1 else CTL_FD)
    ctl.setblocking(True)
    if len(sys.argv) > 2:
        _setup(sys.argv[2])
    _warm()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    tasks: dict[int, int] = {}  # child pid -> task id
    forking = False  # a task that may fork ran: sweep for orphans now and then
    _send(ctl, {"op": "ready", "pid": os.getpid(), "uid": os.getuid()})
    while True:
        ready, _, _ = select.select([ctl.fileno(), wake_r], [], [], SWEEP_S if forking else None)
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        if ctl.fileno() in ready:
            msg, fds = _recv(ctl)
            if msg is None:
                _kill_all(tasks)
                os._exit(0)
            if msg.get("op") == "run":
                spec = msg["spec"]
                forking = forking or bool(spec.get("allow_fork"))
                pid = _fork(spec, fds)
                tasks[pid] = int(spec["id"])
                _send(ctl, {"op": "started", "id": spec["id"], "pid": pid})
            elif msg.get("op") == "kill":
                for pid, tid in list(tasks.items()):
                    if tid == msg.get("id"):
                        _signal_group(pid, int(msg.get("sig", signal.SIGKILL)))
                _sweep(tasks)
            for fd in fds:
                os.close(fd)
        _reap(ctl, tasks)
        if forking:
            _sweep(tasks)


def _fork(spec: dict[str, Any], fds: list[int]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            from yool.sandbox import child

            child.run(spec, *fds[:3])
        finally:
            os._exit(125)
    return pid


def _reap(ctl: socket.socket, tasks: dict[int, int]) -> None:
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        tid = tasks.pop(pid, None)
        if tid is None:
            continue  # an orphan that came to us and died
        _signal_group(pid, signal.SIGKILL)  # whatever it left in its process group
        _send(
            ctl,
            {
                "op": "exited",
                "id": tid,
                "status": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                "cpu_ms": (usage.ru_utime + usage.ru_stime) * 1000,
                "max_rss_kb": usage.ru_maxrss,
            },
        )


def _signal_group(pid: int, sig: int) -> None:
    for target in (-pid, pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, sig)


def _sweep(tasks: dict[int, int]) -> None:
    """Kill every child of ours that is not a live task: a task's orphan, come to us."""
    me = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for name in entries:
        if not name.isdigit():
            continue
        pid = int(name)
        if pid in tasks or pid == me:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == me:
            _signal_group(pid, signal.SIGKILL)


def _kill_all(tasks: dict[int, int]) -> None:
    for pid in tasks:
        _signal_group(pid, signal.SIGKILL)
    _sweep({})


if __name__ == "__main__":
    main()
