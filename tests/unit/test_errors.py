"""The error tree: its docstring matches the classes, and every class answers the router's
three questions (retryable, counts against the provider, context too long)."""

from __future__ import annotations

import inspect
import re

import orjson
import pytest

from gateway import errors
from gateway.errors import (
    AllDeploymentsFailed,
    Attempt,
    AuthenticationFailed,
    AuthThrottled,
    Conflict,
    ContextTooLong,
    DeploymentNotFound,
    GatewayError,
    HTTPStatusError,
    InsufficientStorage,
    InternalError,
    InvalidRequest,
    KeyStoreUnavailable,
    LimitsUnavailable,
    MessageThreadsUnsupported,
    MethodNotAllowed,
    ModelNotFound,
    NoHealthyDeployment,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ProviderFileNotAllowed,
    ProviderNotConfigured,
    QuotaExceeded,
    RateLimited,
    RequestTimeout,
    RequestTooLarge,
    ServiceUnavailable,
    StreamInterrupted,
    UnsupportedByProvider,
    UnsupportedContentEncoding,
    UnsupportedMediaType,
    UnsupportedTransferCoding,
    UploadsBusy,
    UploadShareFull,
    UpstreamAccountRefused,
    UpstreamBadEvent,
    UpstreamBadResponse,
    UpstreamConnectError,
    UpstreamCredentialsRefused,
    UpstreamError,
    UpstreamModelMissing,
    UpstreamStatusError,
    UpstreamTimeout,
    UsageUnavailable,
)

# One instance of every class of the tree.
SAMPLES: dict[type[GatewayError], GatewayError] = {
    e.__class__: e
    for e in [
        GatewayError("x"),
        InvalidRequest("x"),
        ContextTooLong("m", 2000, 1000),
        MessageThreadsUnsupported(),
        ProviderFileNotAllowed("messages[0].content[1].file.file_id", "research"),
        UnsupportedByProvider("anthropic", "embeddings"),
        AuthenticationFailed("x"),
        PermissionDenied("x"),
        NotFound("x"),
        ModelNotFound("m", ["a"]),
        DeploymentNotFound("d", ["a"]),
        MethodNotAllowed("x"),
        Conflict("x"),
        RequestTimeout(1.5),
        PayloadTooLarge(10),
        InsufficientStorage("x"),
        UnsupportedTransferCoding("gzip, chunked"),
        UnsupportedMediaType("text/plain"),
        UnsupportedContentEncoding("gzip"),
        RateLimited("tokens", 100, 1.5, {}),
        RequestTooLarge(100, 500),
        QuotaExceeded(5.0, 60.0, {}),
        AuthThrottled(12.5),
        LimitsUnavailable(),
        UsageUnavailable(),
        UploadsBusy(1024),
        UploadShareFull(512),
        ServiceUnavailable("x"),
        ProviderNotConfigured("m", ["KEY"]),
        NoHealthyDeployment("m", 1.0),
        KeyStoreUnavailable(),
        UpstreamError("x", provider="p"),
        UpstreamConnectError("x"),
        UpstreamTimeout("x"),
        UpstreamBadResponse("x"),
        UpstreamBadEvent("x"),
        UpstreamCredentialsRefused("p", 401, "invalid_api_key"),
        UpstreamAccountRefused("p", 402),
        UpstreamModelMissing("p", 404, "model_not_found"),
        UpstreamStatusError(500, "x"),
        StreamInterrupted("timeout", "p", UpstreamTimeout("p: provider timed out (http://10.0.0.7:8000)")),
        AllDeploymentsFailed("m", [Attempt("p", "m1", UpstreamTimeout("slow"))]),
        HTTPStatusError(415, "x"),
        InternalError("x"),
    ]
}


