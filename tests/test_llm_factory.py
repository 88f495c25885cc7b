"""Providers from the policy (`factory`), the model precedence, and MCP sampling as a provider."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from yool.drivers.llm.anthropic import AnthropicProvider
from yool.drivers.llm.driver import LLMDriver
from yool.drivers.llm.factory import configured_providers, make_provider, resolve_model
from yool.drivers.llm.openai import OpenAIProvider
from yool.drivers.llm.provider import ProviderError
from yool.drivers.llm.sampling import SamplingProvider, UnavailableSampling
from yool.drivers.llm.scripted import ScriptedProvider
from yool.drivers.llm.types import LLMRequest, LLMResponse, Msg, ToolCall, Usage
from yool.kernel import DriverError
from yool.policy import RuntimePolicy
from yool.testing import FakeProvider

Runner = Callable[[Coroutine[Any, Any, Any]], Any]
ANT_KEY = "sk-ant-api03-FACTORYKEY-1111-never-print"
OAI_KEY = "sk-proj-FACTORYKEY-2222-never-print"
ASK = LLMRequest((Msg("user", "hi"),), max_tokens=16)


def test_configured_providers_are_those_with_a_key_or_base_url() -> None:
    assert configured_providers({}) == ["scripted"]
    assert configured_providers({"ANTHROPIC_API_KEY": ANT_KEY}) == ["scripted", "anthropic"]
    assert configured_providers({"OPENAI_BASE_URL": "http://127.0.0.1:1/v1"}) == [
        "scripted",
        "openai",
    ]
    assert configured_providers({"OPENAI_API_KEY": " ", "ANTHROPIC_API_KEY": ""}) == ["scripted"]


@pytest.mark.parametrize(
    ("name", "variable"), [("anthropic", "ANTHROPIC_API_KEY"), ("openai", "OPENAI_API_KEY")]
)
def test_a_provider_without_its_key_names_the_variable_and_prints_no_key(
    name: str, variable: str
) -> None:
    other = {"anthropic": {"OPENAI_API_KEY": OAI_KEY}, "openai": {"ANTHROPIC_API_KEY": ANT_KEY}}
    with pytest.raises(ProviderError) as e:
        make_provider(name, RuntimePolicy(), environ=other[name])
    text = str(e.value)
    assert variable in text and "YOOL_PROVIDER" in text
    assert ANT_KEY not in text and OAI_KEY not in text


def test_an_unknown_provider_lists_the_known_ones() -> None:
    with pytest.raises(ProviderError, match="one of scripted, anthropic, openai, sampling"):
        make_provider("gemini", RuntimePolicy(), environ={})


def test_the_factory_builds_each_provider_with_the_policys_model(real: Runner) -> None:
    async def main() -> None:
        model = RuntimePolicy(model="my-model")
        env = {"ANTHROPIC_API_KEY": ANT_KEY, "ANTHROPIC_BASE_URL": "http://127.0.0.1:9"}
        ant = make_provider("anthropic", model, environ=env)
        assert isinstance(ant, AnthropicProvider) and ant.default_model == "my-model"
        await ant.aclose()
        plain = make_provider("anthropic", RuntimePolicy(), environ=env)
        assert plain.default_model == "claude-sonnet-4-5"
        await plain.aclose()
        scripted = make_provider("scripted", model, environ={})
        assert isinstance(scripted, ScriptedProvider) and scripted.default_model == "my-model"
        assert isinstance(make_provider("sampling", model, environ={}), SamplingProvider)

    real(main())


def test_openai_from_only_a_base_url_talks_to_a_compatible_server(real: Runner) -> None:
    async def main() -> None:
        async with FakeProvider(["hello"]) as fake:
            env = {"OPENAI_BASE_URL": fake.openai_url}
            provider = make_provider(
                "openai", RuntimePolicy(model="local-llama"), environ=env, openai_api="responses"
            )
            assert isinstance(provider, OpenAIProvider) and provider.api == "responses"
            got = await provider.complete(ASK)
            await provider.aclose()
        assert got.text == "hello"
        assert fake.requests[0].body["model"] == "local-llama"
        assert fake.requests[0].path == "/v1/responses"

    real(main())


def test_the_spawns_model_beats_the_policys_which_beats_the_providers_default(
    virtual: Runner,
) -> None:
    provider = ScriptedProvider(["ok"], loop=True)
    assert resolve_model(provider, RuntimePolicy()) == "scripted-1"
    assert resolve_model(provider, RuntimePolicy(model="p")) == "p"
    assert resolve_model(provider, RuntimePolicy(model="p"), "s") == "s"

    async def main() -> None:
        driver = LLMDriver(provider, RuntimePolicy(model="policy-model"))
        by_policy = await driver.open(2, {})
        by_open = await driver.open(2, {"model": "open-model"})
        asked = LLMRequest((Msg("user", "hi"),), model="spawn-model")
        models = [
            LLMResponse.from_json((await by_policy.read(ASK.to_json())).value).model,
            LLMResponse.from_json((await by_open.read(ASK.to_json())).value).model,
            LLMResponse.from_json((await by_policy.read(asked.to_json())).value).model,
        ]
        assert models == ["policy-model", "open-model", "spawn-model"]

    virtual(main())


# --- sampling ---------------------------------------------------------------------------------


def test_sampling_runs_the_callback_and_the_driver_charges_its_usage(virtual: Runner) -> None:
    seen: list[LLMRequest] = []

    async def create_message(request: LLMRequest) -> LLMResponse:
        seen.append(request)
        return LLMResponse("from the host", (), "end", Usage(12, 3), "host-model")

    async def main() -> None:
        driver = LLMDriver(SamplingProvider(create_message))
        handle = await driver.open(2, {})
        reply = await handle.read(ASK.to_json())
        assert LLMResponse.from_json(reply.value).text == "from the host"
        assert reply.cost.tokens == 15
        assert seen[0].messages == ASK.messages

    virtual(main())


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ({"text": "a dict"}, "returned dict, not LLMResponse"),
        (LLMResponse("x", (), "finished", Usage(), "m"), "stop is 'finished'"),  # type: ignore[arg-type]
        (LLMResponse("x", (), "end", Usage(-1, 0), "m"), "usage.input_tokens is -1"),
        (LLMResponse("x", [ToolCall("1", "t", {})], "end", Usage(), "m"), "tool_calls"),  # type: ignore[arg-type]
    ],
)
def test_a_bad_sampling_result_is_a_clear_error(virtual: Runner, bad: Any, why: str) -> None:
    async def create_message(request: LLMRequest) -> Any:
        return bad

    async def main() -> None:
        with pytest.raises(ProviderError, match="malformed reply from sampling") as e:
            await SamplingProvider(create_message).complete(ASK)
        assert why in str(e.value)
        driver = LLMDriver(SamplingProvider(create_message))
        with pytest.raises(DriverError, match="malformed reply from sampling"):
            await (await driver.open(2, {})).read(ASK.to_json())

    virtual(main())


def test_a_failing_client_is_a_provider_error_naming_the_failure(virtual: Runner) -> None:
    async def create_message(request: LLMRequest) -> LLMResponse:
        raise RuntimeError("user declined the sampling request")

    async def main() -> None:
        with pytest.raises(ProviderError, match="declined"):
            await SamplingProvider(create_message).complete(ASK)

    virtual(main())


def test_without_sampling_the_error_names_the_configured_providers(virtual: Runner) -> None:
    async def main() -> None:
        env = {"OPENAI_API_KEY": OAI_KEY}
        provider = make_provider("sampling", RuntimePolicy(), environ=env)
        with pytest.raises(ProviderError) as e:
            await provider.complete(ASK)
        assert str(e.value).startswith(
            "the MCP client did not offer sampling; configured providers: scripted, openai"
        )
        assert OAI_KEY not in str(e.value)
        with pytest.raises(ProviderError, match="configured providers: scripted"):
            await UnavailableSampling(["scripted"]).complete(ASK)

    virtual(main())
