"""Working memory: token estimates, the pager, BM25 recall from swap, pinning quota, snapshots."""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yool.kernel.context import Context, Segment, estimate_tokens
from yool.kernel.errors import KernelError, QuotaExceeded

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class RecordingSummarizer:
    """Summarises victims into a fixed-size gist and remembers what it was given."""

    def __init__(self, tokens: int = 5) -> None:
        self.tokens = tokens
        self.calls: list[list[Segment]] = []

    async def __call__(self, victims: list[Segment]) -> tuple[Any, int]:
        self.calls.append(victims)
        return f"gist {len(self.calls)}", self.tokens


def ids(segments: list[Segment]) -> list[str]:
    return [s.id for s in segments]


async def swapped_context(bodies: list[str], ceiling: int = 10_000) -> Context:
    """A context whose swap holds `bodies` as s1, s2, ... (restored from a snapshot)."""
    dumped = [
        {"id": f"s{i}", "body": body, "tokens": 1, "swapped": True}
        for i, body in enumerate(bodies, 1)
    ]
    return await Context.load(dumped, ceiling)


# --- token estimates ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "tokens"),
    [
        ("", 1),
        ("abc", 1),
        ("abcd" * 3, 3),
        ("abcde", 2),  # rounds up
        ("你好世界", 6),  # 1.5 per CJK character
        ("ab你好", 4),  # ceil(2 * 1.5 + 2 / 4)
        ("안녕", 3),  # Hangul counts as CJK
        ("ＡＢ", 3),  # so do fullwidth forms
        ("héllo wörld!", 3),  # other non-ASCII is ordinary text
        ("😀" * 4, 2),  # astral characters are two UTF-16 units, as in the reference
    ],
)
def test_estimate_tokens_of_text(body: str, tokens: int) -> None:
    assert estimate_tokens(body) == tokens


def test_estimate_tokens_of_json_bodies_measures_compact_json_without_escaping_cjk() -> None:
    assert estimate_tokens({"a": 1}) == 2  # {"a":1}
    assert estimate_tokens([1, 2, 3]) == 2  # [1,2,3]
    assert estimate_tokens({"k": "你好"}) == 5  # {"k":"你好"}: 8 ASCII / 4 + 2 * 1.5
    long = {"role": "tool", "content": "x" * 400}
    assert estimate_tokens(long) == math.ceil(len(json.dumps(long, separators=(",", ":"))) / 4)


def test_remember_estimates_tokens_when_not_given() -> None:
    async def scenario() -> None:
        ctx = Context()
        sid = await ctx.remember("abcd" * 10)
        assert ctx.working_set() == [Segment(sid, "abcd" * 10, 10)]
        await ctx.remember({"k": "你好"})
        assert ctx.stats().size == 15

    run(scenario())


def test_remember_rejects_a_body_that_is_not_json_and_stores_nothing() -> None:
    async def scenario() -> None:
        ctx = Context()
        with pytest.raises(KernelError, match="JSON"):
            await ctx.remember({"when": object()}, tokens=3)
        with pytest.raises(KernelError, match="tokens"):
            await ctx.remember("x", tokens=-1)
        assert ctx.working_set() == []
        assert ctx.stats().size == 0

    run(scenario())


# --- the pager ---------------------------------------------------------------------------------


def test_without_ceiling_nothing_is_ever_paged() -> None:
    async def scenario() -> None:
        ctx = Context()
        for _ in range(100):
            await ctx.remember("x", tokens=1000)
        assert ctx.stats().resident == 100
        assert ctx.stats().swapped == 0
        assert ctx.stats().size == 100_000

    run(scenario())


def test_passing_80_percent_pages_coldest_out_down_to_60_percent() -> None:
    async def scenario() -> None:
        ctx = Context(ceiling=100)
        sids = [await ctx.remember(f"note {i}", tokens=10) for i in range(8)]
        assert ctx.stats().size == 80  # at the watermark, not over it: nothing moves
        assert ctx.stats().swapped == 0
        sids.append(await ctx.remember("note 8", tokens=10))
        assert ids(ctx.working_set()) == sids[3:]
        stats = ctx.stats()
        assert (stats.size, stats.resident, stats.swapped) == (60, 6, 3)

    run(scenario())


def test_remember_and_recall_make_a_segment_most_recent() -> None:
    async def scenario() -> None:
        ctx = Context(ceiling=100)
        first = await ctx.remember("alpha", tokens=30)
        await ctx.remember("beta", tokens=30)
        await ctx.remember("gamma", tokens=30)  # 90 > 80: alpha, the coldest, goes
        assert first not in ids(ctx.working_set())
        assert ids(await ctx.recall("alpha")) == [first]
        assert ids(ctx.working_set())[-1] == first  # back as the most recent...
        await ctx.remember("delta", tokens=10)
        assert first in ids(ctx.working_set())  # ...so beta, now the coldest, went instead

    run(scenario())


