"""Lessons (`yool.memory.lessons`) on a real SQLite store and in memory: dedup, tags, scopes,
ranking (exact BM25 and the bounded paths past RANK_BUDGET), use counts, forget, JSONL export
and import, hostile queries, and survival across a session restart on the same YOOL_HOME.

Every test that does not need a file runs on both backends: the store (`Store` on a tmp
file, its writer thread and reader pool) and a session-less `MemoryDB`.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yool.kernel.store import Store, StoreError
from yool.memory import Lesson, LessonError, LessonImportError, Lessons, normalise
from yool.memory import lessons as lessons_module
from yool.memory.lessons import RANK_BUDGET, query_terms
from yool.policy import RuntimePolicy
from yool.tools import Session

T = TypeVar("T")
WS = "/work/ws-a"
OTHER = "/work/ws-b"

Backend = Callable[[Path], Any]


@asynccontextmanager
async def on_store(tmp: Path, workspace: str = WS) -> AsyncIterator[Lessons]:
    store = await asyncio.to_thread(Store.open, tmp / "yool.db")
    lessons = Lessons.open(store, workspace)
    try:
        yield lessons
    finally:
        lessons.close()
        await asyncio.to_thread(store.close)


@asynccontextmanager
async def in_memory(_tmp: Path, workspace: str = WS) -> AsyncIterator[Lessons]:
    lessons = Lessons.open(None, workspace)
    try:
        yield lessons
    finally:
        lessons.close()


BACKENDS = pytest.mark.parametrize("backend", [on_store, in_memory], ids=["store", "memory"])


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def texts(found: list[Lesson]) -> list[str]:
    return [lesson.text for lesson in found]


# -- dedup and tags -------------------------------------------------------------------------


@BACKENDS
def test_a_text_known_but_for_case_spacing_and_punctuation_merges_its_tags_into_that_lesson(
    tmp_path: Path, backend: Backend
) -> None:
    async def main() -> None:
        async with backend(tmp_path) as m:
            first, created = await m.remember(
                "Run pytest -x first to find the failing test.", tags=["Python", "ci"]
            )
            assert created and first.tags == ("python", "ci") and first.scope == WS
            again, created = await m.remember(
                "  run PYTEST -x first;   to find the failing test!! ", tags=["ci", "pytest"]
            )
            assert not created and again.id == first.id
            assert again.text == first.text  # the known wording stays
            assert again.tags == ("python", "ci", "pytest")
            assert [x.tags for x in await m.get([first.id])] == [("python", "ci", "pytest")]
            other, created = await m.remember("Run pytest -x first to find the failing tests.")
            assert created and other.id != first.id  # a different word is a different lesson

    run(main())


def test_normalise_ignores_case_whitespace_and_punctuation_but_keeps_words_apart() -> None:
    assert normalise("Use  `rg`, not GREP!") == normalise("use rg not grep")
    assert normalise("os.path") == "os path" != normalise("ospath")
    assert normalise("Ünïcode\u00a0Tëxt") == "ünïcode tëxt"


@BACKENDS
def test_recall_with_tags_keeps_only_lessons_holding_every_tag(
    tmp_path: Path, backend: Backend
) -> None:
    async def main() -> None:
        async with backend(tmp_path) as m:
            await m.remember("Cache the wheel build in CI.", tags=["ci", "python"])
            await m.remember("Cache the docker layer in CI.", tags=["ci", "docker"])
            await m.remember("Cache the npm folder locally.", tags=["node"])
            assert len(await m.recall("cache")) == 3
            assert texts(await m.recall("cache", tags=["CI", "python"])) == [
                "Cache the wheel build in CI."
            ]
            assert len(await m.recall("cache", tags=["ci"])) == 2
            assert await m.recall("cache", tags=["rust"]) == []
            # no words to search: the lessons with the tags, most used first
            assert len(await m.recall("***", tags=["ci"])) == 2
            assert await m.recall("***") == []

    run(main())


@BACKENDS
def test_bad_text_tags_scope_k_and_source_are_refused_naming_the_field(
    tmp_path: Path, backend: Backend
) -> None:
    async def main() -> None:
        async with backend(tmp_path) as m:
            bad: list[tuple[Awaitable[Any], str]] = [
                (m.remember("   "), "text: empty"),
                (m.remember("!!! ..."), "text: has no words"),
                (m.remember("x" * 2001), "text: 2001 characters"),
                (m.remember("ok lesson", tags=["has space ok", 'quo"te']), "tags: "),
                (m.remember("ok lesson", tags="ci"), "tags: a list"),
                (m.remember("ok lesson", tags=[f"t{i}" for i in range(17)]), "tags: 17"),
                (m.remember("ok lesson", scope="team"), "scope: 'team'"),
                (m.remember("ok lesson", source={"f": object()}), "source: cannot"),
                (m.recall("x", k=0), "k: 0"),
                (m.recall("x", k=101), "k: 101"),
            ]
            for coro, message in bad:
                with pytest.raises(LessonError, match=message):
                    await coro
            assert await m.visible() == []  # nothing half-applied

    run(main())


# -- scopes and ranking ---------------------------------------------------------------------


def test_this_workspaces_lessons_rank_before_global_ones_and_other_workspaces_stay_apart(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with on_store(tmp_path, OTHER) as b:
            await b.remember("Retry flaky network tests with backoff in ws-b.")
        async with on_store(tmp_path) as a:
            g, _ = await a.remember(
                "Retry flaky network tests with exponential backoff and jitter.", scope="global"
            )
            w, _ = await a.remember("Flaky tests here: retry.")  # weaker match, but ours
            found = await a.recall("retry flaky network tests backoff jitter")
            assert [x.id for x in found] == [w.id, g.id]
            assert found[0].scope == WS and found[1].scope == "global"
            # remembering globally what this workspace knows makes it global
            promoted, created = await a.remember("flaky TESTS here - retry", scope="global")
            assert not created and promoted.id == w.id and promoted.scope == "global"
            # remembering in the workspace what is known globally returns the global one
            same, created = await a.remember(g.text)
            assert not created and same.id == g.id and same.scope == "global"
        async with on_store(tmp_path, OTHER) as b:
            seen = texts(await b.recall("retry flaky tests"))
            assert seen[0] == "Retry flaky network tests with backoff in ws-b."
            assert len(seen) == 3  # its own, then the two global ones

    run(main())


@BACKENDS
def test_bm25_puts_the_lesson_with_more_and_rarer_query_words_first(
    tmp_path: Path, backend: Backend
) -> None:
    async def main() -> None:
        async with backend(tmp_path) as m:
            for i in range(20):
                await m.remember(f"Check the config file before deploy number {i}.")
            best, _ = await m.remember("Check the alembic migration config before deploy.")
            rare, _ = await m.remember("An alembic heads conflict needs a merge revision.")
            found = await m.recall("alembic migration config", k=3)
            assert [x.id for x in found[:2]] == [best.id, rare.id]
            # porter stemming: another form of a word finds it
            assert texts(await m.recall("migrations"))[0] == best.text

    run(main())


@BACKENDS
def test_past_the_rank_budget_common_words_still_weigh_and_every_word_common_still_answers(
    tmp_path: Path, backend: Backend
) -> None:
    """With a word in more lessons than RANK_BUDGET, BM25 ranks the lessons of the rarer
    words and the common word adds its weight; when all words are common, the newest lessons
    holding them are scored, those holding more of them first."""
    n = RANK_BUDGET + 50

    async def main() -> None:
        async with backend(tmp_path) as m:
            lines = [
                json.dumps(
                    {"text": f"Warm the cache {i} before the {'bench' if i % 2 else 'run'}."}
                )
                for i in range(n)
            ]
            assert (await m.import_jsonl(lines)).added == n
            both, _ = await m.remember("Warm the zeppelin cache before benchmarks.")
            alone, _ = await m.remember("A zeppelin floats; keep tests of it short and sweet ok.")
            found = await m.recall("zeppelin cache", k=2)
            assert [x.id for x in found] == [both.id, alone.id]
            # every word common: the answer holds both words, lessons with both first
            found = await m.recall("cache bench", k=5)
            assert len(found) == 5
            assert all("bench" in x.text and "cache" in x.text for x in found)
            assert len(await m.recall("cache", k=7)) == 7

    run(main())


# -- uses, forget ---------------------------------------------------------------------------


@BACKENDS
def test_recall_counts_uses_and_last_use_and_forget_deletes_for_good(
    tmp_path: Path, backend: Backend
) -> None:
    async def main() -> None:
        async with backend(tmp_path) as m:
            a, _ = await m.remember("Pin the lockfile before bumping dependencies.")
            b, _ = await m.remember("Bump one dependency at a time.")
            assert a.uses == 0 and a.last_used is None
            first = await m.recall("lockfile")
            assert [(x.id, x.uses) for x in first] == [(a.id, 1)]
            second = await m.recall("lockfile dependencies")
            assert {x.id: x.uses for x in second} == {a.id: 2, b.id: 1}
            stored = {x.id: x for x in await m.get([a.id, b.id])}
            assert (stored[a.id].uses, stored[b.id].uses) == (2, 1)
            assert stored[a.id].last_used is not None
            assert stored[a.id].last_used >= stored[a.id].created
            assert await m.forget([a.id, 424242]) == 1
            assert await m.forget([]) == 0
            assert texts(await m.recall("lockfile dependencies")) == [b.text]
            c, _ = await m.remember("Pin the lockfile before bumping dependencies.")
            assert c.id > b.id  # ids are never reused

    run(main())


def test_lessons_and_their_uses_survive_a_session_restart_on_the_same_home(
    tmp_path: Path,
) -> None:
    pol = RuntimePolicy(home=tmp_path / "home")
    ws = tmp_path / "ws"
    ws.mkdir()

    async def first() -> int:
        async with Session.open(pol, workspace=ws, environ={}) as s:
            lesson, _ = await s.lessons.remember("Read the README before the code.", tags=["docs"])
            assert [x.id for x in await s.lessons.recall("readme")] == [lesson.id]
            return lesson.id  # the use is written when the session closes

    async def second(lid: int) -> None:
        async with Session.open(pol, workspace=ws, environ={}) as s:
            (back,) = await s.lessons.get([lid])
            assert back.text == "Read the README before the code." and back.tags == ("docs",)
            assert back.uses == 1 and back.scope == str(ws.resolve())
            assert [x.id for x in await s.lessons.recall("README code")] == [lid]

    asyncio.run(second(asyncio.run(first())))


def test_a_session_without_a_store_keeps_lessons_in_memory(tmp_path: Path) -> None:
    async def main() -> None:
        pol = RuntimePolicy(home=tmp_path / "home")
        async with Session.open(pol, workspace=tmp_path, environ={}, in_memory=True) as s:
            await s.lessons.remember("Memory sessions remember too.")
            assert texts(await s.lessons.recall("remember")) == ["Memory sessions remember too."]
        assert not (tmp_path / "home" / "yool.db").exists()

    asyncio.run(main())


# -- export, import -------------------------------------------------------------------------


def test_jsonl_export_imports_into_another_home_with_dedup_and_merged_tags(tmp_path: Path) -> None:
    async def main() -> None:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        async with on_store(tmp_path / "a") as a:
            await a.remember("Quote every FTS5 term.", tags=["sqlite"], source={"pid": 7})
            await a.remember("Keep lessons short.", scope="global")
            await a.recall("quote term")
            lines = await a.export_jsonl()
        rows = [json.loads(line) for line in lines]
        assert [r["text"] for r in rows] == ["Quote every FTS5 term.", "Keep lessons short."]
        assert rows[0]["uses"] == 1 and rows[0]["source"] == {"pid": 7}
        async with on_store(tmp_path / "b") as b:
            await b.remember("keep LESSONS short", tags=["style"], scope="global")
            report = await b.import_jsonl(lines)
            assert (report.added, report.merged) == (1, 1)
            again = await b.import_jsonl(lines)
            assert (again.added, again.merged) == (0, 2)
            every = {x.text: x for x in await b.visible()}
            assert set(every) == {"Quote every FTS5 term.", "keep LESSONS short"}
            assert every["keep LESSONS short"].tags == ("style",)
            quoted = every["Quote every FTS5 term."]
            assert quoted.uses == 1 and quoted.source == {"pid": 7} and quoted.scope == WS
            assert quoted.tags == ("sqlite",)

    run(main())


@BACKENDS
def test_one_bad_line_refuses_the_whole_import_and_names_every_bad_line(
    tmp_path: Path, backend: Backend
) -> None:
    lines = [
        json.dumps({"text": "A fine lesson to import."}),
        "",  # blank lines are skipped
        "{not json",
        json.dumps(["a list"]),
        json.dumps({"text": ""}),
        json.dumps({"text": "Tags wrong.", "tags": "ci"}),
        json.dumps({"text": "Uses wrong.", "uses": -1}),
        json.dumps({"text": "Scope wrong.", "scope": 3}),
        json.dumps({"text": "Time wrong.", "created": "yesterday"}),
        json.dumps({"text": "Another fine one.", "tags": ["ok"]}),
    ]

    async def main() -> None:
        async with backend(tmp_path) as m:
            with pytest.raises(LessonImportError) as caught:
                await m.import_jsonl(lines)
            assert [n for n, _ in caught.value.problems] == [3, 4, 5, 6, 7, 8, 9]
            why = dict(caught.value.problems)
            assert "not JSON" in why[3] and "not a JSON object" in why[4]
            assert why[5].startswith("text:") and why[6].startswith("tags:")
            assert why[7].startswith("uses:") and why[8].startswith("scope:")
            assert why[9].startswith("created:")
            assert "nothing imported" in str(caught.value)
            assert await m.visible() == []
            ok = await m.import_jsonl([lines[0], lines[-1]])
            assert (ok.added, ok.merged) == (2, 0)

    run(main())


# -- hostile queries --------------------------------------------------------------------------

HOSTILE = [
    '"',
    '""',
    'say "hello',
    "AND",
    "OR NOT AND",
    "cache AND",
    "NEAR(cache lockfile, 2)",
    "NEAR(",
    "*",
    "cache*",
    "^cache",
    "text:cache",
    "{text}: cache",
    "(cache",
    "cache)",
    "-cache",
    "+cache",
    "col:",
    "\x00cache",
    "ünïcödé ☃ 🦀 日本語のテキスト",
    "\ud800 lone surrogate",
    "_ __ ___",
    "a" * 5000,
    " ".join(f"w{i}" for i in range(500)),
]


@BACKENDS
def test_fts5_syntax_in_a_query_is_only_ever_words(tmp_path: Path, backend: Backend) -> None:
    async def main() -> None:
        async with backend(tmp_path) as m:
            await m.remember("Cache the lockfile and say hello to NEAR neighbours.")
            await m.remember("日本語のテキスト also works.")
            for query in HOSTILE:
                await m.recall(query)  # never raises
            assert len(await m.recall("NEAR(cache lockfile, 2)")) == 1
            assert len(await m.recall('say "hello')) == 1
            assert len(await m.recall("cache*")) == 1
            assert texts(await m.recall("日本語のテキスト")) == ["日本語のテキスト also works."]

    run(main())


def test_query_terms_are_distinct_words_without_stopwords_and_capped() -> None:
    assert query_terms("How to fix the flaky Test test?") == ["fix", "flaky", "test"]
    assert query_terms("how to") == ["how", "to"]  # nothing else: keep them
    assert query_terms("NEAR(a, b) AND c*") == ["near", "b", "c"]
    assert len(query_terms(" ".join(f"w{i}" for i in range(100)))) == lessons_module.MAX_TERMS


_LOOP = asyncio.new_event_loop()
_MEMORY = Lessons.open(None, WS)
for _text in ("Cache the lockfile.", "NEAR the end, quote it.", "Ünïcödé works ☃."):
    _LOOP.run_until_complete(_MEMORY.remember(_text, tags=["t"]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(query=st.text(), tags=st.lists(st.sampled_from(["t", "x", "ci-cd"]), max_size=2))
def test_recall_never_raises_on_any_text(query: str, tags: list[str]) -> None:
    found = _LOOP.run_until_complete(_MEMORY.recall(query, k=3, tags=tags))
    assert len(found) <= 3


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=300))
def test_remember_stores_any_text_with_words_or_refuses_it_clearly(text: str) -> None:
    try:
        lesson, _ = _LOOP.run_until_complete(_MEMORY.remember(text))
    except LessonError as e:
        assert str(e).startswith("text: ")
    else:
        assert normalise(lesson.text) == normalise(text.encode("utf-8", "replace").decode())


# -- the store's generic writes ---------------------------------------------------------------


def test_store_write_is_all_or_nothing_and_write_later_failures_reach_flush(
    tmp_path: Path,
) -> None:
    def half(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO lessons (text, norm, scope, created) VALUES ('a', 'a', 'global', 0)"
        )
        raise ValueError("changed my mind")

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    async def main() -> None:
        store = await asyncio.to_thread(Store.open, tmp_path / "yool.db")
        try:
            with pytest.raises(ValueError, match="changed my mind"):
                await store.write(half)
            with pytest.raises(StoreError, match="no such table"):
                await store.write(broken)
            count = await store.read(
                lambda c: c.execute("SELECT count(*) FROM lessons").fetchone()[0]
            )
            assert count == 0
            assert await store.write(lambda c: 42) == 42
            store.write_later(broken)
            with pytest.raises(StoreError, match="write_later"):
                await store.aflush()
        finally:
            await asyncio.to_thread(store.close)

    asyncio.run(main())
