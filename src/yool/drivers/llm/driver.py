"""LLMs as a kernel device: one provider behind the kernel's lanes, budgets and journal.

`LLMDriver(provider)` is registered with the kernel like any driver; a process opens it with
its device capability (`model=` sets that handle's default model; else the policy's `model`,
else the provider's default: `factory.resolve_model`) and reads one completion
per `read(request_json)`, where `request_json` is `LLMRequest.to_json()` and the value read
back is `LLMResponse.to_json()`. Each attempt runs under the lane `llm:<provider>`, so admission
to the provider follows the kernel's order (priority, earliest deadline, FIFO); a retry's
backoff sleep holds no slot (the driver `admits_itself`). The call goes
through compression -> receipt cache -> circuit breaker -> retries -> hedging -> adaptive
concurrency (see `resilience`).

Budgets: before the call is sent, `estimate` bounds its cost (the request's estimated input
tokens plus `max_tokens`, and their USD at the model's price); the kernel reserves that on the
process and every ancestor and refuses the call, before it is sent, if any budget cannot cover
it. After the call the reservation is settled on the usage the provider reported. The
estimate of input tokens is a heuristic (about four characters a token), so the actual cost
may exceed the reservation; the kernel records the real spend anyway, so each process
overshoots a budget by at most one in-flight reservation's error. A cache hit, or a request
coalesced with an identical in-flight one, costs nothing: its reservation is refunded in
full. A hedged request is charged for the winning attempt only. A model missing from the price
table costs 0 USD, so USD budgets do not bind it (tokens still do).

Keys stay in the provider: errors raised here are built from our own text (the provider's
`ProviderError` message, which providers compose without secrets, or just an exception's type
name), with anything shaped like an API key redacted as a last guard.
"""

from __future__ import annotations

import json
import re
from typing import Any

from yool.drivers.llm.factory import resolve_model
from yool.drivers.llm.prices import PriceTable, load_prices
from yool.drivers.llm.provider import Provider, ProviderError
from yool.drivers.llm.resilience import (
    AdaptiveConcurrency,
    Call,
    CircuitBreaker,
    Hedger,
    ReceiptCache,
    Retry,
    compress_request,
)
from yool.drivers.llm.types import LLMRequest, LLMResponse, Msg, Usage
from yool.kernel.accounts import FREE, Cost
from yool.kernel.context import estimate_tokens
from yool.kernel.devices import Driver, Handle, Reply
from yool.kernel.errors import DriverError
from yool.kernel.lanes import ADMISSION, Lanes
from yool.policy import RuntimePolicy

__all__ = ["LLMDriver"]

_MESSAGE_OVERHEAD = 4  # tokens of role and framing per message
_KEYLIKE = re.compile(r"\b(sk|key|pk|rk)[-_][A-Za-z0-9_\-]{12,}")


def _redact(text: str) -> str:
    return _KEYLIKE.sub(lambda m: f"{m.group(1)}-[redacted]", text)


def _admitted(call: Call) -> Call:
    """Hold a slot of the caller's lane (see `ADMISSION`) for each attempt, and only then."""

    async def admitted(request: LLMRequest) -> LLMResponse:
        admission = ADMISSION.get()
        if admission is None:
            return await call(request)
        async with admission.slot():
            return await call(request)

    return admitted


