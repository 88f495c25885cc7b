"""Provider benchmarks against the fake provider: client CPU per call, bursts, server rate.

Prints one JSON line per figure. The fake runs in a child process so that its
CPU does not count against the client and the client's loop is not shared.

    python bench/providers.py [--long]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import openai

from _common import emit, history
from yool.drivers.llm.anthropic import AnthropicProvider, to_messages
from yool.drivers.llm.openai import OpenAIProvider, chat_messages
from yool.drivers.llm.types import LLMRequest, ToolSpec
from yool.testing import FakeProcess

KEY = "sk-bench"
TOOLS = tuple(
    ToolSpec(
        name,
        f"The {name} tool.",
        {"type": "object", "properties": {"path": {"type": "string"}, "n": {"type": "integer"}}},
    )
    for name in ("read", "write", "search")
)


async def cpu_per_call(call: Callable[[], Awaitable[Any]], n: int, rounds: int = 5) -> float:
    """Client CPU ms per call: the best of `rounds` (other load on the machine only adds)."""
    for _ in range(20):
        await call()
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(n):
            await call()
        best = min(best, (time.process_time() - start) / n * 1000)
    return best


async def client_cpu(fake: FakeProcess, calls: int) -> None:
    for size in (1, 50):
        req = LLMRequest(history(size), system="You are a careful engineer.", tools=TOOLS)
        oai = OpenAIProvider(api_key=KEY, base_url=fake.url + "/v1")
        ant = AnthropicProvider(api_key=KEY, base_url=fake.url)
        sdk_messages = chat_messages(req.system, req.messages)
        sdk_tools = [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.schema},
            }
            for t in TOOLS
        ]
        ant_messages = to_messages(req.messages)
        ant_tools = [
            {"name": t.name, "description": t.description, "input_schema": t.schema} for t in TOOLS
        ]

        openai_sdk = partial(
            oai.client.chat.completions.create,
            model="m",
            messages=sdk_messages,
            tools=sdk_tools,
            max_tokens=1024,
        )
        anthropic_sdk = partial(
            ant.client.messages.create,
            model="m",
            max_tokens=1024,
            system=req.system,
            messages=ant_messages,
            tools=ant_tools,
        )
        openai_yool = partial(oai.complete, req)
        anthropic_yool = partial(ant.complete, req)

        for name, fn in (
            ("openai_sdk_create", openai_sdk),
            ("openai_yool_provider", openai_yool),
            ("anthropic_sdk_create", anthropic_sdk),
            ("anthropic_yool_provider", anthropic_yool),
        ):
            emit(
                f"client_cpu_ms.{name}.{size}_messages",
                await cpu_per_call(fn, calls),
                "ms",
                messages=size,
            )
        await oai.aclose()
        await ant.aclose()


async def burst(fake: FakeProcess, n: int) -> None:
    for transport in ("httpx", "aiohttp"):
        provider = OpenAIProvider(
            api_key=KEY,
            base_url=fake.url + "/v1",
            transport=transport,  # type: ignore[arg-type]
            max_connections=1000,
        )
        req = LLMRequest(history(5), tools=TOOLS)
        await provider.complete(req)
        start = time.perf_counter()
        results = await asyncio.gather(
            *(provider.complete(req) for _ in range(n)), return_exceptions=True
        )
        elapsed = time.perf_counter() - start
        failed = sum(isinstance(r, BaseException) for r in results)
        emit(f"burst_{n}.openai.{transport}", elapsed, "s", failed=failed)
        await provider.aclose()


async def server_rate(fake: FakeProcess, total: int, concurrency: int) -> None:
    client = openai.AsyncOpenAI(
        api_key=KEY,
        base_url=fake.url + "/v1",
        max_retries=0,
        http_client=openai.DefaultAioHttpClient(),
    )
    messages = [{"role": "user", "content": "hi"}]
    queue = iter(range(total))

    async def worker() -> None:
        for _ in queue:
            await client.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]

    await client.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
    cpu0, start = fake.cpu(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - start, fake.cpu() - cpu0
    emit(
        "fake_server.requests_per_s",
        total / elapsed,
        "req/s",
        concurrency=concurrency,
        client="openai sdk, aiohttp",
    )
    emit(
        "fake_server.cpu_per_request",
        cpu / total * 1e6,
        "us",
        capacity_req_per_s=round(total / cpu) if cpu else None,
    )
    await client.close()


async def main(long: bool) -> None:
    fake = FakeProcess()
    try:
        await client_cpu(fake, 300 if long else 100)
        await burst(fake, 1000)
        await server_rate(fake, 10000 if long else 2000, 100)
    finally:
        fake.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--long", action="store_true", help="more calls per figure (~75 s)")
    asyncio.run(main(parser.parse_args().long))
