"""Provider resilience: retries, circuit breaker, receipt cache, hedging, AIMD, compression."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from yool.drivers.llm import LLMRequest, LLMResponse, Msg, Provider, ProviderError, Usage
from yool.drivers.llm.resilience import (
    AdaptiveConcurrency,
    Backoff,
    CircuitBreaker,
    Hedger,
    ReceiptCache,
    Retry,
    compress_request,
    compress_text,
    request_digest,
)
from yool.kernel.lanes import Lane

Outcome = BaseException | float | tuple[float, BaseException] | None
"""What one call does: answer after that many seconds (None: at once), or raise (after a delay)."""


class Flaky(Provider):
    """A real provider that plays outcomes in order and records when each call started."""

    name = "flaky"
    default_model = "flaky-1"

    def __init__(self, outcomes: list[Outcome] | None = None, *, then: Outcome = None) -> None:
        self.outcomes = list(outcomes or [])
        self.then = then
        self.starts: list[float] = []
        self.cancelled = 0
        self.finished = 0

    async def complete(self, request: LLMRequest) -> LLMResponse:
        n = len(self.starts)
        self.starts.append(asyncio.get_running_loop().time())
        outcome = self.outcomes[n] if n < len(self.outcomes) else self.then
        if isinstance(outcome, tuple):
            await asyncio.sleep(outcome[0])
            outcome = outcome[1]
        if isinstance(outcome, BaseException):
            raise outcome
        try:
            if outcome:
                await asyncio.sleep(outcome)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        return LLMResponse(f"answer {n}", (), "end", Usage(10, 5), "flaky-1")


def req(text: str = "hi", **kw: Any) -> LLMRequest:
    return LLMRequest((Msg("user", text),), **kw)


def overloaded(retry_after: float | None = None) -> ProviderError:
    return ProviderError("overloaded", retryable=True, retry_after=retry_after, status=529)


def now() -> float:
    return asyncio.get_running_loop().time()


def state(breaker: CircuitBreaker) -> str:
    """The breaker's state, read afresh (not narrowed by an earlier assert)."""
    return breaker.state


# --- retries ----------------------------------------------------------------------------------


