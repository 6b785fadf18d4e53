"""A client's reasoning effort, per attempt: withheld from a deployment the policy says does not
reason (``deployments[].reasoning: false``).

A model without reasoning (gpt-4o, gpt-4.1, most open models; Gemini 2.0) refuses OpenAI's
``reasoning_effort`` (chat, and the Responses door's ``reasoning``) with a 400 that no failover
helps, so a mixed group (``ordered: [o3, gpt-4o]``) could never fall back for a client that sends
an effort. On the chat, completions and Responses doors the client sent the effort for the group
it chose, so only an explicit ``false`` withholds it (unset passes it through, as before; the
Messages door, whose effort is the gateway's translation, also guesses by name:
``service/messages.reasons_by_name``). On Gemini, withholding ``reasoning_effort`` withholds the
thinking budget the adapter derives from it, and a client's own ``thinking_budget`` (the Messages
door's internal key, which the Gemini adapter reads) goes too. A Responses request passed through
loses its ``reasoning`` object and ``include``'s ``reasoning.encrypted_content``, which OpenAI
refuses for a model without reasoning (400 ``Encrypted content is not supported with this
model.``, ``param`` ``include``: pydantic/pydantic-ai#2865 for gpt-4o, miquido/draive#399 for
gpt-4.1-mini). The client is told by the response's ``x-gateway-reasoning-effort: dropped``
header and the access log's ``effort_dropped``, and such an answer is not stored in the response
cache (``calls.py``): an identical request that a reasoning deployment would serve must not be
answered from it.

Cost: one dict lookup per attempt for a request without an effort (the body is serialised per
attempt anyway: a copy without the key replaces nothing but the dict).
"""

from __future__ import annotations

from gateway.routing.target import Target
from gateway.wire.requests import JSONObject

EFFORT = "reasoning_effort"  # chat and completions (OpenAI's name)
# Not OpenAI's: the Messages door's thinking budget, which the Gemini adapter reads from any chat
# body (``gemini_request.THINKING_BUDGET``; named here, the service not importing a provider).
THINKING_BUDGET = "thinking_budget"
_CHAT_REASONING = (EFFORT, THINKING_BUDGET)
RESPONSES_REASONING = "reasoning"  # the Responses API's ``{effort, summary}``
RESPONSES_INCLUDE = "include"
# What ``include`` asks that only a reasoning model answers (OpenAI's 400 otherwise).
ENCRYPTED_REASONING = "reasoning.encrypted_content"
# The response header that says the effort the client sent did not reach the model that answered.
DROPPED_HEADER = "x-gateway-reasoning-effort"


def chat_for(body: JSONObject, target: Target) -> JSONObject:
    """``body`` (a chat or completions request) as ``target`` gets it: without
    ``reasoning_effort`` and ``thinking_budget`` when its deployment is declared
    ``reasoning: false``; else ``body`` itself (no copy)."""
    if target.deployment.reasoning is False and (EFFORT in body or THINKING_BUDGET in body):
        return {name: value for name, value in body.items() if name not in _CHAT_REASONING}
    return body


def responses_for(body: JSONObject, target: Target) -> JSONObject:
    """A Responses request passed through to ``target``: without ``reasoning`` (effort and
    summary, which only a reasoning model takes) and without ``reasoning.encrypted_content`` in
    ``include`` (the key goes when nothing else is in it) when its deployment is declared
    ``reasoning: false``; else ``body`` itself."""
    if target.deployment.reasoning is not False or not (RESPONSES_REASONING in body or _asks_encrypted(body)):
        return body
    sent = {name: value for name, value in body.items() if name != RESPONSES_REASONING}
    include = body.get(RESPONSES_INCLUDE)
    if isinstance(include, list) and ENCRYPTED_REASONING in include:
        rest = [entry for entry in include if entry != ENCRYPTED_REASONING]
        if rest:
            sent[RESPONSES_INCLUDE] = rest
        else:
            del sent[RESPONSES_INCLUDE]
    return sent


def withheld(body: JSONObject, target: Target) -> bool:
    """Whether the effort of ``body`` (a chat request, or a door's chat translation), or its
    ``thinking_budget``, was withheld from ``target``, the deployment that served it."""
    return target.deployment.reasoning is False and (
        body.get(EFFORT) is not None or body.get(THINKING_BUDGET) is not None
    )


def responses_withheld(body: JSONObject, target: Target) -> bool:
    """Whether ``responses_for`` took something from ``body`` (a Responses request) for
    ``target``, the deployment that served it."""
    return target.deployment.reasoning is False and _asks_reasoning(body)


def _asks_reasoning(body: JSONObject) -> bool:
    """Whether a Responses request asks what only a reasoning model takes: ``reasoning`` (not
    null) or ``include``'s ``reasoning.encrypted_content``."""
    return body.get(RESPONSES_REASONING) is not None or _asks_encrypted(body)


def _asks_encrypted(body: JSONObject) -> bool:
    include = body.get(RESPONSES_INCLUDE)
    return isinstance(include, list) and ENCRYPTED_REASONING in include
