"""The fake provider speaks each vendor's wire format well enough for the real SDKs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import anthropic
import openai
import pytest

from yool.testing import FakeProvider, Fault, Recorded, Script, Turn

Runner = Callable[[Coroutine[Any, Any, Any]], Any]
KEY = "sk-test-FAKEPROVIDER-do-not-record-7f3a"
USER = [{"role": "user", "content": "hi"}]


def _anthropic(fake: FakeProvider, **kw: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key=KEY, base_url=fake.url, max_retries=0, **kw)


def _openai(fake: FakeProvider, **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=KEY, base_url=fake.openai_url, max_retries=0, **kw)


def test_anthropic_message_carries_text_tool_use_and_scripted_usage(real: Runner) -> None:
    async def main() -> None:
        turn = Turn.say("let me look", ("search", {"q": "yool"}), usage=(11, 7))
        async with FakeProvider([turn]) as fake, _anthropic(fake) as client:
            msg = await client.messages.create(model="claude-x", max_tokens=50, messages=USER)
        assert msg.content[0].type == "text" and msg.content[0].text == "let me look"
        block = msg.content[1]
        assert block.type == "tool_use" and block.name == "search" and block.input == {"q": "yool"}
        assert msg.stop_reason == "tool_use"
        assert (msg.usage.input_tokens, msg.usage.output_tokens) == (11, 7)
        assert msg.model == "claude-x"

    real(main())


def test_anthropic_stream_parses_with_the_sdk_stream_helper(real: Runner) -> None:
    async def main() -> None:
        turn = Turn.say("streamed words", ("read", {"path": "a.txt", "n": 3}), usage=(5, 9))
        async with (
            FakeProvider([turn]) as fake,
            _anthropic(fake) as client,
            client.messages.stream(model="claude-x", max_tokens=50, messages=USER) as stream,
        ):
            kinds = [event.type async for event in stream]
            final = await stream.get_final_message()
        assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
        assert "content_block_delta" in kinds and "message_delta" in kinds
        assert final.content[0].type == "text" and final.content[0].text == "streamed words"
        assert final.content[1].type == "tool_use"
        assert final.content[1].input == {"path": "a.txt", "n": 3}
        assert final.stop_reason == "tool_use" and final.usage.output_tokens == 9

    real(main())


def test_chat_completion_carries_tool_calls_and_usage(real: Runner) -> None:
    async def main() -> None:
        turn = Turn.say("", ("add", {"a": 1, "b": 2}), usage=(3, 4))
        async with FakeProvider([turn]) as fake, _openai(fake) as client:
            done = await client.chat.completions.create(model="gpt-x", messages=USER)  # type: ignore[arg-type]
        choice = done.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        call = choice.message.tool_calls[0]  # type: ignore[index]
        assert call.function.name == "add"  # type: ignore[union-attr]
        assert json.loads(call.function.arguments) == {"a": 1, "b": 2}  # type: ignore[union-attr]
        assert done.usage is not None and done.usage.total_tokens == 7

    real(main())


def test_chat_stream_ends_with_done_and_parses_with_the_sdk(real: Runner) -> None:
    async def main() -> None:
        turn = Turn.say("hello world", ("add", {"a": 1}), usage=(2, 3))
        async with FakeProvider(Script([turn], loop=True)) as fake, _openai(fake) as client:
            chunks = await client.chat.completions.create(
                model="gpt-x",
                messages=USER,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
            text = ""
            usage = None
            async for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                usage = chunk.usage or usage
            async with client.chat.completions.stream(model="gpt-x", messages=USER) as stream:  # type: ignore[arg-type]
                final = await stream.get_final_completion()
        assert text == "hello world" and usage is not None and usage.completion_tokens == 3
        message = final.choices[0].message
        assert message.content == "hello world"
        assert message.tool_calls and message.tool_calls[0].function.arguments == '{"a": 1}'

    real(main())


def test_responses_api_returns_function_calls_plain_and_streamed(real: Runner) -> None:
    async def main() -> None:
        turn = Turn.say("checking", ("lookup", {"id": 9}), usage=(8, 2))
        async with FakeProvider(Script([turn], loop=True)) as fake, _openai(fake) as client:
            plain = await client.responses.create(model="gpt-x", input="hi")
            async with client.responses.stream(model="gpt-x", input="hi") as stream:
                streamed = await stream.get_final_response()
        for response in (plain, streamed):
            assert response.output_text == "checking"
            call = response.output[1]
            assert call.type == "function_call" and call.name == "lookup"
            assert json.loads(call.arguments) == {"id": 9}
            assert response.usage is not None and response.usage.input_tokens == 8

    real(main())


def test_each_conversation_walks_the_script_from_its_own_position(real: Runner) -> None:
    async def main() -> None:
        async with FakeProvider(["first", "second"]) as fake, _openai(fake) as client:

            async def conversation() -> list[str]:
                history: list[dict[str, Any]] = list(USER)
                seen = []
                for _ in range(2):
                    done = await client.chat.completions.create(model="m", messages=history)  # type: ignore[arg-type]
                    text = done.choices[0].message.content or ""
                    seen.append(text)
                    history += [{"role": "assistant", "content": text}, *USER]
                return seen

            results = await asyncio.gather(*(conversation() for _ in range(5)))
        assert results == [["first", "second"]] * 5
        assert [r.position for r in fake.requests].count(1) == 5

    real(main())


def test_a_callable_computes_the_reply_from_the_request(real: Runner) -> None:
    def echo(request: Recorded) -> str:
        return "echo: " + request.body["messages"][-1]["content"]

    async def main() -> None:
        async with FakeProvider(Script(respond=echo)) as fake, _anthropic(fake) as client:
            msg = await client.messages.create(
                model="m", max_tokens=5, messages=[{"role": "user", "content": "ping"}]
            )
        assert msg.content[0].type == "text" and msg.content[0].text == "echo: ping"

    real(main())


def test_an_exhausted_script_answers_400_instead_of_inventing_turns(real: Runner) -> None:
    async def main() -> None:
        history = [*USER, {"role": "assistant", "content": "x"}, *USER]
        async with FakeProvider(["only"]) as fake, _openai(fake) as client:
            with pytest.raises(openai.BadRequestError, match="1 turn"):
                await client.chat.completions.create(model="m", messages=history)  # type: ignore[arg-type]

    real(main())


def test_faults_apply_to_the_numbered_request_only(real: Runner) -> None:
    async def main() -> None:
        faults = {2: Fault.rate_limited(retry_after=7), 3: Fault.overloaded()}
        async with FakeProvider(faults=faults) as fake, _anthropic(fake) as client:
            await client.messages.create(model="m", max_tokens=5, messages=USER)
            with pytest.raises(anthropic.RateLimitError) as limited:
                await client.messages.create(model="m", max_tokens=5, messages=USER)
            with pytest.raises(anthropic.APIStatusError) as overloaded:
                await client.messages.create(model="m", max_tokens=5, messages=USER)
            await client.messages.create(model="m", max_tokens=5, messages=USER)
        assert limited.value.response.headers["retry-after"] == "7"
        assert overloaded.value.status_code == 529
        assert fake.count("/v1/messages") == 4

    real(main())


def test_rate_limit_above_concurrency_answers_429_with_retry_after(real: Runner) -> None:
    async def main() -> None:
        async with (
            FakeProvider(latency=0.05, rate_limit_above=5, retry_after=2) as fake,
            _openai(fake) as client,
        ):
            results = await asyncio.gather(
                *(client.chat.completions.create(model="m", messages=USER) for _ in range(20)),  # type: ignore[arg-type]
                return_exceptions=True,
            )
        limited = [r for r in results if isinstance(r, openai.RateLimitError)]
        assert limited and len(limited) == fake.rate_limited
        assert len(results) - len(limited) >= 5
        assert all(e.response.headers["retry-after"] == "2" for e in limited)

    real(main())


def test_latency_delays_the_answer(real: Runner) -> None:
    async def main() -> None:
        async with FakeProvider(latency=lambda n: 0.15 * n) as fake, _openai(fake) as client:
            start = time.perf_counter()
            await client.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
            assert time.perf_counter() - start >= 0.15

    real(main())


def test_a_hung_request_times_out_on_the_client_side(real: Runner) -> None:
    async def main() -> None:
        async with FakeProvider(fault=Fault.timeout()) as fake, _openai(fake, timeout=0.3) as c:
            start = time.perf_counter()
            with pytest.raises(openai.APITimeoutError):
                await c.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
            assert time.perf_counter() - start < 2

    real(main())


def test_malformed_bodies_are_served_as_asked(real: Runner) -> None:
    async def main() -> None:
        faults = {1: Fault.invalid_json(), 2: Fault.missing_fields()}
        async with FakeProvider(faults=faults) as fake, _anthropic(fake) as client:
            first = await client.messages.with_raw_response.create(
                model="m", max_tokens=5, messages=USER
            )
            second = await client.messages.with_raw_response.create(
                model="m", max_tokens=5, messages=USER
            )
        with pytest.raises(ValueError):
            json.loads(first.http_response.text)
        assert "content" not in json.loads(second.http_response.text)

    real(main())


def test_records_requests_without_credentials(real: Runner) -> None:
    async def main() -> None:
        async with FakeProvider() as fake:
            async with _anthropic(fake) as a:
                await a.messages.create(model="m", max_tokens=5, messages=USER)
            async with _openai(fake) as o:
                await o.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
        assert [r.path for r in fake.requests] == ["/v1/messages", "/v1/chat/completions"]
        assert fake.requests[0].body["messages"] == USER
        for rec in fake.requests:
            assert "x-api-key" not in rec.headers and "authorization" not in rec.headers
        assert KEY not in repr(fake.requests)
        assert fake.count() == 2 and fake.count("/v1/messages") == 1

    real(main())


def test_keep_alive_reuses_one_connection(real: Runner) -> None:
    async def main() -> None:
        async with FakeProvider() as fake, _openai(fake) as client:
            for _ in range(20):
                await client.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
        assert fake.connections == 1 and fake.count() == 20

    real(main())


def test_runs_in_a_thread_for_synchronous_and_subprocess_users() -> None:
    with FakeProvider.start_in_thread(["from a thread"]) as served:
        client = openai.OpenAI(api_key=KEY, base_url=served.openai_url, max_retries=0)
        done = client.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
        client.close()
        assert done.choices[0].message.content == "from a thread"
        assert served.fake.count() == 1


def test_serves_from_a_child_process_for_subprocess_users() -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "yool.testing"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        url = child.stdout.readline().strip()
        client = openai.OpenAI(api_key=KEY, base_url=url + "/v1", max_retries=0)
        done = client.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
        client.close()
        assert done.choices[0].message.content == "Done."
    finally:
        child.terminate()
        child.wait(5)
