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
import secrets
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

if TYPE_CHECKING:
    from yool.kernel.store import Store


class Entry(NamedTuple):
    digest: str
    result: Any
    error: str | None


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)


class Sealed(dict[str, Any]):
    """A JSON object that refuses changes, so its canonical text is computed once.

    A request whose "messages" are all Sealed is digested from those cached texts: a
    long history is not re-serialised on every step. Copies and pickles are plain dicts.
    """

    __slots__ = ("_canonical",)

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._canonical: str | None = None

    def canonical(self) -> str:
        """`json.dumps(self, sort_keys=True, separators=(",", ":"), default=repr)`, cached."""
        text = self._canonical
        if text is None:
            text = self._canonical = _canonical(self)
        return text

    def _refuse(self, *args: Any, **kw: Any) -> NoReturn:
        raise TypeError("a sealed JSON object cannot be changed")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))


# Stands in for a sealed "messages" list while the rest of the request is serialised; its
# text is random, so it cannot occur anywhere else in that text.
_HOLE = secrets.token_hex(16)


class _Hole:
    __slots__ = ()

    def __repr__(self) -> str:
        return _HOLE


_HOLE_JSON = json.dumps(_HOLE)


def digest(kind: str, request: Any) -> str:
    """A stable fingerprint of a request, to notice a replay that diverged.

    The blake2b of `[kind, request]`'s canonical JSON (sorted keys, compact, repr for
    what JSON cannot say); sealed messages contribute their cached text, the same bytes.
    """
    messages = request.get("messages") if type(request) is dict else None
    if type(messages) is list and messages and all(isinstance(m, Sealed) for m in messages):
        rest = dict(request)
        rest["messages"] = _Hole()
        body = "[" + ",".join([m.canonical() for m in messages]) + "]"
        text = _canonical([kind, rest]).replace(_HOLE_JSON, body, 1)
    else:
        text = _canonical([kind, request])
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
