"""Per-task control groups where this process may create them (layer 6).

A task gets its own cgroup with `pids.max` and a memory ceiling, joined by the host (the
child's pid comes over its socket with SCM_CREDENTIALS, before it runs anything), so every
process the task starts is counted, capped and can be killed as one: `cgroup.kill` on
cgroup v2, a kill-until-empty sweep on v1. Both hierarchies are supported; which one is
usable, and why not, is found by `detect` (it really creates and removes a probe group).
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """Where task cgroups go: v2 (`unified`) or v1 (`pids` and `memory`) directories."""

    version: int
    pids: Path
    memory: Path

    def describe(self) -> str:
        if self.version == 2:
            return f"cgroup v2 at {self.pids}"
        return f"cgroup v1 pids at {self.pids}, memory at {self.memory}"


def _own_paths() -> dict[str, str]:
    """controller name (or "" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(","):
                out[c] = path
    return out


def detect() -> tuple[Hierarchy | None, str]:
    """A usable hierarchy and how it was found, or None and why there is none."""
    own = _own_paths()
    reasons: list[str] = []
    v2 = _v2_base(own.get(""))
    if v2 is not None:
        ok, why = _try(v2, v2, 2)
        if ok:
            return Hierarchy(2, v2, v2), f"cgroup v2 under {v2}"
        reasons.append(why)
    pids_root, mem_root = ROOT / "pids", ROOT / "memory"
    if (pids_root / "cgroup.procs").exists() and (mem_root / "cgroup.procs").exists():
        pids = pids_root / own.get("pids", "/").lstrip("/")
        mem = mem_root / own.get("memory", "/").lstrip("/")
        ok, why = _try(pids, mem, 1)
        if ok:
            return Hierarchy(1, pids, mem), f"cgroup v1 under {pids} and {mem}"
        reasons.append(why)
    elif v2 is None:
        reasons.append("no cgroup v2 with pids+memory delegated and no v1 pids+memory mounted")
    return None, "; ".join(reasons)


def _v2_base(own: str | None) -> Path | None:
    for mount in (ROOT, ROOT / "unified"):
        if (mount / "cgroup.controllers").exists() and own is not None:
            base = mount / own.lstrip("/")
            try:
                enabled = (base / "cgroup.subtree_control").read_text().split()
            except OSError:
                continue
            if {"pids", "memory"} <= set(enabled):
                return base
    return None


def _try(pids: Path, memory: Path, version: int) -> tuple[bool, str]:
    probe = f"yool-probe-{os.getpid()}"
    made: list[Path] = []
    try:
        for base in dict.fromkeys((pids, memory)):
            d = base / probe
            d.mkdir()
            made.append(d)
        limit = "memory.max" if version == 2 else "memory.limit_in_bytes"
        (pids / probe / "pids.max").write_text("8")
        (memory / probe / limit).write_text(str(64 << 20))
        return True, ""
    except OSError as e:
        where = made[-1] if made else pids
        return False, f"cgroup v{version} is not writable here ({where}: {e.strerror})"
    finally:
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()


class TaskGroup:
    """One task's cgroup(s): made before the run, joined by the child, killed and removed after."""

    def __init__(self, h: Hierarchy, name: str, pids_max: int, memory_bytes: int) -> None:
        self.h = h
        self.dirs = list(dict.fromkeys((h.pids / name, h.memory / name)))
        for d in self.dirs:
            d.mkdir()
        try:
            (h.pids / name / "pids.max").write_text(str(pids_max))
            if h.version == 2:
                (h.memory / name / "memory.max").write_text(str(memory_bytes))
                with contextlib.suppress(OSError):
                    (h.memory / name / "memory.swap.max").write_text("0")
            else:
                (h.memory / name / "memory.limit_in_bytes").write_text(str(memory_bytes))
        except BaseException:
            self.remove()
            raise

    def add(self, pid: int) -> None:
        for d in self.dirs:
            (d / "cgroup.procs").write_text(str(pid))

    def kill(self) -> None:
        """SIGKILL every process in the group, until none is left (or it cannot be helped)."""
        d = self.dirs[0]
        if self.h.version == 2:
            with contextlib.suppress(OSError):
                (d / "cgroup.kill").write_text("1")
            return
        for _ in range(100):
            try:
                pids = [int(p) for p in (d / "cgroup.procs").read_text().split()]
            except OSError:
                return
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def memory_peak(self) -> int | None:
        name = "memory.peak" if self.h.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int((self.dirs[-1] / name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def remove(self) -> None:
        for d in self.dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    self.kill()
                    os.sched_yield()
