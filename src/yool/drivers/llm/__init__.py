"""LLM devices: providers behind one normalised request/response, with resilience."""

from yool.drivers.llm.provider import Provider, ProviderError
from yool.drivers.llm.scripted import ScriptedProvider, reply
from yool.drivers.llm.types import LLMRequest, LLMResponse, Msg, ToolCall, ToolSpec, Usage

__all__ = [
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
