"""An image edit or variation request (``POST /v1/images/edits`` and ``/v1/images/variations``,
multipart/form-data) as the gateway holds it: the form (``wire/forms.py``) and the request body
the service routes.

    EDIT_FORM, VARIATION_FORM   their shapes: which fields carry files, which one must be sent
    image_body(form)            the body the service routes: model, prompt, n, size, quality,
                                stream (what the gateway reads or prices), the form under ``FORM``
    images_usage(usage, count)  an images answer's usage as the accounting reads it (whole
                                answers and streams alike)

The official SDK sends one image as ``image`` and several as ``image[]`` (its
``extract_files(..., array_format="brackets")``), a mask as ``mask`` and GPT Image 2.5's
``markup`` as ``markup``; a variation's one image as ``image``. Form values are text: ``n`` is
read as an integer when it is one (else left as sent, so the head's check names it), ``stream``
as a boolean when it is ``true`` / ``false``.
"""

from __future__ import annotations

from gateway.wire.forms import FORM, FormShape, UploadForm
from gateway.wire.requests import JSONObject

EDIT_FORM = FormShape(frozenset(("image", "image[]", "mask", "markup")), ("image", "image[]"), "the image")
VARIATION_FORM = FormShape(frozenset(("image",)), ("image",), "the image")
# The files of an edit that are its input images (a mask and a markup are not pictures to edit).
INPUT_IMAGE_FIELDS = frozenset(("image", "image[]"))
# OpenAI's documented bounds on an edit's input images (the SDK's ``image_edit_params``): the GPT
# image models take up to 16 png, webp or jpg files under 50 MB each; dall-e-2 one square png
# under 4 MB. The default of ``server.max_image_bytes`` holds one image at the largest with its
# mask and fields; more is the operator's choice (every form is held whole in memory).
OPENAI_MAX_IMAGE_FILE_BYTES = 50 * 1000 * 1000
DEFAULT_MAX_IMAGE_BYTES = 64 * 1024 * 1024
_READ = ("prompt", "size", "quality")  # read as the client sent them (text)
# An images answer's usage carries the number of images it returned under this key (the
# accounting's, never a provider's: ``images_usage`` builds the dict).
IMAGES_RETURNED = "images"


def image_body(form: UploadForm) -> JSONObject:
    """The request body the service routes for an image edit or variation ``form``: what the
    gateway reads (the model group, the prompt for the reservation, ``n``, ``size`` and
    ``quality`` for a per-image price, ``stream``: its answer relayed as events), and the form
    under ``FORM``."""
    body: JSONObject = {FORM: form}
    model = form.field("model")
    if model is not None:  # (none: validation's "Missing required parameter", not an empty model)
        body["model"] = model
    for name in _READ:
        value = form.field(name)
        if value is not None:
            body[name] = value
    n = form.field("n")
    if n is not None:
        body["n"] = int(n) if n.isascii() and n.isdigit() and len(n) <= 6 else n
    stream = form.field("stream")
    if stream is not None:
        body["stream"] = stream.lower() == "true" if stream.lower() in ("true", "false") else stream
    return body


def input_images(form: UploadForm) -> int:
    """How many images an edit or variation ``form`` gives the model (its mask not counted)."""
    return sum(1 for file in form.files if file.name in INPUT_IMAGE_FIELDS)


def images_usage(usage: object, count: int | None) -> object:
    """An images answer's ``usage`` as the accounting reads it: the GPT image models report
    ``input_tokens`` / ``output_tokens`` (mapped to ``prompt_tokens`` / ``completion_tokens``,
    priced per token as chat's), the DALL·E models none; with ``count``, the images it returned
    (``IMAGES_RETURNED``, what ``per_image`` prices; None: not known)."""
    if isinstance(usage, dict):
        if "prompt_tokens" in usage:
            usage = dict(usage)  # (a copy: the count of images below is the gateway's alone)
        else:
            usage = {
                "prompt_tokens": usage.get("input_tokens"),
                "completion_tokens": usage.get("output_tokens"),
            }
    if count is None:
        return usage
    if isinstance(usage, dict):
        usage[IMAGES_RETURNED] = count
        return usage
    return {IMAGES_RETURNED: count}
