"""What counts as a provider-side object, and the key path each door's walk names (h-fileref)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.wire.provider_files import in_chat, in_form, in_messages, in_responses, provider_uri


@pytest.mark.parametrize(
    "url",
    [
        "https://generativelanguage.googleapis.com/v1beta/files/abc123",
        "https://GenerativeLanguage.GoogleAPIs.com./v1beta/files/abc123",  # case, trailing dot
        "HTTPS://generativelanguage.googleapis.com:443/v1beta/files/abc123",
        "http://generativelanguage.googleapis.com/v1beta/files/abc123",
        "gs://private-bucket/report.pdf",
        "GS://private-bucket/report.pdf",
        "files/abc123",  # a Gemini file's name
    ],
)
def test_provider_file_uris(url: str) -> None:
    assert provider_uri(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/cat.png",
        "https://storage.googleapis.com/public-bucket/cat.png",  # a public object's URL
        "https://generativelanguage.googleapis.com.evil.example/files/x",
        "https://evil.example/?u=https://generativelanguage.googleapis.com/v1beta/files/x",
        "data:image/png;base64,gs://iVBOR",
        "http://[::1/broken",  # malformed: no provider fetches it
        "my-files/abc",
        None,
        42,
    ],
)
def test_public_and_inline_urls_are_not(url: Any) -> None:
    assert not provider_uri(url)


def test_chat_names_the_first_reference() -> None:
    text = {"role": "user", "content": "plain text costs one look"}
    assert in_chat({"messages": [text] * 3}) is None
    body = {
        "messages": [
            text,
            {"role": "assistant", "content": "x", "audio": {"id": "audio_abc"}},
            {"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]},
        ]
    }
    assert in_chat(body) == "messages[1].audio.id"
    assert in_chat({"messages": body["messages"][2:]}) == "messages[0].content[0].file.file_id"
    gemini = {"type": "file", "file": {"file_data": "gs://b/o.pdf"}}
    assert (
        in_chat({"messages": [{"role": "user", "content": [gemini]}]})
        == "messages[0].content[0].file.file_data"
    )
    inline = {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"}}
    assert in_chat({"messages": [{"role": "user", "content": [inline]}]}) is None
    assert in_chat({"messages": "not a list"}) is None


def test_responses_names_message_parts_and_call_outputs() -> None:
    assert in_responses({"input": "just text"}) is None
    image = {"type": "input_image", "image_url": "https://generativelanguage.googleapis.com/v1beta/files/x"}
    body = {
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
            {"type": "function_call_output", "call_id": "c", "output": [image]},
        ]
    }
    assert in_responses(body) == "input[1].output[0].image_url"
    by_id = {"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}
    assert in_responses({"input": [by_id]}) == "input[0].content[0].file_id"


def test_messages_names_file_sources_uploads_urls_and_containers() -> None:
    def turn(*blocks: dict[str, Any]) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": list(blocks)}]}

    public = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    assert in_messages(turn(public)) is None
    assert in_messages(turn(public, {"type": "container_upload", "file_id": "file_1"})) == (
        "messages[0].content[1].file_id"
    )
    result = {
        "type": "tool_result",
        "tool_use_id": "t",
        "content": [{"type": "image", "source": {"type": "file", "file_id": "file_1"}}],
    }
    assert in_messages(turn(result)) == "messages[0].content[0].content[0].source.file_id"
    gs = {"type": "document", "source": {"type": "url", "url": "gs://b/o.pdf"}}
    assert in_messages(turn(gs)) == "messages[0].content[0].source.url"
    assert in_messages({**turn(public), "container": "container_abc"}) == "container"
    assert in_messages({**turn(public), "container": {"id": "container_abc"}}) == "container.id"
    skills = {"skills": [{"type": "anthropic", "skill_id": "pptx"}, {"type": "custom", "skill_id": "s"}]}
    assert in_messages({**turn(public), "container": skills}) == "container.skills[1].skill_id"
    assert in_messages({**turn(public), "container": {"skills": skills["skills"][:1]}}) is None


def test_a_form_field_named_as_a_file_ids_path_is_named() -> None:
    assert in_form([("model", "dalle"), ("prompt", "file_id"), ("mask[file_id]", "f")]) == ("mask[file_id]")
    assert in_form([("images[0][FILE_ID]", "f")]) == "images[0][FILE_ID]"
    assert in_form([("model", "dalle"), ("prompt", "file-abc"), ("n", "1")]) is None
