"""Provider resilience: retries, circuit breaker, receipt cache, hedging, adaptive concurrency.

Each piece wraps an `async (LLMRequest) -> LLMResponse` call and is usable on its own; the
LLM driver composes them (outermost first) as

    cache -> breaker -> retries -> hedging -> adaptive meter -> provider

so a cache hit never touches the provider, an open circuit fails before any retry is tried,
each retry attempt may be hedged, and every single provider attempt feeds the latency and
error statistics that size the provider's lane. Context compression (`compress_request`) is
applied to the request before any of them. Time is read from the running loop, so the virtual
clock drives every timer in tests.

Backoff uses *full jitter*: attempt n (0-based) sleeps uniformly in
``[0, min(max, base * 2**n)]``, which spreads a herd of retrying agents best (AWS
architecture blog, "Exponential Backoff And Jitter"). A provider's `retry_after` is a floor on
that delay, capped at `max_retry_after_s` so a hostile or confused header cannot park an agent
for hours.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Literal, TypeVar

from yool.drivers.llm.provider import ProviderError
from yool.drivers.llm.types import LLMRequest, LLMResponse, Msg
from yool.kernel.lanes import Lane
from yool.policy import RuntimePolicy

__all__ = [
    "AdaptiveConcurrency",
    "Backoff",
    "Call",
    "CircuitBreaker",
    "Hedger",
    "ReceiptCache",
    "Retry",
    "compress_request",
    "compress_text",
    "request_digest",
]

Call = Callable[[LLMRequest], Awaitable[LLMResponse]]
T = TypeVar("T")
RATE_LIMITED = frozenset({429, 529})


def _now() -> float:
    return asyncio.get_running_loop().time()


# --- retries ----------------------------------------------------------------------------------


class Backoff:
    """Full-jitter exponential backoff: attempt n waits uniform(0, min(max, base * 2**n))."""

    def __init__(self, base_s: float, max_s: float, rng: random.Random | None = None) -> None:
        if not 0 < base_s <= max_s:
            raise ValueError(f"backoff needs 0 < base_s <= max_s, got {base_s!r}, {max_s!r}")
        self.base_s = base_s
        self.max_s = max_s
        self._rng = rng or random.Random()

    @classmethod
    def from_policy(cls, policy: RuntimePolicy, rng: random.Random | None = None) -> Backoff:
        return cls(policy.api_backoff_base_ms / 1000, policy.api_backoff_max_ms / 1000, rng)

    def ceiling(self, attempt: int) -> float:
        """The largest delay attempt `attempt` (0-based) may draw."""
        return min(self.max_s, self.base_s * 2.0 ** min(attempt, 62))

    def delay(self, attempt: int) -> float:
        return self._rng.uniform(0.0, self.ceiling(attempt))


def is_retryable(error: BaseException) -> bool:
    """Rate limits, overload, 5xx and timeouts are worth another try; nothing else is."""
    if isinstance(error, ProviderError):
        return error.retryable
    return isinstance(error, TimeoutError)


class Retry:
    """Retry retryable failures up to `max_retries` times, honouring `retry_after`.

    `deadline_s` bounds the whole call, attempts and sleeps together: an attempt still running
    at the deadline is cancelled, and a retry that could not start before it is not tried.
    """

    def __init__(
        self,
        max_retries: int,
        backoff: Backoff,
        *,
        deadline_s: float | None = None,
        max_retry_after_s: float = 60.0,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries!r}")
        self.max_retries = max_retries
        self.backoff = backoff
        self.deadline_s = deadline_s
        self.max_retry_after_s = max_retry_after_s
        self.retries = 0  # retries made, over the object's life
        self.last_delays: list[float] = []  # delays slept by the most recent call

    @classmethod
    def from_policy(
        cls,
        policy: RuntimePolicy,
        rng: random.Random | None = None,
        *,
        deadline_s: float | None = None,
        max_retry_after_s: float = 60.0,
    ) -> Retry:
        return cls(
            policy.api_max_retries,
            Backoff.from_policy(policy, rng),
            deadline_s=deadline_s,
            max_retry_after_s=max_retry_after_s,
        )

    def delay(self, attempt: int, error: BaseException) -> float:
        wait = self.backoff.delay(attempt)
        after = error.retry_after if isinstance(error, ProviderError) else None
        if after is not None and after > 0:
            wait = max(wait, min(after, self.max_retry_after_s))
        return wait

    async def run(self, call: Call, request: LLMRequest) -> LLMResponse:
        deadline = None if self.deadline_s is None else _now() + self.deadline_s
        delays: list[float] = []
        self.last_delays = delays
        attempt = 0
        while True:
            try:
                if deadline is None:
                    return await call(request)
                async with asyncio.timeout_at(deadline):
                    return await call(request)
            except TimeoutError as e:
                if deadline is not None and _now() >= deadline:
                    raise ProviderError(
                        f"call deadline of {self.deadline_s:g}s passed after "
                        f"{attempt + 1} attempt(s)",
                        retryable=False,
                    ) from e
                error: BaseException = e
            except ProviderError as e:
                error = e
            if not is_retryable(error) or attempt >= self.max_retries:
                raise error
            wait = self.delay(attempt, error)
            if deadline is not None and _now() + wait >= deadline:
                raise error
            delays.append(wait)
            self.retries += 1
            attempt += 1
            await asyncio.sleep(wait)

    def wrap(self, call: Call) -> Call:
        async def retried(request: LLMRequest) -> LLMResponse:
            return await self.run(call, request)

        return retried


# --- circuit breaker --------------------------------------------------------------------------

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Opens after `threshold` consecutive failures; one trial call after each cooldown.

    Failures are errors that say the provider is unwell: retryable `ProviderError`s, timeouts
    and unexpected exceptions. A non-retryable `ProviderError` (a 400, a bad key) is the
    caller's problem and neither counts nor resets the streak. A cancelled trial call proves
    nothing: the next caller becomes the trial.
    """

    def __init__(self, provider: str, threshold: int, cooldown_s: float) -> None:
        if threshold < 1 or not cooldown_s > 0:
            raise ValueError("circuit breaker needs threshold >= 1 and cooldown_s > 0")
        self.provider = provider
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.failures = 0  # consecutive
        self.opened_at: float | None = None
        self.probing = False

    @classmethod
    def from_policy(cls, provider: str, policy: RuntimePolicy) -> CircuitBreaker:
        return cls(provider, policy.circuit_failure_threshold, policy.circuit_cooldown_s)

    @property
    def state(self) -> BreakerState:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.probing else "open"

    def _refuse(self, remaining: float) -> ProviderError:
        trial = " (a trial call is in flight)" if self.probing else ""
        return ProviderError(
            f"circuit open for {self.provider}: {self.failures} consecutive failures; "
            f"retry in {remaining:.1f}s{trial}",
            retryable=False,
        )

    def admit(self) -> bool:
        """Let a call through or raise; True if the call is the half-open trial."""
        if self.opened_at is None:
            return False
        remaining = self.opened_at + self.cooldown_s - _now()
        if remaining > 0:
            raise self._refuse(remaining)
        if self.probing:
            raise self._refuse(0.0)
        self.probing = True
        return True

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probing = False

    def failure(self) -> None:
        self.failures += 1
        self.probing = False
        if self.opened_at is not None or self.failures >= self.threshold:
            self.opened_at = _now()

    async def run(self, call: Call, request: LLMRequest) -> LLMResponse:
        trial = self.admit()
        try:
            response = await call(request)
        except ProviderError as e:
            if e.retryable:
                self.failure()
            elif trial:
                self.probing = False  # the provider answered: not a health signal either way
            raise
        except Exception:
            self.failure()
            raise
        except BaseException:
            if trial:
                self.probing = False
            raise
        self.success()
        return response

    def wrap(self, call: Call) -> Call:
        async def guarded(request: LLMRequest) -> LLMResponse:
            return await self.run(call, request)

        return guarded


