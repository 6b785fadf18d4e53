"""Choose deployments for a model group and fail over between them.

This issue's router ranks deployments in policy order and skips the ones whose provider has no
key; a live-score ranking replaces ``_ranked`` without changing the failover loop. A request is
retried on the next deployment only when its error is retryable (connection errors, timeouts,
408/409/429, 5xx, malformed bodies) and nothing has been sent to the client yet.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.errors import (
    AllDeploymentsFailed,
    Attempt,
    GatewayError,
    ModelNotFound,
    ProviderNotConfigured,
    is_retryable,
)
from gateway.observability.metrics import GatewayMetrics
from gateway.policy.model import Deployment, Policy
from gateway.providers.transport import ProviderClient

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Target:
    """A deployment bound to the client that reaches it."""

    deployment: Deployment
    client: ProviderClient

    @property
    def provider(self) -> str:
        return self.client.name

    @property
    def model(self) -> str:
        return self.deployment.model


@dataclass(frozen=True, slots=True)
class Routed(Generic[T]):
    """The result of a routed call and where it was served."""

    value: T
    target: Target
    attempts: int


class Router:
    """Maps model names to ranked targets and runs the failover loop."""

    def __init__(
        self, policy: Policy, clients: Mapping[str, ProviderClient], metrics: GatewayMetrics
    ) -> None:
        self._metrics = metrics
        self._groups: dict[str, tuple[Target, ...]] = {
            name: tuple(Target(dep, clients[dep.provider]) for dep in group.deployments)
            for name, group in policy.models.items()
        }

    @property
    def model_names(self) -> Sequence[str]:
        """The model names clients may send, in policy order."""
        return list(self._groups)

    def has_model(self, name: str) -> bool:
        return name in self._groups

    def is_configured(self, model: str) -> bool:
        """Whether at least one of the group's providers has its key."""
        return any(t.client.configured for t in self._groups.get(model, ()))

    def targets(self, model: str) -> Sequence[Target]:
        """The group's usable targets in the order they should be tried."""
        group = self._groups.get(model)
        if group is None:
            raise ModelNotFound(model, list(self._groups))
        usable = [t for t in group if t.client.configured]
        if not usable:
            envs = [t.client.config.api_key_env or "" for t in group]
            raise ProviderNotConfigured(model, [e for e in envs if e])
        return usable

    async def call(self, model: str, attempt: Callable[[Target], Awaitable[T]]) -> Routed[T]:
        """Run ``attempt`` on each target in turn until one succeeds or an error is final."""
        failures: list[Attempt] = []
        for target in self.targets(model):
            started = time.perf_counter()
            try:
                value = await attempt(target)
            except GatewayError as error:
                self._record_failure(target, error)
                failures.append(Attempt(target.provider, target.model, error))
                if not is_retryable(error):
                    break
                continue
            self._record_success(target, time.perf_counter() - started)
            return Routed(value, target, len(failures) + 1)
        if len(failures) == 1:
            raise failures[0].error
        raise AllDeploymentsFailed(model, failures)

    def _record_success(self, target: Target, elapsed_s: float) -> None:
        m = self._metrics
        m.upstream_requests.labels(target.provider, target.model, "success").inc()
        m.upstream_duration.labels(target.provider, target.model).observe(elapsed_s)

    def _record_failure(self, target: Target, error: GatewayError) -> None:
        m = self._metrics
        m.upstream_requests.labels(target.provider, target.model, "error").inc()
        m.upstream_errors.labels(target.provider, target.model, type(error).__name__).inc()
