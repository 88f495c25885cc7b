"""A process's working memory: token-counted segments, a pager, and recall from swap.

Each LLM sub-agent keeps what it knows in a `Context`. Segments are resident (in
the prompt) or swapped out (kept, but off the prompt). When the resident size
passes 80% of the ceiling the pager moves the coldest unpinned segments to swap
until it is back at 60%, optionally leaving one summary in their place; `recall`
finds swapped segments again by BM25 and brings them back. Pinned segments are
never paged; a pinned set larger than the ceiling is a `quota(mem)` fault.
"""

from __future__ import annotations

import heapq
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeAlias

from yool.kernel.errors import KernelError, QuotaExceeded

__all__ = ["Context", "ContextStats", "Segment", "Summarizer", "estimate_tokens"]


@dataclass(frozen=True, slots=True)
class Segment:
    """One piece of working memory. Frozen, so a caller holding one can't skew the accounting."""

    id: str
    body: Any  # a str or anything JSON-able
    tokens: int
    pinned: bool = False
    summary: bool = False


@dataclass(frozen=True, slots=True)
class ContextStats:
    resident: int  # segments in the working set
    swapped: int  # segments paged out
    size: int  # tokens resident
    ceiling: int | None
    pinned_tokens: int


Summarizer: TypeAlias = Callable[[list[Segment]], Awaitable[tuple[Any, int]]]
"""Condenses paged-out segments into one body; returns (body, its tokens)."""


# --- token estimate ----------------------------------------------------------------------------

# CJK is counted by whole 256-code-point blocks: U+3000-9FFF, U+AC00-D7FF, U+F900-FAFF,
# U+FF00-FFFF. The reference's ranges differ only in the last 80 code points of the Hangul block
# (archaic jamo) and the 16 specials after U+FFEF; block alignment lets one bytes.translate over
# the UTF-16 high bytes count them: ~6-8 us for 2 KB of non-ASCII text where a regex took 40-400.
_CJK_HIGH_BYTES = frozenset([*range(0x30, 0xA0), *range(0xAC, 0xD8), 0xF9, 0xFA, 0xFF])
_NOT_CJK_HIGH_BYTES = bytes(b for b in range(256) if b not in _CJK_HIGH_BYTES)


def _json(body: Any) -> str:
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise KernelError(f"segment body must be a str or JSON-able: {e}") from None


