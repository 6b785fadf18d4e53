"""A Redis outage is one recovery action (``redis_link.Outage``): ``ok`` when a probe reconnects
within ``RECOVERY_BOUND_S``, ``failed`` once when it lasts that long. Each failed probe used to
be a failed action, so a 17 s outage recovered cleanly read as 36 failures and 9 successes on
five links, and the recovery KPI's alert fired for an hour after it (an outside probe)."""

from __future__ import annotations

from gateway.redis_link import RECOVERY_BOUND_S, Outage


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def down_for(outage: Outage, clock: Clock, seconds: float) -> None:
    """Redis fails a call, then every probe for ``seconds``."""
    start = clock.t
    assert outage.attempt() is False and outage.failed(False)  # the outage starts
    while True:
        clock.t += outage.retry_in_s()
        if clock.t - start >= seconds:
            return
        probe = outage.attempt()
        assert probe is True
        outage.failed(probe)
        outage.finished(probe)


def back(outage: Outage) -> None:
    probe = outage.attempt()
    assert probe is True
    outage.finished(probe)
    assert outage.succeeded()


def test_an_outage_recovered_within_the_bound_is_one_ok_action_whatever_its_probes() -> None:
    clock = Clock()
    outage = Outage(clock=clock)
    down_for(outage, clock, 17.0)
    back(outage)
    assert outage.failed_probes >= 5  # (the probes are still counted, apart)
    assert outage.recovery_actions() == (1, 0)


def test_an_outage_past_the_bound_is_one_failed_action_and_its_late_reconnect_is_not_counted() -> None:
    clock = Clock()
    outage = Outage(clock=clock)
    down_for(outage, clock, RECOVERY_BOUND_S * 3)
    assert outage.recovery_actions() == (0, 1)
    back(outage)
    assert outage.recovery_actions() == (0, 1)
    down_for(outage, clock, 2.0)  # the next outage is judged on its own
    back(outage)
    assert outage.recovery_actions() == (1, 1)


def test_redis_down_at_start_is_an_outage_from_the_start() -> None:
    clock = Clock()
    outage = Outage(healthy=False, clock=clock)
    clock.t += RECOVERY_BOUND_S + 1
    probe = outage.attempt()
    assert probe is True
    outage.failed(probe)
    outage.finished(probe)
    assert outage.recovery_actions() == (0, 1)
