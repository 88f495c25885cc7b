"""LLM figures: what an agent step costs above the bare SDK, at rest, under load and throttled.

Prints one JSON object per figure. The fake provider runs in a child process (its CPU does
not count against the client, and the client's loop has the interpreter to itself).

    python bench/llm.py
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
import openai

from _common import emit, history
from yool.drivers.llm.driver import LLMDriver
from yool.drivers.llm.openai import OpenAIProvider, chat_messages
from yool.drivers.llm.types import LLMRequest, Msg
from yool.kernel import NORMAL, Kernel, Sys
from yool.policy import RuntimePolicy
from yool.testing import FakeProcess
from yool.userland.agents import AgentSpec
from yool.userland.agents.react import Memory, ask_llm, react_agent

KEY = "sk-bench"
TASK = "What is the capital of France? Answer in one word."
SYSTEM = "You are a careful assistant."
ROUNDS = 5  # noisy figures: the median of this many rounds
STEPS = 150  # sequential one-step runs per round
CPU_STEPS = 100  # steps per round of the 50-message CPU figure
CONCURRENT = 1000
CONCURRENT_ROUNDS = 3
THROTTLE_TASKS = 2000
THROTTLE_N = 50  # the fake answers 429 above this many requests in flight
THROTTLE_LATENCY_S = 0.2  # the fake's service time per request
THROTTLE_RETRY_AFTER_S = 0.5  # the Retry-After the fake sends with each 429
THROTTLE_START = 32  # the lane's initial concurrency (the policy default), below N


def bare_client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=KEY,
        base_url=url,
        max_retries=0,
        timeout=httpx2.Timeout(600.0, pool=600.0),
        http_client=openai.DefaultAioHttpClient(timeout=httpx2.Timeout(600.0, pool=600.0)),
    )


class Rig:
    """A kernel with the LLM device on an OpenAI provider pointed at the fake."""

    def __init__(self, url: str, policy: RuntimePolicy, ceiling: int, connections: int) -> None:
        self.kernel = Kernel(lane_concurrency=min(8, ceiling), lane_ceiling=ceiling)
        self.provider = OpenAIProvider(
            api_key=KEY, base_url=url, default_model="m", max_connections=connections
        )
        self.driver = LLMDriver(self.provider, policy, lanes=self.kernel.lanes)
        self.dev = self.kernel.register_driver(self.driver)
        self.spec = AgentSpec(system=SYSTEM, model="m")

    def agent(self) -> int:
        init = self.kernel.init
        return init.spawn(react_agent, TASK, self.spec, caps=[init.derive(self.dev)]).pid

    async def close(self) -> None:
        await self.kernel.shutdown()
        await self.provider.aclose()


def _policy(concurrency: int, ceiling: int, **kw: Any) -> RuntimePolicy:
    return RuntimePolicy(lane_concurrency=concurrency, max_lane_concurrency=ceiling, **kw)


async def _timed(fn: Callable[[], Awaitable[Any]], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        await fn()
    return time.perf_counter() - t0


async def step_overhead(url: str) -> None:
    rig = Rig(url, _policy(32, 64), 64, 64)
    client = bare_client(url)
    messages = chat_messages(SYSTEM, (Msg("user", TASK),))

    async def bare() -> None:
        await client.chat.completions.create(model="m", messages=messages, max_tokens=1024)  # type: ignore[arg-type]

    request = LLMRequest((Msg("user", TASK),), system=SYSTEM, model="m")

    async def provider() -> None:
        await rig.provider.complete(request)

    async def agent() -> None:
        reason = await rig.kernel.wait(rig.agent())
        assert reason == NORMAL, reason

    for fn in (bare, provider, agent):
        await _timed(fn, 50)  # warm up connections and caches
    diffs: list[float] = []
    over_provider: list[float] = []
    bares: list[float] = []
    for _ in range(ROUNDS):
        b = await _timed(bare, STEPS)
        p = await _timed(provider, STEPS)
        a = await _timed(agent, STEPS)
        bares.append(b / STEPS * 1e6)
        diffs.append((a - b) / STEPS * 1e6)
        over_provider.append((a - p) / STEPS * 1e6)
    emit(
        "agent_step_overhead_us",
        statistics.median(diffs),
        "us",
        min=round(min(diffs), 1),
        max=round(max(diffs), 1),
        bare_call_us=round(statistics.median(bares), 1),
        runs=STEPS,
        rounds=ROUNDS,
        target="<= 300",
    )
    emit(
        "agent_step_overhead_over_provider_us",
        statistics.median(over_provider),
        "us",
        min=round(min(over_provider), 1),
        max=round(max(over_provider), 1),
        runs=STEPS,
        rounds=ROUNDS,
    )
    await client.close()
    await rig.close()


async def step_cpu(url: str) -> None:
    rig = Rig(url, _policy(32, 64), 64, 64)
    k = rig.kernel
    out: list[float] = []

    async def stepper(sys: Sys) -> None:
        llm = await sys.open(sys.cap("device") or "")
        mem = Memory(sys)
        for m in history(50):
            await mem.add(m)

        async def step() -> None:
            request = LLMRequest(
                tuple(await mem.messages("", 3)), system=SYSTEM, model="m", max_tokens=1024
            )
            assert len(request.messages) == 50
            await ask_llm(sys, llm, request)

        for _ in range(20):
            await step()
        for _ in range(ROUNDS):
            t0 = time.process_time()
            for _ in range(CPU_STEPS):
                await step()
            out.append((time.process_time() - t0) / CPU_STEPS * 1e6)

    init = k.init
    reason = await k.wait(init.spawn(stepper, caps=[init.derive(rig.dev)]).pid)
    assert reason == NORMAL, reason
    emit(
        "agent_step_cpu_us_50_messages",
        statistics.median(out),
        "us",
        min=round(min(out), 1),
        max=round(max(out), 1),
        steps=CPU_STEPS,
        rounds=ROUNDS,
        target="<= 3000",
    )
    await rig.close()


async def concurrent(url: str) -> None:
    client = bare_client(url)
    messages = chat_messages(SYSTEM, (Msg("user", TASK),))
    rig = Rig(url, _policy(CONCURRENT, CONCURRENT), CONCURRENT, CONCURRENT)

    async def bare() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(
            *(
                client.chat.completions.create(model="m", messages=messages, max_tokens=1024)  # type: ignore[arg-type]
                for _ in range(CONCURRENT)
            )
        )
        return CONCURRENT / (time.perf_counter() - t0)

    async def agents() -> float:
        k = rig.kernel
        t0 = time.perf_counter()
        pids = [rig.agent() for _ in range(CONCURRENT)]
        reasons = await asyncio.gather(*(k.wait(p) for p in pids))
        rate = CONCURRENT / (time.perf_counter() - t0)
        assert all(r == NORMAL for r in reasons)
        return rate

    await bare()
    await agents()
    bares: list[float] = []
    ours: list[float] = []
    for _ in range(CONCURRENT_ROUNDS):
        bares.append(await bare())
        ours.append(await agents())
    b, a = statistics.median(bares), statistics.median(ours)
    emit("bare_sdk_calls_per_s", b, "calls/s", min=round(min(bares)), max=round(max(bares)))
    emit(
        "agents_per_s",
        a,
        "agents/s",
        min=round(min(ours)),
        max=round(max(ours)),
        ratio_to_bare=round(a / b, 3),
        concurrent=CONCURRENT,
        rounds=CONCURRENT_ROUNDS,
        target="ratio >= 0.8",
    )
    await client.close()
    await rig.close()


async def throttled(url: str) -> None:
    rig = Rig(url, _policy(THROTTLE_START, 256, api_max_retries=8), 256, 256)
    k = rig.kernel
    init = k.init
    request = LLMRequest((Msg("user", TASK),), system=SYSTEM, model="m").to_json()
    failures: list[str] = []

    async def caller(sys: Sys) -> None:
        llm = await sys.open(sys.cap("device") or "")
        try:
            await sys.read(llm, request)
        except Exception as e:
            failures.append(f"{type(e).__name__}: {e}")

    t0 = time.perf_counter()
    pids = [init.spawn(caller, caps=[init.derive(rig.dev)]).pid for _ in range(THROTTLE_TASKS)]
    await asyncio.gather(*(k.wait(p) for p in pids))
    elapsed = time.perf_counter() - t0
    ideal = THROTTLE_N / THROTTLE_LATENCY_S
    rate = (THROTTLE_TASKS - len(failures)) / elapsed
    emit(
        "throttled_completion_ratio",
        rate / ideal,
        "ratio",
        rate=round(rate, 1),
        ideal=ideal,
        elapsed_s=round(elapsed, 3),
        tasks=THROTTLE_TASKS,
        limit=THROTTLE_N,
        latency_s=THROTTLE_LATENCY_S,
        retry_after_s=THROTTLE_RETRY_AFTER_S,
        retries=rig.driver.retry.retries,
        final_concurrency=rig.driver.concurrency,
        target=">= 0.85",
    )
    emit(
        "throttled_failures",
        len(failures),
        "tasks",
        first=failures[0][:200] if failures else None,
        target="0",
    )
    await rig.close()


async def main() -> None:
    with FakeProcess() as fake:
        await step_overhead(fake.openai_url)
        await step_cpu(fake.openai_url)
        await concurrent(fake.openai_url)
    throttling = FakeProcess(
        latency=THROTTLE_LATENCY_S,
        rate_limit_above=THROTTLE_N,
        retry_after=THROTTLE_RETRY_AFTER_S,
    )
    with throttling:
        await throttled(throttling.openai_url)


if __name__ == "__main__":
    asyncio.run(main())
