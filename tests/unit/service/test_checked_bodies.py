"""``CheckedBodies``: a chat body found valid is not checked again, and the memo never changes
what a check says (a refused body is refused every time, new limits check again)."""

from __future__ import annotations

import orjson
import pytest

from gateway.errors import InvalidRequest
from gateway.policy.model import Limits
from gateway.service.validation import CheckedBodies, check_request
from gateway.wire.requests import Endpoint, JSONObject

MESSAGES = [{"role": "user", "content": "hi"}]


def check(memo: CheckedBodies, body: JSONObject, limits: Limits) -> tuple[str, bool]:
    return memo.check(body, orjson.dumps(body), limits)


def test_a_body_found_valid_gives_what_the_checks_give_and_is_kept() -> None:
    memo, limits = CheckedBodies(), Limits()
    body: JSONObject = {"model": "m", "temperature": 0, "messages": MESSAGES, "stream": True}
    assert check(memo, body, limits) == check_request(Endpoint.CHAT, body) == ("m", True)
    assert len(memo) == 1
    assert check(memo, dict(body), limits) == ("m", True)  # an equal body: found
    assert len(memo) == 1


def test_new_limits_check_a_body_again() -> None:
    memo = CheckedBodies()
    body: JSONObject = {"model": "m", "max_tokens": 500, "messages": MESSAGES}
    assert check(memo, body, Limits(max_tokens=1000)) == ("m", False)
    with pytest.raises(InvalidRequest, match="max_tokens"):  # a reload lowered the bound
        check(memo, body, Limits(max_tokens=100))
    assert len(memo) == 0


@pytest.mark.parametrize(
    ("valid", "refused"),
    [
        ({"n": 1}, {"n": True}),  # true is not 1 to the checks, nor in the JSON
        ({"temperature": 1}, {"temperature": 3}),
        ({"seed": 7}, {"seed": 7.5}),
        ({"stream": False}, {"stream": "false"}),
    ],
)
def test_a_refused_body_is_refused_every_time_after_a_like_one_passed(
    valid: JSONObject, refused: JSONObject
) -> None:
    memo, limits = CheckedBodies(), Limits()
    check(memo, {"model": "m", "messages": MESSAGES, **valid}, limits)
    for _ in range(2):
        with pytest.raises(InvalidRequest):
            check(memo, {"model": "m", "messages": MESSAGES, **refused}, limits)
    assert len(memo) == 1  # only the valid one is kept


def test_the_memo_is_bounded_by_bytes() -> None:
    memo, limits = CheckedBodies(max_bytes=64 * 1024), Limits()
    for i in range(200):
        check(memo, {"model": "m", "messages": [{"role": "user", "content": f"q{i}" * 50}]}, limits)
    assert memo._bytes <= memo.max_bytes
    assert 0 < len(memo) < 200
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * 2000}]}  # above a 64th
    before = len(memo)
    assert check(memo, big, limits) == ("m", False)
    assert len(memo) == before
