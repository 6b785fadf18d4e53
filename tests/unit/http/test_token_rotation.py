"""Rotating the operator tokens: ``SOPHIA_ADMIN_TOKEN_PREVIOUS`` and ``SOPHIA_METRICS_TOKEN_PREVIOUS``
(the token each replaced) are accepted beside the current ones, over real HTTP to an in-process
gateway on loopback.

Before, changing a token had no overlap: every client still sending the old one (the CLI,
Prometheus, automation; another replica rolled out later) was refused until it was updated. A
call let in with a previous token is served, counted in
``gateway_previous_token_used_total{token}`` (created at 0, so the operator sees when nothing
sends it any more), answered with ``x-gateway-token-deprecated: true`` and marked in the access log.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from gateway import cli
from gateway.app import build_app
from gateway.errors import StartupError
from gateway.http.auth import CURRENT, PREVIOUS, matched_token
from gateway.policy.loader import parse_policy
from gateway.server import MIN_ADMIN_TOKEN_CHARS, check_open
from gateway.settings import Settings, SettingsError

POLICY = """
version: 1
providers:
  a: {kind: openai, base_url: "http://a.test/v1"}
models:
  m: {deployments: [{provider: a, model: ma}]}
memory: {enabled: false}
cache: {enabled: false}
auth: {mode: open}
"""
ADMIN_NEW = "admin-token-new-0123456789"
ADMIN_OLD = "admin-token-old-0123456789"
METRICS_NEW = "metrics-token-new-0123456789"
METRICS_OLD = "metrics-token-old-0123456789"
DEPRECATED = "x-gateway-token-deprecated"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def previous_used(exposition: str, token: str) -> float:
    found = re.search(rf'^gateway_previous_token_used_total\{{token="{token}"\}} (\S+)$', exposition, re.M)
    assert found is not None, exposition
    return float(found.group(1))


@asynccontextmanager
async def rotating_gateway() -> AsyncIterator[aiohttp.ClientSession]:
    """A gateway in the middle of a rotation of both tokens (from ``Settings.from_env``, as serve
    reads them), with its access log on (written out when it stops)."""
    settings = Settings.from_env(
        {
            "SOPHIA_ADMIN_TOKEN": ADMIN_NEW,
            "SOPHIA_ADMIN_TOKEN_PREVIOUS": ADMIN_OLD,
            "SOPHIA_METRICS_TOKEN": METRICS_NEW,
            "SOPHIA_METRICS_TOKEN_PREVIOUS": METRICS_OLD,
            "SOPHIA_POLICY_WATCH": "0",
        }
    )
    app = build_app(settings, parse_policy(POLICY), {})
    async with (
        TestServer(app, host="127.0.0.1") as server,
        aiohttp.ClientSession(str(server.make_url(""))) as s,
    ):
        yield s


@pytest.fixture
async def rotating() -> AsyncIterator[aiohttp.ClientSession]:
    async with rotating_gateway() as session:
        yield session


async def test_admin_accepts_the_previous_token_and_says_it_is_deprecated(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")  # the access log is on only then
    async with rotating_gateway() as rotating:
        missing_status = await _admin_calls(rotating)
    lines = [orjson.loads(line) for line in capfd.readouterr().err.splitlines() if '"gateway.access"' in line]
    marked = [(line["path"], line["status"]) for line in lines if line.get("previous_token") == "admin"]
    assert marked == [("/admin/models", 200), ("/admin/rollouts/nope", missing_status)], lines
    assert not any(ADMIN_OLD in orjson.dumps(line).decode() for line in lines)


async def _admin_calls(rotating: aiohttp.ClientSession) -> int:
    current = await rotating.get("/admin/models", headers=bearer(ADMIN_NEW))
    assert current.status == 200 and DEPRECATED not in current.headers
    previous = await rotating.get("/admin/models", headers=bearer(ADMIN_OLD))
    assert previous.status == 200, await previous.text()
    assert previous.headers[DEPRECATED] == "true"
    # An error answer after the token was let in says so too (the client learns it either way).
    missing = await rotating.post("/admin/rollouts/nope", headers=bearer(ADMIN_OLD))
    assert missing.status in (400, 404) and missing.headers[DEPRECATED] == "true"
    for refused in (None, "Bearer wrong-token-0123456789", f"Bearer {ADMIN_OLD}x", f"Bearer {METRICS_OLD}"):
        resp = await rotating.get("/admin/models", headers={"Authorization": refused} if refused else {})
        assert resp.status == 401 and DEPRECATED not in resp.headers, refused
        text = await resp.text()
        assert "token-old" not in text and "token-new" not in text
    exposition = await (await rotating.get("/metrics", headers=bearer(METRICS_NEW))).text()
    assert previous_used(exposition, "admin") == 2.0
    assert previous_used(exposition, "metrics") == 0.0  # created at 0: nothing sent the old one
    return missing.status


async def test_metrics_accepts_the_previous_token_and_counts_it(rotating: aiohttp.ClientSession) -> None:
    current = await rotating.get("/metrics", headers=bearer(METRICS_NEW))
    assert current.status == 200 and DEPRECATED not in current.headers
    assert previous_used(await current.text(), "metrics") == 0.0
    previous = await rotating.get("/metrics", headers=bearer(METRICS_OLD))
    assert previous.status == 200 and previous.headers[DEPRECATED] == "true"
    # The scrape that used it is counted before its exposition is rendered.
    assert previous_used(await previous.text(), "metrics") == 1.0
    for refused in (None, "Bearer wrong-token-0123456789", f"Bearer {ADMIN_OLD}", f"Bearer {ADMIN_NEW}"):
        resp = await rotating.get("/metrics", headers={"Authorization": refused} if refused else {})
        assert resp.status == 401 and DEPRECATED not in resp.headers, refused
    exposition = await (await rotating.get("/metrics", headers=bearer(METRICS_NEW))).text()
    assert previous_used(exposition, "metrics") == 1.0 and previous_used(exposition, "admin") == 0.0


async def test_without_a_previous_token_the_old_one_is_refused_and_nothing_is_counted() -> None:
    settings = Settings(access_log=False, admin_token=ADMIN_NEW, metrics_token=METRICS_NEW)
    async with (
        TestServer(build_app(settings, parse_policy(POLICY), {}), host="127.0.0.1") as server,
        aiohttp.ClientSession(str(server.make_url(""))) as s,
    ):
        assert (await s.get("/admin/models", headers=bearer(ADMIN_OLD))).status == 401
        assert (await s.get("/metrics", headers=bearer(METRICS_OLD))).status == 401
        scraped = await s.get("/metrics", headers=bearer(METRICS_NEW))
        assert scraped.status == 200 and DEPRECATED not in scraped.headers
        exposition = await scraped.text()
        assert previous_used(exposition, "admin") == 0.0 and previous_used(exposition, "metrics") == 0.0


@pytest.mark.parametrize("name", ["SOPHIA_ADMIN_TOKEN", "SOPHIA_METRICS_TOKEN"])
def test_a_previous_token_without_the_current_one_stops_serve(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old = "the-old-token-0123456789"
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({f"{name}_PREVIOUS": old})
    assert str(raised.value).startswith(f"{name}_PREVIOUS is set but {name} is not")
    monkeypatch.setenv(f"{name}_PREVIOUS", old)
    monkeypatch.delenv(name, raising=False)
    assert cli.main(["serve", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sophia-gateway: cannot start: {name}_PREVIOUS is set but {name} is not")
    assert old not in err and err.count("\n") == 1


def test_previous_tokens_follow_the_tokens_rules_and_are_never_shown() -> None:
    env = {"SOPHIA_ADMIN_TOKEN": ADMIN_NEW, "SOPHIA_METRICS_TOKEN": METRICS_NEW}
    settings = Settings.from_env(
        {**env, "SOPHIA_ADMIN_TOKEN_PREVIOUS": ADMIN_OLD, "SOPHIA_METRICS_TOKEN_PREVIOUS": ""}
    )
    assert (settings.admin_token_previous, settings.metrics_token_previous) == (ADMIN_OLD, None)
    assert "token-old" not in repr(settings)
    for name in ("SOPHIA_ADMIN_TOKEN_PREVIOUS", "SOPHIA_METRICS_TOKEN_PREVIOUS"):
        with pytest.raises(SettingsError) as raised:
            Settings.from_env({**env, name: "old-token-with-a-newline\n"})
        assert str(raised.value).startswith(f"{name} has a line break at character 25"), raised.value
        assert "old-token" not in str(raised.value)


@pytest.mark.parametrize("which", ["admin", "metrics"])
def test_a_short_previous_token_does_not_start_beyond_loopback(which: str) -> None:
    policy = parse_policy(POLICY.replace("auth: {mode: open}\n", ""))
    long_enough = "x" * MIN_ADMIN_TOKEN_CHARS
    short = {f"{which}_token_previous": "old"}
    with pytest.raises(StartupError, match=f"SOPHIA_{which.upper()}_TOKEN_PREVIOUS is 3 characters long"):
        check_open(policy, "0.0.0.0", False, long_enough, long_enough, **short)
    check_open(policy, "127.0.0.1", False, long_enough, long_enough, **short)  # on loopback, any


def test_the_current_token_wins_when_both_match_and_nothing_else_matches() -> None:
    assert matched_token(ADMIN_NEW, ADMIN_NEW, ADMIN_OLD) == CURRENT
    assert matched_token(ADMIN_OLD, ADMIN_NEW, ADMIN_OLD) == PREVIOUS
    assert matched_token(ADMIN_NEW, ADMIN_NEW, ADMIN_NEW) == CURRENT  # the same token twice: not counted
    for given in ("", ADMIN_OLD, ADMIN_OLD[:-1], ADMIN_NEW + "x", "\udcff"):
        assert matched_token(given, ADMIN_NEW, None if given == ADMIN_OLD else ADMIN_OLD + "y") is None