def test_pinned_segments_are_never_paged_out() -> None:
    async def scenario() -> None:
        ctx = Context(ceiling=100)
        keep = await ctx.remember("system prompt", tokens=40, pin=True)
        for i in range(20):
            await ctx.remember(f"chatter {i}", tokens=10)
        assert ids(ctx.working_set())[0] == keep
        assert ctx.stats().pinned_tokens == 40
        assert ctx.stats().size <= 80

    run(scenario())


def test_when_only_pinned_segments_remain_the_pager_stops_without_error() -> None:
    async def scenario() -> None:
        ctx = Context(ceiling=100)
        pinned = [await ctx.remember("rule", tokens=45, pin=True) for _ in range(2)]
        loose = await ctx.remember("loose", tokens=5)  # 95 > 80: only this one can go
        assert ids(ctx.working_set()) == pinned
        assert ctx.stats().size == 90
        assert ids(await ctx.recall("loose")) == [loose]  # comes back, and is paged out again
        assert ctx.stats().swapped == 1

    run(scenario())


def test_unpinned_segment_is_reclaimed_at_the_next_remember() -> None:
    async def scenario() -> None:
        ctx = Context(ceiling=100)
        big = await ctx.remember("big", tokens=90, pin=True)
        ctx.pin(big, on=False)
        assert ctx.stats().size == 90  # unpinning alone pages nothing, like munlock
        await ctx.remember("small", tokens=1)
        assert big not in ids(ctx.working_set())
        assert ctx.stats().size == 1

    run(scenario())


def test_summarizer_gets_the_victims_and_its_summary_takes_their_place() -> None:
    async def scenario() -> None:
        summarize = RecordingSummarizer(tokens=5)
        ctx = Context(ceiling=100, summarizer=summarize)
        sids = [await ctx.remember(f"note {i}", tokens=10) for i in range(9)]
        assert [ids(v) for v in summarize.calls] == [sids[:3]]
        summary, *rest = ctx.working_set()
        assert (summary.body, summary.tokens, summary.summary) == ("gist 1", 5, True)
        assert ids(rest) == sids[3:]  # the summary sits at the cold end, where its victims were
        assert ctx.stats().size == 65
        assert ctx.stats().swapped == 3  # the originals are kept in swap, recallable

    run(scenario())


def test_a_later_page_out_folds_the_old_summary_into_the_new_one() -> None:
    async def scenario() -> None:
        summarize = RecordingSummarizer(tokens=5)
        ctx = Context(ceiling=100, summarizer=summarize)
        sids = [await ctx.remember(f"note {i}", tokens=10) for i in range(11)]
        assert len(summarize.calls) == 2
        old_summary, *victims = summarize.calls[1]
        assert old_summary.summary
        assert ids(victims) == sids[3:5]
        assert ctx.working_set()[0].body == "gist 2"
        assert ctx.stats().size == 65

    run(scenario())


def test_summaries_alone_are_paged_out_without_summarising_them_again() -> None:
    async def scenario() -> None:
        summarize = RecordingSummarizer(tokens=45)
        ctx = Context(ceiling=100, summarizer=summarize)
        for i in range(9):
            await ctx.remember(f"note {i}", tokens=10)
        # The 45-token summary put the context at 105; it was the only victim needed, so it went
        # to swap as it was.
        assert len(summarize.calls) == 1
        assert not any(s.summary for s in ctx.working_set())
        assert ctx.stats().size == 60
        assert ctx.stats().swapped == 4
        (back,) = await ctx.recall("gist")
        assert back.summary

    run(scenario())


def test_without_summarizer_no_placeholder_summary_is_made() -> None:
    async def scenario() -> None:
        ctx = Context(ceiling=100)
        for i in range(20):
            await ctx.remember(f"note {i}", tokens=10)
        assert not any(s.summary for s in ctx.working_set())
        assert ctx.stats().resident + ctx.stats().swapped == 20

    run(scenario())


