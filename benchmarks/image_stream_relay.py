"""Benchmark: the cost of relaying one streamed image event of many megabytes (h-imagestream).

A streamed image generation's partial image is one server-sent event carrying the picture's
base64: megabytes on one ``data:`` line, arriving in many socket reads. The relay
(``providers/openai.ImageStreamRelay``, over the shared ``SSEDecoder`` and ``WholeEvents``) must
hold it as the reads came and join it once when its blank line comes: a relay that appended each
read to a growing buffer would cost the square of the event's size. This feeds events of 5, 20
and 80 MB (the fake provider's, ``image_bytes`` padded) in 64 KiB reads and prints the time per
MB, which stays flat when the cost is linear.

Run: python benchmarks/image_stream_relay.py
"""

from __future__ import annotations

import time

from gateway.providers.openai import ImageStreamRelay
from gateway.testing import fake_media

_READ_BYTES = 64 * 1024


def _stream(image_bytes: int) -> bytes:
    body = {"model": "gpt-image-1", "prompt": "a fox", "stream": True, "partial_images": 1}
    events = fake_media.images_body(body, image_bytes)
    assert isinstance(events, fake_media.ImageEvents)
    return b"".join(events.events)


def _relay_s(stream: bytes) -> float:
    reads = [stream[at : at + _READ_BYTES] for at in range(0, len(stream), _READ_BYTES)]
    best = float("inf")
    for _ in range(3):
        relay = ImageStreamRelay()
        started = time.perf_counter()
        out = [relay.feed(read) for read in reads]
        out.append(relay.finish())
        best = min(best, time.perf_counter() - started)
        assert sum(map(len, out)) == len(stream)
    return best


def main() -> None:
    print("| picture | stream (2 events) | relay time | per MB |")
    print("| ---: | ---: | ---: | ---: |")
    for mb in (4, 16, 64):
        stream = _stream(mb * 1_000_000)
        seconds = _relay_s(stream)
        size_mb = len(stream) / 1e6
        print(f"| {mb} MB | {size_mb:.1f} MB | {seconds * 1000:.1f} ms | {seconds * 1000 / size_mb:.2f} ms |")


if __name__ == "__main__":
    main()
