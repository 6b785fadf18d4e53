"""Failed authentication is throttled per client address (``auth/throttle.py``), over real HTTP to
an in-process gateway on loopback, with the official openai and anthropic SDKs as clients.

The clients connect from distinct loopback addresses (127.0.0.2, .3, ...: Linux answers every
address of 127/8), so the gateway sees distinct peers; the gateway counts loopback here
(``auth_throttle_exempt`` "none": loopback and the private ranges are exempt by default). Time is the throttle's clock, moved by hand.
Before the throttle, every wrong credential was another 401, and a right one after them a 200.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import anthropic
import httpx2
import openai
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Application

from gateway import keys
from gateway.app import build_app
from gateway.auth.identity import Caller
from gateway.auth.throttle import FailedAuthThrottle
from gateway.policy.loader import parse_policy
from gateway.providers.base import UpstreamRequest
from gateway.settings import Settings
from gateway.testing.mock_transport import MockResponse, MockTransport

TOKEN = "admin-token-for-throttle-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 3
WINDOW_S = 60.0
POLICY = """
version: 1
providers:
  a: {{kind: openai, base_url: "http://a.test/v1"}}
models:
  m: {{deployments: [{{provider: a, model: ma}}]}}
memory: {{enabled: false}}
cache: {{enabled: false}}
auth:
  store: {store}
  teams: {{ops: {{}}}}
