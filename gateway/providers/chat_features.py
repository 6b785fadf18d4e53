"""Chat Completions parameters a translating adapter cannot honour and must not drop.

A parameter without an equivalent at the provider is left out when it is a hint the answer does
not rest on (a sampling penalty, ``seed``, ``prediction``, ``service_tier``, ``store``); it is
refused when the client builds on what it asks for, so dropping it would hand back an answer
that silently lacks it: ``logprobs`` (the client reads ``choices[].logprobs``; Gemini gives
them, Anthropic does not), a non-empty ``logit_bias`` (token ids of OpenAI's tokenizers, used to
ban or force tokens; another model's ids mean something else), ``moderation`` (OpenAI scores or
blocks input and output with its moderation model), ``web_search_options`` (an answer grounded
in a search) and audio output (``modalities`` with ``audio``, or ``audio``). Refused with
``UnsupportedByProvider`` naming the parameter, so a group mixing kinds is served by a
deployment that can. Pure, no I/O.
"""

from __future__ import annotations

from gateway.errors import UnsupportedByProvider
from gateway.wire.requests import JSONObject


def refuse_unhonoured(body: JSONObject, kind: str, *, logprobs: bool = False) -> None:
    """Raise ``UnsupportedByProvider`` for the first parameter of ``body`` that ``kind`` (a
    translating provider kind) cannot honour without changing the answer the client relies on;
    ``logprobs``: the kind gives log probabilities (Gemini), so asking for them is fine."""
    if body.get("logprobs") is True and not logprobs:
        raise UnsupportedByProvider(kind, "logprobs", param="logprobs")
    if body.get("logit_bias"):
        raise UnsupportedByProvider(kind, "logit_bias (token ids of OpenAI's tokenizers)", param="logit_bias")
    if body.get("moderation") is not None:
        raise UnsupportedByProvider(
            kind, "moderation (OpenAI's moderation of input and output)", param="moderation"
        )
    if body.get("web_search_options") is not None:
        raise UnsupportedByProvider(kind, "web_search_options", param="web_search_options")
    modalities = body.get("modalities")
    if isinstance(modalities, list) and "audio" in modalities:
        raise UnsupportedByProvider(kind, "audio output", param="modalities")
    if body.get("audio") is not None:
        raise UnsupportedByProvider(kind, "audio output", param="audio")
