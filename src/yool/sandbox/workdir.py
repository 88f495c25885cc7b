"""The host's side of a task's workdir: make it, fill it, read it back, remove it.

Everything in a workdir after a run was made by untrusted code, so the host never follows
a symlink there: directories are walked by descriptor with O_NOFOLLOW, files are opened with
O_NOFOLLOW | O_NONBLOCK and read only if they are regular, and removal uses `shutil.rmtree`'s
descriptor-based walk. A planted `out.txt -> /etc/shadow` is reported as a symlink, not read.
These functions block (disk I/O): the pool calls them in a worker thread.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Mapping

MAX_FILE = 64 << 10  # a returned file's content, bytes
MAX_TOTAL = 256 << 10  # all returned files together
MAX_ENTRIES = 1000
MAX_DEPTH = 8
MAX_INPUT = 4 << 20  # bytes of input files per task


class WorkdirError(ValueError):
    """An input file cannot be placed (bad name, too big); nothing was run."""


def check_name(name: str) -> list[str]:
    """The path components of a relative input file name, or WorkdirError."""
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or "\x00" in name
        or any(p in ("", ".", "..") for p in parts)
        or len(parts) > MAX_DEPTH
    ):
        raise WorkdirError(f"files: {name!r} is not a relative path inside the workdir")
    return parts


def make(path: str, files: Mapping[str, str], owner: tuple[int, int] | None) -> None:
    """Create the workdir (0700, owned by `owner`) and write the input files into it."""
    total = sum(len(v.encode()) for v in files.values())
    if total > MAX_INPUT:
        raise WorkdirError(f"files: {total} bytes of input files; at most {MAX_INPUT}")
    os.mkdir(path, 0o700)
    if owner is not None:
        os.chown(path, *owner)
    for name, content in files.items():
        parts = check_name(name)
        d = path
        for part in parts[:-1]:
            d = os.path.join(d, part)
            with contextlib.suppress(FileExistsError):
                os.mkdir(d, 0o700)
                if owner is not None:
                    os.chown(d, *owner)
        target = os.path.join(d, parts[-1])
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, content.encode())
            if owner is not None:
                os.fchown(fd, *owner)
        finally:
            os.close(fd)


def collect(path: str, unchanged: Mapping[str, str]) -> dict[str, str]:
    """Text of the files the run made or changed (symlinks and specials named, not read)."""
    out: dict[str, str] = {}
    budget = [MAX_TOTAL, MAX_ENTRIES]
    try:
        top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return out
    try:
        _walk(top, "", 0, unchanged, out, budget)
    finally:
        os.close(top)
    return out


def _walk(
    dfd: int,
    prefix: str,
    depth: int,
    unchanged: Mapping[str, str],
    out: dict[str, str],
    budget: list[int],
) -> None:
    try:
        names = sorted(os.listdir(dfd))
    except OSError:
        return
    for name in names:
        if budget[1] <= 0:
            out["..."] = "(more entries not listed)"
            return
        budget[1] -= 1
        rel = prefix + name
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode):
            out[rel] = "(symlink, not followed)"
        elif stat.S_ISDIR(st.st_mode):
            if depth + 1 >= MAX_DEPTH:
                continue
            try:
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
            except OSError:
                continue
            try:
                _walk(sub, rel + "/", depth + 1, unchanged, out, budget)
            finally:
                os.close(sub)
        elif stat.S_ISREG(st.st_mode):
            text = _read(dfd, name, st.st_size, budget)
            if text is not None and unchanged.get(rel) != text:
                out[rel] = text
        else:
            out[rel] = "(special file, not read)"


def _read(dfd: int, name: str, size: int, budget: list[int]) -> str | None:
    if size > MAX_FILE or size > budget[0]:
        return f"({size} bytes, not returned)"
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None  # swapped for something else since the stat
        data = os.read(fd, MAX_FILE + 1)[:MAX_FILE]
    finally:
        os.close(fd)
    budget[0] -= len(data)
    try:
        return data.decode()
    except UnicodeDecodeError:
        return f"({len(data)} bytes of binary, not returned)"


def usage(path: str) -> int:
    """Bytes the workdir takes on disk (allocated blocks; symlinks not followed)."""
    total = 0
    stack = [path]
    seen = 0
    while stack and seen < 100_000:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                for entry in it:
                    seen += 1
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(entry.path)
        except OSError:
            continue
    return total


def remove(path: str) -> None:
    """Remove the workdir; directories the code made unreadable are opened up first."""

    def fix(func: object, p: str, exc: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
        with contextlib.suppress(OSError):
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)

    shutil.rmtree(path, onerror=fix)
