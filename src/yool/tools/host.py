"""LLM requests the host answers between calls: sampling for clients that cannot be asked.

In the stateless MCP era (2026-07-28) the server cannot send a request to the client on its
own; it can only answer a call with "input required" and let the client retry. So a
sub-agent running on the host's model parks its request here, a blocking operation
(`wait`) returns early when one arrives, the front end hands the pending requests to the
client, and the answers come back with the client's retry (`answer`). Each request waits
until answered or until the agent is gone; nothing is asked twice.
"""

from __future__ import annotations

import asyncio
import itertools

from yool.drivers.llm.provider import ProviderError
from yool.drivers.llm.types import LLMRequest, LLMResponse

_ids = itertools.count(1)


class HostRequests:
    """Pending requests by id, oldest first, and a way to wait for the next one."""

    def __init__(self) -> None:
        self.pending: dict[str, tuple[LLMRequest, asyncio.Future[LLMResponse]]] = {}
        self._arrival: asyncio.Future[None] | None = None
        self.with_tools = False  # the host accepts tool definitions with a request

    async def ask(self, request: LLMRequest) -> LLMResponse:
        """Park `request` until the host answers it (the sampling provider's callback)."""
        rid = f"sample-{next(_ids)}"
        fut: asyncio.Future[LLMResponse] = asyncio.get_running_loop().create_future()
        self.pending[rid] = (request, fut)
        if self._arrival is not None and not self._arrival.done():
            self._arrival.set_result(None)
        try:
            return await fut
        finally:
            self.pending.pop(rid, None)

    def arrival(self) -> asyncio.Future[None]:
        """Done when a request is pending (at once if one already is)."""
        if self._arrival is None or self._arrival.done():
            self._arrival = asyncio.get_running_loop().create_future()
        if self.pending and not self._arrival.done():
            self._arrival.set_result(None)
        return self._arrival

    def answer(self, rid: str, response: LLMResponse | str) -> bool:
        """Deliver the host's response (or its error text) to request `rid`; False if gone."""
        entry = self.pending.pop(rid, None)  # answered: no longer pending for anyone
        if entry is None or entry[1].done():
            return False
        if isinstance(response, str):
            entry[1].set_exception(ProviderError(f"sampling: the MCP client failed ({response})"))
        else:
            entry[1].set_result(response)
        return True