"""
WRONG = "sk-sg-" + "W" * 51  # well formed, issued by nobody
CHAT = [{"role": "user", "content": "hi"}]


class Clock:
    def __init__(self) -> None:
        self.now = 5_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class CountingLookup:
    """The real key ring, with every lookup of a secret counted."""

    ring: keys.KeyLookup
    asked: list[str] = field(default_factory=list)

    async def authenticate(self, secret: str) -> Caller | None:
        self.asked.append(secret)
        return await self.ring.authenticate(secret)


@dataclass
class Gateway:
    url: str
    app: Application
    clock: Clock
    lookup: CountingLookup
    secret: str  # a virtual key of team ops


def answer(request: UpstreamRequest) -> MockResponse:
    return MockResponse.json(
        {
            "id": "c",
            "object": "chat.completion",
            "model": orjson.loads(request.body)["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )


@asynccontextmanager
async def serving(
    tmp_path: Path,
    *,
    access_log: bool = False,
    trusted_proxies: str = "",
    exempt_default: bool = False,
    metrics_token: str | None = None,
) -> AsyncIterator[Gateway]:
    """``exempt_default``: the throttle exempts loopback and the private ranges, as by default
    (else it counts every address: the tests' clients are all on loopback)."""
    settings = Settings(
        access_log=access_log,
        admin_token=TOKEN,
        metrics_token=metrics_token,
        policy_watch=False,
        auth_throttle_failures=LIMIT,
        auth_throttle_window_s=WINDOW_S,
        auth_throttle_exempt="none",  # the tests' clients are all on loopback
        trusted_proxies=trusted_proxies,
    )
    policy = parse_policy(POLICY.format(store=tmp_path / "keys.sqlite3"))
    app = build_app(settings, policy, {}, transports={"a": MockTransport(answer)})
    built = app[keys.AUTH_THROTTLE]
    assert (built.limit, built.window_s, built.exempt("127.0.0.2")) == (LIMIT, WINDOW_S, False)
    clock = Clock()
    app[keys.AUTH_THROTTLE] = FailedAuthThrottle(
        LIMIT, WINDOW_S, exempt=None if exempt_default else (), clock=clock
    )
    lookup = app[keys.KEYRING] = CountingLookup(app[keys.KEYRING])
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        resp = await client.post("/admin/keys", json={"team": "ops"}, headers=ADMIN)
        assert resp.status == 201, await resp.text()
        secret = (await resp.json())["secret"]
        yield Gateway(str(client.make_url("")), app, clock, lookup, secret)


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with serving(tmp_path) as gw:
        yield gw


def source(address: str) -> httpx2.AsyncClient:
    """An HTTP client whose connections come from ``address``."""
    return httpx2.AsyncClient(
        transport=httpx2.AsyncHTTPTransport(local_address=address, verify=False)
    )  # plain HTTP: no CA bundle to load


@asynccontextmanager
async def openai_from(gw: Gateway, address: str, key: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        api_key=key, base_url=gw.url + "/v1", max_retries=0, timeout=10, http_client=source(address)
    ) as client:
        yield client


@asynccontextmanager
async def anthropic_from(gw: Gateway, address: str, key: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        api_key=key, base_url=gw.url, max_retries=0, timeout=10, http_client=source(address)
    ) as client:
        yield client


def throttled_count(gw: Gateway, door: str) -> float:
    metrics = gw.app[keys.METRICS]
    return metrics.auth_throttled.labels(door).value


async def chat(client: openai.AsyncOpenAI) -> str | None:
    done = await client.chat.completions.create(model="m", messages=CHAT)  # type: ignore[arg-type]
    return done.choices[0].message.content


async def test_an_address_that_fails_too_often_is_refused_on_the_openai_door_before_any_lookup(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    gw = gateway
    async with openai_from(gw, "127.0.0.2", WRONG) as guesser:
        for _ in range(LIMIT):
            with pytest.raises(openai.AuthenticationError):
                await chat(guesser)
        assert len(gw.lookup.asked) == LIMIT
        with pytest.raises(openai.RateLimitError) as refused:
            await chat(guesser)
    error = refused.value
    assert error.code == "auth_throttled" and error.type == "rate_limit_error", error.body
    assert error.response.headers["retry-after"] == "60"
    assert error.response.headers["x-should-retry"] == "false"  # the SDK must not sleep it away
    assert WRONG[6:] not in error.response.text
    # The right key from the throttled address: refused too (else the refusal would tell a
    # guesser which guess was right), without the key ring being asked.
    async with openai_from(gw, "127.0.0.2", gw.secret) as same_address:
        with pytest.raises(openai.RateLimitError):
            await chat(same_address)
        # The models list, another route behind the same key check.
        with pytest.raises(openai.RateLimitError):
            await same_address.models.list()
    assert len(gw.lookup.asked) == LIMIT
    # Another address with the right key is served meanwhile.
    async with openai_from(gw, "127.0.0.3", gw.secret) as other:
        assert await chat(other) == "hi"
    assert throttled_count(gw, "api") == 3 and throttled_count(gw, "admin") == 0
    throttled = [r for r in caplog.records if r.getMessage().startswith("client address throttled")]
    assert len(throttled) == 1 and throttled[0].fields["client"] == "127.0.0.2"  # type: ignore[attr-defined]
    # The window passes: the address is served again.
    gw.clock.now += WINDOW_S
    async with openai_from(gw, "127.0.0.2", gw.secret) as same_address:
        assert await chat(same_address) == "hi"


async def test_the_messages_door_refuses_a_throttled_address_in_anthropics_envelope(gateway: Gateway) -> None:
    gw = gateway
    async with anthropic_from(gw, "127.0.0.4", WRONG) as guesser:
        for _ in range(LIMIT):
            with pytest.raises(anthropic.AuthenticationError):
                await guesser.messages.create(model="m", max_tokens=8, messages=CHAT)  # type: ignore[arg-type]
    async with anthropic_from(gw, "127.0.0.4", gw.secret) as same_address:
        with pytest.raises(anthropic.RateLimitError) as refused:
            await same_address.messages.create(model="m", max_tokens=8, messages=CHAT)  # type: ignore[arg-type]
    assert refused.value.body == {
        "type": "error",
        "error": {
            "type": "rate_limit_error",
            "message": "Too many failed authentication attempts from this address. Try again in 60 s.",
        },
        "request_id": refused.value.request_id,  # Anthropic's "Error shapes": the header's value
    }
    assert refused.value.response.headers["retry-after"] == "60"
    assert refused.value.response.headers["request-id"]  # the SDK's request_id, as on every answer
    async with anthropic_from(gw, "127.0.0.5", gw.secret) as other:
        done = await other.messages.create(model="m", max_tokens=8, messages=CHAT)  # type: ignore[arg-type]
        assert done.content[0].text == "hi"  # type: ignore[union-attr]
    # A wrong key on either door counts against the same address: the OpenAI door refuses it too.
    async with openai_from(gw, "127.0.0.4", gw.secret) as same_address:
        with pytest.raises(openai.RateLimitError):
            await chat(same_address)


async def test_wrong_admin_tokens_throttle_the_admin_api_in_its_format(gateway: Gateway) -> None:
    gw = gateway

    async def admin(address: str, token: str) -> tuple[int, dict[str, str], dict[str, object]]:
        connector = aiohttp.TCPConnector(local_addr=(address, 0))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(gw.url + "/admin/keys", headers={"Authorization": f"Bearer {token}"}) as resp,
        ):
            return resp.status, dict(resp.headers), await resp.json()

    for _ in range(LIMIT):
        assert (await admin("127.0.0.6", "not-the-token"))[0] == 401
    status, headers, body = await admin("127.0.0.6", TOKEN)  # the right token: refused as well
    assert status == 429 and headers["Retry-After"] == "60", body
    assert body == {
        "error": {
            "message": "Too many failed authentication attempts from this address. Try again in 60 s.",
            "type": "rate_limit_error",
            "param": None,
            "code": "auth_throttled",
        }
    }
    assert (await admin("127.0.0.7", TOKEN))[0] == 200
    assert throttled_count(gw, "admin") == 1
    gw.clock.now += WINDOW_S
    assert (await admin("127.0.0.6", TOKEN))[0] == 200


METRICS_TOKEN = "metrics-token-for-throttle-tests"


async def test_metrics_needs_its_token_when_set_and_wrong_ones_are_throttled(tmp_path: Path) -> None:
    """SOPHIA_METRICS_TOKEN set: GET /metrics without it is a plain-text 401 with a Bearer
    challenge (what a scraper and curl show), the right token gets the exposition, and wrong ones
    count against the address like wrong admin tokens (door ``metrics``). Before, /metrics
    answered 200 to anyone."""

    async def scrape(address: str, authorization: str | None) -> tuple[int, dict[str, str], str]:
        connector = aiohttp.TCPConnector(local_addr=(address, 0))
        headers = {"Authorization": authorization} if authorization is not None else {}
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(gw.url + "/metrics", headers=headers) as resp,
        ):
            return resp.status, dict(resp.headers), await resp.text()

    async with serving(tmp_path, metrics_token=METRICS_TOKEN) as gw:
        status, headers, text = await scrape("127.0.0.9", None)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer"), text
        assert headers["Content-Type"].startswith("text/plain")
        assert text == "401 Unauthorized: /metrics needs 'Authorization: Bearer <SOPHIA_METRICS_TOKEN>'.\n"
        status, _, text = await scrape("127.0.0.10", f"bearer {METRICS_TOKEN}")
        assert status == 200 and "gateway_requests_total" in text
        for wrong in ("Bearer not-the-token", f"Bearer {TOKEN}", f"Bearer {METRICS_TOKEN}x"):
            status, _, text = await scrape("127.0.0.11", wrong)  # the admin token opens no /metrics
            assert status == 401 and "is not this gateway's SOPHIA_METRICS_TOKEN" in text, wrong
            assert "token-for" not in text
        # Three wrong tokens from .11 reached the limit (no token was .9's one failure).
        status, headers, text = await scrape("127.0.0.11", f"Bearer {METRICS_TOKEN}")
        assert (
            status == 429
            and headers["Retry-After"] == "60"
            and headers["Content-Type"].startswith("text/plain")
        )
        assert text == "Too many failed authentication attempts from this address. Try again in 60 s.\n"
        assert throttled_count(gw, "metrics") == 1 and throttled_count(gw, "admin") == 0
        # The failures are the address's: its admin calls are refused too; another address scrapes.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.11", 0))) as s:
            assert (await s.get(gw.url + "/admin/keys", headers=ADMIN)).status == 429
        status, _, text = await scrape("127.0.0.10", f"Bearer {METRICS_TOKEN}")
        assert status == 200
        # The refusals are in the metrics the dashboard reads.
        assert 'gateway_requests_total{endpoint="/metrics"' in text
        assert re.search(r'gateway_requests_total\{endpoint="/metrics"[^}]*status_code="401"\} 4\.0', text), (
            text
        )
        assert 'gateway_auth_throttled_total{door="metrics"} 1.0' in text
        gw.clock.now += WINDOW_S
        assert (await scrape("127.0.0.11", f"Bearer {METRICS_TOKEN}"))[0] == 200


