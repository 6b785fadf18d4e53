"""OpenAI's ``allowed_tools`` tool choice, for adapters whose providers have none.

``{"type": "allowed_tools", "allowed_tools": {"mode": "auto" | "required", "tools": [{"type":
"function", "function": {"name": ...}}, ...]}}`` keeps the whole ``tools`` list in the request
(so a provider's prompt cache stays warm) while the model may call only the tools named. A
provider without that choice gets the same meaning from the tools it is offered: only the named
ones, with ``tool_choice`` ``auto`` or ``required``. Pure functions, no I/O.
"""

from __future__ import annotations

from gateway.errors import InvalidRequest
from gateway.wire.requests import JSONObject

_MODES = ("auto", "required")


def narrowed(body: JSONObject) -> JSONObject:
    """``body`` as is, or, when its ``tool_choice`` is ``allowed_tools``, a copy offering only
    the tools it allows with the plain choice its ``mode`` names."""
    choice = body.get("tool_choice")
    if not isinstance(choice, dict) or choice.get("type") != "allowed_tools":
        return body
    spec = choice.get("allowed_tools")
    mode = spec.get("mode") if isinstance(spec, dict) else None
    listed = spec.get("tools") if isinstance(spec, dict) else None
    if mode not in _MODES or not isinstance(listed, list) or not listed:
        raise InvalidRequest(
            "'tool_choice.allowed_tools' needs a 'mode' ('auto' or 'required') and a non-empty "
            "'tools' array.",
            param="tool_choice.allowed_tools",
        )
    names = set()
    for j, tool in enumerate(listed):
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            where = f"tool_choice.allowed_tools.tools[{j}]"
            raise InvalidRequest(
                f'\'{where}\' must name a function: {{"type": "function", "function": {{"name": ...}}}}.',
                param=where,
            )
        names.add(name)
    tools = body.get("tools")
    offered = [
        tool
        for tool in (tools if isinstance(tools, list) else [])
        if isinstance(tool, dict)
        and isinstance(tool.get("function"), dict)
        and tool["function"].get("name") in names
    ]
    if not offered:
        raise InvalidRequest(
            "'tool_choice.allowed_tools' names no function of 'tools'.",
            param="tool_choice.allowed_tools.tools",
        )
    return {**body, "tools": offered, "tool_choice": mode}