# --- receipt cache ----------------------------------------------------------------------------


def request_digest(request: LLMRequest) -> str:
    """A stable digest of the request's JSON (sorted keys, compact separators)."""
    text = json.dumps(request.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class _LeaderGone(Exception):
    """The coalesced call's leader was cancelled; a waiter must lead a call of its own."""


class ReceiptCache:
    """LRU + TTL cache of deterministic (temperature == 0) calls, with single flight.

    Concurrent identical requests share one call: the first leads, the rest await its
    result (or its error). If the leader is cancelled, a waiter takes over.
    """

    def __init__(self, max_entries: int, ttl_s: float) -> None:
        if max_entries < 1 or not ttl_s > 0:
            raise ValueError("receipt cache needs max_entries >= 1 and ttl_s > 0")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._entries: OrderedDict[str, tuple[float, LLMResponse]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[LLMResponse]] = {}
        self.hits = 0
        self.misses = 0
        self.coalesced = 0

    @classmethod
    def from_policy(cls, policy: RuntimePolicy) -> ReceiptCache:
        return cls(policy.cache_max_entries, policy.cache_ttl_s)

    @staticmethod
    def key(request: LLMRequest) -> str | None:
        """The cache key, or None for a request that is not deterministic."""
        return request_digest(request) if request.temperature == 0 else None

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> LLMResponse | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, response = entry
        if _now() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return response

    def put(self, key: str, response: LLMResponse) -> None:
        self._entries[key] = (_now() + self.ttl_s, response)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def run(self, call: Call, request: LLMRequest) -> tuple[LLMResponse, bool]:
        """The response and whether this caller's request was sent (False: hit or coalesced)."""
        key = self.key(request)
        if key is None:
            return await call(request), True
        while True:
            cached = self.get(key)
            if cached is not None:
                self.hits += 1
                return cached, False
            pending = self._inflight.get(key)
            if pending is None:
                break
            self.coalesced += 1
            try:
                return await asyncio.shield(pending), False
            except _LeaderGone:
                self.coalesced -= 1
        self.misses += 1
        future: asyncio.Future[LLMResponse] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            response = await call(request)
        except BaseException as e:
            future.set_exception(e if isinstance(e, Exception) else _LeaderGone())
            future.exception()  # marks it retrieved: there may be no waiters
            raise
        finally:
            del self._inflight[key]
        self.put(key, response)
        future.set_result(response)
        return response, True


# --- hedging ----------------------------------------------------------------------------------


class Hedger:
    """Speculative execution of idempotent requests.

    If the first attempt has not answered after the hedge delay (the p`quantile` of recent
    successful latencies, never below `floor_s`; `floor_s` until `min_samples` are seen), a
    second attempt starts; the first success wins and the other is cancelled. A failure waits
    for the other attempt; if both fail, the first failure is raised. Requests not marked
    idempotent are never hedged.
    """

    def __init__(
        self,
        floor_s: float = 1.0,
        *,
        quantile: float = 0.9,
        window: int = 128,
        min_samples: int = 8,
    ) -> None:
        if not floor_s > 0 or not 0 < quantile <= 1:
            raise ValueError("hedger needs floor_s > 0 and 0 < quantile <= 1")
        self.floor_s = floor_s
        self.quantile = quantile
        self.min_samples = min_samples
        self._latencies: deque[float] = deque(maxlen=window)
        self.hedges = 0  # second attempts started
        self.hedge_wins = 0  # times the second attempt answered first

    def observe(self, latency_s: float) -> None:
        self._latencies.append(latency_s)

    def delay(self) -> float:
        if len(self._latencies) < self.min_samples:
            return self.floor_s
        ordered = sorted(self._latencies)
        index = min(len(ordered) - 1, math.ceil(self.quantile * len(ordered)) - 1)
        return max(self.floor_s, ordered[index])

    async def run(self, call: Call, request: LLMRequest) -> LLMResponse:
        if not request.idempotent:
            started = _now()
            response = await call(request)
            self.observe(_now() - started)
            return response
        return await self.race(lambda: call(request))

    async def race(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run `attempt()`, and a second one if the first is slow; the first success wins.

        Only for idempotent work (a provider call, a lane task marked idempotent): both may run.
        """
        started = _now()
        first = asyncio.ensure_future(attempt())
        tasks = [first]
        try:
            done, _ = await asyncio.wait(tasks, timeout=self.delay())
            if not done:
                self.hedges += 1
                tasks.append(asyncio.ensure_future(attempt()))
            errors: list[BaseException] = []
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in tasks:
                    if task not in done:
                        continue
                    error = task.exception()
                    if error is None:
                        if task is not first:
                            self.hedge_wins += 1
                        self.observe(_now() - started)
                        return task.result()
                    errors.append(error)
            raise errors[0]
        finally:
            losers = [task for task in tasks if not task.done()]
            for task in losers:
                task.cancel()
            if losers:
                await asyncio.wait(losers)  # the loser's own outcome is not ours to raise
            for task in tasks:
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved: a failed loser is not an unhandled error

    def wrap(self, call: Call) -> Call:
        async def hedged(request: LLMRequest) -> LLMResponse:
            return await self.run(call, request)

        return hedged


# --- adaptive concurrency ---------------------------------------------------------------------


class AdaptiveConcurrency:
    """AIMD sizing of a provider's lane from latency EWMA and error rate.

    Additive increase: after `limit` consecutive healthy attempts (about one round of the
    whole window), the limit grows by one, up to `ceiling`. A healthy attempt succeeded, the
    error rate (an EWMA of failures) is below `max_error_rate` and its latency is within
    `blowup` times the latency EWMA. Multiplicative decrease: a rate limit (429/529) multiplies
    the limit by `rate_limit_decrease` (default: `decrease`), another failure or a latency
    blow-up by `decrease` (never below 1), at most once per latency EWMA, so one burst of
    rejections from a full window counts once. A rate limit says the window is just above the
    provider's capacity, so a gentle cut (0.9, as in Netflix's concurrency-limits AIMD) keeps
    the window near it; a failure says the provider is unwell, so the cut is deep.

    With `slow_start`, every healthy attempt grows the limit by one (the window doubles each
    round, as in TCP's slow start) until the first decrease; additive increase from then on.

    A rate limit also says where the provider's capacity lies: the rejected attempt was sent
    as the k-th in flight, so the provider holds fewer than k at once. The limit is cut to at
    most k - 1 (besides the multiplicative cut), which ends a slow-start overshoot in one step
    and keeps the steady state between the capacity and one above it, instead of sawing down
    by a factor at every probe. Once a rate limit has shown where the capacity is, the limit
    probes above it only every `probe_rounds` rounds: each probe costs one rejected call
    that waits out the provider's Retry-After.

    A probe is also only worth it while the lane's backlog lasts longer than what a refused
    probe costs its caller (the provider's last Retry-After plus one call): the extra slot
    helps only while callers are queued, and a probe refused as the queue drains turns one
    call into a straggler that finishes a Retry-After after all the others. So, with a lane
    and a known capacity, the limit steps above it only while the queue takes at least that
    long to drain at the current limit (``waiting * latency / limit``).
    """

    def __init__(
        self,
        lane: Lane | None,
        initial: int,
        ceiling: int,
        *,
        alpha: float = 0.2,
        decrease: float = 0.5,
        rate_limit_decrease: float | None = None,
        blowup: float = 3.0,
        max_error_rate: float = 0.1,
        slow_start: bool = False,
        probe_rounds: int = 4,
    ) -> None:
        if not 1 <= initial <= ceiling:
            raise ValueError(f"adaptive concurrency needs 1 <= initial <= ceiling, got {initial}")
        self.lane = lane
        self.ceiling = ceiling
        self.alpha = alpha
        self.decrease = decrease
        self.rate_limit_decrease = decrease if rate_limit_decrease is None else rate_limit_decrease
        self.blowup = blowup
        self.max_error_rate = max_error_rate
        self._limit = initial
        self.latency_ewma_s: float | None = None
        self.error_rate = 0.0
        self._streak = 0
        self._last_decrease = -math.inf
        self.slow_start = slow_start  # cleared by the first decrease
        self.in_flight = 0
        self.probe_rounds = probe_rounds
        self._rounds_per_step = 1  # rounds of healthy calls per +1; more once capacity is known
        self._capacity: int | None = None  # in flight the provider held when it last refused
        self._retry_after_s = 0.0  # the provider's last Retry-After with a rate limit
        if lane is not None:
            lane.resize(initial)

    @property
    def limit(self) -> int:
        return self._limit

    def _set(self, limit: int) -> None:
        limit = max(1, min(self.ceiling, limit))
        if limit != self._limit:
            self._limit = limit
            if self.lane is not None:
                self.lane.resize(limit)

    def _cut(self, factor: float) -> None:
        self._streak = 0
        self.slow_start = False
        now = _now()
        if now - self._last_decrease < (self.latency_ewma_s or 0.0):
            return
        self._last_decrease = now
        self._set(math.floor(self._limit * factor))

    def record(
        self,
        latency_s: float,
        *,
        ok: bool,
        status: int | None = None,
        sent_as: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Feed one attempt's outcome; resizes the lane when the limit changes.

        `sent_as` is how many attempts were in flight, this one included, when it was sent;
        `retry_after` is the delay the provider asked for with a rate limit.
        """
        self.error_rate += self.alpha * ((0.0 if ok else 1.0) - self.error_rate)
        previous = self.latency_ewma_s
        if ok:
            self.latency_ewma_s = (
                latency_s if previous is None else previous + self.alpha * (latency_s - previous)
            )
        if status in RATE_LIMITED:
            if retry_after is not None and retry_after >= 0:
                self._retry_after_s = retry_after
            if sent_as is not None and sent_as - 1 < self._limit:
                self._streak = 0
                self.slow_start = False
                self._capacity = sent_as - 1
                self._set(sent_as - 1)  # the provider held fewer than `sent_as` at once
                self._last_decrease = _now()
                self._rounds_per_step = self.probe_rounds
                return
            self._cut(self.rate_limit_decrease)
            return
        if not ok:
            self._cut(self.decrease)
            return
        if previous is not None and latency_s > self.blowup * previous:
            self._cut(self.decrease)
            return
        if self.error_rate >= self.max_error_rate:
            self._streak = 0
            return
        self._streak += 1
        if self.slow_start or self._streak >= self._limit * self._rounds_per_step:
            if not self._worth_probing():
                return  # keep the streak: probe once a backlog builds up again
            self._streak = 0
            self._set(self._limit + 1)

    def _worth_probing(self) -> bool:
        """Whether stepping the limit up is worth a refused call (see the class doc)."""
        lane = self.lane
        if lane is None or self._capacity is None or self._limit < self._capacity:
            return True
        latency = self.latency_ewma_s or 0.0
        return lane.waiting * latency >= self._limit * (self._retry_after_s + latency)

    async def run(self, call: Call, request: LLMRequest) -> LLMResponse:
        started = _now()
        self.in_flight += 1
        sent_as = self.in_flight
        try:
            response = await call(request)
        except ProviderError as e:
            if e.retryable:  # a 400 says nothing about the provider's load
                self.record(
                    _now() - started,
                    ok=False,
                    status=e.status,
                    sent_as=sent_as,
                    retry_after=e.retry_after,
                )
            raise
        except Exception:
            self.record(_now() - started, ok=False)
            raise
        finally:
            self.in_flight -= 1
        self.record(_now() - started, ok=True)
        return response

    def wrap(self, call: Call) -> Call:
        async def metered(request: LLMRequest) -> LLMResponse:
            return await self.run(call, request)

        return metered


# --- context compression ----------------------------------------------------------------------


def compress_text(text: str, limit: int) -> str:
    """`text` if it fits in `limit` chars, else a digest and a head/tail preview of <= limit.

    The form is ``[compressed 123,456 chars sha256:<16 hex>]\\n<head>\\n…\\n<tail>``; the same
    text always compresses to the same preview.
    """
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    header = f"[compressed {len(text):,} chars sha256:{digest}]"
    room = max(0, limit - len(header) - 4)  # two newlines and the ellipsis line
    head = room - room // 3
    tail = room - head
    return f"{header}\n{text[:head]}\n…\n{text[len(text) - tail :] if tail else ''}"[:limit]


def compress_request(request: LLMRequest, limit: int) -> LLMRequest:
    """Compress every message content longer than `limit` chars (tool results most of all).

    The system prompt is the agent's instructions and is left alone.
    """
    if all(len(m.content) <= limit for m in request.messages):
        return request
    messages: tuple[Msg, ...] = tuple(
        m if len(m.content) <= limit else replace(m, content=compress_text(m.content, limit))
        for m in request.messages
    )
    return replace(request, messages=messages)
