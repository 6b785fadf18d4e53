"""How many bytes of transcription forms this process holds at once.

A transcription or translation form is held whole while it is served (failover sends it again,
``http/upload.read_audio_form``), so uploads in flight cost memory in proportion to their
sizes: measured, 20 uploads of 24 MiB at once took a gateway to 2.4 GB resident (the form, its
copy for each attempt's body, the reader's buffers). ``AudioRoom`` bounds the sum of the sizes
the forms in flight may reach (``server.max_audio_in_flight_bytes``); past it, an upload is
refused before a byte of it is read, with a 503 the SDKs retry.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from gateway.errors import UploadsBusy


class AudioRoom:
    """The bytes held by the forms in flight (``held``): each reserves the size it may reach
    (its declared length, or ``server.max_audio_bytes`` without one, at most that) from when its
    key is accepted until its answer has been sent, however the call ends."""

    def __init__(self) -> None:
        self.held = 0

    @contextmanager
    def hold(self, size: int, limit: int) -> Iterator[None]:
        """Reserve ``size`` bytes within ``limit`` for the block (``UploadsBusy`` past it). One
        upload alone is always let in, whatever its size: a limit below ``max_audio_bytes``
        would otherwise refuse the largest forms for good."""
        if self.held > 0 and self.held + size > limit:
            raise UploadsBusy(limit)
        self.held += size
        try:
            yield
        finally:
            self.held -= size
