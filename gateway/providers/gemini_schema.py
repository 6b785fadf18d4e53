"""JSON Schema (OpenAI tool parameters, response formats) as Gemini's ``Schema`` object.

Gemini takes "a select subset of an OpenAPI 3.0 schema object" (https://ai.google.dev/api/caching#Schema)
and refuses a request carrying any other key, so the translation keeps only the keys that subset
has and rewrites the common JSON Schema idioms it lacks:

* ``type: ["string", "null"]`` and an ``anyOf``/``oneOf`` branch ``{"type": "null"}`` become
  ``nullable: true``; several non-null types become ``anyOf``; ``oneOf`` becomes ``anyOf``;
* ``$ref`` into ``$defs``/``definitions`` is inlined (a recursive reference becomes a bare
  ``{"type": "object"}``, as Gemini schemas cannot refer to themselves); ``allOf`` is merged;
* ``const`` becomes a one-value ``enum``;
* dropped, as Gemini has no such key: ``additionalProperties``, ``$schema``, ``$id``, ``examples``,
  ``not``, ``if``/``then``/``else``, ``patternProperties``, ``strict``, ...; ``format`` unless it
  is ``enum`` or ``date-time`` (the only ones the Gemini Developer API accepts); ``enum`` whose
  values are not all strings; ``required`` names that are not properties; empty ``properties``.

So constraints such as ``additionalProperties: false`` are lost: a model may send arguments the
schema would have refused, as with any provider that does not enforce strict schemas.
"""

from __future__ import annotations

from typing import Any

from gateway.wire.requests import JSONObject

_KEPT = frozenset(
    {
        "title", "description", "nullable", "minItems", "maxItems", "minLength", "maxLength",
        "pattern", "minimum", "maximum", "minProperties", "maxProperties", "default", "example",
        "propertyOrdering",
    }
)  # fmt: skip
_FORMATS = frozenset({"enum", "date-time"})
_HANDLED = frozenset(
    {"type", "anyOf", "oneOf", "allOf", "$ref", "const", "properties", "items", "required", "enum", "format"}
)


def gemini_schema(schema: JSONObject) -> JSONObject:
    """``schema`` rewritten into the subset Gemini accepts (see the module docstring)."""
    defs: dict[str, Any] = {}
    for key in ("definitions", "$defs"):
        found = schema.get(key)
        if isinstance(found, dict):
            defs.update(found)
    return _clean(schema, defs, frozenset())


def _clean(node: object, defs: dict[str, Any], expanding: frozenset[str]) -> JSONObject:
    if not isinstance(node, dict):
        return {}
    ref = node.get("$ref")
    if isinstance(ref, str):
        return _inlined(node, ref, defs, expanding)
    out: JSONObject = {}
    _add_type(out, node.get("type"))
    for key in ("anyOf", "oneOf"):
        _add_branches(out, node.get(key), defs, expanding)
    branches = node.get("allOf")
    if isinstance(branches, list):
        for branch in branches:
            out.update(_clean(branch, defs, expanding))
    const = node.get("const")
    if isinstance(const, str):
        out.setdefault("type", "string")
        out["enum"] = [const]
    for key, value in node.items():
        if key in _KEPT:
            out[key] = value
        elif key not in _HANDLED:
            continue
        elif key == "properties" and isinstance(value, dict) and value:
            out["properties"] = {name: _clean(sub, defs, expanding) for name, sub in value.items()}
        elif key == "items" and isinstance(value, dict):
            out["items"] = _clean(value, defs, expanding)
        elif key == "enum" and isinstance(value, list) and all(isinstance(v, str) for v in value):
            out["enum"] = value
        elif key == "format" and isinstance(value, str) and value in _FORMATS:
            out["format"] = value
    required = node.get("required")
    properties = out.get("properties", {})
    if isinstance(required, list):
        names = [name for name in required if isinstance(name, str) and name in properties]
        if names:
            out["required"] = names
    return out


def _inlined(node: JSONObject, ref: str, defs: dict[str, Any], expanding: frozenset[str]) -> JSONObject:
    name = ref.rsplit("/", 1)[-1]
    target = defs.get(name)
    if target is None or name in expanding:
        out: JSONObject = {"type": "object"}
    else:
        out = _clean(target, defs, expanding | {name})
    description = node.get("description")
    if isinstance(description, str):
        out["description"] = description  # the referring property's own description wins
    return out


def _add_type(out: JSONObject, kind: object) -> None:
    if isinstance(kind, str) and kind != "null":
        out["type"] = kind
    elif isinstance(kind, list):
        kinds = [k for k in kind if isinstance(k, str) and k != "null"]
        if len(kinds) < len(kind):
            out["nullable"] = True
        if len(kinds) == 1:
            out["type"] = kinds[0]
        elif kinds:
            out["anyOf"] = [{"type": k} for k in kinds]


def _add_branches(out: JSONObject, branches: object, defs: dict[str, Any], expanding: frozenset[str]) -> None:
    if not isinstance(branches, list):
        return
    kept = []
    for branch in branches:
        if isinstance(branch, dict) and branch.get("type") == "null":
            out["nullable"] = True
        else:
            kept.append(_clean(branch, defs, expanding))
    if len(kept) == 1 and "type" not in out:
        out.update(kept[0])  # Optional[X]: X, nullable
    elif kept:
        out["anyOf"] = kept
