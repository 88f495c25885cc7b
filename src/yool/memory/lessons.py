"""Lessons: short reusable tactics and gotchas, remembered across sessions and recalled by
relevance.

A lesson lives in the `lessons` table of the store (`$YOOL_HOME/yool.db`) with an FTS5 index
over its text (porter stemming, diacritics folded). It belongs to one scope: `global`, or
the workspace it was learnt in; recall searches this workspace's lessons and the global ones,
and ranks this workspace's first. Remembering a text that is already known (compared after
normalising case, whitespace and punctuation) merges the tags into the existing lesson and
returns it. Recalling a lesson counts a use of it (counted in memory and written in one batch
at most USES_DELAY_S later, or on close: a write on every recall would send the next one to a
cold page cache).

Ranking is BM25 (FTS5's `bm25`, over every query word), with its cost bounded so that a
recall stays within a couple of milliseconds over a hundred thousand lessons (FTS5 scores
every lesson matching any word, ~2 µs each: a common word in 10,000 lessons would cost 20 ms).
Each word is first counted, up to RANK_BUDGET + 1. The rarest words, as many as are held by
at most RANK_BUDGET lessons together, are ranked by FTS5's BM25; each of the more common words
a candidate holds adds its BM25 weight (its count estimated from the newest ids, at one
occurrence). When every word is common, the newest ANCHOR_WINDOW lessons holding the most
telling one are scored that way, all in Python. When the query's words are held by at most
RANK_BUDGET lessons altogether (any store of that size or less), this is exact BM25; past that
it is an approximation (`bench/memory.py` measures how close). Lessons that fill the k past
those come newest first.

User text never reaches FTS5 as syntax: the query is cut into words, each quoted as a string.
Writes go through the store's writer thread and reads run on its reader threads, so nothing
blocks the event loop; a session without a store gets a private in-memory SQLite database
(`MemoryDB`) with the same schema, served by the same code.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import json
import logging
import math
import re
import sqlite3
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeVar

from yool.kernel.store import LESSONS_SCHEMA

__all__ = [
    "GLOBAL",
    "ImportReport",
    "Lesson",
    "LessonError",
    "LessonImportError",
    "Lessons",
    "LessonsDB",
    "MemoryDB",
    "normalise",
    "query_terms",
]

T = TypeVar("T")
log = logging.getLogger(__name__)

GLOBAL: Final = "global"
Scope = Literal["workspace", "global"]

MAX_TEXT_CHARS: Final = 2000
MAX_TAGS: Final = 16  # given at once
MAX_MERGED_TAGS: Final = 32  # kept on one lesson after merges
MAX_TAG_CHARS: Final = 40
MAX_K: Final = 100
MAX_TERMS: Final = 16  # distinct query words looked at (a long task text is cut here)
MAX_COMMON: Final = 8  # too-common words looked at (to fill up the k)
HELD_WORDS: Final = 4  # of them, the most telling, whose presence in a candidate is scored
RANK_BUDGET: Final = 200  # lessons BM25 ranks per recall (bounds its cost)
OPTIMIZE_EVERY: Final = 1000  # lessons added between two merges of the FTS index
USES_DELAY_S: Final = 1.0  # uses counted by recall are written this much later, together
ANCHOR_WINDOW: Final = 80  # newest lessons of the most telling word, when all are common
SAMPLE_SPAN: Final = 2000  # newest ids a common word's count is estimated from
WINDOW: Final = 48  # newest lessons holding any common word, to fill up the k
CACHE_KB: Final = 32_000  # page cache of a connection recall reads on (SQLite's default: 2 MB)
K1: Final = 1.2  # FTS5's bm25 parameters, for the weights estimated here
B: Final = 0.75

_COLUMNS: Final = "id, text, scope, tags, uses, created, last_used, source"
_TAG = re.compile(rf"[\w.+#/:@-]{{1,{MAX_TAG_CHARS}}}")
_WORD = re.compile(r"\w+")
# Unicode punctuation, and the modifier symbols used as such (` ^ ¨)
_PUNCTUATION: Final = frozenset({"Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sk"})
_dumps: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

# Words that say nothing about which lesson is meant; dropped from queries (unless a query
# has nothing else).
_STOP_TEXT: Final = """
    a about above after again against all also am an and any are as at be because been
    before being below between both but by can could did do does doing down during each
    few for from further had has have having he her here hers him his how i if in into is
    it its itself just me more most my no nor not now of off on once only or other our
    ours out over own same she should so some such than that the their theirs them then
    there these they this those through to too under until up very was we were what when
    where which while who whom why will with would you your yours
