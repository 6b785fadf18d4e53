"""(h-audioroom) Whose upload it is, for its share of the audio room, and the share itself."""

from __future__ import annotations

import pytest

from gateway.auth.identity import Caller
from gateway.errors import UploadsBusy, UploadShareFull
from gateway.service.audio_room import AudioRoom, share_of, uploader_of
from gateway.service.context import CallContext

MIB = 1024 * 1024


def _open(authorization: str | None) -> CallContext:
    headers = {} if authorization is None else {"authorization": authorization}
    return CallContext.for_client("r", 0.0, headers)


def test_the_uploader_is_the_team_else_the_key_else_the_credential_else_the_address() -> None:
    keyed = CallContext.for_client("r", 0.0, {}, Caller(key_id="k1", team="t"))
    # (h-uploadgate) a team's keys share one share; before, each key was its own uploader
    same_team = CallContext.for_client("r", 0.0, {}, Caller(key_id="k2", team="t"))
    assert uploader_of(keyed, lambda: "10.0.0.1") == uploader_of(same_team, lambda: "10.0.0.2") == "team:t"
    other_team = CallContext.for_client("r", 0.0, {}, Caller(key_id="k3", team="u"))
    assert uploader_of(other_team, lambda: "10.0.0.1") == "team:u"
    teamless = CallContext.for_client("r", 0.0, {}, Caller(key_id="k1", team=""))
    assert uploader_of(teamless, lambda: "10.0.0.1") == "key:k1"
    one, other = _open("Bearer a"), _open("Bearer b")
    assert uploader_of(one, lambda: "10.0.0.1") != uploader_of(other, lambda: "10.0.0.1")
    assert uploader_of(one, lambda: "10.0.0.1") == uploader_of(_open("Bearer a"), lambda: "10.0.0.2")
    assert uploader_of(_open(None), lambda: "10.0.0.1") == "address:10.0.0.1"
    assert uploader_of(_open(None), lambda: "10.0.0.1") != uploader_of(_open(None), lambda: "10.0.0.2")


def test_a_share_is_a_quarter_of_the_room_and_at_least_one_largest_form() -> None:
    assert share_of(256 * MIB, 25 * MIB) == 64 * MIB
    assert share_of(40 * MIB, 25 * MIB) == 25 * MIB
    room = AudioRoom()
    with room.hold(25 * MIB, 40 * MIB, "a", 25 * MIB):
        with pytest.raises(UploadShareFull):  # a's second form: past its share, the room not full
            room.hold(1, 40 * MIB, "a", 25 * MIB).__enter__()
        with room.hold(10 * MIB, 40 * MIB, "b", 25 * MIB):
            assert room.by == {"a": 25 * MIB, "b": 10 * MIB}
            with pytest.raises(UploadsBusy):  # c's first: the room is full
                room.hold(10 * MIB, 40 * MIB, "c", 25 * MIB).__enter__()
    assert room.held == 0 and room.by == {}
