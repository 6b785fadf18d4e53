"""Memory-augmented chat: add the memories closest to the user's question as context.

A chat request asks for it with a ``memory`` field (``{"namespaces": [...], "top_k": 5}``,
removed before the request goes upstream) or the ``x-gateway-memory: ns1,ns2`` header. The
memories go in one system message after the client's own system messages; the response's
``x-gateway-memory-ids`` header names them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from gateway.errors import InvalidRequest
from gateway.memory.service import MemoryService
from gateway.wire.memory import ChatMemoryIn

HEADER = "x-gateway-memory"
TOP_K_HEADER = "x-gateway-memory-top-k"
_PREAMBLE = (
    "Relevant memories from the organisation's knowledge (each starts with its id; use them if "
    "they help answer, and say so when they do):"
)


def wanted(body: Mapping[str, Any], headers: Mapping[str, str]) -> bool:
    return "memory" in body or HEADER in headers


async def augment(
    service: MemoryService | None, body: dict[str, Any], headers: Mapping[str, str]
) -> tuple[dict[str, Any], list[str]]:
    """``body`` with the best memories added (and its ``memory`` field removed), and their ids."""
    spec = _spec(body, headers)
    body = {k: v for k, v in body.items() if k != "memory"}
    if service is None:
        raise InvalidRequest(
            "Memory-augmented chat needs the memory service, which this gateway's policy disables.",
            param="memory",
        )
    prompt = _last_user_text(body.get("messages"))
    if not prompt:
        return body, []
    hits = await service.context_for(prompt, spec.namespaces, spec.top_k)
    if not hits:
        return body, []
    lines = [_PREAMBLE, *(f"[{h.memory.id}] {h.memory.content}" for h in hits)]
    messages = list(body["messages"])
    at = 0
    while (
        at < len(messages)
        and isinstance(messages[at], dict)
        and messages[at].get("role") in ("system", "developer")
    ):
        at += 1
    messages.insert(at, {"role": "system", "content": "\n".join(lines)})
    body["messages"] = messages
    return body, [h.memory.id for h in hits]


def _spec(body: Mapping[str, Any], headers: Mapping[str, str]) -> ChatMemoryIn:
    raw: object
    if "memory" in body:
        raw = body["memory"]
    else:
        from_headers: dict[str, object] = {
            "namespaces": [n.strip() for n in headers.get(HEADER, "").split(",") if n.strip()]
        }
        if TOP_K_HEADER in headers:
            from_headers["top_k"] = headers[TOP_K_HEADER]
        raw = from_headers
    try:
        return ChatMemoryIn.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in ("memory", *err["loc"]))
        raise InvalidRequest(f"Invalid value for '{where}': {err['msg']}.", param=where) from None


def _last_user_text(messages: object) -> str:
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(
                    p.get("text", "")
                    for p in content
                    if isinstance(p, dict) and isinstance(p.get("text"), str)
                )
    return ""