"""
STOPWORDS: Final = frozenset(_STOP_TEXT.split())


class LessonError(ValueError):
    """Bad input to `Lessons`: the message names the field and the fix."""


class LessonImportError(LessonError):
    """A JSONL import refused because of bad lines: `problems` holds (line number, why)."""

    def __init__(self, problems: list[tuple[int, str]]) -> None:
        self.problems = problems
        shown = "; ".join(f"line {n}: {why}" for n, why in problems[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        super().__init__(f"import: {len(problems)} bad line(s), nothing imported: {shown}{more}")


@dataclass(frozen=True, slots=True)
class Lesson:
    id: int
    text: str
    tags: tuple[str, ...]
    scope: str  # "global" or the workspace path it belongs to
    uses: int
    created: float
    last_used: float | None
    source: dict[str, Any] | None  # e.g. {"pid": 12} when distilled from an agent

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "text": self.text,
            "tags": list(self.tags),
            "scope": self.scope,
            "uses": self.uses,
            "created": self.created,
            "last_used": self.last_used,
            "source": self.source,
        }


@dataclass(frozen=True, slots=True)
class ImportReport:
    added: int
    merged: int  # lines that matched a lesson already known (tags and counts merged)


# -- text ---------------------------------------------------------------------------------


def _valid_unicode(text: str) -> str:
    """`text` without lone surrogates (JSON can carry them; SQLite can't store them)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def normalise(text: str) -> str:
    """The form two lessons are compared in: case, whitespace and punctuation don't count."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    spaced = "".join(" " if unicodedata.category(ch) in _PUNCTUATION else ch for ch in folded)
    return " ".join(spaced.split())


def clean_text(text: str) -> str:
    if not isinstance(text, str):
        raise LessonError("text: must be a string")
    out = _valid_unicode(text).strip()
    if not out:
        raise LessonError("text: empty; give the lesson in a sentence")
    if len(out) > MAX_TEXT_CHARS:
        raise LessonError(f"text: {len(out)} characters; keep a lesson under {MAX_TEXT_CHARS}")
    if not normalise(out):
        raise LessonError("text: has no words; give the lesson in a sentence")
    return out


def clean_tags(tags: Iterable[str], limit: int = MAX_TAGS) -> tuple[str, ...]:
    """Tags lower-cased, inner spaces as '-', duplicates dropped; LessonError if malformed."""
    if isinstance(tags, str):
        raise LessonError("tags: a list of tags, not one string")
    out: dict[str, None] = {}
    for raw in tags:
        if not isinstance(raw, str):
            raise LessonError(f"tags: {raw!r} is not a string")
        tag = "-".join(_valid_unicode(raw).lower().split())
        if not _TAG.fullmatch(tag):
            raise LessonError(
                f"tags: {raw!r} is not a tag (1-{MAX_TAG_CHARS} letters, digits or ._-+#/:@)"
            )
        out[tag] = None
    if len(out) > limit:
        raise LessonError(f"tags: {len(out)} tags; give at most {limit}")
    return tuple(out)


def query_terms(query: str) -> list[str]:
    """The words of `query` to search for: distinct, lower-cased, stopwords dropped (unless
    nothing else is left), at most MAX_TERMS."""
    words = dict.fromkeys(
        w for w in (m.casefold() for m in _WORD.findall(_valid_unicode(query))) if w.strip("_")
    )
    kept = [w for w in words if w not in STOPWORDS] or list(words)
    return kept[:MAX_TERMS]


def _phrase(term: str) -> str:
    """`term` as an FTS5 string: whatever it holds, it is never read as query syntax."""
    return '"' + term.replace('"', '""') + '"'


def _any(terms: Iterable[str]) -> str:
    return " OR ".join(_phrase(t) for t in terms)


# -- the database a Lessons works on ---------------------------------------------------------


class LessonsDB(Protocol):
    """Where lessons live: the `Store` (writer thread, reader pool) or a `MemoryDB`."""

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...
    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...
    def write_later(self, fn: Callable[[sqlite3.Connection], object]) -> None: ...


class MemoryDB:
    """A private in-memory SQLite database with the lessons schema, used by one thread.

    Reads and writes run in that thread (off the event loop), one at a time; a write is one
    transaction, rolled back if it raises.
    """

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="yool-lessons")
        self._conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        for statement in LESSONS_SCHEMA:
            self._conn.execute(statement)
        self.closed = False

    def _write_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    def _run(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        if self.closed:
            raise LessonError("lessons: the in-memory lesson database is closed")
        return asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(partial(fn, self._conn))

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(partial(self._write_sync, fn))

    def write_later(self, fn: Callable[[sqlite3.Connection], object]) -> None:
        if self.closed:
            return
        future = self._pool.submit(self._write_sync, fn)
        future.add_done_callback(_log_failure)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._pool.shutdown(wait=True)
            self._conn.close()


def _log_failure(future: concurrent.futures.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("lessons: a queued write failed: %s", future.exception())


# -- queries run on a connection -------------------------------------------------------------


def _lesson(row: tuple[Any, ...]) -> Lesson:
    lid, text, scope, tags, uses, created, last_used, source = row
    return Lesson(
        lid,
        text,
        tuple(json.loads(tags)),
        scope,
        uses,
        created,
        last_used,
        None if source is None else json.loads(source),
    )


def _by_ids(conn: sqlite3.Connection, ids: list[int]) -> dict[int, Lesson]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM lessons WHERE id IN (SELECT value FROM json_each(?))",
        (_dumps(ids),),
    )
    return {row[0]: _lesson(row) for row in rows}


def _merge_tags(old: Iterable[str], new: Iterable[str]) -> list[str]:
    return list(dict.fromkeys([*old, *new]))[:MAX_MERGED_TAGS]


@dataclass(frozen=True, slots=True)
class _Entry:
    """One lesson to remember, checked; `uses`, `created`, `last_used` come from an import."""

    text: str
    norm: str
    tags: tuple[str, ...]
    scope: str
    source: dict[str, Any] | None
    created: float
    uses: int = 0
    last_used: float | None = None


def _put(conn: sqlite3.Connection, entry: _Entry, here: str) -> tuple[Lesson, bool]:
    """Insert `entry`, or merge it into the lesson with the same text that `here` sees.

    Seen from a workspace, a global lesson with the same text is the same lesson; a lesson
    remembered globally that this workspace already has becomes global.
    """
    other = here if entry.scope == GLOBAL else GLOBAL
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM lessons WHERE norm = ? AND scope IN (?, ?)"
        " ORDER BY scope = ? DESC LIMIT 1",
        (entry.norm, entry.scope, other, entry.scope),
    ).fetchall()
    if not rows:
        (lid,) = conn.execute(
            "INSERT INTO lessons (text, norm, scope, tags, uses, created, last_used, source)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                entry.text,
                entry.norm,
                entry.scope,
                _dumps(list(entry.tags)),
                entry.uses,
                entry.created,
                entry.last_used,
                None if entry.source is None else _dumps(entry.source),
            ),
        ).fetchone()
        if lid % OPTIMIZE_EVERY == 0:
            _optimize(conn)
        return (
            Lesson(
                lid,
                entry.text,
                entry.tags,
                entry.scope,
                entry.uses,
                entry.created,
                entry.last_used,
                entry.source,
            ),
            True,
        )
    old = _lesson(rows[0])
    tags = _merge_tags(old.tags, entry.tags)
    scope = GLOBAL if entry.scope == GLOBAL else old.scope
    uses = max(old.uses, entry.uses)
    last = max((t for t in (old.last_used, entry.last_used) if t is not None), default=None)
    created = min(old.created, entry.created)
    conn.execute(
        "UPDATE lessons SET tags = ?, scope = ?, uses = ?, last_used = ?, created = ? WHERE id = ?",
        (_dumps(tags), scope, uses, last, created, old.id),
    )
    return Lesson(old.id, old.text, tuple(tags), scope, uses, created, last, old.source), False


def _optimize(conn: sqlite3.Connection) -> None:
    """Merge the FTS index into one b-tree: a recall then reads one segment per word, not
    one per batch of inserts (~2x faster). About 0.3 s at 100,000 lessons, so it runs once
    per OPTIMIZE_EVERY lessons added, and after an import."""
    conn.execute("INSERT INTO lessons_fts (lessons_fts) VALUES ('optimize')")


def _put_all(conn: sqlite3.Connection, entries: list[_Entry], here: str) -> ImportReport:
    added = 0
    for entry in entries:
        added += _put(conn, entry, here)[1]
    if added:
        _optimize(conn)
    return ImportReport(added=added, merged=len(entries) - added)


def _forget(conn: sqlite3.Connection, ids: list[int]) -> int:
    cursor = conn.execute(
        "DELETE FROM lessons WHERE id IN (SELECT value FROM json_each(?))", (_dumps(ids),)
    )
    return cursor.rowcount


def _bump(conn: sqlite3.Connection, uses: list[tuple[int, float, int]]) -> None:
    """Count uses: (times used, last used, id) per lesson."""
    conn.executemany(
        "UPDATE lessons SET uses = uses + ?, last_used = max(coalesce(last_used, 0), ?)"
        " WHERE id = ?",
        uses,
    )


@dataclass(frozen=True, slots=True)
class _Query:
    terms: tuple[str, ...]
    tags: tuple[str, ...]
    here: str
    k: int

    def filters(self) -> tuple[str, tuple[Any, ...]]:
        """SQL (on lessons `l`) keeping this workspace's and global lessons with every tag."""
        sql = " AND l.scope IN (?, 'global')"
        params: tuple[Any, ...] = (self.here,)
        for tag in self.tags:
            sql += " AND instr(l.tags, ?) > 0"  # tags hold no quotes: '"tag"' is exact
            params += (_dumps(tag),)
        return sql, params


def _idf(hits: float, rows: float) -> float:
    """FTS5's BM25 idf for a word in `hits` of `rows` lessons."""
    idf = math.log((rows - hits + 0.5) / (hits + 0.5))
    return idf if idf > 0 else 1e-6


def _counts(conn: sqlite3.Connection, terms: list[str]) -> tuple[int, list[tuple[int, float]]]:
    """The highest lesson id (about how many lessons there are), and for each term: how many
    lessons hold it counted up to RANK_BUDGET + 1 (cheap at any size), and how many are
    estimated to (from the newest SAMPLE_SPAN ids; exact on a store no bigger than that)."""
    capped = "(SELECT count(*) FROM (SELECT 1 FROM lessons_fts WHERE lessons_fts MATCH ? LIMIT ?))"
    newest = "(SELECT count(*) FROM lessons_fts WHERE lessons_fts MATCH ? AND rowid > top - ?)"
    params: list[Any] = []
    for term in terms:
        params += [_phrase(term), RANK_BUDGET + 1, _phrase(term), SAMPLE_SPAN]
    top, *row = conn.execute(
        "WITH newest (top) AS (SELECT coalesce(max(id), 1) FROM lessons) SELECT top, "
        + ", ".join([f"{capped}, {newest}"] * len(terms))
        + " FROM newest",
        params,
    ).fetchone()
    span = min(top, SAMPLE_SPAN)
    pairs = [(row[i], max(float(row[i]), row[i + 1] * top / span)) for i in range(0, len(row), 2)]
    return top, pairs


def _holding(
    conn: sqlite3.Connection, match: str, terms: list[str], low: int = 0
) -> list[tuple[int, int]]:
    """(lesson id, index of the term) for each of `terms` held by a lesson matching `match`
    (any lesson when `match` is empty) with an id of at least `low`."""
    one = "SELECT rowid, {} FROM lessons_fts WHERE lessons_fts MATCH ? AND rowid >= ?"
    sql = " UNION ALL ".join(one.format(i) for i in range(len(terms)))
    params: list[Any] = []
    for term in terms:
        params += [f"({match}) AND {_phrase(term)}" if match else _phrase(term), low]
    return conn.execute(sql, params).fetchall()


def _order(
    q: _Query, found: Mapping[int, tuple[str, float]], skip: Iterable[int] = ()
) -> list[int]:
    """Ids by scope (this workspace first), then score (higher first), then newest."""
    here, skipped = q.here, set(skip)
    keys = [(scope != here, -score, -i) for i, (scope, score) in found.items() if i not in skipped]
    return [-key[2] for key in heapq.nsmallest(q.k, keys)]


def _norms(rows: list[tuple[int, str, int]]) -> dict[int, float]:
    """BM25's length normalisation at one occurrence, per lesson (length in characters)."""
    mean = sum(n for _, _, n in rows) / len(rows) or 1.0
    return {lid: (K1 + 1) / (1 + K1 * (1 - B + B * n / mean)) for lid, _, n in rows}


def _window(
    conn: sqlite3.Connection, match: str, size: int, where: str, params: tuple[Any, ...]
) -> list[tuple[int, str, int]]:
    """(id, scope, length) of the newest `size` lessons matching `match`, then filtered."""
    return conn.execute(
        "SELECT l.id, l.scope, length(l.text) FROM (SELECT rowid AS id FROM lessons_fts"
        " WHERE lessons_fts MATCH ? ORDER BY rowid DESC LIMIT ?) w"
        f" JOIN lessons l ON l.id = w.id WHERE 1{where}",
        (match, size, *params),
    ).fetchall()


def _search(conn: sqlite3.Connection, q: _Query) -> list[int]:
    """The ids of the k best lessons for `q`, best first (see the module docstring)."""
    where, params = q.filters()
    if not q.terms:
        if not q.tags:
            return []
        rows = conn.execute(
            f"SELECT l.id FROM lessons l WHERE 1{where}"
            " ORDER BY l.scope = ? DESC, l.uses DESC, l.id DESC LIMIT ?",
            (*params, q.here, q.k),
        )
        return [lid for (lid,) in rows]
    top, pairs = _counts(conn, list(q.terms))
    counts = sorted((n, est, t) for (n, est), t in zip(pairs, q.terms, strict=True) if n > 0)
    if not counts:
        return []
    rare: list[str] = []
    total = 0
    for n, _, term in counts:
        if total + n > RANK_BUDGET:
            break
        rare.append(term)
        total += n
    # The common ones, the most telling (estimated to be in the fewest lessons) first.
    spread = sorted((est, t) for _, est, t in counts[len(rare) :])[:MAX_COMMON]
    common = [t for _, t in spread]
    weights = [_idf(min(est, top), top) for est, _ in spread]
    found: dict[int, tuple[str, float]] = {}
    norms: dict[int, float] = {}  # the common words' weights scale by these (1 if absent)
    match = ""
    extra: list[str] = []
    if rare:
        # Exact BM25 over the rare words; a common word held adds its weight.
        match = _any(rare)
        found = {
            lid: (scope, -rank)
            for lid, rank, scope in conn.execute(
                "SELECT f.rowid, bm25(lessons_fts), l.scope FROM lessons_fts f"
                f" JOIN lessons l ON l.id = f.rowid WHERE lessons_fts MATCH ?{where}",
                (match, *params),
            )
        }
        extra = common[:HELD_WORDS]
    elif common:
        # Every word is common: score the newest lessons holding the most telling one.
        match = _phrase(common[0])
        anchored = _window(conn, match, ANCHOR_WINDOW, where, params)
        norms = _norms(anchored) if anchored else {}
        found = {lid: (scope, weights[0] * norms[lid]) for lid, scope, _ in anchored}
        extra, weights = common[1:HELD_WORDS], weights[1:HELD_WORDS]
    if found and extra:
        for lid, i in _holding(conn, match, extra, min(found)):
            if lid in found:
                scope, score = found[lid]
                found[lid] = (scope, score + weights[i] * norms.get(lid, 1.0))
    chosen = _order(q, found)
    if len(chosen) < q.k and common:
        chosen += _newest(conn, q, common, where, params, skip=chosen)
    return chosen


def _newest(
    conn: sqlite3.Connection,
    q: _Query,
    common: list[str],
    where: str,
    params: tuple[Any, ...],
    skip: list[int],
) -> list[int]:
    """To fill up: the newest lessons holding any of the common words, shorter first."""
    rows = _window(conn, _any(common), WINDOW, where, params)
    if not rows:
        return []
    norms = _norms(rows)
    found = {lid: (scope, norms[lid]) for lid, scope, _ in rows}
    return _order(q, found, skip)[: q.k - len(skip)]


def _warm(conn: sqlite3.Connection) -> None:
    """Give a reader connection a page cache that holds a large store's working set, once.

    Recall reads the FTS index and the lessons it ranks at random; with SQLite's default
    2 MB cache, a third of a recall over 100,000 lessons goes to re-reading pages from the
    OS. (Connections can't be weakly referenced: they are known by id; a reused id at worst
    leaves a new connection on the default cache.)
    """
    if id(conn) not in _WARMED:
        conn.execute(f"PRAGMA cache_size = -{CACHE_KB}")
        _WARMED.add(id(conn))


_WARMED: set[int] = set()


def _recall(conn: sqlite3.Connection, q: _Query) -> list[Lesson]:
    _warm(conn)
    ids = _search(conn, q)
    if not ids:
        return []
    rows = _by_ids(conn, ids)
    return [rows[i] for i in ids if i in rows]


def _list(conn: sqlite3.Connection, here: str | None, limit: int | None) -> list[Lesson]:
    """Lessons in id order: those `here` sees (its own and global ones), or all of them."""
    sql = f"SELECT {_COLUMNS} FROM lessons"
    params: tuple[Any, ...] = ()
    if here is not None:
        sql += " WHERE scope IN (?, 'global')"
        params = (here,)
    sql += " ORDER BY id"
    if limit is not None:
        sql += " DESC LIMIT ?"
        params += (limit,)
    return [_lesson(row) for row in conn.execute(sql, params)]


def _nothing(_conn: sqlite3.Connection) -> None:
    """A write that changes nothing: awaiting it waits for the writes queued before it."""


# -- import checks ------------------------------------------------------------------------------


def _entry(data: Any, here: str, now: float) -> _Entry:
    if not isinstance(data, dict):
        raise LessonError("not a JSON object")
    text = clean_text(data.get("text"))  # type: ignore[arg-type]
    tags = data.get("tags", [])
    if not isinstance(tags, list):
        raise LessonError("tags: must be a list of strings")
    cleaned = clean_tags(tags, MAX_MERGED_TAGS)  # an export holds merged tags
    scope = data.get("scope", GLOBAL)
    if not isinstance(scope, str) or not scope.strip():
        raise LessonError('scope: must be "global", "workspace" or a workspace path')
    scope = here if scope == "workspace" else scope
    uses = data.get("uses", 0)
    if not isinstance(uses, int) or isinstance(uses, bool) or uses < 0:
        raise LessonError("uses: must be a whole number >= 0")
    created = _time(data.get("created", now), "created")
    last = data.get("last_used")
    last_used = None if last is None else _time(last, "last_used")
    source = data.get("source")
    if source is not None and not isinstance(source, dict):
        raise LessonError("source: must be an object or null")
    return _Entry(text, normalise(text), cleaned, scope, source, created, uses, last_used)


def _time(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LessonError(f"{field}: must be a time in seconds since the epoch")
    return float(value)


def parse_jsonl(lines: Iterable[str], here: str, now: float) -> list[_Entry]:
    """Every line checked; LessonImportError naming each bad line (1-based) if any is bad."""
    entries: list[_Entry] = []
    problems: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            problems.append((number, f"not JSON ({e})"))
            continue
        try:
            entries.append(_entry(data, here, now))
        except LessonError as e:
            problems.append((number, str(e)))
    if problems:
        raise LessonImportError(problems)
    return entries


# -- the API --------------------------------------------------------------------------------


class Lessons:
    """A session's long-term lessons (`session.lessons`); see the module docstring.

    `workspace` is the scope a lesson remembered with `scope="workspace"` belongs to.
    """

    def __init__(self, db: LessonsDB, workspace: Path | str) -> None:
        self.db = db
        self.here = str(workspace)
        self._uses: dict[int, tuple[int, float]] = {}  # id -> (uses, last) not yet written
        self._counting: asyncio.TimerHandle | None = None
        if self.here == GLOBAL:
            raise LessonError(f"workspace: {GLOBAL!r} is reserved for global lessons")

    @classmethod
    def open(cls, store: LessonsDB | None, workspace: Path | str) -> Lessons:
        """Lessons on `store`, or in a private in-memory database when there is none."""
        return cls(MemoryDB() if store is None else store, workspace)

    def close(self) -> None:
        """Write the uses counted so far; close a private in-memory database (a store is
        closed by its owner, after this)."""
        self._write_uses()
        if isinstance(self.db, MemoryDB):
            self.db.close()

    def _write_uses(self) -> None:
        """Queue the uses counted since the last time (see `recall`)."""
        if self._counting is not None:
            self._counting.cancel()
            self._counting = None
        if self._uses:
            uses = [(n, last, lid) for lid, (n, last) in self._uses.items()]
            self._uses = {}
            with contextlib.suppress(Exception):  # a closed store: the counts are lost
                self.db.write_later(partial(_bump, uses=uses))

    async def _settle(self) -> None:
        """Wait until every use counted and write queued so far is in the database."""
        self._write_uses()
        await self.db.write(_nothing)

    def _scope(self, scope: str) -> str:
        if scope == "workspace":
            return self.here
        if scope == GLOBAL:
            return GLOBAL
        raise LessonError(f'scope: {scope!r}; use "workspace" or "global"')

    async def remember(
        self,
        text: str,
        *,
        tags: Iterable[str] = (),
        scope: str = "workspace",
        source: dict[str, Any] | None = None,
    ) -> tuple[Lesson, bool]:
        """Store a lesson; if its text is known here already, merge the tags into that one.

        Returns the lesson and whether it is new.
        """
        text = clean_text(text)
        if source is not None:
            try:
                _dumps(source)  # refused here, not in the writer thread
            except (TypeError, ValueError) as e:
                raise LessonError(f"source: cannot be stored as JSON ({e})") from None
        entry = _Entry(
            text, normalise(text), clean_tags(tags), self._scope(scope), source, time.time()
        )
        return await self.db.write(partial(_put, entry=entry, here=self.here))

    async def recall(self, query: str, *, k: int = 5, tags: Iterable[str] = ()) -> list[Lesson]:
        """The k lessons most relevant to `query` (BM25), this workspace's first, holding
        every tag in `tags`; each counts a use (the returned lessons show it)."""
        if not isinstance(query, str):
            raise LessonError("query: must be a string")
        if not 1 <= k <= MAX_K:
            raise LessonError(f"k: {k}; ask for 1 to {MAX_K} lessons")
        q = _Query(tuple(query_terms(query)), clean_tags(tags), self.here, k)
        if not q.terms and not q.tags:
            return []
        found = await self.db.read(partial(_recall, q=q))
        if not found:
            return []
        # Uses are written in one batch at most USES_DELAY_S later: a write on every recall
        # would make the next one start on a cold page cache (about twice as slow).
        now = time.time()
        out = []
        for x in found:
            n = self._uses.get(x.id, (0, now))[0] + 1
            self._uses[x.id] = (n, now)
            out.append(Lesson(x.id, x.text, x.tags, x.scope, x.uses + n, x.created, now, x.source))
        if self._counting is None:
            self._counting = asyncio.get_running_loop().call_later(USES_DELAY_S, self._write_uses)
        return out

    async def forget(self, ids: Iterable[int]) -> int:
        """Delete the lessons with these ids; returns how many there were."""
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return 0
        return await self.db.write(partial(_forget, ids=wanted))

    async def get(self, ids: Iterable[int]) -> list[Lesson]:
        """The lessons with these ids that exist, in the order asked."""
        wanted = list(dict.fromkeys(int(i) for i in ids))
        await self._settle()  # uses counted by recalls just before are in
        found = await self.db.read(partial(_by_ids, ids=wanted))
        return [found[i] for i in wanted if i in found]

    async def visible(self, limit: int = 200) -> list[Lesson]:
        """The newest `limit` lessons this workspace sees (its own and global ones)."""
        await self._settle()
        return await self.db.read(partial(_list, here=self.here, limit=limit))

    async def export_jsonl(self) -> list[str]:
        """Every lesson of every scope, one JSON object per line, oldest first."""
        await self._settle()
        lessons = await self.db.read(partial(_list, here=None, limit=None))
        return [_dumps(lesson.to_json()) for lesson in lessons]

    async def import_jsonl(self, lines: Iterable[str]) -> ImportReport:
        """Add the lessons of a JSONL export, merging those already known (as `remember`
        does). A bad line refuses the whole import (`LessonImportError`, by line number)."""
        entries = await asyncio.to_thread(parse_jsonl, list(lines), self.here, time.time())
        if not entries:
            return ImportReport(0, 0)
        return await self.db.write(partial(_put_all, entries=entries, here=self.here))
