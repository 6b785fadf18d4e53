"""The limits' admission gate: RPM, TPM (a reservation) and budget per key, before a call costs
anything; the call's ``LimitTicket`` settles the reservation and the spend when it ends.

Reservation (TPM; a transcription's: ``audio_reservation``): the prompt estimated at 4
characters a token (the text of ``messages`` and their tool calls' arguments, ``prompt`` or
``input``; a token-id array, a token an id), plus the output:
``max_completion_tokens`` or ``max_tokens`` when the request gives one, else
``DEFAULT_OUTPUT_TOKENS``, times ``n`` (an image always reserves ``DEFAULT_OUTPUT_TOKENS``: it
has no ``max_tokens``). When the call ends, the tokens the provider reported replace it.

Refusals (OpenAI's shapes): 429 ``rate_limit_exceeded`` (type ``requests`` / ``tokens``) with
``Retry-After``, the key's own window or its team's shared one (``Caller.team_rpm`` /
``team_tpm``, reasons ``team_requests`` / ``team_tokens``, the message says which); 429 ``insufficient_quota`` when the period's budget is spent, the key's own or
its team's shared one (``Caller.team_budget_usd``, the message says which). Every answer to a
limited key carries the ``x-ratelimit-*`` headers (``headers_for``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine, Mapping
from typing import Any, Protocol

from gateway.auth.identity import Caller
from gateway.auth.limits import (
    REFUSED_BUDGET,
    REFUSED_REQUESTS,
    REFUSED_TEAM_BUDGET,
    REFUSED_TEAM_REQUESTS,
    REFUSED_TEAM_TOKENS,
    REFUSED_TOKENS,
    Decision,
    Limiter,
    Window,
)
from gateway.errors import GatewayError, QuotaExceeded, RateLimited, RequestTooLarge
from gateway.observability.metrics import GatewayMetrics
from gateway.wire.audio import AUDIO_BYTES_PER_TOKEN
from gateway.wire.forms import FORM, UploadForm
from gateway.wire.images import input_images
from gateway.wire.media import IMAGE_TOKENS_MAX, media_tokens
from gateway.wire.requests import (
    CHARS_PER_TOKEN,
    FORM_ENDPOINTS,
    IMAGE_ENDPOINTS,
    IMAGE_UPLOAD_ENDPOINTS,
    UPLOAD_ENDPOINTS,
    Endpoint,
    JSONObject,
    prompt_chars,
)
from gateway.wire.usage import MOST_TOKENS

DEFAULT_OUTPUT_TOKENS = 256  # the output reserved when a request sets no max_tokens
# Bytes of a transcription form's declared length taken as its other fields and framing, not
# audio, when it is checked before it is read (``LimitGate.check_upload``): the SDK's form of
# model, response_format and a short prompt is well under 1 KiB; a longer prompt counts in the
# reservation made once it is read.
UPLOAD_FIELDS_ALLOWANCE = 64 * 1024
# The least a JSON request reserves (``reservation_parts``), all a request's TPM peek before its
# body can assume (``LimitGate.check_unread``, h-limits2): every prompt counts ``+ 1``, and a
# legacy completion's ``max_tokens: 0`` (``service/limits``: its minimum) or an embedding's input
# of up to 3 characters adds nothing to it. The declared ``Content-Length`` raises no JSON
# body's least: whitespace pads any body, and an image part's tokens are not its bytes'.
LEAST_RESERVATION = 1


class _Record(Protocol):
    rate_limits: Mapping[str, str] | None


class LimitedCall(Protocol):
    """What the gate needs of a call's context (the service's ``CallContext``)."""

    @property
    def request_id(self) -> str: ...

    @property
    def identity(self) -> Caller | None: ...

    @property
    def record(self) -> _Record: ...

    limit_ticket: LimitTicket | None
    charge_only: bool


class LimitGate:
    """Admits a keyed call against its key's limits (``Caller.rpm``, ``tpm``, ``budget_usd``) and
    its team's shared budget and rates (``team_budget_usd``, ``team_rpm``, ``team_tpm``).
    A caller without limits passes without a limiter call, its usage still counted when it
    ends (a ``UsageTicket``); every call in open mode passes untouched."""

    def __init__(self, limiter: Limiter, metrics: GatewayMetrics) -> None:
        self.limiter = limiter
        self._metrics = metrics
        self._pending: set[asyncio.Task[None]] = set()  # settlements started from sync code

    async def admit(self, endpoint: Endpoint, model: str, body: JSONObject, ctx: LimitedCall) -> None:
        caller = ctx.identity
        if caller is None:  # (open mode: nothing to count it under)
            return
        if not caller.limited:
            # Never refused, but counted (h-keyspend): its end adds to the key's usage row and
            # its team's spend, with no limiter call now. Named by the request id: only a TPM's
            # reservation is named by its ticket, and there is none.
            ctx.limit_ticket = UsageTicket(self, caller, ctx.request_id, 0)
            return
        if ctx.charge_only:  # charged when it ends, never refused (the service's ``OnBehalf``)
            ctx.limit_ticket = LimitTicket(self, caller, f"{ctx.request_id}:{os.urandom(4).hex()}", 0)
            return
        # The estimate also prices a call whose provider never says its usage (a stream the
        # client did not ask usage of, or left): a key with a budget alone settled such a stream
        # at 0 input tokens, whatever its prompt (a 400,000-character prompt cost nothing).
        # Without a TPM or a budget it is not needed now: the service makes it if such a call
        # ends without usage (h-estcost), as it does for every unkeyed call.
        estimate: int | None = None
        prompt: int | None = None
        tokens = 0
        if caller.token_limited or caller.budgeted:
            prompt, estimate = reservation_parts(endpoint, body)
            tokens = estimate if caller.token_limited else 0
        if caller.token_limited and (too_large := self._too_large(caller, tokens, endpoint)) is not None:
            # It would never fit, however long the client waits: say so, and no retry (OpenAI's
            # "Request too large ... on tokens per min" is also a 429).
            raise too_large
        ticket = f"{ctx.request_id}:{os.urandom(4).hex()}"
        decision = await self.limiter.admit(caller, ticket, tokens)
        headers = headers_for(decision)
        ctx.record.rate_limits = headers
        if decision.refused is None:
            ctx.limit_ticket = LimitTicket(self, caller, decision.ticket or ticket, tokens, estimate, prompt)
            return
        raise self._refusal(caller, decision, headers)

    def _too_large(self, caller: Caller, tokens: int, endpoint: Endpoint) -> RequestTooLarge | None:
        """The refusal (counted) of a request reserving more tokens than its key's whole TPM or its
        team's whole shared TPM; None when it fits both."""
        lower = _LOWER.get(endpoint, _LOWER_OUTPUT)
        error, reason = None, ""
        if caller.tpm is not None and tokens > caller.tpm:
            error, reason = RequestTooLarge(caller.tpm, tokens, lower), "tokens"
        elif caller.team_tpm is not None and tokens > caller.team_tpm:
            error = RequestTooLarge(caller.team_tpm, tokens, lower, team=caller.team)
            reason = REFUSED_TEAM_TOKENS
        if error is not None:
            m = self._metrics
            m.child(m.refusals, caller.team, reason).inc()
            self.later(self.limiter.refused(caller, reason))  # in the usage rows too
        return error

    def _refusal(self, caller: Caller, decision: Decision, headers: dict[str, str]) -> GatewayError:
        """The 429 of a refused ``decision``, counted (metrics, the usage rows' refusals)."""
        refused = decision.refused or ""
        m = self._metrics
        m.child(m.refusals, caller.team, refused).inc()
        self.later(self.limiter.refused(caller, refused))
        if refused == REFUSED_BUDGET:
            return QuotaExceeded(caller.budget_usd or 0.0, decision.budget_reset_s, headers)
        if refused == REFUSED_TEAM_BUDGET:
            return QuotaExceeded(
                caller.team_budget_usd or 0.0, decision.budget_reset_s, headers, team=caller.team
            )
        if refused in (REFUSED_TEAM_REQUESTS, REFUSED_TEAM_TOKENS):
            window = decision.team_requests if refused == REFUSED_TEAM_REQUESTS else decision.team_tokens
            limit = window.limit if window else (caller.team_rpm or caller.team_tpm or 0)
            return RateLimited(refused, limit, decision.retry_after_s, headers, team=caller.team)
        window = decision.requests if refused == "requests" else decision.tokens
        return RateLimited(refused, window.limit if window else 0, decision.retry_after_s, headers)

    async def check_upload(self, endpoint: Endpoint, declared_bytes: int | None, ctx: LimitedCall) -> None:
        """Refuse an upload (a transcription, translation, image edit or variation) before a byte
        of its form is read when its key's limits already
        refuse it (h-uploadgate): a spent budget, a full RPM window, a TPM window without room for
        the least the form can reserve, or (h-audioroom) a declared length that alone reserves
        more than the whole TPM. The same 429 ``admit`` gives once the form is read (envelope,
        code, ``Retry-After``, ``x-ratelimit-*``), counted as that refusal, with ``Connection:
        close`` so its body is not drained. It counts and reserves nothing (``Limiter.peek``):
        a form that passes is admitted by ``admit`` after it is read, exactly as before, its RPM
        counted there once and its reservation the form's own. The least a form reserves is its
        declared length as audio less ``UPLOAD_FIELDS_ALLOWANCE`` for its other fields and
        framing (a declared length counted whole as audio would refuse a file that exactly
        fits), one token without a declared length; an image form's, one input image, one
        output image and no prompt (its tokens are not its bytes')."""
        caller = ctx.identity
        if caller is None or not caller.limited or ctx.charge_only:
            return
        if endpoint in IMAGE_UPLOAD_ENDPOINTS:  # (an image's tokens do not grow with its bytes)
            least = 1 + DEFAULT_OUTPUT_TOKENS + IMAGE_TOKENS_MAX  # one image in, one out, no prompt
        else:
            least = audio_tokens((declared_bytes or 0) - UPLOAD_FIELDS_ALLOWANCE)
        too_large = self._too_large(caller, least, endpoint) if caller.token_limited else None
        if too_large is not None:
            too_large.headers["connection"] = "close"
            raise too_large
        await self._refuse_unread(caller, least if caller.token_limited else 0, ctx)

    async def check_unread(self, ctx: LimitedCall) -> None:
        """Refuse a front door's call (chat, embeddings, Messages, Responses, the memory API's
        POSTs...) whose ``100 Continue`` is withheld, before its body is asked for, when its
        key's limits already refuse it (h-expect): a spent budget, a full RPM window, a TPM
        window without room for ``LEAST_RESERVATION``, the least any JSON request reserves
        (h-limits2; before: only a window already over its limit). Its reservation is in its
        body, so a window with room for that least is left to ``admit``, which judges the
        request's own once the body is read: the peek never refuses a request that could fit.
        Only a request sent with ``Expect: 100-continue`` comes here."""
        caller = ctx.identity
        if caller is None or not caller.limited or ctx.charge_only:
            return
        await self._refuse_unread(caller, LEAST_RESERVATION if caller.token_limited else 0, ctx)

    async def _refuse_unread(self, caller: Caller, tokens: int, ctx: LimitedCall) -> None:
        """``admit``'s 429 (counted) when a peek for ``tokens`` is refused, with ``Connection:
        close`` (the body is not drained); nothing when it passes."""
        decision = await self.limiter.peek(caller, tokens)
        if decision.refused is None:
            return
        headers = headers_for(decision)
        ctx.record.rate_limits = headers
        error = self._refusal(caller, decision, headers)
        error.headers["connection"] = "close"
        raise error

    def later(self, settlement: Coroutine[Any, Any, None]) -> None:
        """Run a limiter coroutine without waiting for it (from a stream's synchronous end)."""
        task = asyncio.ensure_future(settlement)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """Wait for settlements still running and written (at shutdown, and in tests)."""
        while self._pending:
            await asyncio.gather(*tuple(self._pending), return_exceptions=True)
        await self.limiter.flush()


