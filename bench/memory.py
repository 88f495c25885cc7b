"""Lesson memory figures: recall latency over 100,000 lessons, and how fast lessons go in.

Everything goes through the public `yool.memory.Lessons` API on a real store (SQLite file in
a temporary YOOL_HOME, its writer thread and reader pool), so a recall includes the hop to a
reader thread and back. The lessons and queries are generated from a fixed seed: imperative
tactics and gotchas about tools, files, errors and identifiers, with words drawn on a
Zipf-like curve (a few very common, a long tail of rare ones), as real lessons are.
Prints one JSON object per figure.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from _common import emit
from yool.kernel.store import Store
from yool.memory import Lessons
from yool.memory.lessons import query_terms

LESSONS = 100_000
REMEMBERED = 5_000  # of them one `remember` at a time; the rest come in by `import_jsonl`
QUERIES = 2_000
WARMUP = 200
QUALITY = 200  # queries also ranked by exact BM25 (a full scan: ~30 ms each)
K = 5
SEED = 7
WORKSPACE = "/work/project"


def words(text: str) -> list[str]:
    return text.split()


TOOLS = words("""pytest tox nox pip poetry uv ruff mypy black isort docker compose kubectl helm
terraform ansible git github gitlab jenkins make cmake cargo rustc clippy npm yarn pnpm node
deno bun webpack vite esbuild tsc eslint prettier jest vitest playwright cypress selenium
postgres mysql sqlite redis kafka rabbitmq nginx gunicorn uvicorn celery airflow spark pandas
numpy django flask fastapi sqlalchemy alembic pydantic asyncio aiohttp httpx requests grpc
protobuf graphql react vue svelte angular nextjs go gofmt gopls java maven gradle kotlin swift
xcode bash zsh systemd cron ssh rsync curl jq awk sed grep ripgrep fzf tmux vim emacs vscode
prometheus grafana sentry datadog opentelemetry elasticsearch mongodb dynamodb s3 lambda
cloudflare vercel heroku openssl certbot valgrind gdb lldb perf strace hypothesis coverage
pre-commit bazel buck nix conda pyenv virtualenv gcc clang llvm wasm electron tauri""")

THINGS = words("""fixture migration index cache lockfile dependency import test suite build image
layer
container volume network port socket timeout retry backoff deadline transaction connection
pool session cookie token header payload schema query cursor batch queue worker thread process
signal mutex deadlock race loop coroutine callback promise future generator iterator decorator
manager closure module package namespace path variable secret config file flag option argument
parameter value exception traceback stack log level metric alert dashboard branch commit rebase
conflict tag release version changelog snapshot mock stub patch seed clock timezone locale
encoding unicode newline whitespace indentation regex glob wildcard permission owner group
symlink mount cgroup memory leak heap allocation buffer stream pipe terminal shell prompt
request response status redirect proxy certificate hostname resolver firewall route handler
middleware endpoint webhook serializer validator model field column constraint key trigger view
replica shard partition vacuum checkpoint journal fsync rollback savepoint lock isolation quota
budget limit artifact runner matrix job step workflow pipeline registry mirror proxy tarball
wheel sdist manifest entrypoint plugin hook fixture scope marker parametrize assertion diff
golden sample corpus tokenizer embedding prompt context window""")

VERBS = words("""pin check run restart rebuild clear invalidate retry cap bound measure profile log
inspect verify validate quote escape normalise sort dedupe cache batch stream flush close reuse
reset rotate seed freeze mock patch await cancel shield gather lock release commit vacuum
analyze index migrate rollback squash rebase bisect tag bump vendor prune trim compress split
merge parse encode decode hash sign isolate serialize preload warm throttle debounce""")

NAMES = words("""user order payment invoice cart session auth token config cache db job task event
report search index upload image email notify billing account profile admin api client server
router worker scheduler parser lexer loader writer reader store queue ledger inventory catalog
shipment coupon review rating message thread channel tenant plan quota audit export""")

ERRORS = words("""KeyError ValueError TypeError TimeoutError ConnectionResetError PermissionError
FileNotFoundError OperationalError IntegrityError ImportError ModuleNotFoundError RecursionError
MemoryError BrokenPipeError EOFError AssertionError RuntimeError UnicodeDecodeError
ECONNREFUSED ETIMEDOUT ENOSPC EACCES SIGSEGV OOMKilled CrashLoopBackOff 502 503 429""")

TEMPLATES = [
    "Before {verb}ing the {thing}, {verb2} the {thing2} first.",
    "{Verb} the {thing} in {tool} instead of relying on the default {thing2}.",
    "Never {verb} the {thing} inside the {thing2}; {tool} will hang.",
    "When {tool} reports a stale {thing}, {verb} the {thing2} and rerun.",
    "{Tool} silently ignores the {thing} unless the {thing2} is set explicitly.",
    "Prefer {verb}ing the {thing} over {verb2}ing the whole {thing2}.",
    "In {tool}, the {thing} is read once at startup; {verb} it before launching.",
    "{Verb} the {thing} with {tool} to catch a broken {thing2} early.",
    "A flaky {thing} in {tool} usually means the {thing2} was not {verb2}ed.",
    "{Tool} and {tool2} disagree on the {thing}; {verb} it in one place.",
    "Keep the {thing} small: {tool} {verb}s it on every {thing2}.",
    "If {ident} fails with {error}, {verb} the {thing} and check the {thing2}.",
    "Set {flag} when {tool} {verb}s the {thing}, or it times out.",
    "{error} from {ident} means the {thing} is missing; {verb} the {thing2}.",
    "Do not {verb} the {thing} in {file}; {tool} {verb2}s it on import.",
    "To speed up {tool}, {verb} the {thing} and skip the {thing2}.",
    "{ident} depends on the {thing} order; {verb} it in {file} before tests.",
    "Run {tool} with {flag} to see why the {thing} differs from the {thing2}.",
]
QUERY_GLUE = words("how to fix the a when why in for with on after")


def zipf(items: list[str], rng: random.Random) -> str:
    """A word with a Zipf-like skew: the first few are common, most are rare."""
    n = len(items)
    return items[min(int(n ** rng.random()) - 1, n - 1)]


def identifier(rng: random.Random) -> str:
    a, b = zipf(NAMES, rng), zipf(NAMES, rng)
    form = rng.randrange(4)
    if form == 0:
        return f"{a}_{b}()"
    if form == 1:
        return f"test_{a}_{b}"
    if form == 2:
        return f"{a.capitalize()}{b.capitalize()}"
    return f"{a}.{b}_{rng.randrange(100)}"


def lesson_text(i: int, rng: random.Random) -> str:
    tool, verb = zipf(TOOLS, rng), zipf(VERBS, rng)
    text = rng.choice(TEMPLATES).format(
        verb=verb,
        Verb=verb.capitalize(),
        verb2=zipf(VERBS, rng),
        thing=zipf(THINGS, rng),
        thing2=zipf(THINGS, rng),
        tool=tool,
        Tool=tool.capitalize(),
        tool2=zipf(TOOLS, rng),
        ident=identifier(rng),
        error=zipf(ERRORS, rng),
        flag=f"--{zipf(VERBS, rng)}-{zipf(THINGS, rng)}",
        file=f"src/{zipf(NAMES, rng)}/{zipf(NAMES, rng)}.py",
    )
    if rng.random() < 0.3:
        text += f" (seen in {zipf(NAMES, rng)}-{i % 997})"
    return text


def corpus(n: int) -> list[dict[str, object]]:
    """n distinct lessons: 70% global, 25% this workspace's, 5% another workspace's."""
    rng = random.Random(SEED)
    out: list[dict[str, object]] = []
    seen: set[str] = set()
    i = 0
    while len(out) < n:
        text = lesson_text(i, rng)
        i += 1
        if text in seen:
            continue
        seen.add(text)
        r = rng.random()
        scope = "global" if r < 0.7 else (WORKSPACE if r < 0.95 else "/work/other")
        tags = [zipf(TOOLS, rng)] + ([zipf(NAMES, rng)] if rng.random() < 0.5 else [])
        out.append({"text": text, "tags": tags, "scope": scope})
    return out


def queries(n: int) -> list[str]:
    """n task-like queries of 2-6 words from the lessons' vocabulary (some glue words)."""
    rng = random.Random(SEED + 1)
    pools = [TOOLS, THINGS, VERBS, NAMES, ERRORS]
    out = []
    for _ in range(n):
        words = [
            rng.choice(QUERY_GLUE) if rng.random() < 0.2 else zipf(rng.choice(pools), rng)
            for _ in range(rng.randint(2, 6))
        ]
        out.append(" ".join(words))
    return out


