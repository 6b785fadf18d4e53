"""Read a file upload (``multipart/form-data``) as a stream: the file goes to the ingest spool
1 MiB at a time and is never held in memory; the other fields are small and read whole.

The upload has its own size limit (``memory.ingest.max_file_bytes``), not the app's
``client_max_size`` (``server.max_body_bytes``, for JSON bodies): a declared length beyond it
is refused before a byte is read, and a body that grows beyond it while streaming is refused as
soon as it does (413, ``Connection: close``; what was spooled is deleted). The spool's own
bounds (``memory.spool.SpoolRoom``) refuse an upload the same way, with 507 ``spool_full``. Each read must
arrive within ``server.request_read_timeout_s`` (408), and the upload as a whole is paced
(``_Pace``, 408 too): done within ``memory.ingest.upload_timeout_s``, and, once
``upload_rate_grace_s`` have passed, at least ``upload_min_bytes_per_s`` over every
``upload_rate_window_s`` (a slowloris sending a byte just within each read timeout would
otherwise hold a connection and its partial file for days).
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from gateway import keys
from gateway.errors import (
    InvalidRequest,
    PayloadTooLarge,
    PermissionDenied,
    RequestTimeout,
    UnsupportedMediaType,
    quoted,
)
from gateway.http.body import refuse_compressed, send_continue
from gateway.memory.access import MemoryAccess
from gateway.memory.formats import READ_BYTES, format_of, supported
from gateway.policy.model import Ingest
from gateway.wire.forms import FormFile, FormShape, UploadForm
from gateway.wire.memory import MemoryFileIn

if TYPE_CHECKING:  # the ingest machinery is imported by build_app when memory is on
    from gateway.memory.ingest import IngestService, Spooled

T = TypeVar("T")

_FILENAME_MAX_CHARS = 255  # a file system's longest name (NAME_MAX)
_FIELD_MAX_BYTES = 64 * 1024  # a form field other than the file (metadata JSON included)
_FORM_OVERHEAD = 1 << 20  # the fields and multipart framing a declared length may add to the file
# The form's fields: each known name once, so the fields held while the form is read stay under
# len(_FIELDS) x _FIELD_MAX_BYTES (a form of thousands of fields, or one repeated, is refused at
# the first field past that, not read whole first).
_FIELDS = frozenset(MemoryFileIn.model_fields)
# An upload form's parts (OpenAI's take about a dozen fields, a few repeated as ``name[]``, and up
# to 16 images): more is no client's form. Without a count, a form of one-byte fields kept every
# field and its name (each repeat check costing one pass over those before it: 16,000 fields held
# the loop 12 s).
_UPLOAD_FORM_MAX_PARTS = 1000


@dataclass(frozen=True, slots=True)
class Upload:
    """The form's fields (text), the file's format and the spooled file."""

    fields: dict[str, str]
    format: str
    spooled: Spooled


async def read_upload(
    request: web.Request,
    ingest: IngestService,
    access: MemoryAccess | None,
    before_the_file: Callable[[dict[str, str]], None] | None = None,
) -> Upload:
    """The upload of ``request``, its file spooled; the client's error otherwise (415 not a
    form or a file type the gateway cannot read, 413, 408, 403 a namespace it may not write,
    400 a malformed form; 507 no room in the spool). ``before_the_file`` checks the fields sent
    before the file part, when it begins (its error before a byte of the file is read)."""
    _refuse_cross_site_form(request)
    limit = ingest.config.max_file_bytes
    if request.content_length is not None and request.content_length > limit + _FORM_OVERHEAD:
        raise _too_large(limit)  # refused before reading a byte of it
    # A spool with no room for the declared file (or none at all) refuses it before a byte is read.
    await ingest.check_room(max(0, (request.content_length or 0) - _FORM_OVERHEAD))
    await send_continue(request)
    pace = _Pace(ingest.config, request.app[keys.POLICY].server.request_read_timeout_s)
    try:
        reader = await request.multipart()
    except ValueError as exc:  # no boundary in the Content-Type
        raise _malformed(exc) from None
    fields: dict[str, str] = {}
    found: tuple[str, Spooled] | None = None
    try:
        while (part := await _within(pace, reader.next())) is not None:
            if not isinstance(part, BodyPartReader):
                raise InvalidRequest("Every part of the form must be a named field.", param="file")
            _named(part)
            _refuse_encoded(part)
            if part.filename is None:
                if part.name == "file":  # sent as a text field (curl -F file=<path, a dict of strings)
                    raise InvalidRequest(
                        "The 'file' part has no filename: send it as a file (curl -F file=@path), "
                        "whose name's extension gives its type.",
                        param="file",
                    )
                if part.name not in _FIELDS:
                    raise InvalidRequest(
                        f"Unknown field {quoted(part.name)}. Accepted: file, {', '.join(MemoryFileIn.model_fields)}.",
                        param=part.name,
                    )
                if part.name in fields:
                    raise InvalidRequest(f"The form field '{part.name}' is sent twice.", param=part.name)
                fields[part.name] = await _field(part, pace)
                continue
            if part.name != "file" or found is not None:
                raise InvalidRequest("Send one file, in the form field 'file'.", param="file")
            # A name's bytes that are not UTF-8 arrive as surrogates: shown as U+FFFD from here on
            # (the job, its memories' metadata and every message name the file).
            filename = part.filename.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            if not filename.strip():  # a browser's form sends filename="" when no file was chosen
                raise InvalidRequest("The 'file' part's filename is empty: send a file.", param="file")
            if len(filename) > _FILENAME_MAX_CHARS:  # copied into every chunk's metadata
                raise InvalidRequest(
                    f"The file's name is {len(filename)} characters; at most {_FILENAME_MAX_CHARS}.",
                    param="file",
                )
            if (bad := _unprintable(filename)) is not None:
                raise InvalidRequest(
                    f"The file's name holds the control character U+{ord(bad):04X}: rename the file.",
                    param="file",
                )
            fmt = format_of(filename, fields.get("format"))
            if fmt is None:
                raise _unsupported(filename, fields.get("format"))
            if before_the_file is not None:
                before_the_file(fields)
            if "namespace" in fields:  # before reading the file: a refusal costs nothing
                ingest.check_writable(fields["namespace"], access)
            try:
                found = fmt, await ingest.spool(_blocks(part, pace), filename)
            except PayloadTooLarge:
                raise _too_large(limit) from None
        if found is not None and "namespace" in fields:  # a namespace sent after the file
            ingest.check_writable(fields["namespace"], access)
        if found is not None and "format" in fields:  # sent after the file, it was ignored
            fmt = format_of(found[1].file, fields["format"])
            if fmt is None:
                raise _unsupported(found[1].file, fields["format"])
            found = fmt, found[1]
    except BaseException:
        if found is not None:  # refused after the file was spooled: it will not become a job
            await asyncio.shield(ingest.discard(found[1]))
        raise
    if found is None:
        raise InvalidRequest("The form has no 'file' part.", param="file")
    return Upload(fields, found[0], found[1])


# A part's content read as sent: a Content-Transfer-Encoding (RFC 7578 4.7: deprecated in a form)
# or a Content-Encoding was ignored, and a base64 or gzip file stored as its encoded bytes.
_PLAIN_TRANSFER = frozenset({"", "7bit", "8bit", "binary"})
_PLAIN_ENCODING = frozenset({"", "identity"})
# Characters that act on a terminal or reorder the text shown around them (the bidirectional
# embeddings, overrides and isolates: "a<U+202E>txt.exe" shows as "aexe.txt"). aiohttp refuses C0
# controls in ``filename="..."`` but decodes them from ``filename*=UTF-8''%00`` (RFC 5987), and
# takes C1 and bidirectional controls in either.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _unprintable(name: str) -> str | None:
    """The first control character of a file name (C0, DEL, C1, a bidirectional control)."""
    return next((c for c in name if c < " " or "\x7f" <= c <= "\x9f" or c in _BIDI_CONTROLS), None)


def _named(part: BodyPartReader) -> str:
    """A form part's field name; 400 for a part without one, or one whose name is not UTF-8 (aiohttp
    keeps such bytes as surrogates, which could neither be sent on to a provider nor named in an
    answer: a transcription's was a 500 when its form was encoded for the provider)."""
    if not part.name:
        raise InvalidRequest("Every part of the form must be a named field.", param="file")
    try:
        part.name.encode()
    except UnicodeEncodeError:
        raise InvalidRequest("A form field's name is not UTF-8 text.", param=None) from None
    return part.name


