"""MCP sampling: sub-agents think with the host's own model when the client offers it.

Driven through the real MCP SDK client connected in-process to the server built from the
operations table; the client's `sampling_callback` plays the host model.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import mcp_types as types
from mcp.client import Client

from yool.policy import RuntimePolicy
from yool.server.mcp import build


def _server(tmp_path: Path) -> Any:
    policy = RuntimePolicy(home=tmp_path / "home", heartbeat_s=0.05)
    return build(policy, workspace=tmp_path, environ={})


def test_a_sampling_agent_answers_with_the_hosts_model_and_sees_its_tools(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("The launch code is 4217.\n")
    asked: list[types.CreateMessageRequestParams] = []

    async def host(context: Any, params: types.CreateMessageRequestParams) -> Any:
        asked.append(params)
        if len(asked) == 1:  # first step: read the file through the agent's tool
            return types.CreateMessageResultWithTools(
                role="assistant",
                content=[
                    types.ToolUseContent(
                        type="tool_use", id="t1", name="read_file", input={"path": "notes.txt"}
                    )
                ],
                model="host-model",
                stop_reason="toolUse",
            )
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text="The code is 4217."),
            model="host-model",
            stop_reason="endTurn",
        )

    async def main() -> None:
        async with Client(
            _server(tmp_path),
            mode="legacy",
            sampling_callback=host,
            sampling_capabilities=types.SamplingCapability(tools=types.SamplingToolsCapability()),
        ) as client:
            spawned = await client.call_tool(
                "spawn", {"task": "What is the launch code?", "provider": "sampling"}
            )
            assert not spawned.is_error, spawned.content
            pid = spawned.structured_content["pid"]
            done = await client.call_tool("wait", {"pids": [pid], "timeout_s": 10})
            agent = done.structured_content["agents"][0]
            assert agent["reason"] == "normal"
            assert agent["answer"] == "The code is 4217."
            assert agent["tokens"] > 0  # estimated: token budgets still bind

    asyncio.run(main())
    assert len(asked) == 2
    assert any(t.name == "read_file" for t in asked[0].tools or [])
    second = asked[1].messages
    results = [
        block
        for m in second
        for block in (m.content if isinstance(m.content, list) else [m.content])
        if getattr(block, "type", None) == "tool_result"
    ]
    assert results and "4217" in results[0].content[0].text


def test_a_client_without_sampling_tools_gets_tool_turns_as_text_and_no_tools(
    tmp_path: Path,
) -> None:
    asked: list[types.CreateMessageRequestParams] = []

    async def host(context: Any, params: types.CreateMessageRequestParams) -> Any:
        asked.append(params)
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text="Plain answer."),
            model="host-model",
            stop_reason="endTurn",
        )

    async def main() -> dict[str, Any]:
        async with Client(_server(tmp_path), mode="legacy", sampling_callback=host) as client:
            spawned = await client.call_tool("spawn", {"task": "Say hi", "provider": "sampling"})
            pid = spawned.structured_content["pid"]
            done = await client.call_tool("wait", {"pids": [pid], "timeout_s": 10})
            return dict(done.structured_content["agents"][0])

    agent = asyncio.run(main())
    assert (agent["reason"], agent["answer"]) == ("normal", "Plain answer.")
    assert asked and not asked[0].tools


def test_without_the_sampling_capability_spawn_names_the_configured_providers(
    tmp_path: Path,
) -> None:
    async def main(mode: str) -> str:
        async with Client(_server(tmp_path), mode=mode) as client:  # type: ignore[arg-type]
            result = await client.call_tool("spawn", {"task": "hi", "provider": "sampling"})
            assert result.is_error
            text = result.content[0].text  # type: ignore[union-attr]
            after = await client.call_tool("ps", {})
            assert not after.is_error and after.structured_content["agents"] == []
            return text

    for mode in ("legacy", "auto"):
        text = asyncio.run(main(mode))
        assert "did not offer sampling" in text
        assert "configured providers: scripted" in text


def test_in_the_stateless_era_sampling_requests_ride_waits_input_required_rounds(
    tmp_path: Path,
) -> None:
    asked: list[types.CreateMessageRequestParams] = []

    async def host(context: Any, params: types.CreateMessageRequestParams) -> Any:
        asked.append(params)
        n = len(asked)
        if n < 3:  # two steps with a tool call each, then the answer
            return types.CreateMessageResultWithTools(
                role="assistant",
                content=[
                    types.ToolUseContent(
                        type="tool_use", id=f"t{n}", name="list_files", input={"path": "."}
                    )
                ],
                model="host-model",
                stop_reason="toolUse",
            )
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=f"Answered after {n} samples."),
            model="host-model",
            stop_reason="endTurn",
        )

    async def main() -> dict[str, Any]:
        async with Client(
            _server(tmp_path),
            mode="auto",
            sampling_callback=host,
            sampling_capabilities=types.SamplingCapability(tools=types.SamplingToolsCapability()),
        ) as client:
            spawned = await client.call_tool(
                "spawn", {"task": "Look around", "provider": "sampling"}
            )
            assert not spawned.is_error, spawned.content
            pid = spawned.structured_content["pid"]
            done = await client.call_tool("wait", {"pids": [pid], "timeout_s": 10})
            assert not done.is_error, done.content
            return dict(done.structured_content["agents"][0])

    agent = asyncio.run(main())
    assert (agent["reason"], agent["answer"]) == ("normal", "Answered after 3 samples.")
    assert agent["steps"] == 3
    assert any(t.name == "list_files" for t in asked[0].tools or [])
