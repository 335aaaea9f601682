"""One typed config object, passed whole.

Code sets the defaults; the serve YAML overrides per environment (each deployment's ``args``), and
environment variables override both for the few values that differ per machine (``REDIS_URL``,
``WORLDSERVE_API_KEYS_FILE``, model paths).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from worldserve.common.quotas import Quotas, check_fields

if TYPE_CHECKING:
    import torch

MODEL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,47}$")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def _bounded(name: str, value: float, lo: float, hi: float) -> None:
    if not (lo <= value <= hi):
        raise ValueError(f"{name}={value!r} is out of range [{lo}, {hi}]")


@dataclass(frozen=True)
class ModelSpec:
    """One served dynamics model: a name clients use, and how to load it."""

    name: str
    """Name sessions are bound to (``CreateSession.model``): lowercase letters, digits, '.', '_', '-';
    at most 48 characters. Its Serve deployment is ``DynamicsModel-<name>``."""
    kind: str = ""
    """Registry name of the model implementation (``worldserve.dynamics_models`` entry points);
    empty: the ``"kind"`` in the model folder's config.json, else ``world_model``."""
    path: str = ""
    """Folder with the model's config + safetensors; ``shipped:NAME``: the package's
    ``weights/NAME``; empty: ``Config.dynamics_model_path`` (by default the shipped
    ``weights/dynamics``); "random": random init (seed 0), the only way to get one: a missing or
    corrupt weights file is a start-up error naming it."""
    tier: str = ""
    """Serving tier shown by ListModels, e.g. "quality" or "fast"."""
    sample_steps: int = 0
    """Sampler steps per frame; 0: the model's own default. Bounds: 0 .. 64."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the model's loader (kind-specific)."""
    batch_invariant: str = ""
    """"on", "off", or "" for the cluster's ``batch_invariant`` setting: "off" steps a batch of
    sessions in one model call (more frames/s; a frame may then differ in the last bit from the one
    a lone session gets)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not MODEL_NAME_RE.match(self.name):
            raise ValueError(f"model name {self.name!r}: expected [a-z0-9][a-z0-9._-]{{0,47}}")
        _bounded(f"models[{self.name}].sample_steps", self.sample_steps, 0, 64)
        if self.batch_invariant not in ("", "on", "off"):
            raise ValueError(
                f"models[{self.name}].batch_invariant={self.batch_invariant!r}: expected 'on', 'off' or ''"
            )

    @classmethod
    def parse(cls, value: Any) -> ModelSpec:
        if isinstance(value, ModelSpec):
            return value
        if isinstance(value, str):
            return cls(name=value)
        if not isinstance(value, Mapping):
            raise ValueError(f"a models entry must be a mapping or a name, got {value!r}")
        check_fields(cls, value, f"models entry {value.get('name')!r}")
        return cls(**dict(value))


DEFAULT_MODELS = (
    ModelSpec(name="platformer", kind="scroll_canvas", tier="quality"),
    ModelSpec(name="platformer-fast", kind="scroll_canvas", path="shipped:fast", tier="fast"),
)
"""The shipped pair: the scroll-canvas model (``weights/dynamics``, the default) and a narrower
scroll canvas (``weights/fast``): under half the time per frame, a blurrier world (it meets 14 of
the 18 held-out targets the default meets: MODEL_CARD)."""

TRANSFORMER_MODEL = ModelSpec(
    name="platformer-transformer", kind="world_model", path="shipped:transformer", tier="fast", sample_steps=1
)
"""Shipped, served in tests only: the latent transformer (``weights/transformer``, the paged KV
cache and the Triton kernels) at one sampler step. It does not meet the held-out targets
(MODEL_CARD), so no default config serves it; add this entry to a serve config's ``models`` to
serve it."""


@dataclass(frozen=True)
class Config:
    redis_url: str = ""
    """Session Redis, e.g. ``redis://:pw@host:6379/0``; a primary with replicas under Redis
    Sentinel, ``redis+sentinel://[:pw@]host:port[,host:port]/service_name[/db]`` (the Sentinels'
    addresses; the password is the Redis servers': the store asks the Sentinels for the primary on
    every new connection, so it follows a failover by itself); or a Redis Cluster through any node,
    ``redis+cluster://:pw@host:6379``. Empty: ``worldserve up`` starts an embedded one."""
    api_keys_file: str = ""
    """JSON file of hashed API keys (see worldserve.common.auth)."""
    session_ttl_s: int = 24 * 3600
    """Default session TTL in seconds, refreshed on every use. Bounds: 60 .. 30 days."""
    max_upload_bytes: int = 4 * 1024 * 1024
    """Largest uploaded first frame, in bytes. Bounds: 1 KiB .. 64 MiB."""
    max_text_embedding_bytes: int = 16 * 1024 * 1024
    """Largest text embedding a session may carry (``CreateSessionRequest.text_embedding``, kept in
    Redis with the session): Wan's 512 tokens x 4096 in float32 are 8 MiB. Bounds: 1 KiB .. 256 MiB."""
    redis_timeout_s: float = 5.0
    """Socket timeout of Redis operations. Bounds: 0.05 .. 60."""
    redis_wait_replicas: int = 0
    """Replicas that must hold a step (and a new session) before it is acknowledged (Redis
    ``WAIT`` after the append, on its connection). 0: asynchronous replication: a failover to a
    replica loses the steps acknowledged within the replication lag. 1 (a primary with replicas,
    e.g. ``redis+sentinel://``): a failover loses no acknowledged step, for one replica round trip
    per step; with fewer replicas reachable, Steps answer UNAVAILABLE (retried once by request id).
    Not with ``redis+cluster://``. Bounds: 0 .. 8."""
    redis_wait_timeout_s: float = 1.0
    """How long an append waits for ``redis_wait_replicas`` replicas before answering UNAVAILABLE.
    Bounds: 0.001 .. redis_timeout_s."""
    models: tuple[ModelSpec, ...] = DEFAULT_MODELS
    """The dynamics models this cluster serves, each in its own deployment (see ModelSpec)."""
    default_model: str = ""
    """Model a CreateSession without ``model`` binds its session to; empty: the first of ``models``."""
    dynamics_model_path: str = ""
    """Folder with config.json + model.safetensors for models whose ``path`` is empty; empty: the
    shipped trained weights (worldserve/weights/dynamics); "random": random init (seed 0), the only
    way to get one (a missing or corrupt file is a start-up error naming it)."""
    image_model_kind: str = "caption_decoder"
    """Registry name of the image model (``worldserve.image_models`` entry points)."""
    image_model_path: str = ""
    """Folder of the image model; empty: the shipped weights (worldserve/weights/image); "random":
    random init, the only way to get one (a missing or corrupt file is a start-up error naming it)."""
    text_app: str = ""
    """Serve application of the text app (free-text prompts and events, worldserve.text) that the
    sessions, image and dynamics apps call; empty: none is deployed, and free text answers
    FAILED_PRECONDITION "text understanding is not deployed" (grammar prompts and exact event names
    keep working). The serve config sets it where it deploys the text app."""
    text_model_path: str = ""
    """Folder of the text app's language model (Hugging Face layout: config.json,
    model.safetensors, tokenizer files, world.json); empty: the shipped weights
    (worldserve/weights/text). A missing or corrupt file is a start-up error naming it."""
    text_timeout_s: float = 10.0
    """Longest wait for the text app's answer; past it, free text answers UNAVAILABLE. Bounds: 0.1 .. 120."""
    max_batch_size: int = 32
    """Most sessions stepped in one model call. Bounds: 1 .. 1024."""
    max_batch_wait_s: float = 0.0
    """Extra time to wait for a batch to fill once the model is free. 0: continuous batching. Bounds: 0 .. 1."""
    max_queue: int = 1024
    """Steps waiting in a replica before new ones get RESOURCE_EXHAUSTED. Bounds: 1 .. 100000."""
    state_cache_bytes: int = 2 * 1024**3
    """Bytes of per-session model state (KV caches) one model replica keeps (LRU beyond it; on a
    GPU this is device memory the model preallocates). Bounds: 16 MiB .. 1 TiB."""
    batch_invariant: str = "auto"
    """"on": a session's frames are bitwise identical whatever shares its batch (the model runs each
    session's step alone); "off": batched model calls (faster on a GPU; frames may differ in the
    last bit with the batch); "auto": on for CPU, off for CUDA."""
    dtype: str = "auto"
    """Compute dtype of the dynamics models: "auto" (bfloat16 on CUDA, float32 on CPU), "float32",
    "bfloat16" or "float16"."""
    interactive_batch_s: float = 0.1
    """While steps someone waits on (Play, Steps; not StepBatch or Rollout) were queued in the
    last seconds, a model batch is cut to about this much model time (estimated per step from the
    batches before): a step that arrives while a batch runs waits at most about this long. Bulk
    traffic alone gets full batches. Bounds: 0.005 .. 10."""
    play_deadline_ms: int = 1000
    """Frame deadline of a Play step that names none. Bounds: 1 .. 60000."""
    max_rollout_actions: int = 256
    """Most actions in one Rollout. Bounds: 1 .. 10000."""
    device: str = "auto"
    """Where the models run: "auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N"."""
    torch_threads: int = 0
    """torch intra-op threads per model replica; 0: the CPUs this process may use (affinity and
    cgroup quota: a pod's limit, not the node's cores; Ray alone would give 1). Bounds: 0 .. 256."""
    archive_url: str = ""
    """Where sessions' older steps go (worldserve.state.archive): ``file:///path`` or
    ``s3://bucket[/prefix]``; empty: nothing is archived and Redis keeps every step (as long as the
    session lives). ``worldserve up`` sets a folder beside its Redis data."""
    archive_options: Mapping[str, Any] = field(default_factory=dict)
    """Object store options for ``s3://``: endpoint, region, access_key_id, secret_access_key,
    session_token, allow_http (or the usual AWS_* environment variables); the bounds of each call:
    timeout_s (10), connect_timeout_s (2), retry_timeout_s (15: retries with exponential backoff
    stop after it; the archiver then retries the session with backoff of its own)."""
    archive_chunk_steps: int = 64
    """Steps in one archived chunk. Bounds: 1 .. 4096."""
    hot_window_steps: int = 32
    """Archived steps whose action, latent and frame stay in Redis: at least every served model's
    context window (a model with a longer one refuses to load). Bounds: 1 .. 4096."""
    archive_max_tail_steps: int = 4096
    """Most steps of a session not yet archived (an archive that is away or behind): beyond it a
    Step answers RESOURCE_EXHAUSTED, never losing one. Bounds: 2 x archive_chunk_steps .. 1000000."""
    archive_rid_keep_steps: int = 4096
    """Steps whose request ids stay in Redis once archiving trims (exactly-once retries of older
    steps are not recognised). Bounds: 16 .. 1000000."""
    archive_lease_s: float = 30.0
    """How long a session claimed by an archiver is left to it before another may take it: how
    long the sessions a killed sessions replica was archiving wait. Bounds: 1 .. 3600."""
    archive_expired_grace_s: int = 3600
    """A session gone from Redis (its TTL ran out) has its archive deleted by the archiver after
    this many seconds more (chunks forks still read are kept). Bounds: 0 .. 30 days."""
    live_default_fps: float = 10.0
    """Frames/s of a live session (the web gateway's WebSocket play) whose player names none. Bounds: 1 .. 120."""
    live_max_fps: float = 30.0
    """The most frames/s a live session may ask (also bounded by the model's measured step time). Bounds: 1 .. 120."""
    live_max_controllers: int = 4
    """Controllers one live session takes (they share the player by the merge rule); more are
    refused (4409). Spectators are not counted. Bounds: 1 .. 64."""
    live_client_msgs_per_s: float = 60.0
    """Messages a second one live player may send (twice that in a burst); more are dropped for
    that player alone. Bounds: 1 .. 10000."""
    live_token_ttl_s: int = 300
    """Lifetime of a token minted at the gateway's POST /v1/tokens. Bounds: 10 .. 86400."""
    quotas: Quotas = field(default_factory=Quotas)
    """Every tenant's default quotas (a mapping of ``Quotas`` fields in the YAML); a tenant's own
    overrides sit beside its key in the key file (see worldserve.common.quotas)."""

    def __post_init__(self) -> None:
        _bounded("session_ttl_s", self.session_ttl_s, 60, 30 * 24 * 3600)
        _bounded("max_upload_bytes", self.max_upload_bytes, 1024, 64 * 1024 * 1024)
        _bounded("max_text_embedding_bytes", self.max_text_embedding_bytes, 1024, 256 * 1024 * 1024)
        _bounded("redis_timeout_s", self.redis_timeout_s, 0.05, 60)
        _bounded("redis_wait_replicas", self.redis_wait_replicas, 0, 8)
        _bounded("redis_wait_timeout_s", self.redis_wait_timeout_s, 0.001, self.redis_timeout_s)
        if self.redis_wait_replicas and self.redis_url.startswith("redis+cluster://"):
            raise ValueError(
                "redis_wait_replicas > 0 needs a redis:// or redis+sentinel:// redis_url, not redis+cluster://"
            )
        _bounded("text_timeout_s", self.text_timeout_s, 0.1, 120)
        _bounded("max_batch_size", self.max_batch_size, 1, 1024)
        _bounded("max_batch_wait_s", self.max_batch_wait_s, 0, 1)
        _bounded("max_queue", self.max_queue, 1, 100_000)
        _bounded("state_cache_bytes", self.state_cache_bytes, 16 * 1024**2, 1024**4)
        if self.batch_invariant not in ("auto", "on", "off"):
            raise ValueError(f"batch_invariant={self.batch_invariant!r}: expected 'auto', 'on' or 'off'")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: expected one of {DTYPES}")
        models = tuple(ModelSpec.parse(m) for m in self.models)
        object.__setattr__(self, "models", models)
        if not models:
            raise ValueError("models is empty; serve at least one dynamics model")
        names = [m.name for m in models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"models: duplicate names {dupes}")
        if self.default_model and self.default_model not in names:
            raise ValueError(f"default_model={self.default_model!r} is not one of the served models {names}")
        _bounded("max_rollout_actions", self.max_rollout_actions, 1, 10_000)
        _bounded("interactive_batch_s", self.interactive_batch_s, 0.005, 10)
        _bounded("play_deadline_ms", self.play_deadline_ms, 1, 60_000)
        _bounded("live_default_fps", self.live_default_fps, 1, 120)
        _bounded("live_max_fps", self.live_max_fps, 1, 120)
        _bounded("live_max_controllers", self.live_max_controllers, 1, 64)
        _bounded("live_client_msgs_per_s", self.live_client_msgs_per_s, 1, 10_000)
        _bounded("live_token_ttl_s", self.live_token_ttl_s, 10, 86_400)
        object.__setattr__(self, "quotas", Quotas.parse(self.quotas))
        if self.archive_url and not self.archive_url.startswith(("file://", "s3://")):
            raise ValueError(f"archive_url={self.archive_url!r}: expected file:///path or s3://bucket[/prefix]")
        _bounded("archive_chunk_steps", self.archive_chunk_steps, 1, 4096)
        _bounded("hot_window_steps", self.hot_window_steps, 1, 4096)
        _bounded("archive_max_tail_steps", self.archive_max_tail_steps, 2 * self.archive_chunk_steps, 1_000_000)
        _bounded("archive_rid_keep_steps", self.archive_rid_keep_steps, 16, 1_000_000)
        _bounded("archive_lease_s", self.archive_lease_s, 1, 3600)
        _bounded("archive_expired_grace_s", self.archive_expired_grace_s, 0, 30 * 24 * 3600)
        _bounded("torch_threads", self.torch_threads, 0, 256)
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device={self.device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")

    @property
    def default_model_name(self) -> str:
        return self.default_model or self.models[0].name

    def model_spec(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Config:
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
            ("text_model_path", "WORLDSERVE_TEXT_MODEL"),
            ("archive_url", "WORLDSERVE_ARCHIVE_URL"),
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


def torch_dtype(config: Config, device: str) -> torch.dtype:
    """The compute dtype of the dynamics models on ``device``."""
    import torch

    if config.dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    dtype: torch.dtype = getattr(torch, config.dtype)  # a name Config has validated
    return dtype


def batch_invariant(config: Config, device: str, spec: ModelSpec | None = None) -> bool:
    """Whether a model's replica steps each session alone (see ``Config.batch_invariant``); a served
    model's own ``batch_invariant`` ("on"/"off") wins over the cluster's."""
    if spec is not None and spec.batch_invariant:
        return spec.batch_invariant == "on"
    if config.batch_invariant == "auto":
        return not device.startswith("cuda")
    return config.batch_invariant == "on"


def torch_device(config: Config) -> str:
    if config.device != "auto":
        return config.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def setup_torch(config: Config) -> str:
    """Threads and device for a model replica; returns the device."""
    import torch

    torch.set_num_threads(config.torch_threads or available_cpus())
    return torch_device(config)


SHIPPED_WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")


PUBLISHED_KINDS: Mapping[str, str] = {"WanTransformer3DModel": "causal_dit"}
"""diffusers' ``_class_name`` of a published folder's transformer -> the kind that serves it."""


def folder_kind(path: str | os.PathLike[str] | None, default: str) -> str:
    """The ``"kind"`` a model folder's config.json names; for a published diffusers folder, the kind
    that serves its ``transformer/config.json``'s ``_class_name`` (:data:`PUBLISHED_KINDS`); else
    ``default``."""
    if path is None:
        return default
    for name in ("config.json", os.path.join("transformer", "config.json")):
        try:
            with open(os.path.join(path, name)) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        kind = data.get("kind") or PUBLISHED_KINDS.get(str(data.get("_class_name")))
        if isinstance(kind, str) and kind:
            return kind
    return default


def model_path(configured: str, kind: str) -> str | None:
    """The folder to load a model from: ``configured``, ``shipped:NAME`` (the package's
    ``weights/NAME``) or, when empty, the shipped ``weights/<kind>`` (``kind``: "dynamics" or
    "image"); None (random init) only for "random". A missing or corrupt file in the folder is
    the loader's start-up error naming it: nothing falls back to random weights."""
    if configured == "random":
        return None
    if configured.startswith("shipped:"):
        return os.path.join(SHIPPED_WEIGHTS, configured.removeprefix("shipped:"))
    return configured or os.path.join(SHIPPED_WEIGHTS, kind)
