"""A model group's retry budget: how many of its requests may be retrying at once.

After Envoy's ``retry_budget`` (cluster circuit breaker thresholds,
https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/circuit_breaker.proto,
``RetryBudget``): ``budget_percent`` (default 20 %) "specifies the limit on concurrent retries as a
percentage of the sum of active requests and active pending requests", and
``min_retry_concurrency`` (default 3) is a floor the limit "may never go below", so a quiet group
still fails over. A fixed ``max_attempts`` alone multiplies upstream load by up to that factor
exactly when the providers are struggling; the budget caps the extra load at about a fifth.

Only retries after an overload spend it (``GatewayError.shows_overload``: 429, 503, 529, 408, a
timeout): the provider said it is too busy, and the group's other deployments are likely under
the same surge. A refused or reset connection, a 500 or a malformed body says one deployment is
broken; failing over from it is what keeps clients whole until its breaker opens (budgeting
those too gave 2 client errors in 500 with one of three deployments down, at 16 concurrent).
"""

from __future__ import annotations

from gateway.policy.model import Retry


class RetryBudget:
    """Counts a group's active requests and those of them past their first attempt.

    ``active`` counts requests from their first attempt until the router is done with them
    (a stream: until its first chunk). A request that retries after an overload holds one of
    the ``retrying`` permits from then until it ends, however many more attempts it makes.
    """

    __slots__ = ("_fraction", "_minimum", "active", "retrying")

    def __init__(self, retry: Retry) -> None:
        self._fraction = retry.budget_percent / 100
        self._minimum = retry.min_retry_concurrency
        self.active = 0
        self.retrying = 0

    @property
    def limit(self) -> float:
        """How many requests may be retrying at once now."""
        return max(self._fraction * self.active, self._minimum)

    def try_retry(self) -> bool:
        """Take a retry permit if the budget has one; the caller gives it back with ``done``."""
        if self.retrying >= self.limit:
            return False
        self.retrying += 1
        return True

    def done(self) -> None:
        """A retrying request ended (served or not): its permit is free again."""
        self.retrying -= 1