def test_a_failing_summarizer_loses_nothing() -> None:
    async def broken(victims: list[Segment]) -> tuple[Any, int]:
        raise RuntimeError("model unavailable")

    async def scenario() -> None:
        ctx = Context(ceiling=100, summarizer=broken)
        sids = [await ctx.remember(f"note {i}", tokens=10) for i in range(8)]
        with pytest.raises(RuntimeError, match="model unavailable"):
            await ctx.remember("note 8", tokens=10)
        dumped = ctx.dump()
        assert sorted(d["id"] for d in dumped) == sorted([*sids, "s9"])
        assert ctx.stats().size == sum(s.tokens for s in ctx.working_set()) == 60
        assert ids(await ctx.recall("note 0", k=1)) == [sids[0]]  # the victims are in swap

    run(scenario())


def test_concurrent_remembers_during_a_slow_summary_keep_the_accounting() -> None:
    async def slow(victims: list[Segment]) -> tuple[Any, int]:
        await asyncio.sleep(0)  # let the other remembers run meanwhile
        return "gist", 5

    async def scenario() -> None:
        ctx = Context(ceiling=100, summarizer=slow)
        await asyncio.gather(*(ctx.remember(f"note {i}", tokens=10) for i in range(30)))
        resident = ctx.working_set()
        assert ctx.stats().size == sum(s.tokens for s in resident) <= 80
        notes = [d for d in ctx.dump() if not d["summary"]]
        assert len(notes) == 30  # every note is resident or in swap, once

    run(scenario())


# --- recall ------------------------------------------------------------------------------------


def test_recall_from_an_empty_swap_finds_nothing() -> None:
    async def scenario() -> None:
        ctx = Context(ceiling=100)
        assert await ctx.recall("anything") == []
        await ctx.remember("resident note about anything", tokens=1)
        assert await ctx.recall("anything") == []  # recall searches swap only
        assert await Context().recall("anything") == []

    run(scenario())


def test_recall_ranks_a_rare_query_term_above_a_common_one() -> None:
    async def scenario() -> None:
        ctx = await swapped_context(
            ["apple banana", "apple cherry", "zebra cherry", "apple date", "apple fig"]
        )
        assert ids(await ctx.recall("apple zebra", k=1)) == ["s3"]

    run(scenario())


def test_recall_ranks_higher_term_frequency_first() -> None:
    async def scenario() -> None:
        ctx = await swapped_context(["zebra fox fox", "zebra zebra fox", "fox hen owl"])
        assert ids(await ctx.recall("zebra")) == ["s2", "s1"]

    run(scenario())


def test_recall_ranks_the_shorter_document_first_at_equal_term_frequency() -> None:
    async def scenario() -> None:
        ctx = await swapped_context(["zebra fox fox fox fox fox", "zebra fox", "fox hen owl"])
        assert ids(await ctx.recall("zebra")) == ["s2", "s1"]

    run(scenario())


def bm25_scores(docs: dict[str, list[str]], query: list[str]) -> dict[str, float]:
    """Okapi BM25 (k1=1.5, b=0.75), written out plainly as the yardstick."""
    n = len(docs)
    avg = sum(map(len, docs.values())) / n
    scores = {}
    for sid, words in docs.items():
        tf = Counter(words)
        score = 0.0
        for term in set(query):
            if tf[term]:
                df = sum(term in d for d in docs.values())
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                norm = 1.5 * (1 - 0.75 + 0.75 * len(words) / avg)
                score += idf * tf[term] * 2.5 / (tf[term] + norm)
        if score:
            scores[sid] = score
    return scores


def test_recall_order_is_okapi_bm25() -> None:
    bodies = [
        "the kernel pages cold segments out to swap",
        "swap keeps segments the pager took",
        "the pager summarises victims with the model",
        "recall searches swap with bm25 over terms",
        "terms are lowercase words and cjk characters",
        "a pinned segment never leaves the working set",
        "the the the kernel",
    ]
    query = "The kernel SWAP, segments!"

    async def scenario() -> None:
        ctx = await swapped_context(bodies)
        expected = bm25_scores(
            {f"s{i}": b.split() for i, b in enumerate(bodies, 1)},
            ["the", "kernel", "swap", "segments"],
        )
        assert len(set(expected.values())) == len(expected)  # no ties to make order ambiguous
        got = await ctx.recall(query, k=len(bodies))
        assert ids(got) == sorted(expected, key=expected.__getitem__, reverse=True)

    run(scenario())


def test_recall_splits_cjk_text_into_characters() -> None:
    async def scenario() -> None:
        ctx = await swapped_context(["今天天气很好", "我们去公园散步", "weather is nice"])
        assert ids(await ctx.recall("天气", k=1)) == ["s1"]
        assert ids(await ctx.recall("公园", k=1)) == ["s2"]

    run(scenario())


