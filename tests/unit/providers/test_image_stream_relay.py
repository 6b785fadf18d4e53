"""``ImageStreamRelay`` (h-imagestream): a streamed image generation's or edit's events relayed as
the provider sent them, however its chunks fall; its usage and images counted from the completed
events; an error event failed over when first, else held and raised after the events before it;
a stream without a completed event is cut short. The events are OpenAI's (the API reference's
"Image generation streaming events"; the SDK's ``ImageGenPartialImageEvent`` /
``ImageGenCompletedEvent``), written by the fake provider."""

from __future__ import annotations

import pytest

from gateway.errors import UpstreamBadResponse, UpstreamStatusError
from gateway.providers.openai import ImageStreamRelay, OpenAIAdapter
from gateway.testing import fake_media
from gateway.wire.images import IMAGES_RETURNED
from gateway.wire.requests import Endpoint


def _stream(partials: int = 2, n: int = 1, image_bytes: int = 0) -> bytes:
    body = {"model": "gpt-image-1", "prompt": "a red fox", "stream": True, "partial_images": partials, "n": n}
    events = fake_media.images_body(body, image_bytes)
    assert isinstance(events, fake_media.ImageEvents)
    return b"".join(events.events)


def _relay(chunks: list[bytes]) -> tuple[bytes, ImageStreamRelay]:
    relay = ImageStreamRelay()
    out = b"".join(relay.feed(chunk) for chunk in chunks) + relay.finish()
    return out, relay


@pytest.mark.parametrize("endpoint", [Endpoint.IMAGES, Endpoint.IMAGE_EDITS])
def test_the_openai_adapter_relays_image_streams_with_it(endpoint: Endpoint) -> None:
    assert isinstance(OpenAIAdapter().stream_translator(endpoint, {}, "gpt-image-1"), ImageStreamRelay)


def test_the_events_are_relayed_byte_for_byte_however_the_chunks_fall() -> None:
    stream = _stream(partials=2)
    for size in (1, 7, 64, 1000, len(stream)):
        chunks = [stream[at : at + size] for at in range(0, len(stream), size)]
        out, relay = _relay(chunks)
        assert out == stream, size
        assert relay.completed
        assert relay.usage() == {"prompt_tokens": 3, "completion_tokens": 272, IMAGES_RETURNED: 1}


def test_several_images_are_counted_and_their_usage_summed() -> None:
    _, relay = _relay([_stream(partials=1, n=3)])
    assert relay.usage() == {"prompt_tokens": 3, "completion_tokens": 3 * 272, IMAGES_RETURNED: 3}


def test_a_large_event_is_held_until_whole_then_relayed_as_it_came() -> None:
    """A 5 MB partial image in 64 KiB reads: nothing goes out until its blank line, then the
    event exactly as sent (never a half event the gateway's error event could be glued to)."""
    stream = _stream(partials=1, image_bytes=4_000_000)
    first_end = stream.find(b"\n\n") + 2
    assert first_end > 5_000_000
    relay = ImageStreamRelay()
    size = 64 * 1024
    outs = [relay.feed(stream[at : at + size]) for at in range(0, len(stream), size)]
    outs.append(relay.finish())
    assert b"".join(outs) == stream
    first = next(at for at, out in enumerate(outs) if out)
    assert outs[first].startswith(stream[:first_end]) and first == (first_end - 1) // size


def test_an_error_as_the_first_event_fails_over_and_later_is_held_for_after_the_events_before() -> None:
    error = b'event: error\ndata: {"type":"error","error":{"type":"server_error","message":"boom"}}\n\n'
    with pytest.raises(UpstreamStatusError) as first:
        ImageStreamRelay().feed(error)
    assert first.value.retryable  # (a server error: failed over)
    partial = _stream(partials=1).split(b"\n\n")[0] + b"\n\n"
    relay = ImageStreamRelay()
    out = relay.feed(partial + error)
    assert out.endswith(b"\n\n") and b"partial_image_index" in out and b"boom" not in out
    assert relay.failing
    with pytest.raises(UpstreamStatusError):
        relay.feed(b"")
    assert not relay.completed


def test_a_stream_without_its_completed_event_is_cut_short() -> None:
    partial = _stream(partials=1).split(b"\n\n")[0] + b"\n\n"
    relay = ImageStreamRelay()
    assert relay.feed(partial) == partial
    with pytest.raises(UpstreamBadResponse):
        relay.finish()
    assert relay.usage() is None


def test_a_first_event_that_is_not_json_fails_over() -> None:
    with pytest.raises(UpstreamBadResponse):
        ImageStreamRelay().feed(b"event: image_generation.partial_image\ndata: {not json\n\n")