def _refuse_encoded(part: BodyPartReader) -> None:
    """415 for a part whose content is encoded (base64, quoted-printable, gzip...): the gateway
    reads a part's bytes as they are."""
    transfer = part.headers.get("Content-Transfer-Encoding", "").strip().lower()
    encoding = part.headers.get("Content-Encoding", "").strip().lower()
    if transfer not in _PLAIN_TRANSFER or encoding not in _PLAIN_ENCODING:
        header, value = ("Content-Encoding", encoding)
        if transfer not in _PLAIN_TRANSFER:
            header, value = "Content-Transfer-Encoding", transfer
        raise UnsupportedMediaType(
            value,
            f"The form part '{part.name}' has {header} {quoted(value)}: send each part's bytes as they "
            "are (binary), not encoded.",
            param=part.name or "file",
        )


def _unsupported(filename: str, given: str | None) -> UnsupportedMediaType:
    """The 415 for a file of a type the gateway cannot read, naming the ``format`` field when
    that is what chose it."""
    if given:
        return UnsupportedMediaType(
            given, f"Cannot read format {quoted(given)}: supported are {supported()}.", param="format"
        )
    return UnsupportedMediaType(
        filename, f"Cannot read '{filename}': supported file types are {supported()}."
    )


def _too_large(limit: int) -> PayloadTooLarge:
    error = PayloadTooLarge(limit)
    error.headers["connection"] = "close"  # the rest of the body is not wanted on this connection
    return error


