"""JSON Schema (OpenAI tool parameters, response formats) as Gemini's ``Schema`` object.

Gemini takes "a select subset of an OpenAPI 3.0 schema object" (https://ai.google.dev/api/caching#Schema)
and refuses a request carrying any other key, so the translation keeps only the keys that subset
has and rewrites the common JSON Schema idioms it lacks:

* ``type: ["string", "null"]`` and an ``anyOf``/``oneOf`` branch ``{"type": "null"}`` become
  ``nullable: true``; several non-null types become ``anyOf``; ``oneOf`` becomes ``anyOf``;
* ``$ref`` into ``$defs``/``definitions`` is inlined (a recursive reference becomes a bare
  ``{"type": "object"}``, as Gemini schemas cannot refer to themselves); ``allOf`` is merged,
  the ``properties`` and ``required`` of every branch and of the node together;
* an array needs ``items``: a tuple's (``items`` as a list, ``prefixItems``) become one schema
  or an ``anyOf``, and an array without any gets string items;
* ``const`` becomes a one-value ``enum``;
* dropped, as Gemini has no such key: ``additionalProperties``, ``$schema``, ``$id``, ``examples``,
  ``not``, ``if``/``then``/``else``, ``patternProperties``, ``strict``, ...; ``format`` unless it
  is ``enum`` or ``date-time`` (the only ones the Gemini Developer API accepts); ``enum`` whose
  values are not all strings, or empty; ``required`` names that are not properties; empty
  ``properties``. An ``enum`` without a ``type`` is a string's (Gemini's enums are strings only).

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


MAX_NODES = 5000
"""Schema objects one translation may write. Inlining ``$ref`` copies a definition wherever it is
named, so a few kilobytes of definitions naming each other twice over unfold into millions of
nodes (a 2.6 KB schema took 33 s and 2.3 GB before this bound); no schema Gemini would serve comes
near it ("schema too complex" is refused far below)."""
MAX_DEPTH = 48
"""Nesting of the written schema (and of the walk over the client's, which Python's recursion
limit would otherwise end in an error of the gateway's own)."""


class SchemaTooLarge(Exception):
    """The schema unfolds past ``MAX_NODES`` or ``MAX_DEPTH``."""


class _Walk:
    __slots__ = ("defs", "depth", "left")

    def __init__(self, defs: dict[str, Any]) -> None:
        self.defs = defs
        self.left = MAX_NODES
        self.depth = 0


def gemini_schema(schema: JSONObject) -> JSONObject:
    """``schema`` rewritten into the subset Gemini accepts (see the module docstring).

    Raises ``SchemaTooLarge`` when it unfolds past ``MAX_NODES`` or ``MAX_DEPTH``."""
    defs: dict[str, Any] = {}
    for key in ("definitions", "$defs"):
        found = schema.get(key)
        if isinstance(found, dict):
            defs.update(found)
    return _clean(schema, _Walk(defs), frozenset())


def _clean(node: object, walk: _Walk, expanding: frozenset[str]) -> JSONObject:
    if not isinstance(node, dict):
        return {}
    walk.left -= 1
    if walk.left < 0 or walk.depth >= MAX_DEPTH:
        raise SchemaTooLarge
    walk.depth += 1
    try:
        return _cleaned(node, walk, expanding)
    finally:
        walk.depth -= 1


def _cleaned(node: JSONObject, walk: _Walk, expanding: frozenset[str]) -> JSONObject:
    ref = node.get("$ref")
    if isinstance(ref, str):
        return _inlined(node, ref, walk, expanding)
    out: JSONObject = {}
    _add_type(out, node.get("type"))
    for key in ("anyOf", "oneOf"):
        _add_branches(out, node.get(key), walk, expanding)
    required: list[object] = []  # allOf's branches' and the node's own, in that order
    branches = node.get("allOf")
    if isinstance(branches, list):
        for branch in branches:
            merged = _clean(branch, walk, expanding)
            properties = merged.pop("properties", None)
            required.extend(merged.pop("required", ()))
            out.update(merged)
            if properties:
                out["properties"] = {**out.get("properties", {}), **properties}
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
            own = {name: _clean(sub, walk, expanding) for name, sub in value.items()}
            out["properties"] = {**out.get("properties", {}), **own}
        elif key == "items" and isinstance(value, dict):
            out["items"] = _clean(value, walk, expanding)
        elif key == "enum" and isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            out["enum"] = value
        elif key == "format" and isinstance(value, str) and value in _FORMATS:
            out["format"] = value
    if "enum" in out and "type" not in out and "anyOf" not in out:
        # Gemini refuses an enum on anything but a string ("function declaration enum only
        # allowed for STRING type"), an untyped one included, which JSON Schema allows: the
        # values are all strings (kept only then), so it is a string's (an outside probe).
        out["type"] = "string"
    if isinstance(node.get("required"), list):
        required.extend(node["required"])
    properties = out.get("properties", {})
    names = [name for name in dict.fromkeys(n for n in required if isinstance(n, str)) if name in properties]
    if names:
        out["required"] = names
    _give_items(out, node, walk, expanding)
    return out


def _give_items(out: JSONObject, node: JSONObject, walk: _Walk, expanding: frozenset[str]) -> None:
    """Gemini refuses an array without ``items`` ("items: missing field"), which JSON Schema
    allows: a tuple's ``items`` list (or ``prefixItems``) becomes its one item schema or an
    ``anyOf`` of them, and an array saying nothing of its items gets string items."""
    arrays = [out] if out.get("type") == "array" else []
    arrays += [b for b in out.get("anyOf", ()) if isinstance(b, dict) and b.get("type") == "array"]
    for array in arrays:
        if array.get("items"):
            continue  # (an item schema that kept nothing, {}, is as good as none)
        tuple_items = node.get("items") if isinstance(node.get("items"), list) else node.get("prefixItems")
        kinds = [_clean(i, walk, expanding) for i in tuple_items] if isinstance(tuple_items, list) else []
        kinds = [k for k in kinds if k]
        if len(kinds) == 1:
            array["items"] = kinds[0]
        elif kinds:
            array["items"] = {"anyOf": kinds}
        elif array is not out and isinstance(node.get("items"), dict):
            array["items"] = _clean(node["items"], walk, expanding)
        else:
            array["items"] = {"type": "string"}


def _inlined(node: JSONObject, ref: str, walk: _Walk, expanding: frozenset[str]) -> JSONObject:
    name = ref.rsplit("/", 1)[-1]
    target = walk.defs.get(name)
    if target is None or name in expanding:
        out: JSONObject = {"type": "object"}
    else:
        out = _clean(target, walk, expanding | {name})
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


def _add_branches(out: JSONObject, branches: object, walk: _Walk, expanding: frozenset[str]) -> None:
    if not isinstance(branches, list):
        return
    kept = []
    for branch in branches:
        if isinstance(branch, dict) and branch.get("type") == "null":
            out["nullable"] = True
        else:
            kept.append(_clean(branch, walk, expanding))
    if len(kept) == 1 and "type" not in out:
        out.update(kept[0])  # Optional[X]: X, nullable
    elif kept:
        out["anyOf"] = kept