def percentile(sorted_values: list[float], p: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p))]


def _match(query: str) -> str:
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in query_terms(query))


def exact_top(conn: sqlite3.Connection, query: str) -> list[int]:
    """The top K by exact BM25 over every query word (a full scan), this workspace first."""
    if not query_terms(query):
        return []
    rows = conn.execute(
        "SELECT f.rowid FROM lessons_fts f JOIN lessons l ON l.id = f.rowid"
        " WHERE lessons_fts MATCH ? AND l.scope IN (?, 'global')"
        " ORDER BY l.scope = ? DESC, bm25(lessons_fts) LIMIT ?",
        (_match(query), WORKSPACE, WORKSPACE, K),
    )
    return [lid for (lid,) in rows]


def bm25_sum(conn: sqlite3.Connection, query: str, ids: list[int]) -> float:
    """The exact BM25 scores (every query word) of these lessons, added up."""
    total = 0.0
    for lid in ids:
        row = conn.execute(
            "SELECT bm25(lessons_fts) FROM lessons_fts WHERE lessons_fts MATCH ? AND rowid = ?",
            (_match(query), lid),
        ).fetchone()
        total += -row[0] if row else 0.0
    return total


async def quality(store: Store, memory: Lessons, sample: list[str]) -> tuple[float, float]:
    """(mean BM25 score of recall's top k / that of the exact top k, mean share of the exact
    top k's ids recalled). Many lessons tie on score (same words, same length), so the ids
    of two equally good top k often differ: the score ratio is the figure."""
    ratios, shares = [], []
    for query in sample:
        exact = await store.read(partial(exact_top, query=query))
        if not exact:
            continue
        ours = [lesson.id for lesson in await memory.recall(query, k=K)]
        best = await store.read(partial(bm25_sum, query=query, ids=exact))
        got = await store.read(partial(bm25_sum, query=query, ids=ours))
        ratios.append(got / best)
        shares.append(len(set(ours) & set(exact)) / len(exact))
    return statistics.fmean(ratios), statistics.fmean(shares)


