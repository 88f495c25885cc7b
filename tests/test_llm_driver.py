"""The LLM device through a real kernel: charging, refusal before sending, cache, replay, prices."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from yool.drivers.llm import (
    LLMRequest,
    LLMResponse,
    Msg,
    Provider,
    ProviderError,
    ScriptedProvider,
    Usage,
)
from yool.drivers.llm.driver import LLMDriver
from yool.drivers.llm.prices import (
    DEFAULT_PRICES,
    Price,
    PriceError,
    PriceTable,
    cost,
    load_prices,
)
from yool.kernel import NORMAL, Budget, DriverError, Kernel, Sys, quota
from yool.policy import RuntimePolicy

TIMEOUT = 10.0
PRICES = PriceTable({"scripted": Price(1000.0, 2000.0)})  # $0.001 in, $0.002 out per token


def ask(text: str = "What is 2+2?", **kw: Any) -> dict[str, Any]:
    return LLMRequest((Msg("user", text),), **kw).to_json()


async def run_llm(
    k: Kernel,
    dev: str,
    requests: list[dict[str, Any]],
    budget: Budget | None = None,
    **open_params: Any,
) -> tuple[Any, list[Any], dict[str, float]]:
    """A parent spawns a child holding the device; the child reads each request in turn.

    Returns the child's exit reason, what it read, and the parent's usage after the child died.
    """
    got: list[Any] = []
    box: dict[str, Any] = {}

    async def child(sys: Sys) -> None:
        ref = sys.cap("device")
        assert ref is not None
        h = await sys.open(ref, **open_params)
        for r in requests:
            got.append(await sys.read(h, r))

    async def parent(sys: Sys) -> None:
        ref = sys.cap("device")
        assert ref is not None
        c = sys.spawn(child, caps=[sys.derive(ref)], budget=budget)
        box["reason"] = await k.wait(c.pid)
        box["usage"] = sys.usage()

    spawn = k.init.cap("spawn")
    assert spawn is not None
    p = k.init.spawn(parent, caps=[k.init.derive(dev), k.init.derive(spawn)])
    assert await asyncio.wait_for(k.wait(p.pid), TIMEOUT) == NORMAL
    return box["reason"], got, box["usage"]


class Broken(Provider):
    """A provider that fails in a chosen way, counting calls."""

    name = "broken"
    default_model = "broken-1"

    def __init__(self, fail: BaseException | object) -> None:
        self.fail = fail
        self.calls = 0

    async def complete(self, request: LLMRequest) -> LLMResponse:
        self.calls += 1
        if isinstance(self.fail, BaseException):
            raise self.fail
        return self.fail  # type: ignore[return-value]


class Flaky(ScriptedProvider):
    """Scripted answers after `failures` rate limits."""

    def __init__(self, failures: int, retry_after: float | None = None) -> None:
        super().__init__(loop=True)
        self.failures = failures
        self.retry_after = retry_after
        self.attempts: list[float] = []

    async def complete(self, request: LLMRequest) -> LLMResponse:
        self.attempts.append(asyncio.get_running_loop().time())
        if len(self.attempts) <= self.failures:
            raise ProviderError("rate limited", retryable=True, retry_after=self.retry_after)
        return await super().complete(request)


class Slow(ScriptedProvider):
    """Scripted answers that take a second each."""

    async def complete(self, request: LLMRequest) -> LLMResponse:
        await asyncio.sleep(1)
        return await super().complete(request)


# --- through the kernel -----------------------------------------------------------------------


def test_a_read_returns_the_response_and_charges_tokens_and_usd_up_the_tree(
    virtual: Any,
) -> None:
    async def main() -> None:
        async with Kernel() as k:
            provider = ScriptedProvider(["Four."])
            dev = k.register_driver(LLMDriver(provider, prices=PRICES, lanes=k.lanes))
            reason, got, parent_usage = await run_llm(k, dev, [ask()])
            assert reason == NORMAL
            response = LLMResponse.from_json(got[0])
            assert response.text == "Four." and response.model == "scripted-1"
            u = response.usage
            assert u.total > 0
            usd = u.input_tokens * 0.001 + u.output_tokens * 0.002
            assert parent_usage["tokens"] == u.total
            assert parent_usage["usd"] == pytest.approx(usd)
            assert k.init.usage()["tokens"] == u.total
            assert k.init.usage()["usd"] == pytest.approx(usd)
            assert len(provider.calls) == 1

    virtual(main())


def test_the_estimate_bounds_the_actual_cost_and_includes_max_tokens() -> None:
    driver = LLMDriver(ScriptedProvider(["ok"]), prices=PRICES)
    request = driver.prepare(ask("x" * 400, max_tokens=100), None)
    estimate = driver.estimate(request)
    assert estimate.tokens >= 100 + 100
    assert estimate.usd == pytest.approx((estimate.tokens - 100) * 0.001 + 100 * 0.002)

    async def actual() -> int:
        return (await ScriptedProvider(["ok"]).complete(request)).usage.total

    assert asyncio.run(actual()) <= estimate.tokens


def test_a_token_budget_that_cannot_cover_the_estimate_is_refused_before_sending(
    virtual: Any,
) -> None:
    async def main() -> None:
        async with Kernel() as k:
            provider = ScriptedProvider(["never"])
            dev = k.register_driver(LLMDriver(provider, prices=PRICES))
            reason, got, usage = await run_llm(
                k, dev, [ask(max_tokens=1000)], budget=Budget(tokens=500)
            )
            assert reason == quota("tokens")
            assert provider.calls == [] and got == []
            assert usage["tokens"] == 0 and k.init.usage()["tokens"] == 0

    virtual(main())


def test_a_usd_budget_that_cannot_cover_the_estimate_is_refused_before_sending(
    virtual: Any,
) -> None:
    async def main() -> None:
        async with Kernel() as k:
            provider = ScriptedProvider(["never"])
            dev = k.register_driver(LLMDriver(provider, prices=PRICES))
            # max_tokens alone would cost $2.00 at $0.002 an output token.
            reason, got, usage = await run_llm(
                k, dev, [ask(max_tokens=1000)], budget=Budget(usd=1.0)
            )
            assert reason == quota("usd")
            assert provider.calls == [] and got == []
            assert usage["usd"] == 0

    virtual(main())


def test_a_cache_hit_makes_no_call_and_costs_nothing(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            provider = ScriptedProvider(["Four."], loop=True)
            dev = k.register_driver(LLMDriver(provider, prices=PRICES))
            same = ask(temperature=0)
            reason, got, usage = await run_llm(k, dev, [same, same])
            assert reason == NORMAL
            assert got[0] == got[1] and len(provider.calls) == 1
            one = LLMResponse.from_json(got[0]).usage.total
            assert usage["tokens"] == one  # the hit's reservation was refunded in full

    virtual(main())


def test_two_agents_asking_the_same_deterministic_question_cause_one_call(
    virtual: Any,
) -> None:
    async def main() -> None:
        async with Kernel() as k:
            provider = Slow(["Four."], loop=True)
            dev = k.register_driver(LLMDriver(provider, prices=PRICES))
            results = await asyncio.gather(
                *(run_llm(k, dev, [ask(temperature=0)]) for _ in range(2))
            )
            assert [r[0] for r in results] == [NORMAL, NORMAL]
            assert len(provider.calls) == 1

    virtual(main())


def test_replay_of_a_recorded_llm_run_makes_zero_provider_calls(virtual: Any) -> None:
    async def main() -> None:
        async def agent(sys: Sys, out: list[Any]) -> None:
            ref = sys.cap("device")
            assert ref is not None
            h = await sys.open(ref)
            out.append(await sys.read(h, ask("one")))
            out.append(await sys.read(h, ask("two")))

        async with Kernel(record=True) as k:
            provider = ScriptedProvider(["first", "second"], loop=True)
            dev = k.register_driver(LLMDriver(provider, prices=PRICES))
            k.register_image("agent", agent)
            first: list[Any] = []
            c = k.init.spawn("agent", first, caps=[k.init.derive(dev)])
            assert await asyncio.wait_for(k.wait(c.pid), TIMEOUT) == NORMAL
            assert len(provider.calls) == 2

            second: list[Any] = []
            again = await k.replay(c.pid, "agent", args=(second,), caps=[k.init.derive(dev)])
            assert await asyncio.wait_for(k.wait(again.pid), TIMEOUT) == NORMAL
            assert second == first
            assert len(provider.calls) == 2

    virtual(main())


def test_retry_after_is_honoured_inside_the_driver(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            provider = Flaky(failures=2, retry_after=4.0)
            dev = k.register_driver(LLMDriver(provider, prices=PRICES))
            reason, got, _ = await run_llm(k, dev, [ask()])
            assert reason == NORMAL and LLMResponse.from_json(got[0]).text.startswith("Done")
            gaps = [b - a for a, b in zip(provider.attempts, provider.attempts[1:], strict=False)]
            assert len(gaps) == 2 and all(g >= 4.0 for g in gaps)

    virtual(main())


def test_a_retry_backoff_does_not_hold_a_lane_slot(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel(lane_concurrency=1, lane_ceiling=1) as k:
            policy = RuntimePolicy(lane_concurrency=1, max_lane_concurrency=1)
            provider = Flaky(failures=1, retry_after=4.0)
            driver = LLMDriver(provider, policy, lanes=k.lanes, prices=PRICES)
            dev = k.register_driver(driver)
            lane = k.lanes.get(driver.lane)
            done: dict[str, float] = {}

            async def reader(sys: Sys, tag: str, start: float) -> None:
                await asyncio.sleep(start)
                h = await sys.open(sys.cap("device") or "")
                await sys.read(h, ask(tag))
                done[tag] = k.loop.time()

            t0 = k.loop.time()
            a = k.init.spawn(reader, "a", 0.0, caps=[k.init.derive(dev)])
            b = k.init.spawn(reader, "b", 1.0, caps=[k.init.derive(dev)])
            assert await asyncio.wait_for(k.wait(b.pid), TIMEOUT) == NORMAL
            # b was sent while a slept out its Retry-After: the one slot was free.
            assert done["b"] - t0 < 2.0 and "a" not in done
            assert await asyncio.wait_for(k.wait(a.pid), TIMEOUT) == NORMAL
            assert done["a"] - t0 >= 4.0
            assert len(provider.attempts) == 3 and lane.in_use == 0

    virtual(main())


def test_an_open_circuit_fails_fast_with_a_clear_driver_error(virtual: Any) -> None:
    async def main() -> None:
        policy = RuntimePolicy(
            api_max_retries=0, circuit_failure_threshold=2, circuit_cooldown_s=30
        )
        provider = Broken(ProviderError("service unavailable", retryable=True, status=503))
        driver = LLMDriver(provider, policy, prices=PRICES)
        handle = await driver.open(2, {})
        for _ in range(2):
            with pytest.raises(DriverError, match="service unavailable"):
                await handle.read(ask())
        with pytest.raises(DriverError) as e:
            await handle.read(ask())
        assert "circuit open for broken: 2 consecutive failures; retry in 30.0s" in str(e.value)
        assert provider.calls == 2

    virtual(main())


def test_the_driver_sizes_its_providers_lane_and_exposes_the_limit(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel(lane_concurrency=8, lane_ceiling=16) as k:
            policy = RuntimePolicy(lane_concurrency=4, max_lane_concurrency=32)
            driver = LLMDriver(ScriptedProvider(loop=True), policy, lanes=k.lanes, prices=PRICES)
            assert driver.lane == "llm:scripted"
            assert k.lanes.get("llm:scripted").concurrency == 4 == driver.concurrency
            assert driver.adaptive.ceiling == 16  # the kernel's ceiling binds
            dev = k.register_driver(driver)
            await run_llm(k, dev, [ask(f"q{i}") for i in range(4)])
            # slow start: each healthy call grows the limit by one until the first decrease
            assert driver.concurrency == 8 == k.lanes.get("llm:scripted").concurrency

    virtual(main())


def test_oversized_messages_are_compressed_before_the_provider_sees_them(virtual: Any) -> None:
    async def main() -> None:
        provider = ScriptedProvider(["ok"])
        driver = LLMDriver(provider, RuntimePolicy(context_compression_chars=200), prices=PRICES)
        handle = await driver.open(2, {"model": "scripted-2"})
        await handle.read(ask("z" * 10_000))
        sent = provider.calls[0]
        assert len(sent.messages[0].content) <= 200
        assert sent.messages[0].content.startswith("[compressed 10,000 chars sha256:")
        assert sent.model == "scripted-2"

    virtual(main())


# --- bad input and bad output -----------------------------------------------------------------


def test_a_malformed_request_is_a_driver_error_and_reserves_nothing(virtual: Any) -> None:
    async def main() -> None:
        driver = LLMDriver(ScriptedProvider(["ok"]), prices=PRICES)
        handle = await driver.open(2, {})
        assert handle.estimate({"messages": [{"content": "no role"}]}) is None
        with pytest.raises(DriverError, match="malformed request"):
            await handle.read({"messages": [{"content": "no role"}]})
        with pytest.raises(DriverError, match="must be an LLMRequest JSON object"):
            await handle.read(["not", "a", "request"])
        with pytest.raises(DriverError, match="unknown open parameter 'temp'"):
            await driver.open(2, {"temp": 1})

    virtual(main())


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("just a string", "provider returned str, not LLMResponse"),
        (LLMResponse("x", (), "end", Usage(-1, 0), "m"), "usage.input_tokens=-1"),
        (LLMResponse("x", (), "end", Usage(), "m", usd=float("nan")), "usd=nan"),
    ],
)
def test_unexpected_provider_output_is_a_clear_driver_error(
    virtual: Any, output: object, message: str
) -> None:
    async def main() -> None:
        driver = LLMDriver(Broken(output), prices=PRICES)
        handle = await driver.open(2, {})
        with pytest.raises(DriverError, match=message):
            await handle.read(ask())

    virtual(main())


def test_errors_are_built_from_our_own_text_never_the_providers_secrets(virtual: Any) -> None:
    async def main() -> None:
        secret = "sk-ant-api03-SECRETSECRETSECRET"
        leaky = Broken(RuntimeError(f"auth failed for key {secret}"))
        handle = await LLMDriver(leaky, prices=PRICES).open(2, {})
        with pytest.raises(DriverError) as e:
            await handle.read(ask())
        assert str(e.value) == "llm (broken): provider failed with RuntimeError"

        careless = Broken(ProviderError(f"401 bad key {secret}", status=401))
        handle = await LLMDriver(careless, prices=PRICES).open(2, {})
        with pytest.raises(DriverError) as e:
            await handle.read(ask())
        assert secret not in str(e.value) and "401 bad key sk-[redacted]" in str(e.value)

    virtual(main())


# --- prices -----------------------------------------------------------------------------------


def test_prices_match_dated_model_ids_by_longest_prefix() -> None:
    table = PriceTable(DEFAULT_PRICES)
    assert table.price("claude-sonnet-4-5-20250929") == Price(3.0, 15.0)
    assert table.price("claude-sonnet-4-5@20250929") == Price(3.0, 15.0)
    assert table.price("gpt-4o-mini-2024-07-18") == Price(0.15, 0.6)
    assert table.price("gpt-4o-2024-08-06") == Price(2.5, 10.0)
    assert table.price("claude-haiku-4-5") == Price(1.0, 5.0)
    usage = Usage(1_000_000, 100_000)
    assert table.cost("claude-sonnet-4-5", usage) == pytest.approx(3.0 + 1.5)
    assert cost("gpt-4o", usage, table) == pytest.approx(2.5 + 1.0)


def test_an_unknown_model_costs_zero_and_is_flagged() -> None:
    table = PriceTable(DEFAULT_PRICES)
    for model in ("mystery-model", "gpt-4ox", "gpt-5.9"):
        price = table.price(model)
        assert price.known is False and table.cost(model, Usage(10**6, 10**6)) == 0.0
    assert table.price("gpt-4o").known


def test_a_prices_file_overrides_and_extends_the_table(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps({"gpt-4o": {"input": 1, "output": 2}, "local-llm": {"input": 0, "output": 0.5}})
    )
    table = load_prices({"YOOL_PRICES": str(path)})
    assert table.price("gpt-4o-2024-08-06") == Price(1.0, 2.0)
    assert table.price("local-llm") == Price(0.0, 0.5)
    assert table.price("claude-opus-4-1") == Price(15.0, 75.0)
    assert load_prices({}).price("gpt-4o") == Price(2.5, 10.0)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected an object of model"),
        ('{"m": 3}', "'m' must be an object with input and output"),
        ('{"m": {"input": 1}}', r"m\.output must be a number >= 0"),
        ('{"m": {"input": -1, "output": 1}}', r"m\.input must be a number >= 0.*got -1"),
        ('{"m": {"input": "1", "output": 1}}', r"m\.input must be a number"),
        ('{"m": {"input": 1, "output": 1, "cached": 0.1}}', r"m\.cached is not a price field"),
    ],
)
def test_an_invalid_prices_file_names_the_file_and_the_field(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "prices.json"
    path.write_text(content)
    with pytest.raises(PriceError, match=message) as e:
        load_prices({"YOOL_PRICES": str(path)})
    assert f"YOOL_PRICES file {str(path)!r}" in str(e.value)


def test_a_missing_prices_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(PriceError, match="cannot read it"):
        load_prices({"YOOL_PRICES": str(missing)})