class _Pace:
    """When the upload's next read must have ended (loop time, seconds), and the 408 if it has
    not: within the read timeout, by the upload's total deadline, and before the bytes of the
    last ``upload_rate_window_s`` fall below ``upload_min_bytes_per_s`` of it (never before
    ``upload_rate_grace_s``). The rate needs no timer of its own: bytes only arriving can move
    its deadline, so it is computed again after each read and the read waits until then.

    ``_seen`` holds (time, bytes received by then), at most one a sixteenth of a window apart:
    a read between two is not recorded, which only makes the window look fuller (lenient), by at
    most a sixteenth of it; those older than the window are dropped (all but the last)."""

    def __init__(self, config: Ingest, read_timeout_s: float) -> None:
        now = asyncio.get_running_loop().time()
        self.read_timeout_s = read_timeout_s
        self.config = config
        self.received = 0
        self._last = now
        self._total_deadline = now + config.upload_timeout_s
        self._grace_end = now + config.upload_rate_grace_s
        self._seen: deque[tuple[float, int]] = deque([(now, 0)])

    def add(self, size: int) -> None:
        """``size`` more bytes arrived (now)."""
        now = self._last = asyncio.get_running_loop().time()
        self.received += size
        window = self.config.upload_rate_window_s
        if now - self._seen[-1][0] >= window / 16:
            self._seen.append((now, self.received))
        while len(self._seen) > 1 and self._seen[1][0] <= now - window:
            self._seen.popleft()

    def deadline(self) -> tuple[float, str]:
        """The loop time the next read must end by, and which bound that is (``late`` says it)."""
        config = self.config
        found = asyncio.get_running_loop().time() + self.read_timeout_s, "read"
        if self._total_deadline < found[0]:
            found = self._total_deadline, "total"
        if config.upload_min_bytes_per_s > 0:
            # With no more bytes, the window ending at t holds ``received - B(t - window)``:
            # too few from the first t whose window starts at or after a point past ``floor``.
            floor = self.received - config.upload_min_bytes_per_s * config.upload_rate_window_s
            start = next((t for t, b in self._seen if b > floor), self._last)
            at = max(start + config.upload_rate_window_s, self._grace_end)
            if at < found[0]:
                found = at, "rate"
        return found

    def late(self, bound: str) -> RequestTimeout:
        """The 408 for passing ``bound`` (of ``deadline``)."""
        config = self.config
        if bound == "total":
            return RequestTimeout(
                config.upload_timeout_s,
                "The upload did not complete within the gateway's upload timeout of "
                f"{config.upload_timeout_s:g} s (memory.ingest.upload_timeout_s).",
            )
        if bound == "rate":
            return RequestTimeout(
                config.upload_rate_window_s,
                "The upload arrived slower than the gateway's minimum of "
                f"{config.upload_min_bytes_per_s:g} bytes/s over {config.upload_rate_window_s:g} s "
                "(memory.ingest.upload_min_bytes_per_s).",
            )
        return RequestTimeout(self.read_timeout_s)


