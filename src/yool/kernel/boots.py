"""Which kernels are alive on one database: a lock file per boot, held while it runs.

Several yool processes may share a `YOOL_HOME` (a server for Claude Code, another for VS
Code, a `yool run` in a terminal). At boot a kernel marks the processes of kernels that
died as `interrupted`, and must leave the live ones alone. Each boot holds an exclusive
`flock` on its own file next to the database; the operating system drops the lock when the
process dies, however it dies, so a lock that can be taken belongs to a dead boot.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from pathlib import Path


def lock_dir(database: Path) -> Path:
    return database.with_name(database.name + ".boots")


def boot_alive(database: Path, boot: str) -> bool:
    """Whether boot `boot` of `database` still holds its lock (for readers like `yool ps`)."""
    try:
        fd = os.open(lock_dir(database) / f"{boot}.lock", os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the lock if we took it
    return False


class BootLock:
    """This boot's id and lock; `alive()` names the other boots still running."""

    def __init__(self, database: Path) -> None:
        self.dir = lock_dir(database)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.id = secrets.token_hex(8)
        self._fd: int | None = os.open(self.dir / f"{self.id}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def alive(self) -> set[str]:
        """The ids of the boots holding their lock (this one included); dead ones' files go."""
        live = {self.id}
        for path in self.dir.glob("*.lock"):
            boot = path.stem
            if boot == self.id:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                live.add(boot)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # its owner is gone
            finally:
                os.close(fd)
        return live

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            (self.dir / f"{self.id}.lock").unlink()
        os.close(self._fd)
        self._fd = None