def test_backoff_is_full_jitter_within_a_doubling_capped_ceiling() -> None:
    b = Backoff(0.1, 1.0, random.Random(7))
    assert [b.ceiling(n) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    draws = {n: [b.delay(n) for _ in range(200)] for n in range(6)}
    for n, values in draws.items():
        assert all(0 <= v <= b.ceiling(n) for v in values)
        assert len(set(values)) > 150  # jittered, not a fixed delay
    assert max(draws[3]) > 0.6  # the ceiling really grows


def test_retry_succeeds_after_transient_failures_sleeping_the_drawn_delays(virtual: Any) -> None:
    async def main() -> None:
        p = Flaky([overloaded(), overloaded()])
        retry = Retry(3, Backoff(0.1, 5.0, random.Random(1)))
        response = await retry.run(p.complete, req())
        assert response.text == "answer 2"
        gaps = [b - a for a, b in zip(p.starts, p.starts[1:], strict=False)]
        assert gaps == pytest.approx(retry.last_delays)
        assert 0 <= retry.last_delays[0] <= 0.1 and 0 <= retry.last_delays[1] <= 0.2

    virtual(main())


def test_retry_stops_after_max_retries_and_raises_the_last_error(virtual: Any) -> None:
    async def main() -> None:
        p = Flaky(then=overloaded())
        retry = Retry(3, Backoff(0.1, 0.3, random.Random(2)))
        with pytest.raises(ProviderError, match="overloaded"):
            await retry.run(p.complete, req())
        assert len(p.starts) == 4  # one try and three retries
        assert all(0 <= d <= c for d, c in zip(retry.last_delays, [0.1, 0.2, 0.3], strict=True))

    virtual(main())


def test_non_retryable_error_is_raised_at_once_without_a_retry(virtual: Any) -> None:
    async def main() -> None:
        p = Flaky([ProviderError("bad request", retryable=False, status=400)])
        with pytest.raises(ProviderError, match="bad request"):
            await Retry(5, Backoff(0.1, 1.0)).run(p.complete, req())
        assert len(p.starts) == 1
        assert now() == 0.0

    virtual(main())


def test_retry_after_is_honoured_as_a_floor_on_the_delay(virtual: Any) -> None:
    async def main() -> None:
        p = Flaky([overloaded(retry_after=7.5)])
        retry = Retry(2, Backoff(0.1, 1.0, random.Random(3)))
        await retry.run(p.complete, req())
        assert p.starts[1] - p.starts[0] >= 7.5
        assert p.starts[1] == pytest.approx(7.5)

    virtual(main())


def test_retry_after_is_capped(virtual: Any) -> None:
    async def main() -> None:
        p = Flaky([overloaded(retry_after=86400)])
        await Retry(1, Backoff(0.1, 1.0), max_retry_after_s=30).run(p.complete, req())
        assert p.starts[1] == pytest.approx(30.0)

    virtual(main())


def test_overall_deadline_cancels_a_slow_attempt_and_skips_late_retries(virtual: Any) -> None:
    async def main() -> None:
        slow = Flaky(then=100.0)
        with pytest.raises(ProviderError, match="deadline of 5s"):
            await Retry(3, Backoff(0.1, 1.0), deadline_s=5).run(slow.complete, req())
        assert now() == pytest.approx(5.0) and slow.cancelled == 1

        late = Flaky([overloaded(retry_after=10)])
        with pytest.raises(ProviderError, match="overloaded"):
            await Retry(3, Backoff(0.1, 1.0), deadline_s=5).run(late.complete, req())
        assert len(late.starts) == 1

    virtual(main())


# --- circuit breaker --------------------------------------------------------------------------


def test_breaker_opens_after_threshold_fails_fast_then_one_probe_closes_it(virtual: Any) -> None:
    async def main() -> None:
        p = Flaky([overloaded(), overloaded(), overloaded()])
        breaker = CircuitBreaker("flaky", threshold=3, cooldown_s=30)
        call = breaker.wrap(p.complete)
        for _ in range(3):
            with pytest.raises(ProviderError, match="overloaded"):
                await call(req())
        assert state(breaker) == "open"
        await asyncio.sleep(10)
        with pytest.raises(ProviderError) as refused:
            await call(req())
        assert str(refused.value) == (
            "circuit open for flaky: 3 consecutive failures; retry in 20.0s"
        )
        assert not refused.value.retryable
        assert len(p.starts) == 3  # the refused call never reached the provider

        await asyncio.sleep(19.999)
        with pytest.raises(ProviderError, match="circuit open"):
            await call(req())
        await asyncio.sleep(0.001)  # exactly 30 s after opening
        assert (await call(req())).text == "answer 3"
        assert state(breaker) == "closed" and breaker.failures == 0
        assert p.starts[3] == pytest.approx(30.0)

    virtual(main())


def test_breaker_lets_one_probe_through_and_reopens_when_it_fails(virtual: Any) -> None:
    async def main() -> None:
        p = Flaky([overloaded(), 1.0, overloaded()])
        breaker = CircuitBreaker("flaky", threshold=1, cooldown_s=5)
        call = breaker.wrap(p.complete)
        with pytest.raises(ProviderError):
            await call(req())
        await asyncio.sleep(5)
        probe = asyncio.create_task(breaker.run(p.complete, req()))  # answers after 1 s
        await asyncio.sleep(0)
        assert state(breaker) == "half_open"
        with pytest.raises(ProviderError, match="trial call is in flight"):
            await call(req())  # concurrent caller during the probe fails fast
        assert (await probe).text == "answer 1"
        assert state(breaker) == "closed"

        with pytest.raises(ProviderError, match="overloaded"):
            await call(req())
        opened = now()
        await asyncio.sleep(5)
        p.then = overloaded()
        with pytest.raises(ProviderError, match="overloaded"):
            await call(req())  # the probe fails: open for another cooldown
        assert state(breaker) == "open"
        with pytest.raises(ProviderError, match=r"retry in 5\.0s"):
            await call(req())
        assert now() == pytest.approx(opened + 5)
        assert len(p.starts) == 4

    virtual(main())


def test_breaker_ignores_caller_errors(virtual: Any) -> None:
    async def main() -> None:
        p = Flaky(then=ProviderError("bad request", status=400))
        breaker = CircuitBreaker("flaky", threshold=2, cooldown_s=5)
        for _ in range(5):
            with pytest.raises(ProviderError, match="bad request"):
                await breaker.run(p.complete, req())
        assert state(breaker) == "closed"

    virtual(main())


def test_a_cancelled_probe_lets_the_next_caller_probe(virtual: Any) -> None:
    async def main() -> None:
        p = Flaky([overloaded(), 10.0])
        breaker = CircuitBreaker("flaky", threshold=1, cooldown_s=5)
        with pytest.raises(ProviderError):
            await breaker.run(p.complete, req())
        await asyncio.sleep(5)
        probe = asyncio.create_task(breaker.run(p.complete, req()))
        await asyncio.sleep(1)
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        assert state(breaker) == "open"
        assert (await breaker.run(p.complete, req())).text == "answer 2"
        assert state(breaker) == "closed"

    virtual(main())


# --- receipt cache ----------------------------------------------------------------------------


def test_cache_hit_makes_no_second_call_and_only_deterministic_calls_are_cached(
    virtual: Any,
) -> None:
    async def main() -> None:
        p = Flaky()
        cache = ReceiptCache(max_entries=10, ttl_s=60)
        first, sent1 = await cache.run(p.complete, req(temperature=0))
        second, sent2 = await cache.run(p.complete, req(temperature=0))
        assert (sent1, sent2) == (True, False) and first == second
        assert len(p.starts) == 1 and cache.hits == 1
        await cache.run(p.complete, req(temperature=0.7))
        await cache.run(p.complete, req(temperature=0.7))
        await cache.run(p.complete, req())
        assert len(p.starts) == 4

    virtual(main())


def test_cache_key_is_a_stable_digest_of_sorted_json() -> None:
    a = LLMRequest((Msg("user", "x"),), system="s", temperature=0, max_tokens=5)
    b = LLMRequest((Msg("user", "x"),), max_tokens=5, temperature=0, system="s")
    assert request_digest(a) == request_digest(b)
    assert request_digest(a) != request_digest(req("y", temperature=0))
    assert len(request_digest(a)) == 64


def test_cache_entry_expires_after_ttl(virtual: Any) -> None:
    async def main() -> None:
        p = Flaky()
        cache = ReceiptCache(max_entries=10, ttl_s=60)
        await cache.run(p.complete, req(temperature=0))
        await asyncio.sleep(59.9)
        await cache.run(p.complete, req(temperature=0))
        assert len(p.starts) == 1
        await asyncio.sleep(0.1)
        _, sent = await cache.run(p.complete, req(temperature=0))
        assert sent and len(p.starts) == 2

    virtual(main())


def test_cache_evicts_the_least_recently_used(virtual: Any) -> None:
    async def main() -> None:
        p = Flaky()
        cache = ReceiptCache(max_entries=2, ttl_s=60)
        for text in ("a", "b", "a", "c"):  # "a" used again, so "b" is the eldest
            await cache.run(p.complete, req(text, temperature=0))
        assert len(cache) == 2 and len(p.starts) == 3
        await cache.run(p.complete, req("a", temperature=0))
        assert len(p.starts) == 3
        await cache.run(p.complete, req("b", temperature=0))
        assert len(p.starts) == 4

    virtual(main())


def test_concurrent_identical_requests_are_coalesced_into_one_call(virtual: Any) -> None:
    async def main() -> None:
        p = Flaky([2.0])
        cache = ReceiptCache(max_entries=10, ttl_s=60)
        results = await asyncio.gather(
            *(cache.run(p.complete, req(temperature=0)) for _ in range(5))
        )
        assert len(p.starts) == 1
        assert [sent for _, sent in results].count(True) == 1
        assert {r.text for r, _ in results} == {"answer 0"}
        assert cache.coalesced == 4

    virtual(main())


def test_coalesced_waiters_share_the_error_and_take_over_from_a_cancelled_leader(
    virtual: Any,
) -> None:
    async def main() -> None:
        p = Flaky([(1.0, ProviderError("nope", status=400))])
        cache = ReceiptCache(max_entries=10, ttl_s=60)
        got = await asyncio.gather(
            *(cache.run(p.complete, req(temperature=0)) for _ in range(3)),
            return_exceptions=True,
        )
        assert all(isinstance(g, ProviderError) for g in got) and len(p.starts) == 1

        slow = Flaky(then=1.0)
        leader = asyncio.create_task(cache.run(slow.complete, req("q", temperature=0)))
        await asyncio.sleep(0)
        waiter = asyncio.create_task(cache.run(slow.complete, req("q", temperature=0)))
        await asyncio.sleep(0.5)
        leader.cancel()
        response, sent = await waiter
        assert sent and response.text == "answer 1" and len(slow.starts) == 2

    virtual(main())


# --- hedging ----------------------------------------------------------------------------------


def test_hedge_starts_a_second_attempt_returns_the_first_success_and_cancels_the_loser(
    virtual: Any,
) -> None:
    async def main() -> None:
        p = Flaky([10.0, 0.5])  # the first attempt hangs, the hedge answers quickly
        hedger = Hedger(floor_s=1.0)
        response = await hedger.run(p.complete, req(idempotent=True))
        assert response.text == "answer 1"
        assert p.starts == [0.0, 1.0]
        assert now() == pytest.approx(1.5)
        assert p.cancelled == 1 and hedger.hedges == 1 and hedger.hedge_wins == 1

    virtual(main())


def test_no_hedge_when_the_first_attempt_answers_in_time(virtual: Any) -> None:
    async def main() -> None:
        p = Flaky([0.5])
        hedger = Hedger(floor_s=1.0)
        await hedger.run(p.complete, req(idempotent=True))
        assert len(p.starts) == 1 and hedger.hedges == 0

    virtual(main())


def test_non_idempotent_requests_are_never_hedged(virtual: Any) -> None:
    async def main() -> None:
        p = Flaky([10.0])
        hedger = Hedger(floor_s=1.0)
        assert (await hedger.run(p.complete, req())).text == "answer 0"
        assert len(p.starts) == 1 and now() == pytest.approx(10.0)

    virtual(main())


def test_hedge_survives_one_failed_attempt_and_delay_follows_p90(virtual: Any) -> None:
    async def main() -> None:
        p = Flaky([3.0, overloaded()])
        hedger = Hedger(floor_s=1.0)
        assert (await hedger.run(p.complete, req(idempotent=True))).text == "answer 0"
        assert now() == pytest.approx(3.0)

        h = Hedger(floor_s=0.1, min_samples=10)
        for ms in range(1, 11):
            h.observe(ms / 10)
        assert h.delay() == pytest.approx(0.9)

    virtual(main())


def test_hedge_raises_the_first_failure_when_both_attempts_fail(virtual: Any) -> None:
    async def main() -> None:
        p = Flaky([(3.0, overloaded()), (0.5, ProviderError("second", status=500))])
        with pytest.raises(ProviderError, match="second"):
            await Hedger(floor_s=1.0).run(p.complete, req(idempotent=True))
        assert now() == pytest.approx(3.0)

    virtual(main())


# --- adaptive concurrency ---------------------------------------------------------------------


def test_adaptive_concurrency_grows_under_success_and_halves_on_rate_limits(
    virtual: Any,
) -> None:
    async def main() -> None:
        lane = Lane("llm:flaky", 4)
        aimd = AdaptiveConcurrency(lane, initial=4, ceiling=8)
        for _ in range(4 + 5 + 6):
            aimd.record(0.2, ok=True)
        assert aimd.limit == 7 and lane.concurrency == 7
        for _ in range(100):
            aimd.record(0.2, ok=True)
        assert aimd.limit == 8  # never above the ceiling

        aimd.record(0.2, ok=False, status=429)
        assert aimd.limit == 4 and lane.concurrency == 4
        aimd.record(0.2, ok=False, status=429)  # same burst: counted once
        assert aimd.limit == 4
        await asyncio.sleep(1)
        aimd.record(0.2, ok=False, status=429)
        await asyncio.sleep(1)
        aimd.record(0.2, ok=False, status=429)
        await asyncio.sleep(1)
        aimd.record(0.2, ok=False, status=429)
        assert aimd.limit == 1 and lane.concurrency == 1  # never below one
        assert aimd.error_rate > 0.5

    virtual(main())


def test_slow_start_grows_per_call_until_a_rate_limit_which_cuts_gently(virtual: Any) -> None:
    async def main() -> None:
        aimd = AdaptiveConcurrency(
            None, initial=4, ceiling=64, rate_limit_decrease=0.9, slow_start=True
        )
        for _ in range(36):
            aimd.record(0.2, ok=True)
        assert aimd.limit == 40  # one per healthy call
        aimd.record(0.2, ok=False, status=429)
        assert aimd.limit == 36 and not aimd.slow_start  # a rate limit: x0.9
        for _ in range(36):
            aimd.record(0.2, ok=True)
        assert aimd.limit == 36  # additive from now on: +1 per window of healthy calls
        for _ in range(36):
            aimd.record(0.2, ok=True)
        assert aimd.limit == 37
        await asyncio.sleep(1)
        aimd.record(0.2, ok=False, status=503)
        assert aimd.limit == 18  # a failure still halves

    virtual(main())


def test_adaptive_concurrency_shrinks_on_a_latency_blowup(virtual: Any) -> None:
    async def main() -> None:
        aimd = AdaptiveConcurrency(None, initial=8, ceiling=16)
        for _ in range(5):
            aimd.record(0.1, ok=True)
        aimd.record(5.0, ok=True)
        assert aimd.limit == 4

    virtual(main())


def test_adaptive_concurrency_meters_real_calls_through_wrap(virtual: Any) -> None:
    async def main() -> None:
        p = Flaky([0.1, 0.1, overloaded(), 0.1])
        aimd = AdaptiveConcurrency(None, initial=2, ceiling=4)
        call = aimd.wrap(p.complete)
        await call(req())
        await call(req())
        assert aimd.limit == 3
        assert aimd.latency_ewma_s == pytest.approx(0.1)
        with pytest.raises(ProviderError):
            await call(req())
        assert aimd.limit == 1

    virtual(main())


# --- compression ------------------------------------------------------------------------------


def test_compression_is_deterministic_bounded_and_keeps_head_tail_and_digest() -> None:
    text = "HEAD" + "x" * 100_000 + "TAIL"
    out = compress_text(text, 500)
    assert out == compress_text(text, 500)
    assert len(out) <= 500
    assert out.startswith("[compressed 100,008 chars sha256:")
    assert "\nHEAD" in out and out.endswith("TAIL") and "\n…\n" in out
    assert compress_text("short", 500) == "short"
    assert compress_text(text, 500) != compress_text(text[:-1] + "!", 500)


@pytest.mark.parametrize("limit", [64, 100, 1000, 6000])
def test_compression_fits_every_limit(limit: int) -> None:
    assert len(compress_text("y" * (limit * 3), limit)) <= limit


def test_compress_request_shrinks_only_oversized_messages_and_keeps_the_system_prompt() -> None:
    big = "result " * 5000
    request = LLMRequest(
        (Msg("user", "do it"), Msg("tool", big, tool_call_id="c1")),
        system="s" * 10_000,
    )
    out = compress_request(request, 1000)
    assert out.messages[0] == request.messages[0]
    assert len(out.messages[1].content) <= 1000
    assert out.messages[1].tool_call_id == "c1" and out.system == request.system
    assert compress_request(out, 1000) == out
    small = req()
    assert compress_request(small, 1000) is small


def test_a_rate_limit_cuts_the_limit_to_just_below_where_the_provider_refused(
    virtual: Any,
) -> None:
    async def main() -> None:
        aimd = AdaptiveConcurrency(None, initial=4, ceiling=64, slow_start=True)
        for _ in range(40):  # slow start overshoots the provider's capacity of 20
            aimd.record(0.1, ok=True)
        assert aimd.limit == 44
        aimd.record(0.1, ok=False, status=429, sent_as=21)  # refused as the 21st in flight
        assert aimd.limit == 20 and not aimd.slow_start
        aimd.record(0.1, ok=False, status=429, sent_as=30)  # a later refusal above: no change
        assert aimd.limit == 20

    virtual(main())


def test_once_capacity_is_known_the_limit_probes_above_it_only_every_few_rounds(
    virtual: Any,
) -> None:
    async def main() -> None:
        aimd = AdaptiveConcurrency(None, initial=10, ceiling=64, probe_rounds=4)
        for _ in range(10):
            aimd.record(0.1, ok=True)
        assert aimd.limit == 11  # one round of healthy calls: +1
        aimd.record(0.1, ok=False, status=429, sent_as=11)
        assert aimd.limit == 10
        calls = 0
        while aimd.limit == 10:
            aimd.record(0.1, ok=True)
            calls += 1
        # Four rounds of 10 healthy calls per probe now (plus the few calls it takes the
        # error-rate average to fall back under its threshold after the refusal).
        assert aimd.limit == 11 and 40 <= calls < 50

    virtual(main())


def test_the_limit_probes_above_known_capacity_only_while_the_backlog_outlasts_a_refusal(
    virtual: Any,
) -> None:
    async def main() -> None:
        lane = Lane("llm:capped", 1)
        aimd = AdaptiveConcurrency(lane, initial=10, ceiling=64, probe_rounds=1)
        for _ in range(10):
            aimd.record(0.1, ok=True)
        assert aimd.limit == 11
        aimd.record(0.1, ok=False, status=429, sent_as=11, retry_after=0.5)
        assert aimd.limit == 10
        # No queue: a refused probe would only strand its caller for the Retry-After.
        for _ in range(200):
            aimd.record(0.1, ok=True)
        assert aimd.limit == 10
        for _ in range(10):
            await lane.acquire()
        # A queue that drains in 40 * 0.1 / 10 = 0.4 s < 0.5 + 0.1 s: still no probe.
        waiters = [asyncio.create_task(lane.acquire()) for _ in range(40)]
        await asyncio.sleep(0)
        aimd.record(0.1, ok=True)
        assert aimd.limit == 10
        # 60 waiters drain in 0.6 s: the probe is worth it, and it comes at once.
        waiters += [asyncio.create_task(lane.acquire()) for _ in range(20)]
        await asyncio.sleep(0)
        aimd.record(0.1, ok=True)
        assert aimd.limit == 11 and lane.concurrency == 11
        for task in waiters:
            task.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)

    virtual(main())