async def _within(pace: _Pace, read: Awaitable[T]) -> T:
    """A read of the form before its pace's deadline; aiohttp's parser refusing the form (a
    boundary that never comes, a broken part) is the client's 400."""
    deadline, bound = pace.deadline()
    try:
        async with asyncio.timeout_at(deadline):
            return await read
    except TimeoutError:
        raise pace.late(bound) from None
    except (ValueError, HttpProcessingError) as exc:  # a part's header aiohttp refuses is the latter
        raise _malformed(exc) from None


def _malformed(exc: ValueError | HttpProcessingError) -> InvalidRequest:
    reason = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
    if reason == "Reading after EOF":  # aiohttp's words for a body cut before the form's end
        reason = "the body ends before the form's closing boundary"
    return InvalidRequest(f"The body is not a valid multipart/form-data form: {reason}.", param="file")


async def _field(part: BodyPartReader, pace: _Pace, form_limit: int | None = None) -> str:
    """A text field's value: at most ``_FIELD_MAX_BYTES``, or, given ``form_limit``, as long as
    the whole form stays within it (413 beyond)."""
    raw = bytearray()
    while block := await _read(part, pace):
        raw += block
        if form_limit is not None:
            if pace.received > form_limit:
                raise _too_large(form_limit)
        elif len(raw) > _FIELD_MAX_BYTES:
            raise InvalidRequest(
                f"The form field '{part.name}' is over {_FIELD_MAX_BYTES} bytes.", param=part.name
            )
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise InvalidRequest(f"The form field '{part.name}' is not UTF-8 text.", param=part.name) from None


async def _blocks(part: BodyPartReader, pace: _Pace) -> AsyncIterator[bytes]:
    while block := await _read(part, pace):
        yield block


async def _read(part: BodyPartReader, pace: _Pace) -> bytes:
    block = await _within(pace, part.read_chunk(READ_BYTES))
    pace.add(len(block))
    return block


def _refuse_cross_site_form(request: web.Request, part: str = "file") -> None:
    """403 for a form another site's page posts; 415 for a body that is not an uncompressed form
    (``part``: the file part the form needs, as its message names it: ``image`` for an edit)."""
    origin = request.headers.get("Origin")
    if origin is not None and origin.partition("://")[2] != request.headers.get("Host"):
        # A form is what a web page may post to any site without asking first (no CORS
        # preflight), and a browser names the page in ``Origin``: an upload from another site's
        # page (to a gateway in auth.mode: open on the operator's machine) would write memories
        # (or spend the organisation's tokens on a transcription) for it. No API client sends
        # ``Origin``; the gateway serves no pages of its own.
        raise PermissionDenied(
            "Uploads are not taken from a web page of another site (the request's Origin is not this "
            "gateway). Send the file from a program, without an Origin header."
        )
    if request.content_type != "multipart/form-data":
        raise UnsupportedMediaType(
            request.content_type,
            f"Content-Type must be multipart/form-data with a part named '{part}' "
            f"(got '{request.headers.get('Content-Type', 'none')}').",
        )
    refuse_compressed(request)


# A part's Content-Type passed on upstream: a MIME type's characters only (no header injection).
_MIME_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,64}")


