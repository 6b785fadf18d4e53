"""A form upload (``multipart/form-data``) as the gateway holds it between attempts, and the
multipart body each attempt sends: transcriptions and translations (``wire/audio.py``), image
edits and variations (``wire/images.py``).

    FormFile              one file part: its field name, file name, type and bytes, whole
    UploadForm            the form's text fields in order (repeats kept) and its files in order
    FormShape             which field names carry files, and which one must be sent
    FormBody              the multipart body of one attempt, as pieces: the held files' own bytes
                          objects between the encoded heads (never joined: h-uploadcopy)
    form_body(form, ...)  the ``FormBody`` of the form for one provider, ``model`` rewritten

The form is read once (``http/upload.read_upload_form``, within ``server.max_audio_bytes`` or
``server.max_image_bytes``) and kept whole so that failover can send it again to the next
deployment. Fields other than ``model`` are passed through as the client sent them (the provider
judges them), so the request body the service sees holds only what the gateway reads and the
form under ``FORM``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

FORM = "form"  # the key of a request body under which its ``UploadForm`` is held


@dataclass(frozen=True, slots=True)
class FormFile:
    """One file part of a form: ``name`` is its field (``file``, ``image[]``, ``mask``)."""

    name: str
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class UploadForm:
    """The client's form: ``fields`` (name, value) in the order sent, ``model`` among them, and
    ``files`` in the order sent."""

    fields: tuple[tuple[str, str], ...]
    files: tuple[FormFile, ...]

    def field(self, name: str) -> str | None:
        """The first value of field ``name`` (None when not sent)."""
        return next((value for key, value in self.fields if key == name), None)

    @property
    def data(self) -> bytes:
        """The first file's bytes (a transcription's audio: its only file)."""
        return self.files[0].data if self.files else b""

    @property
    def file_bytes(self) -> int:
        """The bytes of every file together."""
        return sum(len(file.data) for file in self.files)


@dataclass(frozen=True, slots=True)
class FormShape:
    """What a form of one endpoint carries: the field names a file may come in (a name ending in
    ``[]`` may repeat, the others come once), and the file the form must have: one of
    ``required`` (named in the error as its first, ``what`` being what it holds)."""

    file_fields: frozenset[str]
    required: tuple[str, ...]
    what: str


@dataclass(frozen=True, slots=True)
class FormBody:
    """A multipart body as the pieces it is written in, in order: the encoded fields and each
    file's head joined, then the file's bytes (the very ``bytes`` object ``FormFile.data`` holds,
    not a copy), then the framing up to the next file's bytes, and the closing boundary. The
    transport writes the pieces one after another (``providers/transport``); joining them would
    copy every file once an attempt (h-uploadcopy: a 40 MiB edit through three attempts held
    three joined copies, and aiohttp joined the headers to each once more)."""

    parts: tuple[bytes, ...]
    content_type: str  # multipart/form-data with the body's boundary

    @property
    def size(self) -> int:
        """The body's length in bytes (its Content-Length)."""
        return sum(len(part) for part in self.parts)

    def __bytes__(self) -> bytes:
        """The whole body joined (a copy: for tests and logs, never on the request path)."""
        return b"".join(self.parts)


def form_body(form: UploadForm, model: str | None) -> FormBody:
    """The multipart body of ``form``, with ``model`` as the model field (None: without one, as
    Azure's deployment paths name it in the path). The boundary is random and not found in any
    file (checked: a coincidence would cut a file short upstream). Only the fields and part heads
    are encoded here; the files are the form's own bytes objects."""
    while True:
        boundary = "sophia-" + os.urandom(16).hex()
        mark = boundary.encode()
        if not any(file.data.find(mark) >= 0 for file in form.files) and not any(
            mark in value.encode() for _, value in form.fields
        ):
            break
    parts: list[bytes] = []  # the pieces between two files' bytes, joined below
    pieces: list[bytes] = []
    named = False
    for name, value in form.fields:
        if name == "model":
            if named or model is None:
                continue
            value, named = model, True
        parts.append(_head(mark, name) + b"\r\n\r\n" + value.encode() + b"\r\n")
    if model is not None and not named:
        parts.append(_head(mark, "model") + b"\r\n\r\n" + model.encode() + b"\r\n")
    for file in form.files:
        parts.append(
            _head(mark, file.name)
            + b'; filename="'
            + _quoted(file.filename).encode()
            + b'"\r\nContent-Type: '
            + file.content_type.encode("ascii", "replace")
            + b"\r\n\r\n"
        )
        pieces += (b"".join(parts), file.data)
        parts = [b"\r\n"]
    pieces.append(b"".join((*parts, b"--", mark, b"--\r\n")))
    return FormBody(tuple(pieces), f"multipart/form-data; boundary={boundary}")


def _head(mark: bytes, name: str) -> bytes:
    return b"--" + mark + b'\r\nContent-Disposition: form-data; name="' + _quoted(name).encode() + b'"'


def _quoted(text: str) -> str:
    """``text`` within a quoted header parameter (the WHATWG form encoding's escapes)."""
    return text.replace("\r", "%0D").replace("\n", "%0A").replace('"', "%22")
