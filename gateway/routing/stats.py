"""Live figures per deployment, from real traffic: latency, success, uptime, errors, feedback,
and the share of its prompt tokens the provider's prompt cache served (``CacheShare``).

Everything here is plain arithmetic on numbers the router hands in; no I/O and no clock of its own
(callers pass ``now`` from ``time.monotonic()``), so it is exact to unit-test. One instance per
deployment per gateway process. With shared routing state (``shared.py``, when ``REDIS_URL`` is
set) the other replicas' figures arrive as one ``PeerFigures`` that the estimates below blend in,
weighted by request counts; without it (or while Redis is down) ``peer`` is None and each replica
learns from its own traffic only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

_BUCKETS = 10


@dataclass(slots=True)
class _Bucket:
    start: float = -1.0
    successes: int = 0
    failures: int = 0


class WindowCounter:
    """Successes and failures over the last ``window_s`` seconds, in ten time buckets."""

    __slots__ = ("_buckets", "_current", "_until", "_width")

    def __init__(self, window_s: float) -> None:
        self._width = window_s / _BUCKETS
        self._buckets = [_Bucket() for _ in range(_BUCKETS)]
        # The bucket the last call counted in, and when its slice ends: a call within the same
        # slice (every call but one a slice) counts there without finding it again.
        self._current = self._buckets[0]
        self._until = -1.0

    def add(self, now: float, ok: bool) -> None:
        bucket = self._current
        if not bucket.start <= now < self._until:
            width = self._width
            start = now - (now % width)
            bucket = self._buckets[int(now / width) % _BUCKETS]
            if bucket.start != start:
                bucket.start, bucket.successes, bucket.failures = start, 0, 0
            self._current, self._until = bucket, start + width
        if ok:
            bucket.successes += 1
        else:
            bucket.failures += 1

    def _live(self, now: float) -> list[_Bucket]:
        oldest = now - self._width * _BUCKETS
        return [b for b in self._buckets if b.start > oldest]

    def totals(self, now: float) -> tuple[int, int]:
        """(successes, failures) inside the window."""
        live = self._live(now)
        return sum(b.successes for b in live), sum(b.failures for b in live)

    def uptime(self, now: float) -> float | None:
        """Share of the window's time slices with traffic in which at least one request succeeded."""
        busy = [b for b in self._live(now) if b.successes or b.failures]
        if not busy:
            return None
        return sum(1 for b in busy if b.successes) / len(busy)

    def clear(self) -> None:
        for b in self._buckets:
            b.start, b.successes, b.failures = -1.0, 0, 0
        self._until = -1.0


@dataclass(slots=True)
class _Ewma:
    value: float | None = None
    updated: float = 0.0

    def add(self, sample: float, alpha: float, now: float) -> None:
        self.value = sample if self.value is None else self.value + alpha * (sample - self.value)
        self.updated = now

    def get(self, now: float, stale_after_s: float) -> float | None:
        if self.value is None or now - self.updated > stale_after_s:
            return None
        return self.value


class CacheShare:
    """Prompt tokens per answer, and of them those read from the provider's prompt cache, written
    to it and written to a 1-hour cache: moving averages (``alpha`` per answer, forgotten once
    older than ``stale_after_s``) like the latency's. Their ratios are the deployment's cache
    shares, token-weighted (a long cached prompt counts for more than a short uncached one, as
    it does on the bill). Only deployments with a cache price keep it (``Target.prices_cache``):
    for the others every prompt token costs the input price whatever the cache did."""

    __slots__ = ("prompt", "read", "updated", "written", "written_1h")

    def __init__(self) -> None:
        self.prompt = self.read = self.written = self.written_1h = 0.0
        self.updated: float | None = None  # None: nothing observed yet

    def add(self, prompt: int, read: int, written: int, written_1h: int, alpha: float, now: float) -> None:
        """One answer's counts (cut to the prompt as ``Price.cost_usd`` cuts them). Called on
        every answer of a deployment with a cache price (``Router.record_usage``): plain
        comparisons, not ``min()`` calls (~0.1 us each)."""
        if read > prompt:
            read = prompt
        if written > prompt - read:
            written = prompt - read
        if written_1h > written:
            written_1h = written
        if self.updated is None:
            self.prompt, self.read, self.written, self.written_1h = prompt, read, written, written_1h
        else:
            self.prompt += alpha * (prompt - self.prompt)
            self.read += alpha * (read - self.read)
            self.written += alpha * (written - self.written)
            self.written_1h += alpha * (written_1h - self.written_1h)
        self.updated = now

    def averages(self, now: float, stale_after_s: float) -> tuple[float, float, float, float] | None:
        """(prompt, read, written, written 1 h) tokens per answer, None when unobserved or stale."""
        if self.updated is None or now - self.updated > stale_after_s or self.prompt <= 0:
            return None
        return self.prompt, self.read, self.written, self.written_1h


@dataclass(frozen=True, slots=True)
class CacheShares:
    """Shares of a deployment's prompt tokens (0..1) read from the prompt cache, written to it
    (1-hour writes included) and written to a 1-hour cache."""

    read: float
    written: float
    written_1h: float


@dataclass(frozen=True, slots=True)
class PeerFigures:
    """The other replicas' figures for one deployment, merged (``shared.py``): latency EWMAs
    weighted by each replica's request count, window counts and votes summed."""

    latency_s: float | None = None
    latency_weight: int = 0  # the requests behind ``latency_s``
    ttft_s: float | None = None
    ttft_weight: int = 0
    successes: int = 0  # inside their windows
    failures: int = 0
    in_flight: int = 0
    feedback_sum: float = 0.0
    feedback_votes: int = 0
    # Prompt, read, written and 1-hour written tokens per answer (``CacheShare.averages``),
    # weighted by each replica's request count; None when no replica observed any.
    cache: tuple[float, float, float, float] | None = None
    cache_weight: int = 0


