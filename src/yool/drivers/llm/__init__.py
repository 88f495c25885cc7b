"""LLM devices: providers behind one normalised request/response, with resilience.

The Anthropic and OpenAI providers live in `yool.drivers.llm.anthropic` and
`yool.drivers.llm.openai`; they are not imported here, so a process that never
talks to them never pays for importing their SDKs.
"""

from yool.drivers.llm.driver import LLMDriver
from yool.drivers.llm.provider import Provider, ProviderError
from yool.drivers.llm.scripted import ScriptedProvider, reply
from yool.drivers.llm.types import LLMRequest, LLMResponse, Msg, ToolCall, ToolSpec, Usage

__all__ = [
    "LLMDriver",
    "LLMRequest",
    "LLMResponse",
    "Msg",
    "Provider",
    "ProviderError",
    "ScriptedProvider",
    "ToolCall",
    "ToolSpec",
    "Usage",
    "reply",
]
