"""Compact JSON Schemas for the tools we publish: the same schema, fewer characters.

Every tool's schema is paid for in the client's context window on every turn, and the
client validates against it on every call, so the schemas pydantic derives are made
smaller here without changing what they accept.
"""

from __future__ import annotations

from typing import Any

_DROP = frozenset({"title", "$defs"})
# Keywords that constrain every type, null included: such an arm cannot absorb the null one.
_ANY_TYPE = frozenset({"enum", "const", "not", "allOf", "anyOf", "oneOf", "if", "$ref"})


class _Recursive(Exception):
    pass


def compact_schema(schema: dict[str, Any], *, keep_defaults: bool) -> dict[str, Any]:
    """The same JSON Schema, cheaper to read and to validate against.

    Local `$ref`s are inlined, titles dropped, `anyOf: [{type: X, ...}, {type: null}]`
    becomes `{type: [X, null], ...}` (type-specific keywords only apply to their type, so it
    is the same schema), `additionalProperties: true` (the default) goes, and so do `default`s
    (all of them when `keep_defaults` is false, else only `null` ones). A recursive model
    keeps its `$defs` untouched.
    """
    defs: dict[str, Any] = schema.get("$defs", {})

    def walk(node: Any, stack: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [walk(item, stack) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref.removeprefix("#/$defs/")
            if name in stack or name not in defs:
                raise _Recursive(name)
            return walk(
                {**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}, (*stack, name)
            )
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _DROP:
                continue
            if key == "default" and (not keep_defaults or value is None):
                continue
            if key == "properties" and isinstance(value, dict):
                out[key] = {name: walk(sub, stack) for name, sub in value.items()}
            else:
                out[key] = walk(value, stack)
        arms = out.get("anyOf")
        if isinstance(arms, list) and len(arms) == 2 and {"type": "null"} in arms:
            other = next(arm for arm in arms if arm != {"type": "null"})
            if (
                isinstance(other, dict)
                and isinstance(other.get("type"), str)
                and not _ANY_TYPE.intersection(other)
            ):
                del out["anyOf"]
                out = {**other, **out, "type": [other["type"], "null"]}
        if out.get("additionalProperties") is True:
            del out["additionalProperties"]
        return out

    try:
        compact: dict[str, Any] = walk(schema, ())
    except _Recursive:
        return schema
    return compact


def nulls_optional(schema: Any) -> Any:
    """`schema` with nullable properties no longer required: results omit their nulls.

    A result's `null` fields carry nothing, yet every one is sent and validated by the
    client on every call; leaving them out makes results shorter and checks cheaper.
    """
    if isinstance(schema, list):
        return [nulls_optional(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: nulls_optional(value) for key, value in schema.items()}
    props, required = out.get("properties"), out.get("required")
    if isinstance(props, dict) and isinstance(required, list):
        kept = [name for name in required if not _nullable(props.get(name))]
        if kept:
            out["required"] = kept
        else:
            del out["required"]
    return out


def _nullable(prop: Any) -> bool:
    if not isinstance(prop, dict):
        return False
    kind = prop.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return True
    arms = prop.get("anyOf") or prop.get("oneOf")
    return isinstance(arms, list) and any(_nullable(arm) for arm in arms)


def shallow(schema: dict[str, Any]) -> dict[str, Any]:
    """An output schema that types a result's top-level fields and no deeper.

    Clients put every output schema in the model's context and validate each result against
    it; a list of agent rows spelled out field by field costs both on every call. The rows
    are still what the result model says (the text block is the same JSON); the published
    schema just stops at "an array".
    """
    props = schema.get("properties")
    if not isinstance(props, dict):
        return schema
    return {**schema, "properties": {name: _outline(p) for name, p in props.items()}}


def _outline(prop: Any) -> Any:
    if not isinstance(prop, dict):
        return prop
    out = {k: v for k, v in prop.items() if k not in ("properties", "required", "items")}
    kind = prop.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    if "object" in kinds:
        out.pop("additionalProperties", None)
    item = prop.get("items")
    if "array" in kinds and isinstance(item, dict):
        # An array of rows is just "an array": the rows are the result model's (and the text
        # block's), and the client need not check each one. Plain items keep their type.
        item_kind = item.get("type")
        if isinstance(item_kind, str) and item_kind not in ("object", "array"):
            out["items"] = {"type": item_kind}
    return out


# Length caps this large bound abuse, not use: no model writes 10,000 characters into one
# field by accident, and the server still enforces them (its error names the limit).
_UNREACHED = 10_000


def published_input(schema: dict[str, Any]) -> dict[str, Any]:
    """An input schema as callers need it: an optional field's type without its `null` arm
    (leaving the field out is how one says "none"; an explicit null is still accepted),
    without length caps no caller reaches, without defaults that only say "nothing", and
    without `additionalProperties: false` (the server refuses an unknown field by name, so
    the schema need not say it)."""
    props = schema.get("properties")
    if not isinstance(props, dict):
        return schema
    required = set(schema.get("required", ()))
    out = {
        name: _uncapped(prop if name in required else _plain_default(_without_null(prop)))
        for name, prop in props.items()
    }
    return {**schema, "properties": out}


def _plain_default(prop: Any) -> Any:
    """Without a default that only says "nothing" (false, 0, "", [], {}): an optional field
    left out reads that way anyway; the defaults that decide something stay."""
    if isinstance(prop, dict) and "default" in prop:
        value = prop["default"]
        if value in (False, 0, "", [], {}) and not (
            value == 0 and value is not False and _bounded(prop)
        ):
            return {k: v for k, v in prop.items() if k != "default"}
    return prop


def _bounded(prop: dict[str, Any]) -> bool:
    """A number whose range does not start at 0: its default 0 says where in the range."""
    low = prop.get("minimum", prop.get("exclusiveMinimum"))
    return isinstance(low, int | float) and low != 0


def published_output(schema: dict[str, Any]) -> dict[str, Any]:
    """An output schema that says what each field is, and no more: no `null` arms (results
    leave out their null fields) and no `required` list (a result is our own validated
    model; a client checking for missing fields would only re-check pydantic)."""
    props = schema.get("properties")
    if not isinstance(props, dict):
        return schema
    out = {k: v for k, v in schema.items() if k != "required"}
    return {**out, "properties": {name: _without_null(p) for name, p in props.items()}}


def _without_null(prop: Any) -> Any:
    if not isinstance(prop, dict):
        return prop
    kind = prop.get("type")
    if isinstance(kind, list) and "null" in kind:
        rest = [k for k in kind if k != "null"]
        return {**prop, "type": rest[0] if len(rest) == 1 else rest}
    arms = prop.get("anyOf")
    if isinstance(arms, list) and {"type": "null"} in arms:
        rest = [arm for arm in arms if arm != {"type": "null"}]
        out = {k: v for k, v in prop.items() if k != "anyOf"}
        if len(rest) == 1 and isinstance(rest[0], dict) and not set(rest[0]) & set(out):
            return {**out, **rest[0]}
        return {**out, "anyOf": rest}
    return prop


def _uncapped(prop: Any) -> Any:
    if not isinstance(prop, dict):
        return prop
    out = {
        k: v
        for k, v in prop.items()
        if not (k in ("maxLength", "maxItems") and isinstance(v, int) and v >= _UNREACHED)
        and not (k == "additionalProperties" and v is False)
    }
    items = out.get("items")
    if isinstance(items, dict):
        out["items"] = _uncapped(items)
    inner = out.get("properties")
    if isinstance(inner, dict):
        out["properties"] = {name: _uncapped(p) for name, p in inner.items()}
    return out
