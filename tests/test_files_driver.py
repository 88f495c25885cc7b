"""The files device: confined to granted roots, narrowed by capability caveats."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from yool.drivers.files import FilesDriver
from yool.kernel import NORMAL, DriverError, Kernel, Sys

Body = Callable[[Sys, str], Coroutine[Any, Any, Any]]


def _tree(tmp: Path) -> Path:
    root = tmp / "root"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "a.txt").write_text("alpha\nneedle here\n")
    (root / "b.txt").write_text("beta\n")
    (tmp / "outside.txt").write_text("needle outside\n")
    (tmp / "elsewhere").mkdir()
    (root / "docs" / "link").symlink_to(tmp / "outside.txt")
    (root / "dirlink").symlink_to(tmp / "elsewhere", target_is_directory=True)
    return root


def _run(body: Body, roots: dict[Path, str], caveat: dict[str, Any] | None = None) -> Any:
    async def main() -> Any:
        async with Kernel() as k:
            dev = k.register_driver(FilesDriver(roots))
            box: dict[str, Any] = {}

            async def proc(sys: Sys) -> None:
                d = sys.cap("device")
                assert d is not None
                box["v"] = await body(sys, d)

            cap = k.init.derive(dev, caveat=caveat)
            c = k.init.spawn(proc, caps=[cap])
            assert await asyncio.wait_for(k.wait(c.pid), 30) == NORMAL
            return box["v"]

    return asyncio.run(main())


async def _refused(coro: Coroutine[Any, Any, Any]) -> str:
    try:
        await coro
    except DriverError as e:
        return str(e)
    raise AssertionError("not refused")


def test_reads_lists_searches_and_writes_inside_the_root(tmp_path: Path) -> None:
    root = _tree(tmp_path)

    async def body(sys: Sys, dev: str) -> Any:
        h = await sys.open(dev, mode="rw")
        await sys.write(h, {"op": "write", "path": "new/c.txt", "content": "gamma needle"})
        return (
            await sys.read(h, {"op": "read", "path": "docs/a.txt"}),
            await sys.read(h, {"op": "list", "path": "."}),
            await sys.read(h, {"op": "search", "pattern": "needle"}),
            sys.usage()["tool_calls"],
        )

    text, listing, hits, calls = _run(body, {root: "rw"})
    assert text == "alpha\nneedle here\n"
    assert listing == ["b.txt", "dirlink", "docs/", "new/"]
    assert hits == ["docs/a.txt:2: needle here", "new/c.txt:1: gamma needle"]  # no escape
    assert calls == 4  # one tool call each
    assert (root / "new" / "c.txt").read_text() == "gamma needle"


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("../outside.txt", "'..' is not allowed"),
        ("docs/../../outside.txt", "'..' is not allowed"),
        ("ABS", "outside the granted root"),
        ("docs/link", "outside the granted root"),
        ("dirlink/x.txt", "outside the granted root"),
    ],
)
def test_paths_outside_the_root_are_refused(tmp_path: Path, path: str, error: str) -> None:
    root = _tree(tmp_path)
    if path == "ABS":
        path = str(tmp_path / "outside.txt")

    async def body(sys: Sys, dev: str) -> Any:
        h = await sys.open(dev, mode="rw")
        read = await _refused(sys.read(h, {"op": "read", "path": path}))
        write = await _refused(sys.write(h, {"op": "write", "path": path, "content": "x"}))
        return read, write

    read, write = _run(body, {root: "rw"})
    assert error in read and error in write
    assert (tmp_path / "outside.txt").read_text() == "needle outside\n"
    assert not (tmp_path / "elsewhere" / "x.txt").exists()


def test_a_read_only_root_refuses_writes_and_read_write_opens(tmp_path: Path) -> None:
    root = _tree(tmp_path)

    async def body(sys: Sys, dev: str) -> Any:
        rw = await _refused(sys.open(dev, mode="rw"))
        h = await sys.open(dev)
        write = await _refused(sys.write(h, {"op": "write", "path": "b.txt", "content": "x"}))
        return rw, write

    rw, write = _run(body, {root: "r"})
    assert "read-only" in rw and "read-only" in write
    assert (root / "b.txt").read_text() == "beta\n"


def test_a_caveat_narrows_the_root_and_mode_and_cannot_be_widened(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    docs = str(root / "docs")

    async def body(sys: Sys, dev: str) -> Any:
        h = await sys.open(dev)  # defaults to the caveat's root
        inside = await sys.read(h, {"op": "read", "path": "a.txt"})
        sibling = await _refused(sys.read(h, {"op": "read", "path": str(root / "b.txt")}))
        wider = await _refused(sys.open(dev, root=str(root)))
        rw = await _refused(sys.open(dev, root=docs, mode="rw"))
        # deriving again adds a caveat; it never replaces the first
        again = sys.derive(dev, caveat={"root": str(root), "mode": "rw"})
        still = await _refused(sys.open(again, root=str(root)))
        forged = await _refused(sys.open(dev, root=str(root), caveats=()))
        return inside, sibling, wider, rw, still, forged

    inside, sibling, *refusals = _run(body, {root: "rw"}, caveat={"root": docs, "mode": "r"})
    assert inside == "alpha\nneedle here\n"
    assert "outside the granted root" in sibling
    assert "outside the granted paths" in refusals[0]
    assert "read-only" in refusals[1]
    assert "outside the granted paths" in refusals[2]
    assert "outside the granted paths" in refusals[3]


def test_the_driver_refuses_bad_roots(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="not a directory"):
        FilesDriver({tmp_path / "missing": "r"})
    with pytest.raises(DriverError, match="'r' or 'rw'"):
        FilesDriver({tmp_path: "w"})
