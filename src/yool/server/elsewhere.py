"""Agents that other yool servers on this YOOL_HOME run, for the editor (`yool/others`).

VS Code's agent mode starts `yool server --stdio` itself: a process with a session of its
own beside the extension's `yool server --lsp`, sharing the store. The LSP session's `ps`
lists only its own agents, so this reads the others' from the store (read-only, as
`yool ps --json` does, on a worker thread) and, while the editor watches, reads again
whenever the store has changed (SQLite's `data_version`, looked at once per `interval`; and
every `REREAD_EVERY` looks regardless), telling the editor only when the list did change.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from yool.watch import NoStore, agents, open_store

log = logging.getLogger("yool.server.elsewhere")

POLL_S = 1.0
REREAD_EVERY = 10  # looks

Rows = list[dict[str, Any]]


class Elsewhere:
    """The other servers' agents: `await read()` once, `watch(True)` for `changed(rows)`.

    `mine(pid)` says which store rows are this server's own (those the editor already has
    from `ps`); every other row is someone else's.
    """

    def __init__(
        self,
        path: Path,
        mine: Callable[[int], bool],
        changed: Callable[[Rows], None],
        *,
        interval: float = POLL_S,
    ) -> None:
        self.path = path
        self.mine = mine
        self.changed = changed
        self.interval = interval
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one reader of the connection at a time
        self._task: asyncio.Task[None] | None = None
        self._last: Rows | None = None
        self._warned = False

    async def read(self) -> Rows:
        """The other servers' agents now (none when the store cannot be read)."""
        _, rows = await asyncio.to_thread(self._read, None)
        return self._others(rows)

    def watch(self, on: bool) -> None:
        if on and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll())
        elif not on and self._task is not None:
            self._task.cancel()
            self._task = None
            self._last = None

    @property
    def watching(self) -> bool:
        return self._task is not None

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(self._close)

    async def _poll(self) -> None:
        seen: int | None = None
        for n in itertools.count():
            # every REREAD_EVERY-th look reads anyway: a server killed outright commits
            # nothing, yet its running agents now read as interrupted
            version, rows = await asyncio.to_thread(
                self._read, None if n % REREAD_EVERY == 0 else seen
            )
            if version is not None and (version != seen or n % REREAD_EVERY == 0):
                seen = version
                others = self._others(rows)
                if others != self._last:
                    self._last = others
                    try:
                        self.changed(others)
                    except Exception:  # the editor went away mid-send: keep looking
                        log.exception("could not send the other servers' agents")
            await asyncio.sleep(self.interval)

    def _others(self, rows: Rows) -> Rows:
        mine = self.mine
        return [row for row in rows if not mine(row["pid"])]

    # -- on a worker thread -------------------------------------------------------------

    def _read(self, unless: int | None) -> tuple[int | None, Rows]:
        """The store's data version and, unless it is still `unless`, its agent rows."""
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = open_store(self.path, any_thread=True)
                version = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
                if unless is not None and version == unless:
                    return version, []
                return version, agents(self._conn)
            except (NoStore, sqlite3.Error) as e:
                if not self._warned:  # once: the editor's view just lacks these rows
                    log.warning("cannot read other servers' agents: %s", e)
                    self._warned = True
                self._close_locked()
                return None, []

    def _close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