class LLMDriver(Driver):
    """A provider as a device: budgeted, lane-admitted, resilient, journaled by the kernel.

    The driver admits itself: each attempt sent to the provider holds a lane slot (in the
    process's priority and deadline order), while retry backoffs, cache hits and waits on a
    coalesced identical call hold none.
    """

    admits_itself = True

    def __init__(
        self,
        provider: Provider,
        policy: RuntimePolicy | None = None,
        name: str = "llm",
        lanes: Lanes | None = None,
        *,
        prices: PriceTable | None = None,
        hedge_floor_s: float = 2.0,
        deadline_s: float | None = None,
    ) -> None:
        policy = policy or RuntimePolicy()
        self.provider = provider
        self.policy = policy
        self.name = name
        self.lane = f"llm:{provider.name}"
        self.prices = prices if prices is not None else load_prices()
        self.cache = ReceiptCache.from_policy(policy)
        self.breaker = CircuitBreaker.from_policy(provider.name, policy)
        self.retry = Retry.from_policy(policy, deadline_s=deadline_s)
        self.hedger = Hedger(hedge_floor_s)
        lane = None
        ceiling = policy.max_lane_concurrency
        initial = policy.lane_concurrency
        if lanes is not None:
            ceiling = min(ceiling, lanes.ceiling)
            initial = min(initial, ceiling)
            lane = lanes.configure(self.lane, initial)
        self.adaptive = AdaptiveConcurrency(
            lane, initial, ceiling, rate_limit_decrease=0.9, slow_start=True
        )
        self._send = self.breaker.wrap(
            self.retry.wrap(self.hedger.wrap(_admitted(self.adaptive.wrap(provider.complete))))
        )
        self.calls = 0  # requests that went past the cache

    @property
    def concurrency(self) -> int:
        """The provider's current adaptive concurrency limit."""
        return self.adaptive.limit

    async def open(self, pid: int, params: dict[str, Any]) -> Handle:
        unknown = sorted(set(params) - {"model", "caveats"})
        if unknown:
            raise DriverError(f"{self.name}: unknown open parameter {unknown[0]!r} (known: model)")
        model = params.get("model")
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise DriverError(f"{self.name}: model must be a non-empty string, got {model!r}")
        return _LLMHandle(self, resolve_model(self.provider, self.policy, model))

    def prepare(self, payload: Any, model: str | None) -> LLMRequest:
        """Parse, fill in the model and compress a request; DriverError if malformed."""
        if isinstance(payload, str):
            try:
                payload = json.loads(payload)
            except json.JSONDecodeError as e:
                raise DriverError(f"{self.name}: request is not JSON ({e.msg})") from None
        if not isinstance(payload, dict):
            raise DriverError(
                f"{self.name}: request must be an LLMRequest JSON object, "
                f"got {type(payload).__name__}"
            )
        try:
            request = LLMRequest.from_json(payload)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DriverError(
                f"{self.name}: malformed request ({type(e).__name__}: {_redact(str(e))})"
            ) from None
        if request.max_tokens < 1:
            raise DriverError(f"{self.name}: max_tokens must be >= 1, got {request.max_tokens}")
        if request.model is None and model is not None:
            request = LLMRequest(
                request.messages,
                request.system,
                request.tools,
                model,
                request.max_tokens,
                request.temperature,
                request.idempotent,
            )
        return compress_request(request, self.policy.context_compression_chars)

    def estimate(self, request: LLMRequest) -> Cost:
        """The most `request` may cost: estimated input tokens + max_tokens, and their USD."""
        prompt = estimate_tokens(request.system) if request.system else 0
        for m in request.messages:
            prompt += _message_tokens(m)
        if request.tools:
            prompt += estimate_tokens([t.to_json() for t in request.tools])
        usage = Usage(prompt, request.max_tokens)
        return Cost(tokens=usage.total, usd=self.prices.cost(self._model(request), usage))

    async def complete(self, request: LLMRequest) -> Reply:
        try:
            response, sent = await self.cache.run(self._send, request)
        except ProviderError as e:
            raise DriverError(f"{self.name} ({self.provider.name}): {_redact(str(e))}") from None
        except DriverError:
            raise
        except Exception as e:
            raise DriverError(
                f"{self.name} ({self.provider.name}): provider failed with {type(e).__name__}"
            ) from None
        value = self._check(response)
        if not sent:
            return Reply(value, FREE)
        self.calls += 1
        model = response.model or self._model(request)
        usd = response.usd or self.prices.cost(model, response.usage)
        return Reply(value, Cost(tokens=response.usage.total, usd=usd))

    def _model(self, request: LLMRequest) -> str:
        return request.model or self.provider.default_model

    def _check(self, response: Any) -> dict[str, Any]:
        who = f"{self.name} ({self.provider.name})"
        if not isinstance(response, LLMResponse):
            kind = type(response).__name__
            raise DriverError(f"{who}: provider returned {kind}, not LLMResponse")
        u = response.usage
        for side, n in (("input_tokens", u.input_tokens), ("output_tokens", u.output_tokens)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise DriverError(f"{who}: provider reported usage.{side}={n!r}")
        usd = response.usd
        if isinstance(usd, bool) or not isinstance(usd, int | float) or not usd >= 0:
            raise DriverError(f"{who}: provider reported usd={usd!r}")
        try:
            value = response.to_json()
            json.dumps(value)
        except (TypeError, ValueError, AttributeError) as e:
            raise DriverError(
                f"{who}: provider output is not JSON-serialisable ({type(e).__name__})"
            ) from None
        return value


def _message_tokens(m: Msg) -> int:
    """A message's share of the prompt estimate, cached on the Msg (which never changes)."""
    n = m._tokens
    if n is None:
        n = estimate_tokens(m.content) + _MESSAGE_OVERHEAD
        if m.tool_calls:
            n += estimate_tokens([c.to_json() for c in m.tool_calls])
        object.__setattr__(m, "_tokens", n)
    return n


class _LLMHandle(Handle):
    __slots__ = ("_driver", "_model", "_prepared")

    def __init__(self, driver: LLMDriver, model: str | None) -> None:
        self._driver = driver
        self._model = model
        self._prepared: tuple[Any, LLMRequest] | None = None

    def estimate(self, request: Any) -> Cost | None:
        try:
            prepared = self._driver.prepare(request, self._model)
        except DriverError:
            return None  # read raises the same error; nothing to reserve
        # The kernel reads right after estimating, with no await in between: the payload
        # cannot change, so the read reuses this parse when handed the very same object.
        self._prepared = (request, prepared)
        return self._driver.estimate(prepared)

    async def read(self, request: Any) -> Reply:
        last = self._prepared
        self._prepared = None
        if last is not None and last[0] is request:
            prepared = last[1]
        else:
            prepared = self._driver.prepare(request, self._model)
        return await self._driver.complete(prepared)
