"""The conversation rules of Anthropic's Messages API, checked on the front door whatever kind of
deployment serves the request.

    check_turns(messages)   raises ``TurnError`` for a conversation Anthropic's API refuses

Anthropic refuses these with a 400 ``invalid_request_error``; a request the gateway translated
for an OpenAI or Gemini deployment would otherwise be answered (or refused in another provider's
words), so a client's broken history worked or failed depending on which deployment the router
picked. The rules (Anthropic's "Handle tool calls" guide: tool results immediately follow their
tool uses, first in the user turn's content; its API reference for the rest) and the messages
are Anthropic's own, as its users quote them in error reports (the same ones the fake Anthropic,
``testing/fake_anthropic.check_conversation``, answers with), each naming the offending index
(``messages.3.content.0``):

* at least one message;
* every message non-empty, except a final assistant message; text blocks hold visible text;
  a final assistant turn (a prefill) does not end in whitespace;
* ``tool_use`` ids match ``^[a-zA-Z0-9_-]+$`` and are unique in the request;
* a ``tool_result`` answers a ``tool_use`` of the immediately preceding assistant turn, once,
  and the turn's ``tool_result`` blocks come before any other block;
* every ``tool_use`` of an assistant turn is answered in the next message.

Consecutive messages of one role are one turn (the API reference, ``messages``: "Consecutive
`user` or `assistant` turns in your request will be combined into a single turn"), so the rules
hold per combined turn: parallel tool results sent as one user message each are answers, and a
text message between two assistant messages is part of the turn. Key paths still name the
client's own messages. Not checked: the first turn's role (an assistant turn may open).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

_TOOL_USE_ID = re.compile(r"[a-zA-Z0-9_-]+")


class TurnError(ValueError):
    """A conversation Anthropic's API refuses; ``message`` starts with the key path (``param``),
    as Anthropic's own messages do."""

    def __init__(self, param: str, text: str) -> None:
        self.param = param
        self.message = f"{param}: {text}"
        super().__init__(self.message)


class Turn(Protocol):
    """One message of a Messages request (the door's validated ``_Message``)."""

    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str | list[dict[str, Any]]: ...


def check_turns(messages: Sequence[Turn]) -> None:
    """Refuse a conversation Anthropic's Messages API refuses (``TurnError``, its message).

    Consecutive messages of one role are one turn, as Anthropic combines them: a turn's
    ``tool_result`` blocks may be spread over its messages, first in the turn; its tool uses are
    answered by the next turn. Key paths name the client's own messages."""
    if not messages:
        raise TurnError("messages", "at least one message is required")
    last = len(messages) - 1
    seen: set[str] = set()  # every tool_use id so far
    offered: list[tuple[str, int]] = []  # the tool_use ids of the turn before, with their message
    start = 0
    while start <= last:
        role = messages[start].role
        end = start
        while end < last and messages[end + 1].role == role:
            end += 1
        turn = _TurnState()
        for i in range(start, end + 1):
            _check_message(messages[i], i, i == last and role == "assistant", seen, offered, turn)
        missing = [(call, at) for call, at in offered if call not in turn.answered]
        if missing:
            raise _unanswered(missing)
        offered = turn.uses if role == "assistant" else []
        start = end + 1
    if offered:  # a final assistant turn's tool uses: nothing answers them
        raise _unanswered(offered)


def check_final_thinking(messages: Sequence[Turn], thinking: str | None) -> None:
    """Refuse thinking blocks in a final assistant message when thinking is off (``thinking``
    is the request's ``thinking.type``, None when absent), in Anthropic's words (its message, as
    anthropics/claude-code#7946 quotes it): a translated kind drops thinking blocks and answered."""
    if thinking not in (None, "disabled") or not messages:
        return
    last = len(messages) - 1
    content = messages[last].content
    if messages[last].role != "assistant" or not isinstance(content, list):
        return
    for j, block in enumerate(content):
        if block.get("type") in ("thinking", "redacted_thinking"):
            raise TurnError(
                _at(last, j),
                "When thinking is disabled, an `assistant` message in the final position cannot "
                "contain `thinking`. To use thinking blocks, enable `thinking` in your request.",
            )


