"""JSON Schemas as Anthropic's structured outputs take them. Pure, no I/O.

Anthropic's structured outputs (``output_config.format`` and strict tools) take a subset of JSON
Schema: no numeric bounds (``minimum``, ``maximum``, ``multipleOf``), no string lengths or
``pattern``, ``minItems`` of 0 or 1 only, a closed list of string ``format``s, and every object
``additionalProperties: false``. Anthropic's own SDK rewrites a schema before sending it
(``anthropic.lib._parse._transform.transform_schema``): the keys the API does not take are moved
into the node's ``description`` ("so that the model *might* follow them"), every object is
closed. A chat client's schema (a pydantic model with ``Field(ge=1)``, say) arrives unrewritten,
so the gateway does the same, the SDK's rules ported: the schema the client asked for, as close
as Anthropic can hold it, rather than Anthropic's 400. A node with no ``type``, combinator or
literal is left as it is (the provider judges it).
"""

from __future__ import annotations

from typing import Any

from gateway.wire.requests import JSONObject

# The string formats Anthropic's structured outputs take (the SDK's ``SupportedStringFormats``).
_STRING_FORMATS = frozenset(
    ("date-time", "time", "date", "duration", "email", "hostname", "uri", "ipv4", "ipv6", "uuid")
)


def anthropic_schema(schema: JSONObject) -> JSONObject:
    """``schema`` rewritten as Anthropic's structured outputs take it (a new dict)."""
    node = dict(schema)
    out: JSONObject = {}
    defs = node.pop("$defs", None)
    if isinstance(defs, dict):
        out["$defs"] = {name: _sub(value) for name, value in defs.items()}
    ref = node.pop("$ref", None)
    if ref is not None:
        out["$ref"] = ref
        if "description" in node:
            out["description"] = node["description"]
        return out
    kind = node.pop("type", None)
    any_of, one_of, all_of = node.pop("anyOf", None), node.pop("oneOf", None), node.pop("allOf", None)
    enum = node.get("enum")
    if isinstance(enum, list) and enum and all(_primitive(v) for v in enum):
        out["enum"] = node.pop("enum")
    if "const" in node and _primitive(node["const"]):
        out["const"] = node.pop("const")
    literal = "enum" in out or "const" in out
    if literal:
        kind = None  # (as the SDK: a literal needs no type)
    if isinstance(any_of, list):
        out["anyOf"] = [_sub(v) for v in any_of]
    elif isinstance(one_of, list):
        out["anyOf"] = [_sub(v) for v in one_of]
    elif isinstance(all_of, list):
        out["allOf"] = [_sub(v) for v in all_of]
    elif not literal:
        if kind is None:
            return {**schema, **out} if out else dict(schema)
        out["type"] = kind
    for name in ("description", "title"):
        if name in node:
            out[name] = node.pop(name)
    if kind == "object":
        properties = node.pop("properties", {})
        out["properties"] = (
            {k: _sub(v) for k, v in properties.items()} if isinstance(properties, dict) else {}
        )
        node.pop("additionalProperties", None)
        out["additionalProperties"] = False
        if "required" in node:
            out["required"] = node.pop("required")
    elif kind == "string":
        fmt = node.pop("format", None)
        if fmt in _STRING_FORMATS:
            out["format"] = fmt
        elif fmt:
            node["format"] = fmt  # said in the description
    elif kind == "array":
        if "items" in node:
            out["items"] = _sub(node.pop("items"))
        least = node.pop("minItems", None)
        if least in (0, 1):
            out["minItems"] = least
        elif least is not None:
            node["minItems"] = least
    if node:  # what Anthropic does not take, told to the model in words
        said = "{" + ", ".join(f"{key}: {value}" for key, value in node.items()) + "}"
        description = out.get("description")
        out["description"] = f"{description}\n\n{said}" if isinstance(description, str) else said
    return out


def _sub(value: Any) -> Any:
    return anthropic_schema(value) if isinstance(value, dict) else value


def _primitive(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)
