"""OpenAI's explicit prompt-cache breakpoints as Anthropic's ``cache_control``. Pure, no I/O.

OpenAI's SDK types a content part's ``prompt_cache_breakpoint`` ("Marks the exact end of a
reusable prompt prefix", ``{"mode": "explicit", "ttl": ...}``); Anthropic caches only up to the
blocks marked ``cache_control: {"type": "ephemeral"}`` and takes at most four of them ("You can
define up to 4 cache breakpoints"). Without the translation an Anthropic deployment never
cached what the client marked, and paid the whole prefix on every turn. The lifetime is
Anthropic's default (five minutes, refreshed by each hit): a breakpoint is a cost hint, the
answer is the same; beyond four, the last four are kept (OpenAI too "writes up to the latest"
breakpoints).
"""

from __future__ import annotations

from gateway.wire.requests import JSONObject

MAX_BREAKPOINTS = 4


def ephemeral() -> JSONObject:
    """A fresh ``cache_control`` value (each block its own: ``keep_latest`` edits blocks)."""
    return {"type": "ephemeral"}


def marked(part: object) -> bool:
    """Whether a content part carries an explicit breakpoint."""
    return isinstance(part, dict) and isinstance(part.get("prompt_cache_breakpoint"), dict)


def any_marked(content: object) -> bool:
    return isinstance(content, list) and any(marked(p) for p in content)


def keep_latest(request: JSONObject) -> None:
    """Drop the earliest ``cache_control`` marks of a Messages request beyond the four allowed
    (system blocks first, then the messages' blocks, in order)."""
    blocks: list[JSONObject] = []
    system = request.get("system")
    if isinstance(system, list):
        blocks.extend(system)
    for message in request.get("messages", []):
        content = message.get("content")
        for block in content if isinstance(content, list) else ():
            if isinstance(block, dict):
                blocks.append(block)
                inner = block.get("content")  # a tool result's own blocks
                if isinstance(inner, list):
                    blocks.extend(b for b in inner if isinstance(b, dict))
    cached = [b for b in blocks if "cache_control" in b]
    for block in cached[: max(0, len(cached) - MAX_BREAKPOINTS)]:
        del block["cache_control"]