async def run(home: Path) -> None:
    lessons_in = corpus(LESSONS)
    store = Store.open(home / "yool.db")
    try:
        memory = Lessons.open(store, WORKSPACE)
        t0 = time.perf_counter()
        for item in lessons_in[:REMEMBERED]:
            scope = "global" if item["scope"] == "global" else "workspace"
            await memory.remember(str(item["text"]), tags=item["tags"], scope=scope)  # type: ignore[arg-type]
        remembered = time.perf_counter() - t0
        emit(
            "lesson_inserts_per_s",
            REMEMBERED / remembered,
            "lessons/s",
            lessons=REMEMBERED,
            measure="remember() one at a time, each awaited until committed",
        )
        lines = [json.dumps(item) for item in lessons_in[REMEMBERED:]]
        t0 = time.perf_counter()
        report = await memory.import_jsonl(lines)
        imported = time.perf_counter() - t0
        emit(
            "lesson_import_per_s",
            len(lines) / imported,
            "lessons/s",
            lessons=len(lines),
            added=report.added,
            measure="import_jsonl(): parse, check, one transaction",
        )
        del lessons_in, lines  # what a server would not hold: its collections are not timed
        gc.collect()
        asked = queries(WARMUP + QUERIES)
        found = 0
        for query in asked[:WARMUP]:
            await memory.recall(query, k=K)
        times: list[float] = []
        cpu: list[float] = []
        for query in asked[WARMUP:]:
            t0, c0 = time.perf_counter(), time.process_time()
            got = await memory.recall(query, k=K)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            found += len(got)
        times.sort()
        context = {
            "lessons": LESSONS,
            "queries": QUERIES,
            "k": K,
            "mean_results": round(found / QUERIES, 2),
            # CPU of the whole process (loop and reader thread): what load on the box can't
            # inflate, unlike the wall time
            "cpu_p50_ms": round(statistics.median(cpu) * 1e3, 3),
            "load": round(os.getloadavg()[0], 2),
        }
        emit("recall_p50_ms", percentile(times, 0.5) * 1e3, "ms", **context)
        emit("recall_p99_ms", percentile(times, 0.99) * 1e3, "ms", **context)
        emit("recall_mean_ms", statistics.fmean(times) * 1e3, "ms", **context)
        sample = asked[WARMUP : WARMUP + QUALITY]
        ratio, share = await quality(store, memory, sample)
        emit(
            "recall_bm25_score_ratio",
            ratio,
            "fraction",
            queries=len(sample),
            k=K,
            same_ids=round(share, 3),
            measure="BM25 score of recall's top k over that of exact BM25's (full scan)",
        )
    finally:
        store.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