class LimitTicket:
    """One admitted call's reservation: settled once, when the call ends."""

    __slots__ = ("_caller", "_gate", "_settled", "estimate", "estimate_prompt", "reserved", "ticket")

    def __init__(
        self,
        gate: LimitGate,
        caller: Caller,
        ticket: str,
        reserved: int,
        estimate: int | None = None,
        estimate_prompt: int | None = None,
    ) -> None:
        self._gate = gate
        self._caller = caller
        self.ticket = ticket
        self.reserved = reserved  # TPM tokens reserved (0 without a TPM)
        # Prompt and output tokens the call may use (``reservation``): what is charged when the
        # provider never says what it used. None: not made at admission (a key without a TPM
        # or a budget, a charge-only call); the service makes it if it is needed.
        self.estimate = estimate
        # Of the estimate, the prompt's tokens: what picks a long-context price tier (h-tierprice)
        self.estimate_prompt = estimate_prompt
        self._settled = False

    async def settle(self, tokens_in: int, tokens_out: int, cost_usd: float) -> None:
        """The call ended having used these tokens and cost (0, 0, 0: nothing reached a provider)."""
        if self._settled:
            return
        self._settled = True
        self._spent(cost_usd)
        await self._gate.limiter.settle(
            self._caller, self.ticket, self.reserved, tokens_in, tokens_out, cost_usd
        )

    def settle_later(self, tokens_in: int, tokens_out: int, cost_usd: float) -> None:
        """``settle`` without waiting: the limiter counts it now (in process) or on its next write
        (Redis); the answer is not held back by a round trip."""
        if self._settled:
            return
        self._settled = True
        self._spent(cost_usd)
        self._gate.limiter.settle_soon(
            self._caller, self.ticket, self.reserved, tokens_in, tokens_out, cost_usd
        )

    def _spent(self, cost_usd: float) -> None:
        if cost_usd:
            m = self._gate._metrics
            m.child(m.spend, self._caller.team).inc(cost_usd)


