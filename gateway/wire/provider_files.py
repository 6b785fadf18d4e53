"""Where a request names an object stored with a provider (a provider-side object).

    in_chat(body)       the path of the first one in a chat request's messages, or None
    in_responses(body)  ... in a Responses request's ``input`` items
    in_messages(body)   ... in a Messages request (its blocks, tool results and ``container``)
    in_form(fields)     the first upload form field named like a file id (``mask[file_id]``)

The gateway calls providers with the organisation's keys, so an id or URI of something stored
in that account (uploaded there directly: the gateway has no Files API) reads it whoever sends
the request; the ids are random, but any key that learns one could. What counts:

* an OpenAI ``file_id`` (a chat ``file`` part, a Responses ``input_file`` / ``input_image``),
  an Anthropic file source (``source: {"type": "file", "file_id": ...}`` on an image or a
  document, at any depth: in tool results, in a document's own ``content`` source), a
  ``container_upload`` block or a code execution's output file;
* a Gemini Files API file: a URL on ``generativelanguage.googleapis.com`` (the Files API's
  ``https://generativelanguage.googleapis.com/v1beta/files/...``; nothing else is served
  there, and Gemini reads it with the gateway's key; its host in any spelling a URL parser
  reads as it: ``provider_uri``) or a bare ``files/...`` name, wherever a URL is taken (``image_url``, a file part's ``file_data``, an image or document ``url`` source);
* a ``gs://`` URI: Google reads Cloud Storage with the organisation's credentials, so a private
  bucket's object would be read for whoever names it (a public object has an https URL,
  ``https://storage.googleapis.com/...``, which stays allowed);
* an OpenAI stored audio answer named by ``messages[].audio.id`` (chat) and an Anthropic
  ``container`` to reuse (its id, or its custom skills' ids): stored in the account too.

Public URLs (``http(s)://`` anywhere else) and inline ``data:`` URLs are not provider-side
objects: the provider fetches or reads them as any client could. Pure functions; each walks the
messages and their content parts only (a text-only request looks at each message once).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from gateway.wire.requests import JSONObject

_GEMINI_FILES_HOST = "generativelanguage.googleapis.com"


def provider_uri(url: object) -> bool:
    """Whether ``url`` (a URL a content part carries) names a provider-side object: a ``gs://``
    URI, a URL on the Gemini API's host, or a bare Gemini ``files/...`` name. The host is read
    as a URL parser (WHATWG's, Chromium's) reads it, not only as ``urlsplit`` does: a backslash
    ends it as a slash does, tabs and newlines are dropped, percent-escapes and full-width
    forms are decoded, so no spelling of the Files API's host passes for another."""
    if not isinstance(url, str) or url.startswith("data:"):
        return False
    head = url[:8].lower()
    if head.startswith("gs://"):
        return True
    if url.startswith("files/"):
        return True
    if url.startswith(("https://", "http://")) and url.isascii() and _ODD.search(url) is None:
        # A plain URL (the usual public image's): the host looked for first, as parsing every
        # public image URL cost ~4 us each.
        if _GEMINI_FILES_HOST not in url.lower():
            return False
        try:
            host = urlsplit(url).hostname
        except ValueError:  # a malformed authority: not a URL any provider fetches
            return False
        return host is not None and host.rstrip(".") == _GEMINI_FILES_HOST
    return _lenient_host(url) == _GEMINI_FILES_HOST


_ODD = re.compile(r"[%\\\t\n\r]")  # what a URL parser decodes, drops or reads as a slash
# An http(s) URL's authority as a lenient parser finds it: leading spaces and controls skipped,
# any case, ``:`` then any slashes or backslashes, up to the first of ``/ \ ? #`` (tabs and
# newlines already dropped).
_AUTHORITY = re.compile(r"[\x00-\x20]*(?i:https?):[/\\]*([^/\\?#]*)")
_DROPPED = str.maketrans("", "", "\t\n\r")
_DOTS = str.maketrans("\u3002\uff0e\uff61", "...")  # the full stops IDNA maps to "."


def _lenient_host(url: str) -> str | None:
    """The host of an http(s) ``url`` as a browser's URL parser reads it, lower case, without a
    port or a trailing dot; None for any other URL. A plain public URL costs one regex match."""
    if "\t" in url or "\n" in url or "\r" in url:
        url = url.translate(_DROPPED)
    found = _AUTHORITY.match(url)
    if found is None:
        return None
    host = found.group(1).rpartition("@")[2]
    if not host.isascii() or "%" in host:
        host = unicodedata.normalize("NFKC", unquote(host)).translate(_DOTS)
    if not host.startswith("["):
        host = host.partition(":")[0]
    return host.lower().rstrip(".")


