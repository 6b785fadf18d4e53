"""A client's reasoning effort, per attempt: withheld from a deployment the policy says does not
reason (``deployments[].reasoning: false``).

A model without reasoning (gpt-4o, gpt-4.1, most open models; Gemini 2.0) refuses OpenAI's
``reasoning_effort`` (chat, and the Responses door's ``reasoning``) with a 400 that no failover
helps, so a mixed group (``ordered: [o3, gpt-4o]``) could never fall back for a client that sends
an effort. On the chat, completions and Responses doors the client sent the effort for the group
it chose, so only an explicit ``false`` withholds it (unset passes it through, as before; the
Messages door, whose effort is the gateway's translation, also guesses by name:
``service/messages.reasons_by_name``). On Gemini, withholding ``reasoning_effort`` withholds the
thinking budget the adapter derives from it. The client is told by the response's
``x-gateway-reasoning-effort: dropped`` header and the access log's ``effort_dropped``.

Cost: one dict lookup per attempt for a request without an effort (the body is serialised per
attempt anyway: a copy without the key replaces nothing but the dict).
"""

from __future__ import annotations

from gateway.routing.target import Target
from gateway.wire.requests import JSONObject

EFFORT = "reasoning_effort"  # chat and completions (OpenAI's name)
RESPONSES_REASONING = "reasoning"  # the Responses API's ``{effort, summary}``
# The response header that says the effort the client sent did not reach the model that answered.
DROPPED_HEADER = "x-gateway-reasoning-effort"


def chat_for(body: JSONObject, target: Target) -> JSONObject:
    """``body`` (a chat or completions request) as ``target`` gets it: without
    ``reasoning_effort`` when its deployment is declared ``reasoning: false``; else ``body``
    itself (no copy)."""
    if EFFORT in body and target.deployment.reasoning is False:
        return {name: value for name, value in body.items() if name != EFFORT}
    return body


def responses_for(body: JSONObject, target: Target) -> JSONObject:
    """A Responses request passed through to ``target``: without ``reasoning`` (effort and
    summary, which only a reasoning model takes) when its deployment is declared
    ``reasoning: false``; else ``body`` itself."""
    if RESPONSES_REASONING in body and target.deployment.reasoning is False:
        return {name: value for name, value in body.items() if name != RESPONSES_REASONING}
    return body


def withheld(body: JSONObject, target: Target) -> bool:
    """Whether the effort of ``body`` (a chat request, or a door's chat translation) was withheld
    from ``target``, the deployment that served it."""
    return body.get(EFFORT) is not None and target.deployment.reasoning is False