def _estimate_text(text: str) -> int:
    if text.isascii():
        length, cjk = len(text), 0
    else:
        # Length in UTF-16 units, as the reference (JavaScript) measures it.
        units = text.encode("utf-16-le", "surrogatepass")
        length = len(units) // 2
        cjk = len(units[1::2].translate(None, _NOT_CJK_HIGH_BYTES))
    # ceil(1.5 * cjk + (length - cjk) / 4), in integers
    return max(1, (length + 5 * cjk + 3) // 4)


def estimate_tokens(body: Any) -> int:
    """About 4 characters a token, 1.5 tokens a CJK character, at least 1.

    Non-str bodies are measured on their compact JSON text.
    """
    return _estimate_text(body if isinstance(body, str) else _json(body))


# --- swap and its BM25 index -------------------------------------------------------------------

_K1 = 1.5
_B = 0.75
# Each Han, kana or Hangul character is a term of its own (CJK text has no spaces to split on);
# any other run of letters and digits, in any script, is one term.
_CJK_TERM = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TERM = re.compile(f"[{_CJK_TERM}]|[^\\W_{_CJK_TERM}]+")


def _terms(text: str) -> list[str]:
    return _TERM.findall(text.lower())


class _Swap:
    """Paged-out segments, with an inverted index so a query touches only its terms' postings."""

    __slots__ = ("_doc_terms", "_postings", "_total_len", "segments")

    def __init__(self) -> None:
        self.segments: dict[str, Segment] = {}
        self._postings: dict[str, dict[str, int]] = {}  # term -> {segment id: term frequency}
        self._doc_terms: dict[str, tuple[int, tuple[str, ...]]] = {}  # id -> (length, terms)
        self._total_len = 0

    def __len__(self) -> int:
        return len(self.segments)

    def add(self, seg: Segment) -> None:
        text = seg.body if isinstance(seg.body, str) else _json(seg.body)
        terms = _terms(text)
        tf = Counter(map(sys.intern, terms))  # interned: one copy of each term across documents
        sid, all_postings = seg.id, self._postings
        for term, n in tf.items():
            postings = all_postings.get(term)
            if postings is None:
                all_postings[term] = {sid: n}
            else:
                postings[sid] = n
        self._doc_terms[seg.id] = (len(terms), tuple(tf))
        self._total_len += len(terms)
        self.segments[seg.id] = seg

    def pop(self, sid: str) -> Segment:
        seg = self.segments.pop(sid)
        length, terms = self._doc_terms.pop(sid)
        self._total_len -= length
        for term in terms:
            postings = self._postings[term]
            del postings[sid]
            if not postings:
                del self._postings[term]
        return seg

    def search(self, query: str, k: int) -> list[str]:
        """Ids of the k best BM25 matches, best first."""
        n_docs = len(self._doc_terms)
        if not n_docs:
            return []
        avg_len = self._total_len / n_docs or 1.0
        # BM25's length norm k1 * (1 - b + b * len / avg), split so the inner loop is one multiply
        flat, per_term = _K1 * (1 - _B), _K1 * _B / avg_len
        doc_terms = self._doc_terms
        scores: dict[str, float] = {}
        # dict.fromkeys: distinct terms in query order, so ties break the same way on every run
        for term in dict.fromkeys(_terms(query)):
            postings = self._postings.get(term)
            if not postings:
                continue
            df = len(postings)
            weight = math.log(1 + (n_docs - df + 0.5) / (df + 0.5)) * (_K1 + 1)  # idf * (k1 + 1)
            for sid, tf in postings.items():
                score = weight * tf / (tf + flat + per_term * doc_terms[sid][0])
                scores[sid] = scores.get(sid, 0.0) + score
        return heapq.nlargest(k, scores, key=scores.__getitem__)


# --- the context -------------------------------------------------------------------------------


class Context:
    """Working memory of one process.

    Resident segments are kept coldest first in a dict's insertion order, so LRU order costs
    nothing: touching a segment re-inserts it at the end.
    """

    __slots__ = ("_ceiling", "_pinned", "_resident", "_seq", "_size", "_summarizer", "_swap")

    def __init__(self, ceiling: int | None = None, summarizer: Summarizer | None = None) -> None:
        if ceiling is not None and (
            isinstance(ceiling, bool) or not isinstance(ceiling, int) or ceiling < 0
        ):
            raise KernelError(f"ceiling must be a token count >= 0 or None, got {ceiling!r}")
        self._ceiling = ceiling
        self._summarizer = summarizer
        self._resident: dict[str, Segment] = {}
        self._swap: _Swap | None = None  # made on the first page-out; most contexts never swap
        self._size = 0
        self._pinned = 0
        self._seq = 0

    @property
    def ceiling(self) -> int | None:
        return self._ceiling

    @property
    def summarizer(self) -> Summarizer | None:
        return self._summarizer

    @summarizer.setter
    def summarizer(self, fn: Summarizer | None) -> None:
        self._summarizer = fn

    async def remember(self, body: Any, tokens: int | None = None, pin: bool = False) -> str:
        """Add a segment as the most recent; returns its id.

        A pinned segment that would make the pinned set exceed the ceiling is refused with
        QuotaExceeded and nothing is stored.
        """
        text = body if isinstance(body, str) else _json(body)  # also rejects non-JSON bodies
        if tokens is None:
            tokens = _estimate_text(text)
        elif isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise KernelError(f"tokens must be an int >= 0 or omitted, got {tokens!r}")
        if pin:
            self._check_pinned(tokens)
        seg = Segment(self._new_id(), body, tokens, pinned=pin)
        self._admit(seg)
        await self._relieve()
        return seg.id

    def working_set(self) -> list[Segment]:
        """Resident segments, coldest first (the order to lay them out in a prompt)."""
        return list(self._resident.values())

    async def recall(self, query: str, k: int = 4) -> list[Segment]:
        """The k swapped-out segments that best match `query` (BM25), best first.

        They come back resident, the best one most recent; bringing them back may page out
        others (or, if they alone pass the watermark, some of them again).
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise KernelError(f"k must be an int >= 0, got {k!r}")
        swap = self._swap
        hits = [swap.pop(sid) for sid in swap.search(query, k)] if swap is not None and k else []
        for seg in reversed(hits):
            self._admit(seg)
        await self._relieve()  # even with no hits: the pager reclaims what was unpinned since
        return hits

    def pin(self, sid: str, on: bool = True) -> None:
        """Pin a resident segment so the pager never takes it, or unpin it.

        Unpinning doesn't page anything out by itself (like munlock): the pager reclaims on the
        next remember or recall.
        """
        seg = self._resident.get(sid)
        if seg is None:
            if self._swap is not None and sid in self._swap.segments:
                if not on:
                    return  # swapped segments are never pinned
                raise KernelError(f"segment {sid!r} is swapped out; recall it before pinning")
            raise KernelError(f"no segment {sid!r} in this context")
        if seg.pinned == on:
            return
        # No quota check: a resident segment already counts in a size kept within the ceiling.
        self._pinned += seg.tokens if on else -seg.tokens
        self._resident[sid] = replace(seg, pinned=on)  # same key: keeps its place in LRU order

    def forget(self, sid: str) -> None:
        """Drop a segment for good, resident or swapped."""
        seg = self._resident.pop(sid, None)
        if seg is not None:
            self._size -= seg.tokens
            if seg.pinned:
                self._pinned -= seg.tokens
        elif self._swap is not None and sid in self._swap.segments:
            self._swap.pop(sid)
        else:
            raise KernelError(f"no segment {sid!r} in this context")

    def stats(self) -> ContextStats:
        return ContextStats(
            resident=len(self._resident),
            swapped=len(self._swap) if self._swap is not None else 0,
            size=self._size,
            ceiling=self._ceiling,
            pinned_tokens=self._pinned,
        )

    def dump(self) -> list[dict[str, Any]]:
        """Every segment, resident (coldest first) then swapped, as JSON-able dicts."""
        swapped = self._swap.segments.values() if self._swap is not None else ()
        return [_dump_segment(seg, swapped=False) for seg in self._resident.values()] + [
            _dump_segment(seg, swapped=True) for seg in swapped
        ]

    @classmethod
    async def load(
        cls,
        dumped: Iterable[Mapping[str, Any]],
        ceiling: int | None = None,
        summarizer: Summarizer | None = None,
    ) -> Context:
        """Rebuild a context from `dump()`, then page down if it is over the (new) ceiling.

        Swapped segments go straight back to swap, so restoring doesn't summarise them again.
        Raises QuotaExceeded if the pinned segments alone exceed the ceiling.
        """
        ctx = cls(ceiling, summarizer)
        for i, entry in enumerate(dumped):
            seg, swapped = _load_segment(i, entry)
            if seg.id in ctx._resident or (ctx._swap is not None and seg.id in ctx._swap.segments):
                raise KernelError(f"dumped[{i}].id {seg.id!r} appears twice")
            if swapped:
                ctx._swapped().add(seg)
            else:
                ctx._admit(seg)
            if seg.id[:1] == "s" and seg.id[1:].isdigit():
                ctx._seq = max(ctx._seq, int(seg.id[1:]))
        ctx._check_pinned(0)
        await ctx._relieve()
        return ctx

    # --- internals -----------------------------------------------------------------------------

    def _new_id(self) -> str:
        while True:
            self._seq += 1
            sid = f"s{self._seq}"
            if sid not in self._resident and (self._swap is None or sid not in self._swap.segments):
                return sid

    def _swapped(self) -> _Swap:
        if self._swap is None:
            self._swap = _Swap()
        return self._swap

    def _admit(self, seg: Segment) -> None:
        self._resident[seg.id] = seg
        self._size += seg.tokens
        if seg.pinned:
            self._pinned += seg.tokens

    def _check_pinned(self, extra: int) -> None:
        if self._ceiling is not None and self._pinned + extra > self._ceiling:
            raise QuotaExceeded(
                "mem", f"pinned {self._pinned + extra} tokens > ceiling {self._ceiling}"
            )

    async def _relieve(self) -> None:
        """Page out while over 80% of the ceiling, down to 60%, or until only pinned remain.

        Victims go to swap before the summarizer is awaited, so the context is consistent at
        that await (a concurrent remember or recall sees it whole) and a failing summarizer loses
        nothing. The loop ends: every round with a summary swaps out at least one segment that
        is not a summary, and a round of summaries only adds nothing.
        """
        if self._ceiling is None:
            return
        high = self._ceiling * 4 // 5
        low = self._ceiling * 3 // 5
        while self._size > high:
            victims = self._coldest_unpinned(self._size - low)
            if not victims:
                return  # only pinned segments left; _check_pinned keeps them within the ceiling
            swap = self._swapped()
            for seg in victims:
                swap.add(seg)  # first: it refuses a body that can't be indexed, changing nothing
                del self._resident[seg.id]
                self._size -= seg.tokens
            if self._summarizer is None or all(seg.summary for seg in victims):
                continue
            body, tokens = await self._summarizer(victims)
            if not isinstance(body, str):
                _json(body)  # refuse it now rather than when it is paged out in turn
            summary = Segment(self._new_id(), body, tokens, summary=True)
            # It stands for the oldest memories, so it takes their place at the cold end.
            self._resident = {summary.id: summary, **self._resident}
            self._size += tokens

    def _coldest_unpinned(self, need: int) -> list[Segment]:
        victims: list[Segment] = []
        freed = 0
        for seg in self._resident.values():
            if seg.pinned:
                continue
            victims.append(seg)
            freed += seg.tokens
            if freed >= need:
                break
        return victims


def _dump_segment(seg: Segment, *, swapped: bool) -> dict[str, Any]:
    return {
        "id": seg.id,
        "body": seg.body,
        "tokens": seg.tokens,
        "pinned": seg.pinned,
        "summary": seg.summary,
        "swapped": swapped,
    }


def _load_segment(i: int, entry: Mapping[str, Any]) -> tuple[Segment, bool]:
    where = f"dumped[{i}]"
    if not isinstance(entry, Mapping) or "body" not in entry:
        raise KernelError(f"{where} must be a dict with a 'body'")
    body = entry["body"]
    if not isinstance(body, str):
        try:
            _json(body)
        except KernelError as e:
            raise KernelError(f"{where}.body: {e}") from None
    sid = entry.get("id")
    if not isinstance(sid, str) or not sid:
        raise KernelError(f"{where}.id must be a non-empty str, got {sid!r}")
    tokens = entry.get("tokens")
    if tokens is None:
        tokens = estimate_tokens(body)
    elif isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise KernelError(f"{where}.tokens must be an int >= 0, got {tokens!r}")
    flags: dict[str, bool] = {}
    for flag in ("pinned", "summary", "swapped"):
        value = entry.get(flag, False)
        if not isinstance(value, bool):
            raise KernelError(f"{where}.{flag} must be true or false, got {value!r}")
        flags[flag] = value
    if flags["pinned"] and flags["swapped"]:
        raise KernelError(f"{where} is both pinned and swapped; pinned segments stay resident")
    return Segment(sid, body, tokens, flags["pinned"], flags["summary"]), flags["swapped"]