def test_recalled_segments_leave_swap_and_come_back_best_most_recent() -> None:
    async def scenario() -> None:
        ctx = Context(ceiling=100)
        await ctx.remember("deploy notes: the staging deploy failed", tokens=30)
        await ctx.remember("lunch menu", tokens=30)
        await ctx.remember("deploy deploy deploy: rollback done", tokens=30)
        await ctx.remember("filler", tokens=60)  # pages all three older ones out
        assert ctx.stats().swapped == 3
        hits = await ctx.recall("deploy", k=2)
        assert ids(hits) == ["s3", "s1"]
        assert ids(ctx.working_set())[-2:] == ["s1", "s3"]  # best hit is the most recent
        assert ctx.stats().swapped == 2  # filler paged out to make room; lunch stays swapped
        assert await ctx.recall("deploy") == []  # no longer in swap

    run(scenario())


def test_recall_k_zero_finds_nothing_and_negative_k_is_refused() -> None:
    async def scenario() -> None:
        ctx = await swapped_context(["zebra"])
        assert await ctx.recall("zebra", k=0) == []
        with pytest.raises(KernelError, match="k must be"):
            await ctx.recall("zebra", k=-1)
        assert ctx.stats().swapped == 1

    run(scenario())


# --- pin and forget ----------------------------------------------------------------------------


def test_forget_drops_resident_and_swapped_segments() -> None:
    async def scenario() -> None:
        ctx = Context(ceiling=100)
        old = await ctx.remember("old zebra", tokens=50)
        pinned = await ctx.remember("rule", tokens=10, pin=True)
        await ctx.remember("new", tokens=30)  # 90: old goes to swap
        ctx.forget(old)
        assert await ctx.recall("zebra") == []
        ctx.forget(pinned)
        assert ctx.stats().pinned_tokens == 0
        assert ctx.stats().size == 30
        assert ctx.stats().swapped == 0
        with pytest.raises(KernelError, match="no segment"):
            ctx.forget(old)

    run(scenario())


def test_pin_refuses_unknown_and_swapped_segments() -> None:
    async def scenario() -> None:
        ctx = await swapped_context(["zebra"])
        with pytest.raises(KernelError, match="recall it"):
            ctx.pin("s1")
        ctx.pin("s1", on=False)  # already unpinned: nothing to do
        with pytest.raises(KernelError, match="no segment"):
            ctx.pin("s99")

    run(scenario())


def test_pinned_set_over_the_ceiling_is_quota_mem_and_changes_nothing() -> None:
    async def scenario() -> None:
        ctx = Context(ceiling=100)
        await ctx.remember("rules", tokens=60, pin=True)
        await ctx.remember("notes", tokens=15)
        before = ctx.dump()
        with pytest.raises(QuotaExceeded, match=r"pinned 110 tokens > ceiling 100") as caught:
            await ctx.remember("more rules", tokens=50, pin=True)
        assert caught.value.resource == "mem"
        assert ctx.dump() == before
        assert ctx.stats().pinned_tokens == 60
        assert ctx.stats().size == 75
        sid = await ctx.remember("more rules, fewer words", tokens=40, pin=True)
        assert ctx.working_set()[-1].id == sid  # still works; the loose notes made room

    run(scenario())


# --- snapshots ---------------------------------------------------------------------------------


async def lived_in_context(ceiling: int = 100) -> Context:
    ctx = Context(ceiling=ceiling)
    await ctx.remember("you are a careful reviewer", tokens=20, pin=True)
    for i in range(12):
        await ctx.remember({"role": "tool", "content": f"result {i} word{i}"}, tokens=10)
    return ctx


def test_dump_and_load_round_trip_through_json() -> None:
    async def scenario() -> None:
        ctx = await lived_in_context()
        dumped = json.loads(json.dumps(ctx.dump()))
        restored = await Context.load(dumped, ceiling=100)
        assert restored.dump() == ctx.dump()
        assert restored.working_set() == ctx.working_set()
        assert restored.stats() == ctx.stats()
        (hit,) = await restored.recall("word0", k=1)
        assert hit.body == {"role": "tool", "content": "result 0 word0"}
        fresh = await restored.remember("new", tokens=1)
        assert [d["id"] for d in restored.dump()].count(fresh) == 1

    run(scenario())


def test_load_under_a_smaller_ceiling_pages_down_and_keeps_everything() -> None:
    async def scenario() -> None:
        ctx = await lived_in_context()
        swapped_before = {d["id"] for d in ctx.dump() if d["swapped"]}
        summarize = RecordingSummarizer(tokens=3)
        restored = await Context.load(ctx.dump(), ceiling=50, summarizer=summarize)
        stats = restored.stats()
        assert stats.size <= 40
        assert stats.pinned_tokens == 20
        # Only what was resident gets summarised; what was already swapped is not read again.
        (victims,) = summarize.calls
        assert not swapped_before & set(ids(victims))
        assert {d["id"] for d in ctx.dump()} <= {d["id"] for d in restored.dump()}

    run(scenario())


