"""Providers from the policy: `YOOL_PROVIDER` names one, the environment holds what it needs.

The policy says *which* provider sub-agents think with; keys and endpoints come from the
vendors' usual variables (`ANTHROPIC_API_KEY`, `ANTHROPIC_BASE_URL`, `OPENAI_API_KEY`,
`OPENAI_BASE_URL`), read from the `environ` passed in so tests and embedders decide what is
visible. A provider that lacks what it needs fails here, at start-up, with the variable to set
and the providers that *are* usable; no error ever prints a key.

The model a call runs on is decided in one place, `resolve_model`: the spawn's own model
beats the policy's `YOOL_MODEL`, which beats the provider's default.

The SDK-backed providers are imported only when asked for, so a scripted or sampling setup
never pays for importing `anthropic` and `openai`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from yool.drivers.llm.provider import Provider, ProviderError
from yool.drivers.llm.sampling import SamplingCallback, SamplingProvider
from yool.drivers.llm.scripted import ScriptedProvider
from yool.policy import RuntimePolicy

__all__ = ["PROVIDERS", "configured_providers", "make_provider", "resolve_model"]

PROVIDERS = ("scripted", "anthropic", "openai", "sampling")
OpenAIApi = Literal["chat", "responses"]


def _set(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def configured_providers(environ: Mapping[str, str] | None = None) -> list[str]:
    """The providers that have what they need in `environ` (scripted always does).

    Sampling is not listed: whether it works depends on the MCP client, not the environment.
    """
    env = os.environ if environ is None else environ
    out = ["scripted"]
    if _set(env, "ANTHROPIC_API_KEY"):
        out.append("anthropic")
    if _set(env, "OPENAI_API_KEY") or _set(env, "OPENAI_BASE_URL"):
        out.append("openai")
    return out


def resolve_model(
    provider: Provider, policy: RuntimePolicy | None = None, spawn: str | None = None
) -> str | None:
    """The model a call runs on: the spawn's, else the policy's, else the provider's default."""
    if spawn:
        return spawn
    if policy is not None and policy.model:
        return policy.model
    return provider.default_model or None


def make_provider(
    name: str,
    policy: RuntimePolicy,
    *,
    environ: Mapping[str, str] | None = None,
    sampling: SamplingCallback | None = None,
    openai_api: OpenAIApi = "chat",
) -> Provider:
    """The provider `name` (usually `policy.provider`), ready to use or a clear ProviderError.

    `sampling` is the MCP layer's callback when the client offers sampling; without it a
    "sampling" provider is still made, and each call explains that the client did not offer it.
    """
    env = os.environ if environ is None else environ
    key = (name or "").strip().lower()
    if key not in PROVIDERS:
        raise ProviderError(
            f"unknown provider {name!r}: set YOOL_PROVIDER to one of {', '.join(PROVIDERS)}"
        )
    model = policy.model
    if key == "scripted":
        scripted = ScriptedProvider()
        if model:
            scripted.default_model = model
        return scripted
    if key == "sampling":
        return SamplingProvider(sampling, configured=configured_providers(env))
    usable = ", ".join(configured_providers(env))
    if key == "anthropic":
        api_key = _set(env, "ANTHROPIC_API_KEY")
        if api_key is None:
            raise ProviderError(
                "provider 'anthropic' needs an API key: set ANTHROPIC_API_KEY "
                f"(or pick a configured provider with YOOL_PROVIDER: {usable})"
            )
        from yool.drivers.llm.anthropic import AnthropicProvider

        if model:
            return AnthropicProvider(api_key, _set(env, "ANTHROPIC_BASE_URL"), model)
        return AnthropicProvider(api_key, _set(env, "ANTHROPIC_BASE_URL"))
    api_key = _set(env, "OPENAI_API_KEY")
    base_url = _set(env, "OPENAI_BASE_URL")
    if api_key is None and base_url is None:
        raise ProviderError(
            "provider 'openai' needs an API key or a server: set OPENAI_API_KEY, or "
            "OPENAI_BASE_URL for an OpenAI-compatible server "
            f"(or pick a configured provider with YOOL_PROVIDER: {usable})"
        )
    from yool.drivers.llm.openai import OpenAIProvider

    # A local compatible server often takes no key; say so rather than let the SDK look
    # elsewhere in the process environment for one.
    api_key = api_key or "none"
    if model:
        return OpenAIProvider(api_key, base_url, model, api=openai_api)
    return OpenAIProvider(api_key, base_url, api=openai_api)
