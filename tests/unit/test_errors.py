from __future__ import annotations

import orjson

from gateway.errors import (
    AllDeploymentsFailed,
    Attempt,
    ModelNotFound,
    UpstreamConnectError,
    UpstreamStatusError,
    UpstreamTimeout,
    is_retryable,
)


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


def test_upstream_status_mapping_and_retryability() -> None:
    assert UpstreamStatusError(400, "bad").http_status == 400 and not is_retryable(
        UpstreamStatusError(400, "x")
    )
    assert UpstreamStatusError(429, "slow", retry_after_s=2.2).headers == {"retry-after": "3"}
    assert is_retryable(UpstreamStatusError(429, "x")) and is_retryable(UpstreamStatusError(408, "x"))
    assert UpstreamStatusError(500, "x").http_status == 502 and is_retryable(UpstreamStatusError(500, "x"))
    assert UpstreamStatusError(503, "x").http_status == 503
    assert is_retryable(UpstreamConnectError("x")) and UpstreamTimeout("x").http_status == 504


def test_all_failed_reports_every_attempt_and_last_status() -> None:
    err = AllDeploymentsFailed(
        "m",
        [Attempt("a", "m1", UpstreamConnectError("refused")), Attempt("b", "m2", UpstreamTimeout("slow"))],
    )
    assert err.http_status == 504
    assert "a/m1: refused" in err.message and "b/m2: slow" in err.message
    assert orjson.loads(err.body())["error"]["type"] == "timeout"
