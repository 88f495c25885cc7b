"""The schemas yool publishes: shallow outputs without nulls, lean inputs, true to the results."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import jsonschema
from mcp.client import Client

from yool.policy import RuntimePolicy
from yool.server.mcp import build
from yool.server.schema import nulls_optional, published_input, published_output, shallow


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
                assert result.structured_content is not None, name  # actions' results too
                if schemas[name] is not None:
                    jsonschema.validate(result.structured_content, schemas[name])
            assert schemas["spawn"] is None and schemas["ps"] is not None
            row = results["ps"].structured_content["agents"][0]
            assert "persona" not in row  # a null field is left out, not sent as null

    asyncio.run(main())


def test_published_inputs_drop_null_arms_of_optional_fields_and_unreached_caps() -> None:
    schema = {
        "type": "object",
        "properties": {
            "task": {"type": "string", "maxLength": 100_000, "minLength": 1},
            "name": {"type": "string", "maxLength": 64},
            "model": {"type": ["string", "null"]},
            "mode": {"anyOf": [{"enum": ["a", "b"]}, {"type": "null"}]},
            "must": {"type": ["integer", "null"]},
            "rows": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"text": {"type": "string", "maxLength": 100_000}},
                },
            },
        },
        "required": ["task", "must"],
        "additionalProperties": False,
    }
    out = published_input(schema)
    props = out["properties"]
    assert props["task"] == {"type": "string", "minLength": 1}
    assert props["name"] == {"type": "string", "maxLength": 64}  # a cap a caller may reach
    assert props["model"] == {"type": "string"}
    assert props["mode"] == {"enum": ["a", "b"]}
    assert props["must"] == {"type": ["integer", "null"]}  # required: null must stay sayable
    assert props["rows"]["items"] == {"type": "object", "properties": {"text": {"type": "string"}}}


def test_published_outputs_drop_nulls_and_required_since_results_omit_null_fields() -> None:
    schema = {
        "type": "object",
        "properties": {"pid": {"type": "integer"}, "model": {"type": ["string", "null"]}},
        "required": ["pid"],
    }
    assert published_output(schema) == {
        "type": "object",
        "properties": {"pid": {"type": "integer"}, "model": {"type": "string"}},
    }


def test_an_explicit_null_is_still_accepted_for_an_optional_field(tmp_path: Path) -> None:
    policy = RuntimePolicy(home=tmp_path / "home", heartbeat_s=0.05)

    async def main() -> Any:
        async with Client(build(policy, workspace=tmp_path, environ={}), mode="legacy") as c:
            return await c.call_tool("spawn", {"task": "hello", "model": None, "persona": None})

    result = asyncio.run(main())
    assert not result.is_error, result.content
