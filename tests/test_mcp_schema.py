"""The output schemas yool publishes: shallow, with nulls optional, and true to the results."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import jsonschema
from mcp.client import Client

from yool.policy import RuntimePolicy
from yool.server.mcp import build
from yool.server.schema import nulls_optional, shallow


def test_nullable_properties_stop_being_required_and_the_rest_stay_required() -> None:
    schema = {
        "type": "object",
        "properties": {
            "pid": {"type": "integer"},
            "model": {"type": ["string", "null"]},
            "origin": {"anyOf": [{"type": "object"}, {"type": "null"}]},
        },
        "required": ["pid", "model", "origin"],
    }
    assert nulls_optional(schema)["required"] == ["pid"]
    only_nulls = {**schema, "required": ["model"]}
    assert "required" not in nulls_optional(only_nulls)


def test_a_shallow_schema_types_top_level_fields_and_stops_at_arrays_of_rows() -> None:
    row = {"type": "object", "properties": {"pid": {"type": "integer"}}, "required": ["pid"]}
    schema = {
        "type": "object",
        "properties": {
            "agents": {"type": "array", "items": row, "description": "rows"},
            "session": {**row, "additionalProperties": False},
            "done": {"type": "boolean"},
            "pids": {"type": "array", "items": {"type": "integer", "minimum": 1}},
        },
        "required": ["agents", "done"],
    }
    out = shallow(schema)
    assert out["required"] == ["agents", "done"]
    assert out["properties"]["agents"] == {"type": "array", "description": "rows"}
    assert out["properties"]["pids"] == {"type": "array", "items": {"type": "integer"}}
    assert out["properties"]["session"] == {"type": "object"}
    assert out["properties"]["done"] == {"type": "boolean"}


def test_real_results_validate_against_the_published_output_schemas(tmp_path: Path) -> None:
    policy = RuntimePolicy(home=tmp_path / "home", heartbeat_s=0.05)

    async def main() -> None:
        async with Client(build(policy, workspace=tmp_path, environ={}), mode="legacy") as c:
            schemas = {t.name: t.output_schema for t in (await c.list_tools()).tools}
            spawned = await c.call_tool("spawn", {"task": "hello"})
            pid = spawned.structured_content["pid"]
            results: dict[str, Any] = {
                "spawn": spawned,
                "wait": await c.call_tool("wait", {"pids": [pid], "timeout_s": 5}),
                "ps": await c.call_tool("ps", {}),
                "inspect": await c.call_tool("inspect", {"pid": pid}),
                "metrics": await c.call_tool("metrics", {}),
            }
            for name, result in results.items():
                assert not result.is_error, (name, result.content)
                jsonschema.validate(result.structured_content, schemas[name])
            row = results["ps"].structured_content["agents"][0]
            assert "persona" not in row  # a null field is left out, not sent as null

    asyncio.run(main())
