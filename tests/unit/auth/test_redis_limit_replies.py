"""The limits link's reply readers: strict about their script's reply shape (``InvalidResponse``,
which ``Outage.call`` counts as a failed call), so a server that speaks RESP but is not the Redis
the scripts run on fails open once instead of ending and reopening outages. The replies Redis
gives are covered end to end by tests/integration/auth/test_limits_redis.py."""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import InvalidResponse

from gateway.auth.redis_limits import _admission, _peeked, _settled, _team_admitted

ADMITTED = [b"", 1, 59_000, 10, 59_000, 0, 0, 1, 10, 0, 0, 0, 0, 0, 0]


def test_the_admission_scripts_reply_is_read() -> None:
    assert _admission(ADMITTED) == ("", 1, 59_000, 10, 59_000, 0, 0, 1, 10, 0, 0, 0, 0, 0, 0)
    assert _admission([b"tokens", *ADMITTED[1:]])[0] == "tokens"
    assert _admission([b"team_requests", *ADMITTED[1:]])[0] == "team_requests"  # (h-teamrate)
    assert _admission([b"team_tokens", *ADMITTED[1:]])[0] == "team_tokens"


@pytest.mark.parametrize(
    "reply",
    [
        [],
        [1, 2, [5]],  # the nested array a fake Redis answered
        [b"zz"] * 15,
        ADMITTED[:10],  # the reply before the team's budget was added to it
        ADMITTED[:11],  # the reply before the team's windows were added to it
        [b"", b"1", *ADMITTED[2:]],  # a count as a bulk string
        [b"", [1], *ADMITTED[2:]],
        [b"", True, *ADMITTED[2:]],
        [b"maybe", *ADMITTED[1:]],  # no reason the script gives
        [*ADMITTED, 1],
        1,
        b"OK",
        None,
    ],
)
def test_an_admission_reply_of_another_shape_is_invalid(reply: Any) -> None:
    with pytest.raises(InvalidResponse):
        _admission(reply)


PEEKED = [b"requests", 2, 45_000, 0, 0, 45_000, 0, 0, 0, 0, 0]


@pytest.mark.parametrize(
    "reply", [[], ADMITTED, [b"", b"1", *PEEKED[2:]], [b"maybe", *PEEKED[1:]], [*PEEKED, 1], None]
)
def test_a_peek_reply_is_read_and_one_of_another_shape_is_invalid(reply: Any) -> None:
    """(h-uploadgate)"""
    assert _peeked(PEEKED) == ("requests", 2, 45_000, 0, 0, 45_000, 0, 0, 0, 0, 0)
    with pytest.raises(InvalidResponse):
        _peeked(reply)


TEAM_ADMITTED = [b"team_requests", 3, 40_000, 0, 0, 40_000, b"0.25"]


@pytest.mark.parametrize(
    "reply",
    [
        [],
        ADMITTED,
        [b"requests", *TEAM_ADMITTED[1:]],
        [*TEAM_ADMITTED[:6], b"lots"],
        [*TEAM_ADMITTED, 1],
        None,
    ],
)
def test_a_team_admission_reply_is_read_and_one_of_another_shape_is_invalid(reply: Any) -> None:
    """(h-teamrate) a Cluster's check of a team's shared windows."""
    assert _team_admitted(TEAM_ADMITTED) == ("team_requests", 3, 40_000, 0, 0, 40_000, 0.25)
    with pytest.raises(InvalidResponse):
        _team_admitted(reply)


def test_the_settle_writes_replies_are_read() -> None:
    _settled([1, 1], 2)
    _settled([1, 1, True, 0, False], 1)  # one script, two index rows (SADD, EXPIRE each)
    _settled([], 0)


@pytest.mark.parametrize(
    ("replies", "scripts"),
    [
        ([[1, 2, [5]]], 1),  # the nested array, read as a success before
        ([b"zz"], 1),
        ([True], 1),  # EXPIRE's reply in a script's place
        ([], 1),  # fewer replies than commands
        ([1, 1], 1),  # half an index row
        ([1, [1], True], 1),  # SADD answered with an array
        ([1, 1, 1], 1),  # EXPIRE answered with an integer redis-py did not read as a bool
    ],
)
def test_a_settle_reply_of_another_shape_is_invalid(replies: list[Any], scripts: int) -> None:
    with pytest.raises(InvalidResponse):
        _settled(replies, scripts)