def _blend(own: float | None, own_weight: int, peer: float | None, peer_weight: int) -> float | None:
    if peer is None:
        return own
    if own is None:
        return peer
    own_weight, peer_weight = max(own_weight, 1), max(peer_weight, 1)
    return (own * own_weight + peer * peer_weight) / (own_weight + peer_weight)


@dataclass(slots=True)
class DeploymentStats:
    """What one deployment has shown lately.

    ``latency`` is the whole answer for plain requests; ``ttft`` the first token of a stream;
    both are exponentially weighted moving averages (``alpha`` per sample) that are forgotten
    once older than ``stale_after_s``, so a deployment that was slow once is measured afresh.
    """

    window_s: float
    alpha: float
    stale_after_s: float
    window: WindowCounter = field(init=False)
    latency_s: _Ewma = field(default_factory=_Ewma)
    ttft_s: _Ewma = field(default_factory=_Ewma)
    tokens_per_s: _Ewma = field(default_factory=_Ewma)
    requests: int = 0
    successes: int = 0
    failures: int = 0
    in_flight: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    feedback_sum: float = 0.0
    feedback_votes: int = 0
    cost_usd: float = 0.0
    cost_estimated_usd: float = 0.0  # of cost_usd, estimated for answers without usage
    cooling_until: float = 0.0  # a 429's Retry-After: skipped by every request until then
    cache: CacheShare = field(default_factory=CacheShare)
    peer: PeerFigures | None = None  # the other replicas' figures (shared routing state)

    def __post_init__(self) -> None:
        self.window = WindowCounter(self.window_s)

    def latency(self, now: float, seconds: float, *, stream: bool) -> None:
        """Time to a whole answer, or to a stream's first chunk (``stream=True``)."""
        (self.ttft_s if stream else self.latency_s).add(seconds, self.alpha, now)

    def success(self, now: float) -> None:
        self.requests += 1
        self.successes += 1
        self.window.add(now, True)

    def failure(self, now: float, error_class: str, *, counts: bool) -> None:
        """A call failed; ``counts`` is False when the provider is not at fault (bad parameters,
        rate limits), which then do not lower its reliability."""
        self.requests += 1
        self.errors[error_class] += 1
        if counts:
            self.failures += 1
            self.window.add(now, False)

    def stream_rate(self, now: float, output_tokens: int, seconds: float) -> None:
        if output_tokens > 0 and seconds > 0:
            self.tokens_per_s.add(output_tokens / seconds, self.alpha, now)

    def vote(self, score: float) -> None:
        self.feedback_sum += score
        self.feedback_votes += 1

    def quality(self, prior: float, prior_votes: float) -> float:
        """Prior and feedback mean (every replica's votes), weighted: ``prior_votes`` votes weigh
        as much as the prior."""
        total, votes = self.feedback_sum, self.feedback_votes
        peer = self.peer
        if peer is not None:
            total, votes = total + peer.feedback_sum, votes + peer.feedback_votes
        return (prior * prior_votes + total) / (prior_votes + votes)

    def reliability(self, now: float, prior_requests: float) -> float:
        """Success share over the window (every replica's), starting from ``prior_requests``
        assumed successes."""
        ok, bad = self.window.totals(now)
        peer = self.peer
        if peer is not None:
            ok, bad = ok + peer.successes, bad + peer.failures
        return (ok + prior_requests) / (ok + bad + prior_requests)

    def latency_estimate(self, now: float, *, stream: bool) -> float | None:
        """Seconds to the answer (first token for streams), or None when unmeasured or stale;
        blended with the other replicas' estimate, weighted by request counts."""
        primary, other = (self.ttft_s, self.latency_s) if stream else (self.latency_s, self.ttft_s)
        value = primary.get(now, self.stale_after_s)
        own = value if value is not None else other.get(now, self.stale_after_s)
        peer = self.peer
        if peer is None:
            return own
        ok, bad = self.window.totals(now)
        if stream:
            theirs, weight = (
                (peer.ttft_s, peer.ttft_weight)
                if peer.ttft_s is not None
                else (
                    peer.latency_s,
                    peer.latency_weight,
                )
            )
        else:
            theirs, weight = (
                (peer.latency_s, peer.latency_weight)
                if peer.latency_s is not None
                else (
                    peer.ttft_s,
                    peer.ttft_weight,
                )
            )
        return _blend(own, ok + bad, theirs, weight)

    def own_latency(self, now: float, *, stream: bool) -> float | None:
        """This replica's own EWMA (what it publishes to the others), None when stale."""
        return (self.ttft_s if stream else self.latency_s).get(now, self.stale_after_s)

    def cache_shares(self, now: float) -> CacheShares | None:
        """The shares of prompt tokens read from and written to the prompt cache lately (every
        replica's, weighted by request counts), None before any answer was observed or once stale."""
        own = self.cache.averages(now, self.stale_after_s)
        peer = self.peer
        theirs = peer.cache if peer is not None else None
        if theirs is None:
            if own is None:
                return None
            prompt, read, written, written_1h = own
        elif own is None:
            prompt, read, written, written_1h = theirs
        else:
            ok, bad = self.window.totals(now)
            mine, other = max(ok + bad, 1), max(peer.cache_weight, 1) if peer is not None else 1
            prompt, read, written, written_1h = (
                (a * mine + b * other) / (mine + other) for a, b in zip(own, theirs, strict=True)
            )
        if prompt <= 0:
            return None
        return CacheShares(read / prompt, written / prompt, written_1h / prompt)