async def read_upload_form(request: web.Request, limit_bytes: int, shape: FormShape) -> UploadForm:
    """The form of ``request`` (a transcription or translation, an image edit or variation: its
    ``shape``), held whole (at most ``limit_bytes`` of fields and files, ``server.max_audio_bytes``
    or ``server.max_image_bytes``): the client's error otherwise (415 not a form, 413 beyond the
    limit, 408 too slow, as ``memory.ingest``'s upload pace says, 400 a malformed form, no file
    of those ``shape`` requires, a file in a field it does not take, a field or file repeated
    whose name does not end in ``[]``). The files' types are the provider's to judge; their names
    and the fields are passed on as sent."""
    _refuse_cross_site_form(request, shape.required[0])
    if request.content_length is not None and request.content_length > limit_bytes + _FORM_OVERHEAD:
        raise _too_large(limit_bytes)  # refused before reading a byte of it
    await send_continue(request)
    policy = request.app[keys.POLICY]
    pace = _Pace(policy.memory.ingest, policy.server.request_read_timeout_s)
    try:
        reader = await request.multipart()
    except ValueError as exc:  # no boundary in the Content-Type
        raise _malformed(exc) from None
    fields: list[tuple[str, str]] = []
    names: set[str] = set()
    files: list[FormFile] = []
    first = shape.required[0]
    # The body's own bytes, framing and part headers included (only the values count toward
    # ``limit_bytes``): a body without a declared length is held to what a declared one may be.
    body_limit = limit_bytes + _FORM_OVERHEAD
    while (part := await _within(pace, reader.next())) is not None:
        if request.content.total_bytes > body_limit:
            raise _too_large(limit_bytes)
        if not isinstance(part, BodyPartReader):
            raise InvalidRequest("Every part of the form must be a named field.", param=first)
        name = _named(part)
        _refuse_encoded(part)
        if not name.endswith("[]") and name in names:
            raise InvalidRequest(f"The form field {quoted(name)} is sent twice.", param=name)
        if len(fields) + len(files) >= _UPLOAD_FORM_MAX_PARTS:
            raise InvalidRequest(
                f"The form has more than {_UPLOAD_FORM_MAX_PARTS} fields and files.", param=None
            )
        names.add(name)
        if part.filename is None:
            if name in shape.file_fields:
                raise InvalidRequest(
                    f"The {quoted(name)} part has no filename: send it as a file.", param=name
                )
            # (a field may be long: a diarization's known_speaker_references[] are audio data URLs
            # of up to 10 s; the whole form's bound holds them all)
            fields.append((name, await _field(part, pace, limit_bytes)))
        else:
            files.append(await _held_file(part, name, shape, pace, limit_bytes))
        if pace.received > limit_bytes:  # the fields and the files together
            raise _too_large(limit_bytes)
    if not any(file.name in shape.required for file in files):
        raise InvalidRequest(
            f"The form has no {quoted(first)} part: send {shape.what} as the field {quoted(first)}.",
            param=first,
        )
    return UploadForm(tuple(fields), tuple(files))


async def _held_file(
    part: BodyPartReader, name: str, shape: FormShape, pace: _Pace, limit_bytes: int
) -> FormFile:
    """A file part of an upload form, read whole (the fields before it count toward
    ``limit_bytes`` too)."""
    if name not in shape.file_fields:
        taken = ", ".join(sorted(shape.file_fields))
        raise InvalidRequest(f"A file in the field {quoted(name)}: files are taken in {taken}.", param=name)
    filename = (part.filename or "").encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if len(filename) > _FILENAME_MAX_CHARS or _unprintable(filename) is not None:
        raise InvalidRequest(
            f"The file's name must be at most {_FILENAME_MAX_CHARS} printable characters.", param=name
        )
    given = part.headers.get("Content-Type", "")
    kind = given if _MIME_TYPE.fullmatch(given) else "application/octet-stream"
    data = bytearray()
    while block := await _read(part, pace):
        data += block
        if pace.received > limit_bytes:
            raise _too_large(limit_bytes)
    return FormFile(name, filename, kind, bytes(data))
