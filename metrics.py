"""Prometheus metrics of one bridge process, in a registry of its own (no global state).

Counts that already live elsewhere (the clients' request counters, the inbox in the store) are read
at scrape time by a collector instead of being copied, so they cannot drift.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class _LiveCollector(Collector):
    def __init__(self, read: Callable[[], Iterator[Metric]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        return self._read()


class BridgeMetrics:
    """The bridge's metrics; `read_live` yields families computed at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.bridged = Counter(
            "gchat_discourse_messages_bridged",
            "Messages bridged, by direction",
            ["direction"],
            registry=self.registry,
        )
        self.failures = Counter(
            "gchat_discourse_failures",
            "Items that failed (retried or parked), by direction",
            ["direction"],
            registry=self.registry,
        )
        self.poll_duration = Histogram(
            "gchat_discourse_poll_duration_seconds",
            "Duration of one poll cycle",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )

    def watch(
        self,
        *,
        inbox_depth: Callable[[], int],
        dead_letters: Callable[[], int],
        parked: Callable[[], int],
        requests: Callable[[], dict[str, int]],
        rate_limited: Callable[[], dict[str, int]],
        subscriptions: Callable[[], list[tuple[str, str, str]]] | None = None,
    ) -> None:
        """Register the scrape-time readers of counts kept by the store and the clients."""

        def read() -> Iterator[Metric]:
            yield GaugeMetricFamily(
                "gchat_discourse_inbox_depth", "Webhook events waiting in the inbox", inbox_depth()
            )
            yield GaugeMetricFamily(
                "gchat_discourse_dead_letters", "Inbox events given up on", dead_letters()
            )
            yield GaugeMetricFamily(
                "gchat_discourse_parked_items", "Chat messages parked after failing", parked()
            )
            sent = CounterMetricFamily(
                "gchat_discourse_requests", "API requests sent, by platform", labels=["platform"]
            )
            for platform, count in requests().items():
                sent.add_metric([platform], count)
            yield sent
            limited = CounterMetricFamily(
                "gchat_discourse_rate_limited",
                "429 answers received, by platform",
                labels=["platform"],
            )
            for platform, count in rate_limited().items():
                limited.add_metric([platform], count)
            yield limited
            if subscriptions is not None:
                # One series per mapped space: 1 for the state its subscription is in, with the
                # suspension reason (empty unless suspended), so an alert can name the cause.
                states = GaugeMetricFamily(
                    "gchat_discourse_subscription",
                    "Workspace Events subscription of each mapped space (1 = in this state)",
                    labels=["space", "state", "reason"],
                )
                for space, state, reason in subscriptions():
                    states.add_metric([space, state, reason], 1)
                yield states

        self.registry.register(_LiveCollector(read))