def in_chat(body: JSONObject) -> str | None:
    """The key path of the first provider-side object a chat request's ``messages`` name."""
    messages = body.get("messages")
    if type(messages) is not list:
        return None
    for i, message in enumerate(messages):
        if type(message) is not dict:
            continue
        content = message.get("content")
        if type(content) is list:
            found = _chat_parts(content)
            if found is not None:  # (the path is written only then)
                return f"messages[{i}].content[{found[0]}].{found[1]}"
        audio = message.get("audio")
        if type(audio) is dict and audio.get("id") is not None:
            return f"messages[{i}].audio.id"
    return None


def _chat_parts(parts: list[Any]) -> tuple[int, str] | None:
    """(the index of the first part naming a provider-side object, the field that names it)."""
    for j, part in enumerate(parts):
        if type(part) is not dict:
            continue
        kind = part.get("type")
        if kind == "image_url":
            image = part.get("image_url")
            if provider_uri(image.get("url") if type(image) is dict else image):
                return j, "image_url.url"
        elif kind == "file":
            file = part.get("file")
            if type(file) is not dict:
                continue
            if file.get("file_id") is not None:
                return j, "file.file_id"
            if provider_uri(file.get("file_data")):
                return j, "file.file_data"
    return None


def in_responses(body: JSONObject) -> str | None:
    """The key path of the first provider-side object a Responses request's ``input`` names
    (its messages' parts, and the images and files of function call outputs)."""
    items = body.get("input")
    if type(items) is not list:
        return None
    for i, item in enumerate(items):
        if type(item) is not dict:
            continue
        for name in ("content", "output"):  # a message's parts; a call output's
            parts = item.get(name)
            if type(parts) is list:
                where = _responses_parts(parts, f"input[{i}].{name}")
                if where is not None:
                    return where
    return None


def _responses_parts(parts: list[Any], where: str) -> str | None:
    for j, part in enumerate(parts):
        if type(part) is not dict:
            continue
        kind = part.get("type")
        if kind not in ("input_file", "input_image"):
            continue
        if part.get("file_id") is not None:
            return f"{where}[{j}].file_id"
        for name in ("image_url", "file_data", "file_url"):
            if provider_uri(part.get(name)):
                return f"{where}[{j}].{name}"
    return None


def in_form(fields: Sequence[tuple[str, str]]) -> str | None:
    """The name of the first field of an upload form (an image edit or variation, a
    transcription) that would name a provider-side object: one whose name holds ``file_id``.
    OpenAI's image edits take ``images[].file_id`` and ``mask.file_id`` as JSON, which the
    gateway does not pass (its uploads are forms); a form field spelled as their bracketed
    path (``images[0][file_id]``, ``mask[file_id]``) is refused rather than trusted not to be
    read so (no documented form field has the word in its name)."""
    for name, _ in fields:
        if "file_id" in name.lower():
            return name
    return None


def in_messages(body: JSONObject) -> str | None:
    """The key path of the first provider-side object a Messages request names: file sources
    and ``container_upload`` blocks (in turns and tool results), URL sources naming one, and a
    ``container`` to reuse."""
    messages = body.get("messages")
    if type(messages) is list:
        for i, message in enumerate(messages):
            content = message.get("content") if type(message) is dict else None
            if type(content) is list:
                where = _blocks(content, f"messages[{i}].content")
                if where is not None:
                    return where
    return _container(body.get("container"))


def _blocks(blocks: list[Any], where: str) -> str | None:
    """In Messages ``blocks``, and every block nested in them: a tool result's content, a
    document whose source is its own content (``source: {"type": "content", "content": [...]}``:
    image blocks with sources of their own), a server tool result's content (an object holding
    output files: ``code_execution_output.file_id``)."""
    for j, block in enumerate(blocks):
        if type(block) is not dict:
            continue
        found = _block(block, f"{where}[{j}]")
        if found is not None:
            return found
    return None


def _block(block: JSONObject, where: str) -> str | None:
    if block.get("file_id") is not None:  # container_upload, a code execution's output file
        return f"{where}.file_id"
    source = block.get("source")
    if type(source) is dict:
        if source.get("type") == "file" or source.get("file_id") is not None:
            return f"{where}.source.file_id"
        if provider_uri(source.get("url")):
            return f"{where}.source.url"
        inner = source.get("content")
        if type(inner) is list:
            found = _blocks(inner, f"{where}.source.content")
            if found is not None:
                return found
    inner = block.get("content")
    if type(inner) is list:
        return _blocks(inner, f"{where}.content")
    if type(inner) is dict:
        return _block(inner, f"{where}.content")
    return None


def _container(container: object) -> str | None:
    """An Anthropic ``container`` naming one to reuse (its id) or custom skills (their ids)."""
    if isinstance(container, str):
        return "container"
    if type(container) is not dict:
        return None
    if container.get("id") is not None:
        return "container.id"
    skills = container.get("skills")
    if type(skills) is list:
        for k, skill in enumerate(skills):
            if type(skill) is dict and skill.get("type") == "custom":
                return f"container.skills[{k}].skill_id"
    return None
