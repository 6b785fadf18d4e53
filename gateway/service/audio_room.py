"""How many bytes of upload forms this process holds at once, and how many one caller may.

A transcription, translation, image edit or variation form is held whole while it is served
(failover sends it again, ``http/upload.read_upload_form``): one room for all of them (h-imageedits:
memory is memory, whichever endpoint holds it), so uploads in flight cost memory in proportion to their
sizes: measured, 20 uploads of 24 MiB at once took a gateway to 2.4 GB resident (the form, its
copy for each attempt's body, the reader's buffers). ``AudioRoom`` bounds the sum of the sizes
the forms in flight may reach (``server.max_audio_in_flight_bytes``); past it, an upload is
refused before a byte of it is read, with a 503 the SDKs retry.

Fairness (h-audioroom): one caller (``uploader_of``: its key's team, else its open-mode
credential, else its address) may hold at most ``share_of(limit, max_form)`` of it: a quarter of
the room, and at least one largest form. Past its share a caller gets a 429 ``uploads_busy`` (its
own uploads fill its share; the room may still have space for others), so a few connections of
one team trickling slowly (the upload pace allows 8 KiB/s for an hour) cannot keep everyone else
at 503, whatever number of keys they use (h-uploadgate). Counted per process, as the room is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from gateway.cache.fingerprint import ANONYMOUS_TENANT
from gateway.errors import UploadsBusy, UploadShareFull
from gateway.service.context import CallContext

SHARE_DIVISOR = 4  # a caller may hold a quarter of the room (at least one largest form)


def share_of(limit: int, max_form: int) -> int:
    """Bytes of forms one caller may hold at once: a quarter of ``limit``, at least ``max_form``
    (a smaller share would refuse a caller's largest form for good)."""
    return max(limit // SHARE_DIVISOR, max_form)


def uploader_of(ctx: CallContext, address: Callable[[], str | None]) -> str:
    """Whose upload it is, for its share: the key's team (h-uploadgate: every key of a team
    shares one share, so a team's several keys cannot fill the room), the key itself for a key
    without a team; in open mode the credential's tenant (a hash of the ``Authorization`` sent,
    as cache tenancy uses); without one, the client's address."""
    caller = ctx.identity
    if caller is not None:
        return "team:" + caller.team if caller.team else "key:" + caller.key_id
    if ctx.tenant != ANONYMOUS_TENANT:
        return "tenant:" + ctx.tenant
    return "address:" + (address() or "")


class AudioRoom:
    """The bytes held by the forms in flight (``held``, and ``by`` each uploader): each reserves
    the size it may reach (its declared length, or ``server.max_audio_bytes`` without one, at
    most that) from when its key is accepted until its answer has been sent, however the call
    ends."""

    def __init__(self) -> None:
        self.held = 0
        self.by: dict[str, int] = {}

    @contextmanager
    def hold(self, size: int, limit: int, uploader: str = "", share: int | None = None) -> Iterator[None]:
        """Reserve ``size`` bytes within ``limit`` for the block (``UploadsBusy`` past it), and
        within ``share`` for ``uploader`` (``UploadShareFull`` past it). One upload alone is
        always let in, whatever its size, and so is a caller's first: a limit below
        ``max_audio_bytes`` would otherwise refuse the largest forms for good."""
        mine = self.by.get(uploader, 0)
        if share is not None and mine > 0 and mine + size > share:
            raise UploadShareFull(share)
        if self.held > 0 and self.held + size > limit:
            raise UploadsBusy(limit)
        self.held += size
        self.by[uploader] = mine + size
        try:
            yield
        finally:
            self.held -= size
            left = self.by[uploader] - size
            if left:
                self.by[uploader] = left
            else:
                del self.by[uploader]
