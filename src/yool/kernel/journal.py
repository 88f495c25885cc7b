"""The journal of driver I/O: record a run, replay it, or recover it.

Every device operation a process performs (and every spawn, so a replayed
tree finds its children) is an entry keyed by (stream, op): the stream is the
pid that first recorded it, the op a per-process counter. *Record* appends
live results. *Strict replay* answers from the journal only and fails on a
missing or diverging entry, so a replay makes zero live calls. *Recover*
answers from the journal while it lasts, then continues live and appends.
A replayed process copies the entries it consumed into its own stream, so its
journal is complete on its own and can be recovered again.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from yool.kernel.store import Store


class Entry(NamedTuple):
    digest: str
    result: Any
    error: str | None


def digest(kind: str, request: Any) -> str:
    """A stable fingerprint of a request, to notice a replay that diverged."""
    text = json.dumps([kind, request], sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


class Source:
    """The recorded streams of a tree being replayed, loaded before it starts."""

    __slots__ = ("streams", "strict")

    def __init__(self, streams: dict[int, dict[int, Entry]], strict: bool) -> None:
        self.streams = streams
        self.strict = strict


class Cursor:
    """One process's position in its own stream and, while replaying, in the source's."""

    __slots__ = ("op", "origin", "source", "stream")

    def __init__(self, stream: int, source: Source | None = None, origin: int | None = None):
        self.stream = stream
        self.op = 0
        self.source = source
        self.origin = origin  # the recorded stream this process replays

    def recorded(self, op: int) -> Entry | None:
        if self.source is None or self.origin is None:
            return None
        return self.source.streams.get(self.origin, {}).get(op)


class Journal:
    """Where entries go: the store when there is one, else memory."""

    __slots__ = ("_memory", "_store", "appended")

    def __init__(self, store: Store | None) -> None:
        self._store = store
        self._memory: dict[int, dict[int, Entry]] = {}
        self.appended = 0

    def append(self, stream: int, op: int, entry: Entry) -> None:
        self.appended += 1
        if self._store is not None:
            self._store.append_journal(stream, op, entry.digest, entry.result, entry.error)
        else:
            self._memory.setdefault(stream, {})[op] = entry

    async def load(self, stream: int) -> dict[int, Entry]:
        if self._store is None:
            return dict(self._memory.get(stream, {}))
        store = self._store
        await store.aflush()
        rows = await store.read(lambda _c: store.journal(stream))
        return {r.op: Entry(r.digest, r.result, r.error) for r in rows}

    async def load_tree(self, root: int) -> dict[int, dict[int, Entry]]:
        """The root's stream and, through its recorded spawns, every descendant's."""
        streams: dict[int, dict[int, Entry]] = {}
        todo = [root]
        while todo:
            stream = todo.pop()
            if stream in streams:
                continue
            streams[stream] = entries = await self.load(stream)
            for e in entries.values():
                if isinstance(e.result, dict) and e.result.get("spawned") is not None:
                    todo.append(int(e.result["spawned"]))
        return streams
