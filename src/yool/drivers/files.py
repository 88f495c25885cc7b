"""A filesystem device: read, list, search (and maybe write) files under granted roots only.

`FilesDriver({"/repo": "rw", "/docs": "r"})` offers those directory trees. A
process opens it with `await sys.open(dev, root="/repo/src", mode="r")`: the
handle is confined to that sub-tree and mode, which must lie inside one of the
driver's roots and inside every `{"root": ..., "mode": ...}` caveat on the
capability it was opened through (a parent narrows a child's files by deriving
the device capability with such a caveat; caveats only accumulate). Paths in
requests are relative to the handle's root (or absolute inside it); `..`
components are refused, and every path is resolved with symlinks followed, so a
link that points out of the root is refused too.

Reads: `{"op": "read", "path": p}`, `{"op": "list", "path": p}`,
`{"op": "search", "pattern": regex, "path": p}`, `{"op": "info"}`.
Writes (mode "rw" only): `{"op": "write", "path": p, "content": text}`.
Each read or write costs one tool call. Blocking file work runs in a thread.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from yool.kernel.accounts import Cost
from yool.kernel.devices import Driver, Handle, Reply
from yool.kernel.errors import DriverError

ONE_CALL = Cost(tool_calls=1)
MODES = ("r", "rw")
MAX_READ_BYTES = 1 << 20
MAX_SEARCH_HITS = 200
MAX_LIST = 1000


def _real(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.fspath(path))


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _mode(value: Any, what: str) -> str:
    if value not in MODES:
        raise DriverError(f"files: {what} must be 'r' or 'rw', got {value!r}")
    return str(value)


class FilesDriver(Driver):
    lane = "tools"

    def __init__(self, roots: Mapping[str | os.PathLike[str], str], name: str = "files") -> None:
        if not roots:
            raise DriverError("files: give at least one root, e.g. {'/repo': 'r'}")
        self.name = name
        self._roots: dict[str, str] = {}
        for root, mode in roots.items():
            real = _real(root)
            if not os.path.isdir(real):
                raise DriverError(f"files: root {os.fspath(root)!r} is not a directory")
            self._roots[real] = _mode(mode, f"mode of root {os.fspath(root)!r}")

    async def open(self, pid: int, params: dict[str, Any]) -> Handle:
        caveats: Iterable[Mapping[str, Any]] = params.get("caveats") or ()
        limits = [self._roots]  # the driver's roots, then each caveat's: all must allow it
        for c in caveats:
            if "root" in c:
                limits.append({_real(c["root"]): _mode(c.get("mode", "r"), "caveat mode")})
        want = params.get("root")
        if want is None:
            narrowest = limits[-1]
            if len(narrowest) != 1:
                raise DriverError(
                    f"files: say which root to open (root=...): one of {sorted(self._roots)}"
                )
            want = next(iter(narrowest))
        if not isinstance(want, str | os.PathLike):
            raise DriverError(f"files: root must be a path, got {type(want).__name__}")
        root = _real(want)
        mode = _mode(params.get("mode", "r"), "mode")
        for allowed in limits:
            granted = [m for r, m in allowed.items() if _within(root, r)]
            if not granted:
                raise DriverError(f"files: {os.fspath(want)!r} is outside the granted paths")
            if mode == "rw" and "rw" not in granted:
                raise DriverError(f"files: {os.fspath(want)!r} is granted read-only")
        if not await asyncio.to_thread(os.path.isdir, root):
            raise DriverError(f"files: root {os.fspath(want)!r} is not a directory")
        return FilesHandle(root, mode)


class FilesHandle(Handle):
    __slots__ = ("mode", "root")

    def __init__(self, root: str, mode: str) -> None:
        self.root = root
        self.mode = mode

    def estimate(self, request: Any) -> Cost:
        return ONE_CALL

    def resolve(self, path: Any) -> str:
        """The real path of `path` inside this root, or DriverError."""
        if not isinstance(path, str):
            raise DriverError(f"files: path must be a string, got {type(path).__name__}")
        p = Path(path)
        if ".." in p.parts:
            raise DriverError(f"files: {path!r}: '..' is not allowed in paths")
        real = _real(p if p.is_absolute() else Path(self.root) / p)
        if not _within(real, self.root):
            raise DriverError(f"files: {path!r} is outside the granted root {self.root}")
        return real

    def _rel(self, real: str) -> str:
        return os.path.relpath(real, self.root)

    async def read(self, request: Any) -> Reply:
        op = _op(request, ("read", "list", "search", "info"))
        if op == "info":
            return Reply({"root": self.root, "mode": self.mode}, ONE_CALL)
        path = self.resolve(request.get("path", "."))
        if op == "read":
            return Reply(await asyncio.to_thread(self._read, path), ONE_CALL)
        if op == "list":
            return Reply(await asyncio.to_thread(self._list, path), ONE_CALL)
        pattern = request.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise DriverError("files: search needs a non-empty 'pattern' (a regex)", ONE_CALL)
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise DriverError(f"files: bad pattern {pattern!r}: {e}", ONE_CALL) from None
        return Reply(await asyncio.to_thread(self._search, path, rx), ONE_CALL)

    async def write(self, data: Any) -> Reply:
        _op(data, ("write",))
        if self.mode != "rw":
            raise DriverError(f"files: {self.root} is read-only")
        path = self.resolve(data.get("path"))
        content = data.get("content")
        if not isinstance(content, str):
            raise DriverError("files: write needs 'content' (a string)")
        await asyncio.to_thread(self._write, path, content)
        return Reply({"path": self._rel(path), "bytes": len(content.encode())}, ONE_CALL)

    # -- blocking work, in a thread --------------------------------------------

    def _read(self, path: str) -> str:
        if not os.path.isfile(path):
            raise DriverError(f"files: {self._rel(path)!r} is not a file", ONE_CALL)
        with open(path, "rb") as f:
            data = f.read(MAX_READ_BYTES + 1)
        text = data[:MAX_READ_BYTES].decode("utf-8", errors="replace")
        if len(data) > MAX_READ_BYTES:
            text += f"\n…[file longer than {MAX_READ_BYTES} bytes; rest not read]"
        return text

    def _list(self, path: str) -> list[str]:
        if not os.path.isdir(path):
            raise DriverError(f"files: {self._rel(path)!r} is not a directory", ONE_CALL)
        out: list[str] = []
        for entry in sorted(os.scandir(path), key=lambda e: e.name)[:MAX_LIST]:
            out.append(entry.name + ("/" if entry.is_dir(follow_symlinks=False) else ""))
        return out

    def _search(self, path: str, rx: re.Pattern[str]) -> list[str]:
        hits: list[str] = []
        files = [path] if os.path.isfile(path) else _walk(path)
        for file in files:
            real = _real(file)
            if not _within(real, self.root) or not os.path.isfile(real):
                continue  # a symlink out of the root is not followed
            try:
                with open(real, "rb") as f:
                    data = f.read(MAX_READ_BYTES)
            except OSError:
                continue
            if b"\0" in data[:1024]:
                continue  # binary
            for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
                if rx.search(line):
                    hits.append(f"{self._rel(file)}:{n}: {line.strip()[:200]}")
                    if len(hits) >= MAX_SEARCH_HITS:
                        return hits
        return hits

    def _write(self, path: str, content: str) -> None:
        parent = os.path.dirname(path)
        if not _within(_real(parent), self.root):
            raise DriverError(f"files: {self._rel(path)!r} is outside the granted root")
        os.makedirs(parent, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(content)


def _walk(top: str) -> list[str]:
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        dirnames.sort()
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames))
    return out


def _op(request: Any, ops: tuple[str, ...]) -> str:
    if not isinstance(request, dict):
        raise DriverError(f"files: a request is a dict with 'op' ({', '.join(ops)})")
    op = request.get("op")
    if op not in ops:
        raise DriverError(f"files: op must be one of {', '.join(ops)}, got {op!r}")
    return str(op)
