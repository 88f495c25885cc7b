"""What an LLM provider is to yool: one async `complete(request) -> response`.

Providers translate the normalised request to their wire format and back, and
classify failures so the resilience layer can decide what to retry: a
`ProviderError` says whether it is retryable and, for rate limits, how long the
provider asked us to wait. Keys live inside the provider's client and never in
a message, event, journal entry or error.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from yool.drivers.llm.types import LLMRequest, LLMResponse


class ProviderError(Exception):
    """A provider call failed; `retryable` and `retry_after` steer the retry policy."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


class Provider(ABC):
    name: str = "provider"
    default_model: str = ""

    @abstractmethod
    async def complete(self, request: LLMRequest) -> LLMResponse:
        """One model call. Raise ProviderError for failures the caller should see."""

    async def aclose(self) -> None:
        """Release connections; the default provider holds none."""
        return None