async def test_a_throttled_request_is_marked_in_the_access_log(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")  # the access log is on only then
    async with serving(tmp_path, access_log=True) as gw, openai_from(gw, "127.0.0.8", WRONG) as guesser:
        for _ in range(LIMIT + 1):
            with pytest.raises(openai.APIStatusError):
                await chat(guesser)
    lines = [orjson.loads(line) for line in capfd.readouterr().err.splitlines() if '"gateway.access"' in line]
    chats = [line for line in lines if line["path"] == "/v1/chat/completions"]
    assert [(line["status"], line.get("auth_throttled")) for line in chats] == [
        (401, None),
        (401, None),
        (401, None),
        (429, True),
    ]


async def test_loopback_clients_are_exempt_by_default(tmp_path: Path) -> None:
    """The default (``SOPHIA_AUTH_THROTTLE_EXEMPT`` unset): a same-host proxy's clients all
    arrive from loopback, and a stranger's failures must not lock them all out."""
    settings = Settings.from_env({"SOPHIA_AUTH_THROTTLE_FAILURES": "2"})
    assert settings.auth_throttle_window_s == 60.0
    policy = parse_policy(POLICY.format(store=tmp_path / "keys.sqlite3"))
    app = build_app(settings, policy, {}, transports={"a": MockTransport(answer)})
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        for _ in range(5):
            resp = await client.get("/v1/models", headers={"Authorization": f"Bearer {WRONG}"})
            assert resp.status == 401
    assert app[keys.AUTH_THROTTLE].failures == {}


def test_the_defaults_are_on_at_20_failures_a_minute() -> None:
    settings = Settings.from_env({})
    assert (settings.auth_throttle_failures, settings.auth_throttle_window_s) == (20, 60.0)
    assert Settings.from_env({"SOPHIA_AUTH_THROTTLE_EXEMPT": "none"}).auth_throttle_exempt == "none"
    with pytest.raises(ValueError, match=re.escape("SOPHIA_AUTH_THROTTLE_EXEMPT: '10.0.0.0/33' is not")):
        Settings.from_env({"SOPHIA_AUTH_THROTTLE_EXEMPT": "192.0.2.0/24, 10.0.0.0/33"})
    assert Settings.from_env({"SOPHIA_AUTH_THROTTLE_FAILURES": "0"}).auth_throttle_failures == 0  # off
    for name, value in (("SOPHIA_AUTH_THROTTLE_FAILURES", "-1"), ("SOPHIA_AUTH_THROTTLE_WINDOW_S", "0")):
        with pytest.raises(ValueError, match=name):
            Settings.from_env({name: value})


async def send(
    gw: Gateway, address: str, key: str, forwarded_for: list[str] | None = None, path: str = "/v1/models"
) -> int:
    """The status of ``GET path`` with ``key``, connecting from ``address`` with these
    ``X-Forwarded-For`` headers (several: sent as several headers, in order)."""
    headers = [("Authorization", f"Bearer {key}")]
    headers += [("X-Forwarded-For", value) for value in forwarded_for or ()]
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(gw.url + path, headers=headers) as resp,
    ):
        await resp.read()
        return resp.status


