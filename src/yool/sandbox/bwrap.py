"""The bubblewrap command the zygotes run inside (layer 5).

Every zygote (and so every task it forks) lives in its own namespaces: no network but its own
loopback, its own pids (it cannot see or signal the host's processes), IPC and hostname,
a read-only view of the system and the Python runtime, a tmpfs `/tmp`, a fresh `/dev` and
`/proc`, and only the pool's work directory writable. As a normal user that is bubblewrap's
unprivileged mode with `--unshare-all --unshare-user --disable-userns --die-with-parent
--new-session --clearenv --cap-drop ALL`.

As root a user namespace would map the sandbox's uid to real root (so it would own every
root-owned file, as `unshare --map-root-user` does), so instead bubblewrap runs privileged
without one: the zygote keeps only CAP_SETUID and CAP_SETGID, and each child gives those up
when it drops to the unprivileged uid before running code; user namespaces are then refused
to the child by seccomp rather than by `--disable-userns`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import PurePosixPath

SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime", "/etc/nsswitch.conf")


def which() -> str | None:
    return shutil.which("bwrap")


def command(
    bwrap: str,
    argv: Sequence[str],
    *,
    read_only: Iterable[str],
    writable: Iterable[str],
    privileged: bool,
    env: dict[str, str],
    tmp_bytes: int = 64 << 20,
) -> list[str]:
    """`bwrap ... -- argv` for a zygote (see the module docstring)."""
    out = [bwrap]
    if privileged:
        out += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
        out += ["--unshare-cgroup-try"]
    else:
        out += ["--unshare-all", "--unshare-user", "--disable-userns"]
    out += ["--die-with-parent", "--new-session", "--clearenv", "--cap-drop", "ALL"]
    if privileged:
        out += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    # Mounts over /tmp, /proc and /dev first: the work root (under /tmp) is bound into them.
    out += ["--proc", "/proc", "--dev", "/dev", "--size", str(tmp_bytes), "--tmpfs", "/tmp"]
    made: set[str] = {"/", "/tmp", "/proc", "/dev"}
    binds: list[tuple[str, str]] = []
    for path in _roots(read_only):
        binds.append(("--ro-bind", path))
    for path in _roots(writable):
        binds.append(("--bind", path))
    for link in SYSTEM_LINKS:
        if os.path.islink(link):
            out += ["--symlink", os.readlink(link), link]
            made.add(link)
    for flag, path in binds:
        out += _parents(path, made)
        out += [flag, path, path]
        made.add(path)
    for f in ETC_FILES:
        if os.path.exists(f):
            out += _parents(f, made)
            out += ["--ro-bind", f, f]
    for key, value in env.items():
        out += ["--setenv", key, value]
    out += ["--chdir", "/", "--", *argv]
    return out


def _roots(paths: Iterable[str]) -> list[str]:
    """Real paths, without those inside another (binding the outer one covers them)."""
    real = sorted({os.path.realpath(p) for p in paths if os.path.exists(p)})
    out: list[str] = []
    for p in real:
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in out):
            out.append(p)
    return out


def _parents(path: str, made: set[str]) -> list[str]:
    """`--perms 0755 --dir` for each missing ancestor, so any uid can reach the mount.

    bubblewrap would create them 0700 otherwise, as the real directories under a private
    home (a pyenv in /root, say) are.
    """
    out: list[str] = []
    for parent in reversed(PurePosixPath(path).parents):
        p = str(parent)
        if p not in made:
            out += ["--perms", "0755", "--dir", p]
            made.add(p)
    return out