def test_envelope_shape() -> None:
    err = ModelNotFound("gpt-9", ["b", "a"])
    body = orjson.loads(err.body())
    assert body == {
        "error": {
            "message": "The model 'gpt-9' does not exist on this gateway. Available models: a, b.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    assert err.http_status == 404


def test_upstream_status_mapping() -> None:
    assert UpstreamStatusError(400, "bad").http_status == 400
    assert UpstreamStatusError(429, "slow", retry_after_s=2.2).headers == {"retry-after": "3"}
    assert UpstreamStatusError(500, "x").http_status == 502
    assert UpstreamStatusError(503, "x").http_status == 503
    assert UpstreamStatusError(529, "x").http_status == 503
    assert UpstreamTimeout("x").http_status == 504
    assert UpstreamStatusError(400, "x", upstream_type="invalid_request_error").envelope()["error"][
        "type"
    ] == ("invalid_request_error")
    assert (
        UpstreamStatusError(500, "x", upstream_type="api_error").envelope()["error"]["type"]
        == "upstream_error"
    )


def test_all_failed_reports_every_attempt_and_last_status() -> None:
    err = AllDeploymentsFailed(
        "m",
        [Attempt("a", "m1", UpstreamConnectError("refused")), Attempt("b", "m2", UpstreamTimeout("slow"))],
    )
    assert err.http_status == 504
    assert "a/m1: refused" in err.message and "b/m2: slow" in err.message
    assert orjson.loads(err.body())["error"]["type"] == "timeout"


CONTEXT = "This model's maximum context length is 1000 tokens"


@pytest.mark.parametrize(
    ("error", "retryable", "counts", "context"),
    [
        (GatewayError("x"), False, False, False),
        (InvalidRequest("x"), False, False, False),
        (ContextTooLong("m", 2000, 1000), False, False, True),  # ours, before any attempt
        (UnsupportedByProvider("anthropic", "embeddings"), True, False, False),
        (AuthenticationFailed("x"), False, False, False),
        (NotFound("x"), False, False, False),
        (ModelNotFound("m", []), False, False, False),
        (MethodNotAllowed("x"), False, False, False),
        (Conflict("x"), False, False, False),
        (RequestTimeout(1.5), False, False, False),
        (PayloadTooLarge(10), False, False, False),
        (InsufficientStorage("x"), False, False, False),
        (UnsupportedMediaType("text/plain"), False, False, False),
        (UnsupportedContentEncoding("gzip"), False, False, False),
        (RateLimited("requests", 10, 1.0, {}), False, False, False),
        (RequestTooLarge(100, 500), False, False, False),
        (QuotaExceeded(5.0, 60.0, {}), False, False, False),
        (AuthThrottled(12.5), False, False, False),
        (LimitsUnavailable(), False, False, False),
        (UsageUnavailable(), False, False, False),
        (UploadsBusy(1024), False, False, False),
        (UploadShareFull(512), False, False, False),
        (ServiceUnavailable("x"), False, False, False),
        (ProviderNotConfigured("m", ["KEY"]), False, False, False),
        (NoHealthyDeployment("m", 1.0), False, False, False),
        (KeyStoreUnavailable(), False, False, False),
        (UpstreamError("x"), False, True, False),
        (UpstreamConnectError("x"), True, True, False),
        (UpstreamTimeout("x"), True, True, False),
        (UpstreamBadResponse("x"), True, True, False),
        (UpstreamBadEvent("x"), True, True, False),
        (UpstreamCredentialsRefused("p", 403), True, True, False),
        (UpstreamAccountRefused("p", 402, "FAILED_PRECONDITION"), True, True, False),
        (UpstreamModelMissing("p", 404, "DeploymentNotFound"), True, True, False),
        (UpstreamStatusError(400, "bad"), False, False, False),
        (UpstreamStatusError(400, CONTEXT), False, False, True),
        (UpstreamStatusError(400, "too long", code="context_length_exceeded"), False, False, True),
        (UpstreamStatusError(413, "exceeds the context window"), False, False, True),
        (UpstreamStatusError(422, CONTEXT), False, False, False),
        (UpstreamStatusError(401, "bad key"), False, False, False),
        (UpstreamStatusError(404, "no such model"), False, False, False),
        (UpstreamStatusError(408, "slow"), True, True, False),
        (UpstreamStatusError(409, "conflict"), False, False, False),
        (UpstreamStatusError(429, "slow down"), True, False, False),
        (UpstreamStatusError(500, "oops"), True, True, False),
        (UpstreamStatusError(503, "busy"), True, True, False),
        (UpstreamStatusError(529, "overloaded"), True, True, False),
        (StreamInterrupted("upstream_closed", "p", UpstreamConnectError("x")), False, True, False),
        (
            AllDeploymentsFailed("m", [Attempt("p", "m1", UpstreamStatusError(503, "busy"))]),
            False,
            False,
            False,
        ),
        (HTTPStatusError(415, "x"), False, False, False),
        (InternalError("x"), False, False, False),
    ],
    ids=lambda v: v if isinstance(v, bool) else None,
)
def test_what_each_error_tells_the_router(
    error: GatewayError, retryable: bool, counts: bool, context: bool
) -> None:
    assert error.retryable is retryable
    assert error.counts_against_provider is counts
    assert error.is_context_length is context


def _tree_classes() -> set[type[GatewayError]]:
    return {
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, GatewayError) and value.__module__ == errors.__name__
    }


def test_every_class_has_a_sample() -> None:
    assert set(SAMPLES) == _tree_classes()


def test_the_routers_questions_are_properties_everywhere() -> None:
    # A plain class attribute (``retryable = True``) would shadow the property on one branch only.
    for cls in _tree_classes():
        for name in ("http_status", "retryable", "counts_against_provider", "is_context_length"):
            assert isinstance(inspect.getattr_static(cls, name), property), (cls.__name__, name)


# "    │   ├── Name   status  type  retry  notes": the box-drawing prefix gives the depth.
_ROW = re.compile(
    r"^    (?P<rails>(?:[│ ]   )*)(?P<branch>[├└]── )?(?P<name>[A-Z]\w+)\s+"
    r"(?P<status>\d{3}|\*)\s+(?P<type>[a-z_]+|\*)\s+(?P<retry>yes|no|\*)(?:\s|$)"
)


def _docstring_rows() -> list[tuple[int, str, str, str, str]]:
    assert errors.__doc__ is not None
    rows = []
    for line in errors.__doc__.splitlines():
        m = _ROW.match(line)
        if m:
            depth = len(m["rails"]) // 4 + (1 if m["branch"] else 0)
            rows.append((depth, m["name"], m["status"], m["type"], m["retry"]))
    return rows


def _overrides(cls: type[GatewayError], name: str) -> bool:
    """Whether ``cls`` or a base below ``GatewayError`` defines ``name`` itself."""
    return any(name in vars(k) for k in cls.__mro__[: cls.__mro__.index(GatewayError)])


def test_docstring_tree_matches_the_classes() -> None:
    rows = _docstring_rows()
    listed = [name for _, name, *_ in rows]
    assert len(listed) == len(set(listed)), "a class is listed twice"
    assert set(listed) == {cls.__name__ for cls in _tree_classes()}
    parents: list[type[GatewayError]] = []  # the path from the root to the previous row
    for depth, name, status, error_type, retry in rows:
        cls = getattr(errors, name)
        assert depth <= len(parents), f"{name}: indented below no parent"
        del parents[depth:]
        if depth == 0:
            assert cls is GatewayError, f"{name}: only GatewayError is a root"
        else:
            assert cls.__bases__ == (parents[-1],), f"{name}: listed under {parents[-1].__name__}"
        parents.append(cls)

        sample = SAMPLES[cls]
        if status == "*":
            assert _overrides(cls, "http_status"), f"{name}: status '*' but the class fixes it"
        else:
            assert cls.status == int(status) and sample.http_status == int(status), name
            assert not _overrides(cls, "http_status"), f"{name}: status varies per instance: '*'"
        if error_type == "*":
            assert _overrides(cls, "envelope"), f"{name}: type '*' but the class fixes it"
        else:
            assert cls.error_type == error_type, name
            assert sample.envelope()["error"]["type"] == error_type, name
        if retry == "*":
            assert _overrides(cls, "retryable"), f"{name}: retry '*' but the class fixes it"
        else:
            assert sample.retryable is (retry == "yes"), name


def test_limit_refusals_have_openais_shapes() -> None:
    # OpenAI: 429 type "requests" / "tokens", code rate_limit_exceeded, Retry-After; a spent budget
    # is insufficient_quota (type and code), which no retry can fix.
    tokens = RateLimited("tokens", 100, 1.2, {"x-ratelimit-limit-tokens": "100"})
    assert tokens.http_status == 429
    assert orjson.loads(tokens.body())["error"]["type"] == "tokens"
    assert tokens.code == "rate_limit_exceeded"
    assert tokens.headers == {"x-ratelimit-limit-tokens": "100", "retry-after": "2"}
    quota = QuotaExceeded(5.0, 60.0, {})
    assert orjson.loads(quota.body())["error"] == {
        "message": quota.message,
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
    assert quota.headers["x-should-retry"] == "false"


def test_quoted_bounds_a_name_and_says_how_long_it_was() -> None:
    assert errors.quoted("chat") == "'chat'"
    assert errors.quoted("a" * 256) == "'" + "a" * 256 + "'"
    long = errors.quoted("a" * 10_000)
    assert long == "'" + "a" * 256 + "…' (10000 chars)"
    # Every error that names a model bounds it: a 100,000-character name is a short message.
    for error in (
        ModelNotFound("m" * 100_000, ["chat"]),
        DeploymentNotFound("m" * 100_000, ["chat"]),
        NoHealthyDeployment("m" * 100_000, 1.0),
        ProviderNotConfigured("m" * 100_000, ["KEY"]),
        ContextTooLong("m" * 100_000, 10, 5),
    ):
        body = error.body()
        assert len(body) < 1000 and b"(100000 chars)" in body, body[:200]
    many = ModelNotFound("x", [f"group-{i}" for i in range(20_000)]).message
    assert len(many) < 2000 and many.endswith("and 19950 more.")


def test_a_stream_interrupted_says_a_fixed_text_and_keeps_the_cause_for_the_log() -> None:
    cause = UpstreamTimeout("p: provider timed out (nothing read from http://10.0.0.7:8000/v1)")
    error = StreamInterrupted("timeout", "vllm-a", cause)
    assert error.envelope()["error"] == {
        "message": "vllm-a: the provider stopped sending the answer (timed out) before it was complete.",
        "type": "timeout",
        "param": None,
        "code": "timeout",
    }
    assert error.http_status == 504 and error.detail == cause.message
    overloaded = StreamInterrupted(
        "provider_error", "claude", UpstreamStatusError(529, "claude: Overloaded", upstream_type="x")
    )
    assert overloaded.http_status == 503 and overloaded.shows_overload  # Anthropic's overloaded_error
    assert overloaded.envelope()["error"]["type"] == "upstream_error"  # not the provider's word