class UsageTicket(LimitTicket):
    """The ticket of a call whose key has no limits (h-keyspend): nothing reserved, nothing to
    settle in a window or a budget; its end counts in the key's usage row (``Limiter.record_soon``)
    and its team's spend, and costs no more than that (one call, measured: ARCHITECTURE.md)."""

    __slots__ = ()

    async def settle(self, tokens_in: int, tokens_out: int, cost_usd: float) -> None:
        self.settle_later(tokens_in, tokens_out, cost_usd)
        await self._gate.limiter.flush()

    def settle_later(self, tokens_in: int, tokens_out: int, cost_usd: float) -> None:
        if self._settled:
            return
        self._settled = True
        gate = self._gate
        if cost_usd:
            m = gate._metrics
            m.child(m.spend, self._caller.team).inc(cost_usd)
        gate.limiter.record_soon(self._caller, tokens_in, tokens_out, cost_usd)


# Endpoints whose text is ``prompt`` (the others' is ``input``), and those reserved for their input
# only: an embedding, a moderation verdict and speech produce no text tokens (speech is priced by
# its input's characters). An image (``n`` of them) reserves DEFAULT_OUTPUT_TOKENS each; the GPT
# image models report their real usage, which settles it.
_PROMPTED = frozenset((Endpoint.COMPLETIONS, *IMAGE_ENDPOINTS))
_INPUT_ONLY = frozenset((Endpoint.EMBEDDINGS, Endpoint.MODERATIONS, Endpoint.SPEECH))
# What a request larger than its key's whole TPM should lower, by what its reservation counts.
_LOWER_OUTPUT = "Lower max_tokens (or the prompt)"
_LOWER = {
    **dict.fromkeys(IMAGE_ENDPOINTS, "Lower n (or the prompt, or the images sent)"),
    **dict.fromkeys(_INPUT_ONLY, "Shorten the input"),
    # (reserved by the file's bytes: ``audio_reservation``)
    **dict.fromkeys(UPLOAD_ENDPOINTS, "Send a shorter audio file (or a shorter prompt)"),
}


def reservation(endpoint: Endpoint, body: JSONObject) -> int:
    """Tokens to reserve for ``body``: prompt characters / 4 (and its images and PDFs) plus the
    output it may produce."""
    return reservation_parts(endpoint, body)[1]


def reservation_parts(endpoint: Endpoint, body: JSONObject) -> tuple[int, int]:
    """(the prompt's estimated tokens, all ``reservation`` reserves for ``body``)."""
    media = ids = 0
    if endpoint in FORM_ENDPOINTS and isinstance(form := body.get(FORM), UploadForm):
        if endpoint in UPLOAD_ENDPOINTS:  # a transcription or translation: the audio's length unknown
            tokens = audio_reservation(form)
            return tokens, tokens
        # An edit's or variation's input images, each as a full-size chat image (their pixels are
        # not read); the GPT image models report their real input tokens, which settle it.
        media = input_images(form) * IMAGE_TOKENS_MAX
    if endpoint is Endpoint.CHAT:
        messages = body.get("messages")
        chars = prompt_chars(messages)
        media = media_tokens(messages)  # images and PDFs, as Anthropic documents their cost
    elif endpoint is Endpoint.MODERATIONS:  # strings, or input objects whose text counts too
        chars = prompt_chars(body.get("input"))
    else:
        given = body.get("prompt" if endpoint in _PROMPTED else "input")
        chars = 0
        for item in given if isinstance(given, list) else (given,):
            if isinstance(item, str):
                chars += len(item)
            elif isinstance(item, list):  # a token-id array (embeddings, legacy completions)
                ids += len(item)
            elif isinstance(item, int):  # ``given`` is one token-id array itself
                ids += 1
    prompt = chars // CHARS_PER_TOKEN + ids + media + 1
    if endpoint in _INPUT_ONLY:
        return prompt, prompt
    # An image has no max_tokens: one in its body (unchecked, passed on) must not shrink, or
    # turn negative, what it reserves and what a DALL-E call is charged at.
    output = (
        None if endpoint in IMAGE_ENDPOINTS else body.get("max_completion_tokens") or body.get("max_tokens")
    )
    if not isinstance(output, int) or isinstance(output, bool):
        output = DEFAULT_OUTPUT_TOKENS
    elif output > MOST_TOKENS:  # what a count may be (``token_count``): 2**62 priced $4.6e12
        output = MOST_TOKENS
    n = body.get("n")
    return prompt, prompt + output * (n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1)


def audio_reservation(form: UploadForm) -> int:
    """Tokens to reserve for a transcription or translation of ``form``: its file's bytes as audio
    tokens (``AUDIO_BYTES_PER_TOKEN``: one per 100 ms of a 128 kbit/s MP3), a third of that for
    the transcript (speech is ~3 text tokens a second against 10 audio tokens), and the prompt's
    characters / 4. The audio's length is not read from the file (that would mean parsing every
    container format): bytes are the bound the gateway has, and grow with the audio's length."""
    prompt = len(form.field("prompt") or "") // CHARS_PER_TOKEN
    return audio_tokens(len(form.data)) + prompt


def audio_tokens(file_bytes: int) -> int:
    """``audio_reservation`` of a file of ``file_bytes`` without a prompt (the early check of a
    declared length, ``LimitGate.check_upload``, uses it too)."""
    audio = max(0, file_bytes) // AUDIO_BYTES_PER_TOKEN
    return audio + audio // 3 + 1


def headers_for(decision: Decision) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers for the limits a key has (reset as ``6m0s``, ``1s``):
    for each unit the tighter of the key's window and its team's shared one (fewer remaining; the
    key's on a tie), all three headers of the one window, so a client pacing itself by them
    waits for the window that will refuse it. On a refusal by a window, that unit's headers are
    the refusing window's (its reset is the ``Retry-After``), whichever has fewer remaining."""
    refused = decision.refused
    headers: dict[str, str] = {}
    _add(headers, "requests", _tighter(decision.requests, decision.team_requests, refused, REFUSED_REQUESTS))
    _add(headers, "tokens", _tighter(decision.tokens, decision.team_tokens, refused, REFUSED_TOKENS))
    return headers


def _tighter(key: Window | None, team: Window | None, refused: str | None, keys_reason: str) -> Window | None:
    if team is None:
        return key
    if refused is not None and key is not None:  # the refusing window's, when one of these refused
        if refused == keys_reason:
            return key
        if refused == _TEAMS_REASON[keys_reason]:
            return team
    if key is not None and key.remaining <= team.remaining:
        return key
    return team


_TEAMS_REASON = {REFUSED_REQUESTS: REFUSED_TEAM_REQUESTS, REFUSED_TOKENS: REFUSED_TEAM_TOKENS}


def _add(headers: dict[str, str], unit: str, window: Window | None) -> None:
    if window is None:
        return
    headers[f"x-ratelimit-limit-{unit}"] = str(window.limit)
    headers[f"x-ratelimit-remaining-{unit}"] = str(window.remaining)
    headers[f"x-ratelimit-reset-{unit}"] = duration(window.reset_s)


def duration(seconds: float) -> str:
    """A duration as OpenAI writes it (Go's format): ``20ms``, ``1s``, ``59.5s``, ``6m0s``, ``1h0m0s``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs = f"{ms / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
