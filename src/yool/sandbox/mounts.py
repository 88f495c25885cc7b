"""Without bubblewrap, as root: make the Python runtime reachable by the uid code drops to.

When yool runs as root from a Python under a private home (a pyenv in /root, mode 0700),
the unprivileged uid a child drops to cannot even open the runtime it runs on: Landlock's
rules name paths it cannot reach, and a lazy import fails. Bubblewrap re-creates those paths
in its own mount namespace (`bwrap._parents`); without it the zygote does the same for
itself, once, before it forks anything: it enters a private mount namespace where each
closed directory on the way is a fresh read-only tmpfs (mode 0755) holding only bind mounts
of the paths inside it that the sandbox needs, so the rest of it (/root/.ssh, say) is
hidden as well. Nothing changes outside the zygote's namespace; files are the same files,
so the pool's work root stays shared with the host.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
import subprocess
import sys
from collections.abc import Iterable
from pathlib import PurePosixPath

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT = 1, 2, 4, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18

_libc = ctypes.CDLL(None, use_errno=True)


def _passable(st: os.stat_result, uid: int, gid: int) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _closed_on_the_way(path: str, uid: int, gid: int) -> str | None:
    """The outermost directory from / down to `path` (itself included) `uid` cannot pass."""
    for parent in (*reversed(PurePosixPath(path).parents), PurePosixPath(path)):
        d = str(parent)
        try:
            st = os.stat(d)
        except OSError:
            return None
        if stat.S_ISDIR(st.st_mode) and not _passable(st, uid, gid):
            return d
    return None


def unreachable(paths: Iterable[str], uid: int, gid: int) -> dict[str, str]:
    """needed path -> the closed directory in its way, for each one `uid` cannot reach.

    Paths are taken as given and as their real paths (a venv's python is a symlink).
    """
    out: dict[str, str] = {}
    for raw in paths:
        for path in dict.fromkeys((os.path.abspath(raw), os.path.realpath(raw))):
            if os.path.exists(path):
                closed = _closed_on_the_way(path, uid, gid)
                if closed is not None:
                    out[path] = closed
    return out


def plan(paths: Iterable[str], uid: int, gid: int) -> dict[str, list[str]]:
    """closed directory -> the needed paths under it: replacing it exposes them all.

    Only the outermost closed directory on each way counts, so no two overlap. A needed
    path that is itself closed cannot be exposed: it is not in the plan.
    """
    out: dict[str, list[str]] = {}
    for path, closed in sorted(unreachable(paths, uid, gid).items()):
        inside = out.setdefault(closed, []) if closed != path else []
        if not any(path.startswith(q.rstrip("/") + "/") for q in inside):
            inside.append(path)  # (one inside another is exposed with it)
    return {d: inside for d, inside in out.items() if inside}


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    enc = [None if x is None else x.encode() for x in (source, target, fstype)]
    if _libc.mount(enc[0], enc[1], enc[2], flags, data.encode() or None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def expose(paths: Iterable[str], uid: int, gid: int) -> list[str]:
    """Make `paths` reachable by `uid` in a private mount namespace of this process (root).

    Returns the directories replaced; raises OSError when the namespace cannot be made.
    """
    groups = plan(paths, uid, gid)
    if not groups:
        return []
    if _libc.unshare(CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNS): {os.strerror(err)}")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    old = os.umask(0o022)
    try:
        for d, inside in sorted(groups.items()):
            held = [(p, os.open(p, os.O_PATH | os.O_CLOEXEC)) for p in inside]
            try:
                _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
                for p, fd in held:
                    if stat.S_ISDIR(os.fstat(fd).st_mode):
                        os.makedirs(p, mode=0o755, exist_ok=True)
                    else:
                        os.makedirs(os.path.dirname(p), mode=0o755, exist_ok=True)
                        with open(p, "a"):
                            pass
                    # The held descriptor still names the directory the tmpfs now covers.
                    _mount(f"/proc/self/fd/{fd}", p, None, MS_BIND | MS_REC)
                _mount(None, d, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
            finally:
                for _, fd in held:
                    os.close(fd)
    finally:
        os.umask(old)
    return sorted(groups)


def can_unshare() -> bool:
    """Whether this process may make a mount namespace (tried in a throwaway interpreter)."""
    code = "import ctypes, sys; sys.exit(0 if ctypes.CDLL(None).unshare(0x20000) == 0 else 1)"
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        done = subprocess.run([sys.executable, "-I", "-c", code], timeout=10, check=False)
        return done.returncode == 0
    return False
