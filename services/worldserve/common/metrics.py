"""Service metrics: ``worldserve_<service>_<what>_<unit>``.

Inside Serve replicas metrics go through Ray's metrics API (``ray.serve.metrics``): Ray merges them
into each node's Prometheus endpoint (its exporter prefixes every name with ``ray_`` and adds
``_total`` to counters, so ``worldserve_dynamics_requests`` is scraped as
``ray_worldserve_dynamics_requests_total``). Outside Ray (tools, tests of the cores) the same calls
go to ``prometheus_client``. No session ids or keys as labels: every label here is bounded.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol

# Histogram buckets sit at the SLO thresholds (deploy/prometheus rules use 0.1 s and 0.25 s for Step).
LATENCY_BUCKETS_S: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REDIS_BUCKETS_S: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _in_ray() -> bool:
    try:
        import ray

        return ray.is_initialized()
    except ImportError:
        return False


class Metric(Protocol):
    """A counter, gauge or histogram (each answers only its own method), labelled by keyword
    (``value`` is positional: any keyword is a label)."""

    def inc(self, value: float = 1.0, /, **labels: str) -> None: ...

    def set(self, value: float, /, **labels: str) -> None: ...

    def observe(self, value: float, /, **labels: str) -> None: ...


class _Backend:
    """Creates metric objects once per name, in Ray or prometheus_client."""

    _lock = threading.Lock()
    _made: dict[str, Metric] = {}

    @classmethod
    def get(
        cls, kind: str, name: str, desc: str, labels: Sequence[str], buckets: Sequence[float] | None = None
    ) -> Metric:
        with cls._lock:
            if name in cls._made:
                return cls._made[name]
            if _in_ray():
                from ray.serve import metrics as rm
                from ray.util.metrics import Metric as RayMetric

                # the ignores: ray annotates tag_keys as Tuple[str] (one key), it takes any number
                m: RayMetric
                if kind == "counter":
                    m = rm.Counter(name, description=desc, tag_keys=tuple(labels))  # type: ignore[arg-type]
                elif kind == "gauge":
                    m = rm.Gauge(name, description=desc, tag_keys=tuple(labels))  # type: ignore[arg-type]
                else:
                    m = rm.Histogram(
                        name,
                        description=desc,
                        boundaries=list(buckets or LATENCY_BUCKETS_S),
                        tag_keys=tuple(labels),  # type: ignore[arg-type]
                    )
                obj: Metric = _RayMetric(m, kind)
            else:
                import prometheus_client as pc

                pm: pc.metrics.MetricWrapperBase
                if kind == "counter":
                    pm = pc.Counter(name, desc, list(labels))
                elif kind == "gauge":
                    pm = pc.Gauge(name, desc, list(labels))
                else:
                    pm = pc.Histogram(name, desc, list(labels), buckets=list(buckets or LATENCY_BUCKETS_S))
                obj = _PromMetric(pm, kind, bool(labels))
            cls._made[name] = obj
            return obj


class _RayMetric:
    # m: a Ray Counter, Gauge or Histogram (by kind); each has only its own of inc/set/observe
    def __init__(self, m: Any, kind: str):
        self.m, self.kind = m, kind

    def inc(self, value: float = 1.0, /, **labels: str) -> None:
        self.m.inc(value, tags=labels or None)

    def set(self, value: float, /, **labels: str) -> None:
        self.m.set(value, tags=labels or None)

    def observe(self, value: float, /, **labels: str) -> None:
        self.m.observe(value, tags=labels or None)


class _PromMetric:
    # m: a prometheus_client Counter, Gauge or Histogram (by kind); each has only its own method
    def __init__(self, m: Any, kind: str, labelled: bool):
        self.m, self.kind, self.labelled = m, kind, labelled

    def _child(self, labels: dict[str, str]) -> Any:
        return self.m.labels(**labels) if self.labelled else self.m

    def inc(self, value: float = 1.0, /, **labels: str) -> None:
        self._child(labels).inc(value)

    def set(self, value: float, /, **labels: str) -> None:
        self._child(labels).set(value)

    def observe(self, value: float, /, **labels: str) -> None:
        self._child(labels).observe(value)


class ServiceMetrics:
    """The metrics every service exports, plus :meth:`counter` / :meth:`gauge` / :meth:`histogram` for its own."""

    def __init__(self, service: str):
        self.service = service
        self.requests = self.counter("requests", "RPCs handled, by rpc and gRPC status code", ("rpc", "code"))
        self.latency = self.histogram("request_duration_seconds", "RPC latency in seconds", ("rpc",))
        self.redis_latency = self.histogram(
            "redis_op_duration_seconds", "Redis operation latency in seconds", ("op",), REDIS_BUCKETS_S
        )

    def _name(self, what: str) -> str:
        return f"worldserve_{self.service}_{what}"

    def counter(self, what: str, desc: str, labels: Sequence[str] = ()) -> Metric:
        return _Backend.get("counter", self._name(what), desc, labels)

    def gauge(self, what: str, desc: str, labels: Sequence[str] = ()) -> Metric:
        return _Backend.get("gauge", self._name(what), desc, labels)

    def histogram(
        self, what: str, desc: str, labels: Sequence[str] = (), buckets: Sequence[float] | None = None
    ) -> Metric:
        return _Backend.get("histogram", self._name(what), desc, labels, buckets)

    def record_rpc(self, rpc: str, code: str, seconds: float) -> None:
        """The ``record`` callback of :func:`worldserve.common.errors.grpc_method`."""
        self.requests.inc(rpc=rpc, code=code)
        self.latency.observe(seconds, rpc=rpc)
