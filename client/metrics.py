"""Client metrics in Prometheus form: a per-client registry over the client's own counters.

Rules
* The clients (``Producer``, ``Consumer``, ``ShareConsumer``) keep their
  counters themselves and return them from ``metrics()`` (Kafka's metric
  names in snake_case, kip932-facts.md §9.4). This module adds nothing to
  their hot paths: a collector calls ``metrics()`` at scrape time and maps
  the dict to ``shoal_<kind>_...`` families on a registry of that client
  alone, so two clients in one process never share or clash on series.
* Names follow STYLE.md §3: base units (``_ms`` values become seconds), ``_total``
  only on counters, no labels (the scrape target identifies the client).
* An average kept as ``X_avg`` next to its event counter becomes a summary
  (``_sum`` = average × count, ``_count``), so Prometheus can average over any
  window with ``rate(_sum) / rate(_count)``; the client's ``X_max`` stays a gauge.
  Client-side rates (``*_rate``) are left out: ``rate()`` of the counter is the
  Prometheus way and does not depend on the client's window.
* Keys not in the table below are still exported by rule: ``*_total`` →
  counter, ``*_ms`` → gauge in seconds, other numbers → gauge; ids and
  ``None`` values are skipped.

Use (what a client does when ``metrics.port`` is configured)::

    from client.metrics import attach_exporter
    self._exporter = attach_exporter(self, "share_consumer", cfg["metrics.port"])  # None when unset
    ...
    if self._exporter is not None:      # in close()
        self._exporter.close()

``ClientMetricsExporter(client, kind).registry`` can also be registered or
rendered without HTTP (``prometheus_client.generate_latest(registry)``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("shoal.client.metrics")

KINDS = ("producer", "consumer", "share_consumer")


@dataclass(frozen=True)
class _Counter:
    name: str
    documentation: str


@dataclass(frozen=True)
class _Gauge:
    name: str
    documentation: str
    scale: float = 1.0  # 0.001 turns milliseconds into seconds


@dataclass(frozen=True)
class _Summary:
    """An average ``avg_key`` over ``count_key`` events, exposed as sum and count."""

    name: str
    documentation: str
    count_key: str
    scale: float = 1.0


Spec = _Counter | _Gauge | _Summary

#: kip932-facts.md §9.4 (consumer-share-*) and Kafka's producer metrics, mapped.
TABLES: dict[str, dict[str, Spec | None]] = {
    "share_consumer": {
        "heartbeat_total": _Counter("heartbeats", "ShareGroupHeartbeat calls sent (consumer-share heartbeat-total)."),
        "heartbeat_rate": None,
        "heartbeat_response_time_avg_ms": _Summary(
            "heartbeat_response_seconds", "Heartbeat response time (heartbeat-response-time).", "heartbeat_total", 0.001
        ),
        "heartbeat_response_time_max_ms": _Gauge("heartbeat_response_max_seconds", "Longest heartbeat response time.", 0.001),
        "last_poll_seconds_ago": _Gauge("seconds_since_last_poll", "Seconds since the application last called poll() (last-poll-seconds-ago)."),
        "records_fetched_total": _Counter("fetched_records", "Records received from ShareFetch (records-fetched-total)."),
        "records_fetched_rate": None,
        "fetch_total": None,  # the count of the fetch summaries below
        "fetch_size_avg": _Summary("fetch_size_bytes", "Bytes per ShareFetch response (fetch-size).", "fetch_total"),
        "fetch_size_max": _Gauge("fetch_size_max_bytes", "Largest ShareFetch response in bytes."),
        "fetch_latency_avg_ms": _Summary("fetch_latency_seconds", "ShareFetch latency (fetch-latency).", "fetch_total", 0.001),
        "fetch_latency_max_ms": _Gauge("fetch_latency_max_seconds", "Longest ShareFetch latency.", 0.001),
        "acknowledgements_send_total": _Counter("acknowledgements_sent", "Acknowledgements sent (acknowledgements-send-total)."),
        "acknowledgements_error_total": _Counter(
            "acknowledgements_failed", "Acknowledgements that failed (acknowledgements-error-total)."
        ),
    },
    "producer": {
        "record_send_total": _Counter("sent_records", "Records sent and acknowledged."),
        "batch_send_total": _Counter("sent_batches", "Record batches sent."),
        "byte_send_total": _Counter("sent_bytes", "Record-batch bytes sent."),
        "record_error_total": _Counter("record_errors", "Records that failed for good."),
        "record_retry_total": _Counter("record_retries", "Record batches retried."),
        "request_total": None,  # the count of the request-latency summary
        "request_latency_avg_ms": _Summary("request_latency_seconds", "Produce request latency.", "request_total", 0.001),
        "request_latency_max_ms": _Gauge("request_latency_max_seconds", "Longest produce request latency.", 0.001),
        "records_queued": _Gauge("queued_records", "Records waiting to be sent."),
        "buffer_bytes_used": _Gauge("buffer_used_bytes", "Bytes of records buffered in the producer."),
        "producer_id": None,  # an id, not a measurement
    },
    "consumer": {
        "fetch_total": None,
        "fetch_latency_avg_ms": _Summary("fetch_latency_seconds", "Fetch latency.", "fetch_total", 0.001),
        "fetch_latency_max_ms": _Gauge("fetch_latency_max_seconds", "Longest fetch latency.", 0.001),
        "fetch_size_avg": _Summary("fetch_size_bytes", "Bytes per fetch response.", "fetch_total"),
        "records_fetched_total": _Counter("fetched_records", "Records received."),
        "records_fetched_rate": None,
        "heartbeat_total": _Counter("heartbeats", "ConsumerGroupHeartbeat calls sent."),
        "heartbeat_rate": None,
        "heartbeat_response_time_avg_ms": _Summary(
            "heartbeat_response_seconds", "Heartbeat response time.", "heartbeat_total", 0.001
        ),
        "last_poll_seconds_ago": _Gauge("seconds_since_last_poll", "Seconds since the application last called poll()."),
        "commit_total": None,
        "commit_latency_avg_ms": _Summary("commit_latency_seconds", "Offset commit latency.", "commit_total", 0.001),
    },
}


def _sanitize(key: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in key).strip("_").lower()


class ClientCollector(Collector):
    """Calls ``read()`` (a client's ``metrics``) at scrape time and yields ``shoal_<kind>_*`` families."""

    def __init__(self, kind: str, read: Callable[[], Mapping[str, Any]]) -> None:
        if kind not in KINDS:
            raise ValueError(f"client metrics kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.prefix = f"shoal_{kind}_"
        self._read = read
        self._table = TABLES[kind]

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            values = dict(self._read())
        except Exception:
            log.exception("reading %s metrics failed; this scrape is empty", self.kind)
            return
        for key, raw in sorted(values.items()):
            if key in self._table:
                spec = self._table[key]
            else:
                spec = self._default_spec(key)
            if spec is None or not _is_number(raw):
                continue
            if isinstance(spec, _Counter):
                yield CounterMetricFamily(self.prefix + spec.name, spec.documentation, value=raw)
            elif isinstance(spec, _Gauge):
                yield GaugeMetricFamily(self.prefix + spec.name, spec.documentation, value=raw * spec.scale)
            else:
                count = values.get(spec.count_key, 0)
                if not _is_number(count):
                    continue
                yield SummaryMetricFamily(
                    self.prefix + spec.name, spec.documentation, count_value=count, sum_value=raw * count * spec.scale
                )

    @staticmethod
    def _default_spec(key: str) -> Spec | None:
        name = _sanitize(key)
        if not name or name.endswith(("_id", "_rate")):
            return None
        if name.endswith("_total"):
            return _Counter(name[: -len("_total")], f"{key} (client counter).")
        if name.endswith("_ms"):
            return _Gauge(name[: -len("_ms")] + "_seconds", f"{key} in seconds (client value).", 0.001)
        return _Gauge(name, f"{key} (client value).")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class ClientMetricsExporter:
    """One client's registry and, optionally, its HTTP endpoint."""

    def __init__(self, client: Any, kind: str) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = ClientCollector(kind, client.metrics)
        self.registry.register(self.collector)
        self._server: Any = None

    def start_server(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve /metrics on host:port (0: a free port); returns the bound port."""
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return self._server.server_port

    @property
    def port(self) -> int | None:
        return None if self._server is None else self._server.server_port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def attach_exporter(client: Any, kind: str, port: int | None, host: str = "127.0.0.1") -> ClientMetricsExporter | None:
    """Serve ``client.metrics()`` on ``port`` when one is configured (``metrics.port``); else None."""
    if port is None:
        return None
    exporter = ClientMetricsExporter(client, kind)
    exporter.start_server(port, host)
    return exporter
