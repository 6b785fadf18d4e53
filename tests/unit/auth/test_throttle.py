"""The failed-authentication table (``auth/throttle.py``): its window, what an address is counted
under, and its bound. The whole path over real HTTP: ``tests/unit/http/test_auth_throttle.py``."""

from __future__ import annotations

from gateway.auth.throttle import FailedAuthThrottle
from gateway.settings import parse_networks


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_is_refused_for_the_rest_of_the_window_of_its_first_failure() -> None:
    clock = Clock()
    throttle = FailedAuthThrottle(3, 60.0, clock=clock)
    assert [throttle.failed("203.0.113.9") for _ in range(3)] == [False, False, True]
    clock.now += 20.0
    assert throttle.retry_after_s("203.0.113.9") == 40.0
    assert throttle.retry_after_s("203.0.113.10") == 0.0  # another address: not refused
    clock.now += 40.0
    assert throttle.retry_after_s("203.0.113.9") == 0.0
    assert throttle.failures == {}  # the ended window is dropped when it is looked at


def test_failures_in_a_window_that_ended_start_a_new_one() -> None:
    clock = Clock()
    throttle = FailedAuthThrottle(3, 60.0, clock=clock)
    throttle.failed("203.0.113.9")
    throttle.failed("203.0.113.9")
    clock.now += 60.0
    assert throttle.failed("203.0.113.9") is False  # the first of a new window
    assert throttle.retry_after_s("203.0.113.9") == 0.0


def test_what_an_address_is_counted_under() -> None:
    throttle = FailedAuthThrottle(2, 60.0, clock=Clock())
    # An IPv6 host usually holds a whole /64: its addresses are one client.
    throttle.failed("2001:db8:1:2::a")
    assert throttle.failed("2001:db8:1:2:ffff::1") is True
    assert throttle.retry_after_s("2001:0db8:0001:0002:0:0:0:7") == 60.0
    assert throttle.retry_after_s("2001:db8:1:3::a") == 0.0  # the next /64
    assert throttle.client_key("fe80::1:2%eth0") == throttle.client_key("fe80::9") == "fe80000000000000/64"
    # An IPv4-mapped address (a dual-stack socket) is its IPv4 address.
    throttle.failed("::ffff:198.51.100.7")
    throttle.failed("198.51.100.7")
    assert throttle.retry_after_s("::ffff:198.51.100.7") == 60.0


def test_loopback_private_ranges_and_unix_sockets_are_exempt_by_default() -> None:
    """Where a reverse proxy, an ingress controller or a load balancer in front of the gateway
    lives: loopback, RFC 1918, shared, link-local, IPv6 unique-local and link-local. One
    application with a revoked key behind such a proxy must not lock out everyone behind it."""
    exempt = FailedAuthThrottle(1, 60.0, clock=Clock())
    for address in (
        "127.0.0.1", "127.3.4.5", "::1", "::ffff:127.0.0.1", "", None,
        "10.12.0.7", "172.16.5.4", "172.31.255.1", "192.168.1.20", "100.64.3.2", "169.254.1.1",
        "::ffff:10.0.0.1", "fd12:3456::1", "fe80::1%eth0",
    ):  # fmt: skip
        assert exempt.failed(address) is False, address
    assert exempt.failures == {}
    for public in ("203.0.113.9", "172.32.0.1", "2001:db8::1", "::ffff:198.51.100.7"):
        assert exempt.failed(public) is True, public  # (limit 1: the first failure is the limit)
    counted = FailedAuthThrottle(1, 60.0, exempt=(), clock=Clock())
    assert counted.failed("127.0.0.2") is True and counted.failed("::1") is True
    assert counted.failed("10.1.2.3") is True
    assert counted.failed("") is False  # a peer worker over its Unix socket: never
    only = FailedAuthThrottle(1, 60.0, exempt=parse_networks("192.0.2.0/24, 2001:db8:9::/48"), clock=Clock())
    assert only.failed("192.0.2.77") is False and only.failed("2001:db8:9:1::5") is False
    assert only.failed("10.0.0.1") is True  # the list replaces the default, it does not add to it
    assert parse_networks("none") == parse_networks("") == ()


def test_a_limit_of_zero_counts_nothing() -> None:
    throttle = FailedAuthThrottle(0, 60.0, clock=Clock())
    assert throttle.failed("203.0.113.9") is False and throttle.failures == {}


def test_the_table_is_bounded_evicting_the_oldest_window_first() -> None:
    clock = Clock()
    throttle = FailedAuthThrottle(2, 60.0, max_addresses=100, clock=clock)
    throttle.failed("198.51.100.1")
    throttle.failed("198.51.100.1")  # refused
    for i in range(250):
        clock.now += 0.01
        throttle.failed(f"203.0.113.{i}")
    assert len(throttle.failures) == 100
    assert throttle.retry_after_s("198.51.100.1") == 0.0  # the oldest: evicted
    assert "203.0.113.249" in throttle.failures and "203.0.113.149" not in throttle.failures
    # Windows that ended leave the front of the table before anything current is evicted.
    clock.now += 61.0
    throttle.failed("192.0.2.1")
    assert list(throttle.failures) == ["192.0.2.1"]


class Shared:
    """The shared count through its Protocol (``SharedFailures``): what the tests make it say
    (None: Redis cannot answer), and which keys were asked."""

    def __init__(self) -> None:
        self.reply: tuple[int, float] | None = None
        self.asked: list[tuple[str, str]] = []

    async def count(self, key: str, window_s: float) -> tuple[int, float] | None:
        self.asked.append(("count", key))
        return self.reply

    async def look(self, key: str, window_s: float) -> tuple[int, float] | None:
        self.asked.append(("look", key))
        return self.reply


async def test_the_shared_count_decides_unless_it_is_below_this_processs_own() -> None:
    clock, shared = Clock(), Shared()
    throttle = FailedAuthThrottle(5, 60.0, clock=clock, shared=shared)
    # Redis answers: the table takes the shared count and what is left of its window.
    shared.reply = (4, 30.0)
    assert await throttle.fail("203.0.113.9") == 4
    assert await throttle.refusal_s("203.0.113.9") == 0.0  # below the limit: Redis asked
    shared.reply = (6, 30.0)  # failed elsewhere meanwhile, past the limit
    assert await throttle.refusal_s("203.0.113.9") == 30.0
    assert await throttle.refusal_s("203.0.113.9") == 30.0  # refused here now: Redis not asked
    assert shared.asked == [("count", "203.0.113.9"), ("look", "203.0.113.9"), ("look", "203.0.113.9")]
    # Redis cannot answer: this process's count goes on from what it last saw.
    shared.reply = None
    assert await throttle.fail("203.0.113.10") == 1
    # Redis back with a lower count (its counter was lost): the higher local count stays.
    throttle.failed("203.0.113.10")
    throttle.failed("203.0.113.10")
    shared.reply = (1, 60.0)
    assert await throttle.fail("203.0.113.10") == 4
    # An address that never failed here is decided here, Redis not asked; nor is an exempt one.
    asked = len(shared.asked)
    assert await throttle.refusal_s("198.51.100.1") == 0.0
    exempting = FailedAuthThrottle(5, 60.0, clock=clock, shared=shared, exempt=None)
    assert await exempting.fail("10.0.0.1") == 0
    assert len(shared.asked) == asked
    # A failure whose shared count is past the limit: refused already, elsewhere.
    shared.reply = (9, 12.0)
    assert await throttle.fail("198.51.100.2") == 9
    assert throttle.retry_after_s("198.51.100.2") == 12.0
