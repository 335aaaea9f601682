"""One typed config object, passed whole.

Code sets the defaults; the serve YAML overrides per environment (each deployment's ``args``), and
environment variables override both for the few values that differ per machine (``REDIS_URL``,
``WORLDSERVE_API_KEYS_FILE``, model paths).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def _bounded(name: str, value: float, lo: float, hi: float) -> None:
    if not (lo <= value <= hi):
        raise ValueError(f"{name}={value!r} is out of range [{lo}, {hi}]")


@dataclass(frozen=True)
class Config:
    redis_url: str = ""
    """Session Redis, e.g. ``redis://:pw@host:6379/0``. Empty: ``worldserve up`` starts an embedded one."""
    api_keys_file: str = ""
    """JSON file of hashed API keys (see worldserve.common.auth)."""
    session_ttl_s: int = 24 * 3600
    """Default session TTL in seconds, refreshed on every use. Bounds: 60 .. 30 days."""
    max_upload_bytes: int = 4 * 1024 * 1024
    """Largest uploaded first frame, in bytes. Bounds: 1 KiB .. 64 MiB."""
    redis_timeout_s: float = 5.0
    """Socket timeout of Redis operations. Bounds: 0.05 .. 60."""
    model_name: str = "worldserve-tiny"
    """Name of the dynamics model, recorded in every session."""
    dynamics_model_path: str = ""
    """Folder with config.json + model.safetensors; empty: the shipped trained weights
    (worldserve/weights/dynamics); "random": random init (seed 0) of the default config."""
    image_model_path: str = ""
    """Folder of the image model; empty: the shipped weights (worldserve/weights/image); "random": random init."""
    max_batch_size: int = 32
    """Most sessions stepped in one model call. Bounds: 1 .. 1024."""
    max_batch_wait_s: float = 0.0
    """Extra time to wait for a batch to fill once the model is free. 0: continuous batching. Bounds: 0 .. 1."""
    max_queue: int = 1024
    """Steps waiting in a replica before new ones get RESOURCE_EXHAUSTED. Bounds: 1 .. 100000."""
    context_cache_sessions: int = 512
    """Sessions whose KV cache a dynamics replica keeps in memory (LRU). Bounds: 0 .. 100000."""
    max_rollout_actions: int = 256
    """Most actions in one Rollout. Bounds: 1 .. 10000."""
    device: str = "auto"
    """Where the models run: "auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N"."""
    torch_threads: int = 0
    """torch intra-op threads per model replica; 0: the CPUs this process may use (affinity and
    cgroup quota: a pod's limit, not the node's cores; Ray alone would give 1). Bounds: 0 .. 256."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Unused; keeps the YAML forward compatible."""

    def __post_init__(self) -> None:
        _bounded("session_ttl_s", self.session_ttl_s, 60, 30 * 24 * 3600)
        _bounded("max_upload_bytes", self.max_upload_bytes, 1024, 64 * 1024 * 1024)
        _bounded("redis_timeout_s", self.redis_timeout_s, 0.05, 60)
        _bounded("max_batch_size", self.max_batch_size, 1, 1024)
        _bounded("max_batch_wait_s", self.max_batch_wait_s, 0, 1)
        _bounded("max_queue", self.max_queue, 1, 100_000)
        _bounded("context_cache_sessions", self.context_cache_sessions, 0, 100_000)
        _bounded("max_rollout_actions", self.max_rollout_actions, 1, 10_000)
        _bounded("torch_threads", self.torch_threads, 0, 256)
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device={self.device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> "Config":
        """Defaults <- ``overrides`` (serve YAML) <- environment."""
        env = os.environ if env is None else env
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for k, v in (overrides or {}).items():
            if k not in names:
                raise ValueError(f"unknown config field {k!r}; known: {sorted(names)}")
            values[k] = v
        for name, var in (
            ("redis_url", "REDIS_URL"),
            ("api_keys_file", "WORLDSERVE_API_KEYS_FILE"),
            ("dynamics_model_path", "WORLDSERVE_DYNAMICS_MODEL"),
            ("image_model_path", "WORLDSERVE_IMAGE_MODEL"),
        ):
            if env.get(var):
                values[name] = env[var]
        return cls(**values)


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a pod's limit)."""
    import math

    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def torch_device(config: "Config") -> str:
    if config.device != "auto":
        return config.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def setup_torch(config: "Config") -> str:
    """Threads and device for a model replica; returns the device."""
    import torch

    torch.set_num_threads(config.torch_threads or available_cpus())
    return torch_device(config)


SHIPPED_WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")


def model_path(configured: str, kind: str) -> str | None:
    """The folder to load a model from, or None for random init. ``kind``: "dynamics" or "image"."""
    if configured == "random":
        return None
    if configured:
        return configured
    shipped = os.path.join(SHIPPED_WEIGHTS, kind)
    return shipped if os.path.exists(os.path.join(shipped, "model.safetensors")) else None
