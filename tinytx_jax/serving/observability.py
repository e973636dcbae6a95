"""What an operator watches: Prometheus metrics at /metrics and one access-log line per request.

The metrics live in a registry of the app's own (not the process-wide default), so several
servers in one process (the tests) never share counts. Queue depth and busy slots are read
from the engine when scraped.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServerMetrics:
    """The server's counters, histograms and gauges, in a registry of its own."""

    def __init__(self, queue_depth: Callable[[], int], busy_slots: Callable[[], int]):
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "tinytx_requests",
            "HTTP requests answered, by route and status code.",
            ["route", "code"],
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "tinytx_prompt_tokens",
            "Prompt tokens (characters) of chat completions.",
            registry=registry,
        )
        self.completion_tokens = Counter(
            "tinytx_completion_tokens",
            "Tokens (characters) generated for chat completions.",
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "tinytx_time_to_first_token_seconds",
            "From a chat request to its first piece.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "tinytx_request_duration_seconds",
            "From a request to the end of its response.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.cancel_to_free = Histogram(
            "tinytx_cancel_to_free_seconds",
            "From a client's leaving (noticed) to its request's slot freed; _count: cancels.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=registry,
        )
        Gauge("tinytx_queue_depth", "Requests waiting for a slot.", registry=registry).set_function(
            queue_depth
        )
        Gauge("tinytx_busy_slots", "Slots decoding a request.", registry=registry).set_function(
            busy_slots
        )

    def exposition(self) -> tuple[bytes, str]:
        """The text format a Prometheus server scrapes, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class AccessLog:
    """ASGI middleware: times each HTTP request, counts it by route and status, and writes
    one line `METHOD PATH STATUS MILLISECONDS` when its response has been sent."""

    def __init__(self, app, metrics: ServerMetrics, out: TextIO = sys.stderr):
        self.app, self.metrics, self.out = app, metrics, out

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def send_and_watch(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            seconds = time.perf_counter() - start
            route = scope["path"] if scope["path"] in KNOWN_ROUTES else "other"
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(seconds)
            print(
                f"{scope['method']} {scope['path']} {status[0]} {seconds * 1e3:.1f}ms",
                file=self.out,
                flush=True,
            )


KNOWN_ROUTES = (
    "/",
    "/health",
    "/metrics",
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/inspect",
)