class _TurnState:
    """What one turn (consecutive messages of one role) has said so far."""

    __slots__ = ("answered", "leading", "uses")

    def __init__(self) -> None:
        self.answered: set[str] = set()  # the ids of the turn before its tool_result blocks answer
        self.uses: list[tuple[str, int]] = []  # its tool_use ids, with their message's index
        self.leading = True  # no block other than a tool_result yet


def _check_message(
    message: Turn,
    i: int,
    final_assistant: bool,
    seen: set[str],
    offered: list[tuple[str, int]],
    turn: _TurnState,
) -> None:
    content = message.content
    if isinstance(content, list):
        if content:
            _check_blocks(content, i, final_assistant, seen, offered, turn)
        elif not final_assistant:
            raise _empty(i)
    elif not content:
        if not final_assistant:
            raise _empty(i)
    elif content.isspace() or (final_assistant and content[-1].isspace()):  # one text block
        if final_assistant:
            raise _trailing_whitespace()
        raise TurnError(f"messages.{i}.content", "text content blocks must contain non-whitespace text")
    else:
        turn.leading = False


def _check_blocks(
    blocks: list[dict[str, Any]],
    i: int,
    final_assistant: bool,
    seen: set[str],
    offered: list[tuple[str, int]],
    turn: _TurnState,
) -> None:
    """Check one message's blocks, adding to its turn's tool uses and answers. (Key paths are
    formatted only for an error.)"""
    answered = turn.answered
    for j, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "tool_result":
            call = block.get("tool_use_id")
            if not isinstance(call, str):
                raise TurnError(f"{_at(i, j)}.tool_result.tool_use_id", "Input should be a valid string")
            if call in answered or all(call != use for use, _ in offered):
                again = " (and answer it once)." if call in answered else "."
                raise TurnError(
                    _at(i, j),
                    f"unexpected `tool_use_id` found in `tool_result` blocks: {call}. Each "
                    "`tool_result` block must have a corresponding `tool_use` block in the "
                    "previous message" + again,
                )
            if not turn.leading:
                raise TurnError(
                    _at(i, j),
                    "`tool_result` blocks must come first in the user message content, before "
                    "any other block.",
                )
            answered.add(call)
            inner = block.get("content")
            for k, part in enumerate(inner if isinstance(inner, list) else ()):
                if isinstance(part, dict) and part.get("type") == "text":
                    problem = _text_problem(part)
                    if problem is not None:
                        raise TurnError(f"{_at(i, j)}.content.{k}", problem)
            continue
        turn.leading = False
        if kind == "text":
            problem = _text_problem(block)
            if problem is not None:
                raise TurnError(_at(i, j), problem)
            text = block.get("text")
            if final_assistant and j == len(blocks) - 1 and isinstance(text, str) and text[-1].isspace():
                raise _trailing_whitespace()
        elif kind == "tool_use":
            call = block.get("id")
            if not isinstance(call, str) or not _TOOL_USE_ID.fullmatch(call):
                raise TurnError(
                    f"{_at(i, j)}.tool_use.id", f"String should match pattern '^{_TOOL_USE_ID.pattern}$'"
                )
            if call in seen:
                raise TurnError(_at(i, j), "`tool_use` ids must be unique")
            seen.add(call)
            turn.uses.append((call, i))


def _at(i: int, j: int) -> str:
    return f"messages.{i}.content.{j}"


def _text_problem(block: dict[str, Any]) -> str | None:
    """What Anthropic says of a text block's text (None: fine, or not a string, which the
    translation names: "a text block needs a 'text' string")."""
    text = block.get("text")
    if not isinstance(text, str):
        return None
    if not text:
        return "text content blocks must be non-empty"
    if text.isspace():
        return "text content blocks must contain non-whitespace text"
    return None


def _unanswered(calls: list[tuple[str, int]]) -> TurnError:
    """The unanswered ``calls`` (id, message index), named at the message of the first."""
    return TurnError(
        f"messages.{calls[0][1]}",
        f"`tool_use` ids were found without `tool_result` blocks immediately after: "
        f"{', '.join(call for call, _ in calls)}. Each `tool_use` block must have a corresponding `tool_result` block "
        "in the next message.",
    )


def _empty(i: int) -> TurnError:
    return TurnError(
        f"messages.{i}",
        "all messages must have non-empty content except for the optional final assistant message",
    )


def _trailing_whitespace() -> TurnError:
    return TurnError("messages", "final assistant content cannot end with trailing whitespace")
