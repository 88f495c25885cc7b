"""Which isolation layers this machine offers, and what each missing one leaves open.

`probe()` looks (really: it asks the kernel for Landlock's ABI, loads nothing it cannot
undo, runs bubblewrap once, creates and removes a probe cgroup) and returns a `Probe`.
The sandbox's *level* is the highest N such that layers 0..N are all available; the pool
refuses to start below the policy's `YOOL_SANDBOX_LEVEL` (fail closed), naming every
missing layer with what it leaves open and how to accept less.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from yool.sandbox import bwrap, cgroups, landlock, mounts

SUPERVISOR, RLIMITS, PRIVDROP, LANDLOCK, SECCOMP, BWRAP, CGROUPS = range(7)
NAMES = ("supervisor", "rlimits", "privdrop", "landlock", "seccomp", "bwrap", "cgroups")
LEAVES_OPEN = (
    "nothing would stop a sleeper, an output flood or a leaked secret in the environment",
    "memory, CPU, file-size and descriptor bombs are stopped only by the wall clock",
    "the code runs as root: every file the other layers do not hide is readable and "
    "writable, and RLIMIT_NPROC does not apply",
    "files outside the workdir (home, ~/.ssh, other processes' /proc), TCP bind/connect, "
    "and signals and abstract unix sockets to same-uid processes",
    "UDP, raw and netlink sockets, exec and fork, ptrace, io_uring, user namespaces, mount, "
    "bpf, keyctl and TIOCSTI",
    "the host's network, pid, IPC and mount namespaces: the code sees every path the other "
    "layers allow and can address host processes by pid",
    "no per-task pids/memory cgroup: when fork is allowed, a fork bomb is bounded only by "
    "RLIMIT_NPROC and the tree is killed by process group and the zygote's orphan sweep",
)


class SandboxUnavailable(Exception):
    """The machine offers less isolation than the policy accepts; the message says what."""


@dataclass(frozen=True, slots=True)
class Layer:
    level: int
    name: str
    available: bool
    detail: str
    leaves_open: str

    def to_json(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "name": self.name,
            "available": self.available,
            "detail": self.detail,
            **({} if self.available else {"leaves_open": self.leaves_open}),
        }


@dataclass(frozen=True, slots=True)
class Probe:
    layers: tuple[Layer, ...]
    root: bool
    landlock_abi: int
    bwrap: str | None = None  # the bwrap binary, if it works here
    cgroup: cgroups.Hierarchy | None = None
    drop_to: tuple[int, int] | None = None  # (uid, gid) when root
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def level(self) -> int:
        """The highest N with layers 0..N all available."""
        n = -1
        for layer in self.layers:
            if not layer.available:
                break
            n = layer.level
        return n

    def available(self, level: int) -> bool:
        return self.layers[level].available

    def missing(self, up_to: int = CGROUPS) -> list[Layer]:
        return [layer for layer in self.layers if layer.level <= up_to and not layer.available]

    def check(self, required: int) -> None:
        """Raise `SandboxUnavailable` unless every layer up to `required` is available."""
        short = self.missing(required)
        if not short:
            return
        lines = [
            f"layer {layer.level} ({layer.name}) is missing: {layer.detail}; "
            f"without it {layer.leaves_open}"
            for layer in short
        ]
        lines.append(
            f"this machine reaches level {self.level} of the {required} the policy requires; "
            f"set YOOL_SANDBOX_LEVEL={max(self.level, 0)} to accept that (see `yool sandbox probe`)"
        )
        raise SandboxUnavailable("\n".join(lines))

    def to_json(self, required: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "level": self.level,
            "root": self.root,
            "uid": os.getuid(),
            "landlock_abi": self.landlock_abi,
            "layers": [layer.to_json() for layer in self.layers],
        }
        if required is not None:
            out["required"] = required
            out["ok"] = self.level >= required
        return out


_cache: dict[tuple[Any, ...], Probe] = {}


def probe(drop_uid: int = 65534, *, fresh: bool = False) -> Probe:
    """The layers on this machine (cached per process: the machine does not change)."""
    key = (drop_uid, os.geteuid())
    if not fresh and key in _cache:
        return _cache[key]
    root = os.geteuid() == 0
    found: list[Layer] = []

    def add(level: int, ok: bool, detail: str) -> None:
        found.append(Layer(level, NAMES[level], ok, detail, LEAVES_OPEN[level]))

    add(SUPERVISOR, True, "env allowlist, closed fds, new session, wall clock, output cap")
    add(RLIMITS, True, "address space, CPU, file size, open files, no core, processes")
    bw, why = _bwrap(root)
    drop_to: tuple[int, int] | None = None
    if root:
        if drop_uid == 0:
            add(PRIVDROP, False, "YOOL_SANDBOX_UID is 0")
        else:
            target = (drop_uid, _gid_of(drop_uid))
            ok, how = True, f"root: each child drops to uid {target[0]} gid {target[1]}"
            if bw is None:
                ok, how = _reachable(how, *target)
            drop_to = target if ok else None
            add(PRIVDROP, ok, how)
    else:
        add(PRIVDROP, True, f"not root: code runs as uid {os.getuid()} with no capabilities")
    abi = landlock.abi()
    if abi >= 1:
        add(LANDLOCK, True, f"ABI {abi}: {', '.join(landlock.features(abi))}")
    else:
        add(LANDLOCK, False, "the kernel has no Landlock (or it is disabled)")
    add(SECCOMP, *_seccomp())
    add(BWRAP, bw is not None, why)
    hierarchy, how = cgroups.detect()
    add(CGROUPS, hierarchy is not None, how)
    result = Probe(tuple(found), root, abi, bw, hierarchy, drop_to)
    _cache[key] = result
    return result


def _reachable(how: str, uid: int, gid: int) -> tuple[bool, str]:
    """Without bubblewrap: can `uid` reach the Python runtime (or can a zygote expose it)?"""
    from yool.sandbox.pool import runtime_paths  # (the pool imports this module)

    blocked = mounts.unreachable(runtime_paths(), uid, gid)
    if not blocked:
        return True, how
    where = ", ".join(sorted(set(blocked.values())))
    itself = any(path == closed for path, closed in blocked.items())  # nothing to expose
    if itself or not mounts.can_unshare():
        return False, (
            f"uid {uid} cannot reach the Python runtime ({where} is closed to it) and this "
            "process cannot make a mount namespace to expose it: install bubblewrap or use a "
            "Python outside a private home"
        )
    return True, f"{how}; {where} re-made for it in the zygotes' own mount namespace"


def _gid_of(uid: int) -> int:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid


def _seccomp() -> tuple[bool, str]:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(21, 0, 0, 0, 0) < 0:  # PR_GET_SECCOMP
        return False, "the kernel has no seccomp"
    try:
        from yool.sandbox import seccomp

        sc = seccomp.load_module()
    except (ImportError, RuntimeError, OSError) as e:
        return False, f"libseccomp or pyseccomp is missing ({e})"
    version = getattr(sc, "__version__", "?")
    return True, f"pyseccomp {version} on libseccomp.so.2: deny-list, AF_UNIX only"


def _bwrap(root: bool) -> tuple[str | None, str]:
    exe = bwrap.which()
    if exe is None:
        return None, "bubblewrap is not installed (apt-get install bubblewrap)"
    argv = bwrap.command(
        exe,
        ["/bin/true"],
        read_only=["/usr", "/etc/ld.so.cache"],
        writable=[],
        privileged=root,
        env={"PATH": "/usr/bin:/bin"},
    )
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"bubblewrap does not run here ({e})"
    if done.returncode != 0:
        msg = (done.stderr or "").strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        return None, f"bubblewrap cannot create its namespaces here ({msg[0]})"
    mode = (
        "privileged mode (root): new pid/net/ipc/uts/mount namespaces, only CAP_SETUID/SETGID"
        if root
        else "user namespace, --disable-userns, --cap-drop ALL"
    )
    return exe, f"{exe}: {mode}; read-only system, tmpfs /tmp"


def render(p: Probe, required: int) -> str:
    """The human table `yool sandbox probe` prints."""
    rows = [("LAYER", "NAME", "STATUS", "DETAIL")]
    for layer in p.layers:
        status = "ok" if layer.available else "MISSING"
        rows.append((str(layer.level), layer.name, status, layer.detail))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        "  ".join([*(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)), r[3]]) for r in rows
    ]
    for layer in p.missing():
        lines.append(f"  layer {layer.level} missing leaves open: {layer.leaves_open}")
    verdict = "ok" if p.level >= required else "REFUSED (fails closed)"
    lines.append(f"level {p.level}, required {required}: {verdict}")
    if p.level < required:
        lines.append(f"  set YOOL_SANDBOX_LEVEL={max(p.level, 0)} to accept this machine's level")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - handy on a new machine
    print(render(probe(), CGROUPS), file=sys.stdout)