PROXY, INNER_PROXY, STRANGER = "127.0.0.9", "127.0.0.11", "127.0.0.12"  # the last one not trusted


@pytest.fixture
async def proxied(tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway behind two trusted proxies, exempting loopback and the private ranges as by default."""
    async with serving(tmp_path, trusted_proxies=f"{PROXY}, {INNER_PROXY}", exempt_default=True) as gw:
        yield gw


async def test_behind_a_trusted_proxy_the_client_it_names_is_throttled(
    proxied: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    """The proxy's own (loopback) address is exempt; the public client in its X-Forwarded-For
    is not, and is refused alone: the point of SOPHIA_TRUSTED_PROXIES."""
    gw = proxied
    for _ in range(LIMIT):
        assert await send(gw, PROXY, WRONG, ["203.0.113.7"]) == 401
    assert await send(gw, PROXY, gw.secret, ["203.0.113.7"]) == 429  # the right key: refused too
    assert await send(gw, PROXY, gw.secret, ["203.0.113.8"]) == 200  # another client of the proxy
    assert await send(gw, PROXY, gw.secret) == 200  # the proxy itself (no header)
    # The client named through a chain of trusted proxies, and behind what it wrote itself.
    assert await send(gw, INNER_PROXY, gw.secret, ["198.51.100.1, 203.0.113.7, 127.0.0.9"]) == 429
    assert await send(gw, PROXY, gw.secret, ["203.0.113.7", "127.0.0.11"]) == 429  # two headers
    assert await send(gw, PROXY, gw.secret, ["1.1.1.1, 203.0.113.7:4711"]) == 429  # with a port
    throttled = [r for r in caplog.records if r.getMessage().startswith("client address throttled")]
    assert [(r.fields["client"], r.fields["peer"]) for r in throttled] == [("203.0.113.7", PROXY)]  # type: ignore[attr-defined]


async def test_what_is_counted_behind_trusted_proxies(proxied: Gateway) -> None:
    gw = proxied
    cases = [
        (STRANGER, ["203.0.113.1"]),  # an untrusted peer's header: spoofed, ignored (the peer counts)
        (PROXY, ["203.0.113.2, 10.1.2.3"]),  # a private client of the proxy: exempt
        (PROXY, ["garbage"]),  # not an address: the proxy (exempt)
        (PROXY, ["203.0.113.3, unknown"]),  # the rightmost is garbage: the proxy, not what is left of it
        (PROXY, ["203.0.113.4, 127.0.0.11, 127.0.0.9"]),  # trusted hops skipped
        (PROXY, ["203.0.113.5", "127.0.0.11"]),  # several headers, in order
        (PROXY, [", ".join(["203.0.113.6"] * 500 + ["127.0.0.11"])]),  # hundreds of entries
        (PROXY, ["203.0.113.99, " + ", ".join(["127.0.0.11"] * 500)]),  # hundreds of trusted: capped
        (INNER_PROXY, ["[2001:db8:1::5]:443"]),
    ]
    for address, forwarded_for in cases:
        assert await send(gw, address, WRONG, forwarded_for) == 401
    # (The stranger is on loopback, exempt here; none of the header's addresses was counted.)
    assert set(gw.app[keys.AUTH_THROTTLE].failures) == {
        "203.0.113.4",
        "203.0.113.5",
        "203.0.113.6",
        "20010db800010000/64",
    }


async def test_a_spoofed_x_forwarded_for_from_an_untrusted_peer_is_ignored(tmp_path: Path) -> None:
    """A guesser writing a new address into each request's header is still one address."""
    async with serving(tmp_path, trusted_proxies=PROXY) as gw:  # every address counted
        for i in range(LIMIT):
            assert await send(gw, STRANGER, WRONG, [f"203.0.113.{i + 1}"]) == 401
        assert await send(gw, STRANGER, gw.secret, ["203.0.113.200"]) == 429
        assert set(gw.app[keys.AUTH_THROTTLE].failures) == {STRANGER}


async def test_the_access_log_shows_the_client_address(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")  # the access log is on only then
    async with serving(tmp_path, access_log=True, trusted_proxies=PROXY) as gw:
        assert await send(gw, PROXY, gw.secret, ["203.0.113.7"]) == 200
        assert await send(gw, STRANGER, gw.secret, ["203.0.113.7"]) == 200
        assert await send(gw, PROXY, WRONG, ["garbage"]) == 401
        assert await send(gw, PROXY, gw.secret, ["1.1.1.1, 2001:db8::7"], "/health/live") == 200
    lines = [orjson.loads(line) for line in capfd.readouterr().err.splitlines() if '"gateway.access"' in line]
    assert [(line["path"], line["status"], line["client"]) for line in lines[1:]] == [
        ("/v1/models", 200, "203.0.113.7"),
        ("/v1/models", 200, STRANGER),
        ("/v1/models", 401, PROXY),
        ("/health/live", 200, "2001:db8::7"),
    ]
    assert lines[0]["client"] == "127.0.0.1"  # the fixture's key creation, no proxy


def test_trusted_proxies_default_to_none_and_are_checked_at_start() -> None:
    assert Settings.from_env({}).trusted_proxies == ""
    assert Settings.from_env({"SOPHIA_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1"}).trusted_proxies
    with pytest.raises(ValueError, match=re.escape("SOPHIA_TRUSTED_PROXIES: 'ingress' is not")):
        Settings.from_env({"SOPHIA_TRUSTED_PROXIES": "10.0.0.0/8, ingress"})


@pytest.fixture(autouse=True)
def _gateway_warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.http")
