"""Operability: structured logs, Prometheus metrics and OpenTelemetry tracing set-up.

Metric names and labels are part of the product contract: dashboards and alerts name them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

_STANDARD_FIELDS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
_API_LABELS = ("operation", "tenant_id", "grpc_code")
# A histogram per tenant would make tenants x operations x codes x buckets series a process.
_DURATION_LABELS = ("operation", "grpc_code")
_LATENESS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 600)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra=` fields of a record become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD_FIELDS})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class BatchedLineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes log lines in batches instead of one write per line.

    The service logs a line per call, and a write and flush per line cost a call more than its
    database round trip did. A line waits at most `interval` seconds; a WARNING or worse (and a
    full buffer) is written at once, together with the lines before it; exit and close write the
    rest. A process killed without warning loses at most the last `interval` of INFO lines.
    """

    def __init__(self, stream: Any, interval: float = 0.1, max_bytes: int = 64 * 1024) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._size = 0
        self._interval = interval
        self._max_bytes = max_bytes
        self._stopped = threading.Event()
        self._writer = threading.Thread(target=self._write_periodically, daemon=True)
        self._writer.name = "log-writer"
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        with self.lock:  # type: ignore[union-attr]
            self._pending.append(line)
            self._size += len(line)
            if record.levelno >= logging.WARNING or self._size >= self._max_bytes:
                self._write_pending()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()

    def close(self) -> None:
        self._stopped.set()
        self.flush()
        super().close()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        self._size = 0
        # A closed or broken stream (ValueError, OSError) leaves nothing to report it on.
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(text)
            self.stream.flush()

    def _write_periodically(self) -> None:
        while not self._stopped.wait(self._interval):
            self.flush()


class TextFormatter(logging.Formatter):
    """The standard text format, with the date part of the time formatted once per second
    (strftime per line was a visible share of a cheap call)."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._second = -1
        self._date = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._date = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = second
        return f"{self._date},{int(record.msecs):03d}"


def configure_logging(log_format: str, level: str) -> None:
    handler = BatchedLineHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # Fields no format here prints, which logging would otherwise gather for every line (the
    # caller's file and line by walking the stack, thread and process names): the knobs the
    # logging HOWTO's "Optimization" section names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Migration chatter is noise next to the service's own lines.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))


@dataclass
class Metrics:
    """The service's metrics, in a registry of their own (one per application)."""

    registry: CollectorRegistry
    api_calls: Counter
    api_duration: Histogram
    api_errors: Counter
    runs: Counter
    run_lateness: Histogram
    # The labelled children of the API metrics by label values. prometheus_client keeps every
    # child it made anyway; looking them up here skips its per-call label checks and lock.
    _api_children: dict[tuple[str, str, str], tuple[Any, Any, Any]] = field(
        default_factory=dict, repr=False
    )

    def record_call(self, operation: str, tenant_id: str, grpc_code: str, seconds: float) -> None:
        labels = (operation, tenant_id, grpc_code)
        children = self._api_children.get(labels)
        if children is None:
            errors = self.api_errors.labels(*labels) if grpc_code != "OK" else None
            duration = self.api_duration.labels(operation, grpc_code)
            children = (self.api_calls.labels(*labels), duration, errors)
            self._api_children[labels] = children
        calls, duration, errors = children
        calls.inc()
        duration.observe(seconds)
        if errors is not None:
            errors.inc()

    def record_run(self, status: str, lateness_seconds: float | None) -> None:
        self.runs.labels(status).inc()
        if lateness_seconds is not None:
            self.run_lateness.observe(max(lateness_seconds, 0.0))


def build_metrics() -> Metrics:
    registry = CollectorRegistry(auto_describe=True)
    return Metrics(
        registry=registry,
        api_calls=Counter(
            "extension_scheduler_api_calls", "API calls answered", _API_LABELS, registry=registry
        ),
        api_duration=Histogram(
            "extension_scheduler_api_duration_seconds",
            "Time to answer an API call",
            _DURATION_LABELS,
            registry=registry,
        ),
        api_errors=Counter(
            "extension_scheduler_api_errors",
            "API calls answered with an error",
            _API_LABELS,
            registry=registry,
        ),
        runs=Counter(
            "extension_scheduler_runs",
            "Schedule runs recorded, by status",
            ("status",),
            registry=registry,
        ),
        run_lateness=Histogram(
            "extension_scheduler_run_lateness_seconds",
            "Actual minus scheduled start of a run",
            buckets=_LATENESS_BUCKETS,
            registry=registry,
        ),
    )


def serve_metrics(metrics: Metrics, listen: str) -> Callable[[], None]:
    """Expose the Prometheus text format on `host:port`; returns the function that stops it."""
    host, _, port = listen.rpartition(":")
    server, thread = start_http_server(int(port), addr=host, registry=metrics.registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop


def tracer_provider_from_environment() -> Any | None:
    """An SDK tracer provider exporting over OTLP when the standard OTEL_* variables ask for one.

    None (no tracing cost at all) unless OTEL_TRACES_EXPORTER=otlp or an OTLP endpoint is set.
    """
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    if exporter_name in {"", "none"} and not (endpoint and exporter_name != "none"):
        return None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": os.environ.get("OTEL_SERVICE_NAME", "scheduler-host")}
        )
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider
