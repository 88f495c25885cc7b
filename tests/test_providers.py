"""The Anthropic and OpenAI drivers against the fake provider, through the real SDKs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from email.utils import formatdate
from typing import Any

import pytest

from yool.drivers.llm.anthropic import AnthropicProvider, parse_reply
from yool.drivers.llm.openai import OpenAIProvider, parse_chat
from yool.drivers.llm.provider import Provider, ProviderError
from yool.drivers.llm.types import LLMRequest, Msg, ToolSpec
from yool.testing import FakeProvider, Fault, Turn

Runner = Callable[[Coroutine[Any, Any, Any]], Any]
KEY = "sk-ant-api03-YOOLTESTKEY-b9e1c4d2-never-leak"
KINDS = ["anthropic", "chat", "responses"]
SEARCH = ToolSpec("search", "Search the web.", {"type": "object", "properties": {"q": {}}})
ASK = LLMRequest((Msg("user", "find yool"),), system="You are terse.", tools=(SEARCH,))


def make(kind: str, fake: FakeProvider, **kw: Any) -> Provider:
    if kind == "anthropic":
        return AnthropicProvider(api_key=KEY, base_url=fake.url, **kw)
    return OpenAIProvider(api_key=KEY, base_url=fake.openai_url, api=kind, **kw)  # type: ignore[arg-type]


def path_of(kind: str) -> str:
    return {"anthropic": "/v1/messages", "chat": "/v1/chat/completions"}.get(kind, "/v1/responses")


async def failure(kind: str, fake: FakeProvider, **kw: Any) -> ProviderError:
    provider = make(kind, fake, **kw)
    try:
        await provider.complete(ASK)
    except ProviderError as exc:
        return exc
    finally:
        await provider.aclose()
    raise AssertionError("the call succeeded")


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize("kind", KINDS)
def test_tool_call_and_result_round_trip(real: Runner, kind: str, transport: str) -> None:
    async def main() -> None:
        script = [Turn.say("looking", ("search", {"q": "yool"}), usage=(40, 6)), "found it"]
        async with FakeProvider(script) as fake:
            provider = make(kind, fake, transport=transport)
            first = await provider.complete(ASK)
            assert first.text == "looking" and first.stop == "tool_use"
            assert [(c.name, c.arguments) for c in first.tool_calls] == [("search", {"q": "yool"})]
            assert (first.usage.input_tokens, first.usage.output_tokens) == (40, 6)
            call = first.tool_calls[0]
            history = (
                *ASK.messages,
                first.as_message(),
                Msg("tool", "3 hits", tool_call_id=call.id),
            )
            second = await provider.complete(LLMRequest(history, system="You are terse."))
            await provider.aclose()
        assert second.text == "found it" and second.stop == "end" and not second.tool_calls
        sent = fake.requests[-1].body
        assert fake.requests[-1].position == 1
        if kind == "anthropic":
            assert sent["system"] == "You are terse."
            assert sent["messages"][1]["content"][1]["type"] == "tool_use"
            result = sent["messages"][2]["content"][0]
            assert result == {"type": "tool_result", "tool_use_id": call.id, "content": "3 hits"}
            assert fake.requests[0].body["tools"][0]["input_schema"] == SEARCH.schema
        elif kind == "chat":
            assert sent["messages"][0] == {"role": "system", "content": "You are terse."}
            assert sent["messages"][2]["tool_calls"][0]["id"] == call.id
            assert sent["messages"][3] == {
                "role": "tool",
                "tool_call_id": call.id,
                "content": "3 hits",
            }
            assert fake.requests[0].body["tools"][0]["function"]["parameters"] == SEARCH.schema
        else:
            assert sent["instructions"] == "You are terse."
            assert sent["input"][-1] == {
                "type": "function_call_output",
                "call_id": call.id,
                "output": "3 hits",
            }

    real(main())


@pytest.mark.parametrize("kind", KINDS)
def test_rate_limit_is_retryable_with_retry_after_and_not_retried_by_the_sdk(
    real: Runner, kind: str
) -> None:
    async def main() -> None:
        async with FakeProvider(fault=Fault.rate_limited(retry_after=12)) as fake:
            err = await failure(kind, fake)
            assert fake.count(path_of(kind)) == 1  # max_retries=0: no second call
        assert err.retryable and err.status == 429 and err.retry_after == 12.0
        assert "429" in str(err) and "rate limited" in str(err)

    real(main())


def test_retry_after_as_an_http_date_is_parsed(real: Runner) -> None:
    async def main() -> None:
        when = formatdate(time.time() + 30, usegmt=True)
        async with FakeProvider(fault=Fault.rate_limited(retry_after=when)) as fake:
            err = await failure("anthropic", fake)
        assert err.retry_after is not None and 25 <= err.retry_after <= 31

    real(main())


@pytest.mark.parametrize("status", [500, 502, 503, 504, 529])
@pytest.mark.parametrize("kind", ["anthropic", "chat"])
def test_server_errors_are_retryable(real: Runner, kind: str, status: int) -> None:
    async def main() -> None:
        async with FakeProvider(fault=Fault.server_error(status)) as fake:
            err = await failure(kind, fake)
        assert err.retryable and err.status == status and str(status) in str(err)

    real(main())


@pytest.mark.parametrize("status", [400, 401, 403, 404])
@pytest.mark.parametrize("kind", ["anthropic", "chat"])
def test_client_errors_are_final_and_say_why(real: Runner, kind: str, status: int) -> None:
    async def main() -> None:
        fault = Fault(status=status, message="model 'nope' does not exist")
        async with FakeProvider(fault=fault) as fake:
            err = await failure(kind, fake)
        assert not err.retryable and err.status == status
        assert f"HTTP {status}" in str(err) and "model 'nope' does not exist" in str(err)

    real(main())


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_hung_call_fails_within_the_timeout(real: Runner, kind: str, transport: str) -> None:
    async def main() -> None:
        async with FakeProvider(fault=Fault.timeout()) as fake:
            start = time.perf_counter()
            err = await failure(kind, fake, timeout=0.3, transport=transport)
            elapsed = time.perf_counter() - start
        assert err.retryable and "no reply within 0.3s" in str(err)
        assert elapsed < 1.5

    real(main())


@pytest.mark.parametrize("kind", ["anthropic", "chat"])
def test_an_unreachable_server_is_a_retryable_connection_error(real: Runner, kind: str) -> None:
    async def main() -> None:
        fake = await FakeProvider().start()
        await fake.stop()  # the port is now closed
        err = await failure(kind, fake)
        assert err.retryable and "connection failed" in str(err)

    real(main())


@pytest.mark.parametrize("fault", [Fault.invalid_json(), Fault.missing_fields()])
@pytest.mark.parametrize("kind", KINDS)
def test_malformed_replies_are_clear_final_errors(real: Runner, kind: str, fault: Fault) -> None:
    async def main() -> None:
        async with FakeProvider(fault=fault) as fake:
            err = await failure(kind, fake)
        provider = "anthropic" if kind == "anthropic" else "openai"
        assert str(err).startswith(f"malformed reply from {provider}: ")
        assert not err.retryable

    real(main())


def test_the_key_never_appears_in_errors_logs_records_or_reprs(
    real: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    faults = [
        Fault.rate_limited(),
        Fault(status=401, message=f"invalid x-api-key {KEY}"),  # a server that echoes it
        Fault.server_error(500),
        Fault.invalid_json(),
        Fault.missing_fields(),
        Fault.timeout(),
    ]

    async def main() -> list[str]:
        seen: list[str] = []
        for kind in KINDS:
            for fault in faults:
                async with FakeProvider(fault=fault) as fake:
                    err = await failure(kind, fake, timeout=0.2)
                    seen += [str(err), repr(err), repr(fake.requests), repr(make(kind, fake))]
                    logging.getLogger("test").exception("boom", exc_info=err)
        return seen

    with caplog.at_level(logging.DEBUG):
        seen = real(main())
    assert any("[redacted]" in s for s in seen)
    for text in [*seen, caplog.text]:
        assert KEY not in text


def test_keys_and_base_urls_come_from_the_environment(
    real: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with FakeProvider(["hi"]) as fake:
            monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
            monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
            monkeypatch.setenv("OPENAI_API_KEY", KEY)
            monkeypatch.setenv("OPENAI_BASE_URL", fake.openai_url)
            for provider in (AnthropicProvider(), OpenAIProvider()):
                assert (await provider.complete(ASK)).text == "hi"
                await provider.aclose()
        assert fake.count() == 2

    real(main())


def test_a_missing_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ProviderError, match="ANTHROPIC_API_KEY"):
        AnthropicProvider()
    with pytest.raises(ProviderError, match="OPENAI_API_KEY"):
        OpenAIProvider()


def test_stop_reasons_and_cached_input_are_mapped() -> None:
    reply = {
        "content": [{"type": "text", "text": "cut"}],
        "stop_reason": "max_tokens",
        "usage": {"input_tokens": 3, "cache_read_input_tokens": 10, "output_tokens": 2},
    }
    out = parse_reply(reply, "m")
    assert out.stop == "max_tokens" and out.usage.input_tokens == 13
    chat = {"choices": [{"message": {"content": "no"}, "finish_reason": "content_filter"}]}
    assert parse_chat(chat, "m").stop == "refusal"
    bad_args = {
        "choices": [
            {
                "message": {
                    "content": None,
                    "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{oops"}}],
                },
                "finish_reason": "tool_calls",
            }
        ]
    }
    assert parse_chat(bad_args, "m").tool_calls[0].arguments == {"_raw_arguments": "{oops"}