def test_load_with_pinned_set_over_the_new_ceiling_is_quota_mem() -> None:
    async def scenario() -> None:
        ctx = await lived_in_context()
        with pytest.raises(QuotaExceeded, match=r"pinned 20 tokens > ceiling 10") as caught:
            await Context.load(ctx.dump(), ceiling=10)
        assert caught.value.resource == "mem"

    run(scenario())


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"id": "s1"}, r"dumped\[1\] must be a dict with a 'body'"),
        ({"id": "s1", "body": "x"}, r"dumped\[1\]\.id 's1' appears twice"),
        ({"id": "s2", "body": "x", "tokens": -3}, r"dumped\[1\]\.tokens must be an int >= 0"),
        ({"id": "s2", "body": "x", "pinned": "yes"}, r"dumped\[1\]\.pinned must be true or false"),
        ({"id": "s2", "body": "x", "pinned": True, "swapped": True}, r"both pinned and swapped"),
    ],
)
def test_load_refuses_a_corrupt_dump_naming_the_entry(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(KernelError, match=message):
        run(Context.load([{"id": "s1", "body": "ok", "tokens": 1}, entry], ceiling=100))


def test_an_empty_context_has_no_instance_dict() -> None:
    assert not hasattr(Context(), "__dict__")


# --- the accounting invariant, under any sequence of operations ---------------------------------

Op = tuple[str, int, int]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("remember"), st.integers(0, 60), st.integers(0, 1)),
        st.tuples(st.just("pin"), st.integers(0, 40), st.integers(0, 1)),
        st.tuples(st.just("forget"), st.integers(0, 40), st.just(0)),
        st.tuples(st.just("recall"), st.integers(0, 40), st.integers(0, 3)),
    ),
    max_size=40,
)


def check_accounting(ctx: Context) -> None:
    dumped = ctx.dump()
    resident = [d for d in dumped if not d["swapped"]]
    swapped = [d for d in dumped if d["swapped"]]
    assert len({d["id"] for d in dumped}) == len(dumped)  # in exactly one of resident/swap
    assert [d["id"] for d in resident] == ids(ctx.working_set())
    stats = ctx.stats()
    assert (stats.resident, stats.swapped) == (len(resident), len(swapped))
    assert stats.size == sum(d["tokens"] for d in resident)
    assert stats.pinned_tokens == sum(d["tokens"] for d in resident if d["pinned"])
    assert not any(d["pinned"] for d in swapped)
    if ctx.ceiling is not None:
        assert stats.size <= ctx.ceiling


@settings(max_examples=300, deadline=None)
@given(
    ceiling=st.one_of(st.none(), st.integers(0, 200)),
    summarize=st.booleans(),
    script=ops,
)
def test_accounting_holds_after_any_sequence_of_operations(
    ceiling: int | None, summarize: bool, script: list[Op]
) -> None:
    async def gist(victims: list[Segment]) -> tuple[Any, int]:
        return f"summary of {len(victims)}", 1 + sum(v.tokens for v in victims) // 3

    async def scenario() -> None:
        ctx = Context(ceiling, gist if summarize else None)
        made: list[str] = []  # ids handed out by remember, in order; body of made[n] is "wn ..."
        for op, n, arg in script:
            before = ctx.dump()
            try:
                if op == "remember":
                    made.append(await ctx.remember(f"w{len(made)} shared", tokens=n, pin=bool(arg)))
                elif op == "pin" and made:
                    ctx.pin(made[n % len(made)], on=bool(arg))
                elif op == "forget" and made:
                    ctx.forget(made[n % len(made)])
                elif op == "recall" and made:
                    target = made[n % len(made)]
                    was_swapped = any(d["id"] == target and d["swapped"] for d in before)
                    hits = await ctx.recall(f"w{n % len(made)}", k=arg)
                    # the term is unique to its segment: found iff it was swapped (and k > 0)
                    assert ids(hits) == ([target] if was_swapped and arg else [])
            except (KernelError, QuotaExceeded):
                assert ctx.dump() == before  # a refused operation changes nothing
            check_accounting(ctx)
            if op in ("remember", "recall") and ctx.ceiling is not None:
                high = ctx.ceiling * 4 // 5
                assert ctx.stats().size <= high or all(s.pinned for s in ctx.working_set())

    run(scenario())
