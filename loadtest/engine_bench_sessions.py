"""Part 3 of the engine bench, one run: the replica's scheduler, state cache and runner driven over
N sessions (:func:`bench_sessions`), the models it loads, a session's state bytes and the FLOPs
of one frame.

Split from :mod:`loadtest.engine_bench` (the command), which chooses the runs and reports them.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
import traceback
from collections.abc import Callable
from typing import Any

from loadtest.engine_bench_common import GIB, LARGE_CONFIG, LARGE_QUICK_CONFIG, _is_oom, _sync, log

# --------------------------------------------------------------------------------------------------
# Engine parts: the replica's scheduler and runner


@dataclasses.dataclass(eq=False)
class EngineParts:
    Scheduler: Any
    Runner: Any
    make_job: Callable[..., Any]
    latent_of: Callable[[Any], Any]  # torch latent -> what a window entry holds
    driver: str


def engine_parts() -> EngineParts:
    """The replica's own scheduler and runner (they import neither Ray, Redis nor protobuf)."""
    from worldserve.dynamics.engine.runner import Job, Runner
    from worldserve.dynamics.engine.scheduler import Scheduler
    from worldserve.dynamics.engine.types import Priority, StepRequest

    def make_job(key, step, seed, vec, g):
        req = StepRequest(tenant=key[0], session_id=key[1], priority=Priority.INTERACTIVE)
        return Job(req, key, step, seed, vec, g, event="")

    return EngineParts(
        Scheduler=Scheduler,
        Runner=Runner,
        make_job=make_job,
        latent_of=lambda z: z.numpy(),
        driver="worldserve.dynamics Scheduler + StateCache + Runner (as in a replica)",
    )


# --------------------------------------------------------------------------------------------------
# Loading models


def load_default_model(device: str):
    """The served default model exactly as a replica loads it (registry, Config, dtype)."""
    from worldserve.common.config import Config
    from worldserve.dynamics.registry import load_model

    config = Config.load({"device": device})
    spec = config.model_spec(config.default_model_name)
    return load_model(spec, config, device), config, f"{spec.name} (kind {spec.kind}, registry)"


def load_large_model(device: str, quick: bool):
    """A random-initialised model of the same architecture in the served dtype."""
    import torch

    from worldserve.common.config import Config, torch_dtype
    from worldserve.dynamics.models.transformer import WorldModel, WorldModelConfig

    config = Config.load({"device": device})
    cfg = WorldModelConfig(**(LARGE_QUICK_CONFIG if quick else LARGE_CONFIG))
    dt = torch_dtype(config, device)
    model = None
    if device.startswith("cuda"):
        try:  # initialise on the GPU: faster than ~460M parameters on the CPU
            with torch.device(device):
                model = WorldModel.random(cfg, seed=0)
        except Exception as e:
            log(f"(initialising on {device} failed: {type(e).__name__}: {e}; initialising on the CPU)")
            model = None
    if model is None:
        model = WorldModel.random(cfg, seed=0)
    model = model.to_serving(device, dt)
    label = (
        f"large random (frame {cfg.frame_width}x{cfg.frame_height}, {cfg.frame_tokens} tokens/frame, "
        f"dim {cfg.dim}, {cfg.n_layers} layers, {cfg.n_heads} heads)"
    )
    return model, config, label


# --------------------------------------------------------------------------------------------------
# Part 3: engine throughput


def _actions(model) -> list:
    """A few action vectors the model accepts (its keys in turn; mouse axes if there are no keys)."""
    sp = model.info.action_space
    if sp.keys:
        return [model.action_vector([k]) for k in sp.keys[:4]] + [model.action_vector([])]
    return [model.action_vector([], {a: 0.5 for a in sp.mouse_axes})]


def _window(model, parts: EngineParts, device: str):
    """The latent window a cache miss prefills from: ``context_frames - 1`` frames at steps 0..W-1
    (step 0 without an action, like a session's first frame)."""
    import torch

    info = model.info
    W = max(1, info.context_frames - 1)
    g = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (W, info.frame_height, info.frame_width, 3), generator=g, dtype=torch.uint8)
    lat = model.encode(frames)  # (W, ...) float32 CPU
    keys = list(info.action_space.keys[:1])
    return [(s, None if s == 0 else {"keys": keys}, parts.latent_of(lat[s]), None) for s in range(W)]  # no resume data


def session_state_bytes(model, parts: EngineParts, make_window: Callable[[], list]) -> tuple[int, str]:
    """Bytes of one session's state with a full window, before any run: the model's page size x
    context frames when it reports one, else measured on one prefilled state."""
    info = model.info
    page = (info.extra or {}).get("page_bytes")
    if page:
        return int(page) * info.context_frames, f"{info.context_frames} pages x {int(page) / 2**20:.2f} MiB"
    import torch

    window = make_window()
    lat = torch.stack([torch.as_tensor(z) for _, _, z, _ in window])
    acts = torch.stack([model.null_action() for _ in window])
    st = model.prefill(lat, acts, first_step=0)
    try:
        return int(model.state_nbytes(st)), "measured on one prefilled state"
    finally:
        model.release_state(st)


def flops_per_frame(model, parts: EngineParts, window, device: str) -> int:
    """FLOPs of one frame: ``step`` + ``decode`` at batch 1 with attention forced to SDPA, in SDPA's
    math backend (plain matmuls: the counter sees them on every device and torch version; it has
    no formula for the CPU flash kernel)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from worldserve.dynamics.attention.backend import use_backend

    lat = torch.stack([torch.as_tensor(z) for _, _, z, _ in window])
    acts = torch.stack([model.null_action() for _ in window])
    st = model.prefill(lat, acts, first_step=0)
    try:
        vec = _actions(model)[0][None]
        step = model.state_step(st) + 1
        with use_backend("sdpa"), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
            z = model.step([st], vec, seeds=[0], steps=[step])
            model.decode(z)
        return int(fc.get_total_flops())
    finally:
        model.release_state(st)


def _configure_pool(model, nbytes: int) -> None:
    if hasattr(model, "configure_state_pool"):
        model.configure_state_pool(int(nbytes))


def bench_sessions(
    model,
    parts: EngineParts,
    *,
    n: int,
    batch_invariant: bool,
    max_batch: int,
    budget_s: float,
    window,
    per_session: int,
    mem_avail: float,
    device: str,
    max_rounds: int,
) -> dict:
    """Step ``n`` sessions round after round through scheduler -> state cache -> runner."""
    import torch

    from worldserve.dynamics.engine.state_cache import StateCache

    res: dict = dict(
        sessions=n,
        batch_invariant=batch_invariant,
        max_batch_size=max_batch,
        state_bytes_per_session=per_session,
        state_bytes=n * per_session,
    )
    need = n * per_session
    if need > mem_avail:
        res.update(
            fits=False,
            reason=f"does not fit (needs {need / GIB:.2f} GiB of session state, {mem_avail / GIB:.2f} GiB available)",
        )
        return res
    res["fits"] = True
    _configure_pool(model, need)
    cache = StateCache(model, max(need, 16 * 1024**2))
    sched = parts.Scheduler(max_batch, max(1024, n))
    runner = parts.Runner(model, cache, batch_invariant=batch_invariant)
    acts = _actions(model)
    g = float(model.info.default_guidance)
    W = len(window)
    steps = {(f"t{i % 4}", f"s{i:04d}"): W - 1 for i in range(n)}  # the session's step (state at it)
    seeds = {key: 1000 + i for i, key in enumerate(steps)}
    lat_ms: list[float] = []
    frames = batches = model_calls = evictions = 0
    inflight: list = []

    def one_round(record: bool) -> None:
        nonlocal frames, batches, model_calls, evictions
        for i, key in enumerate(steps):
            job = parts.make_job(key, steps[key], seeds[key], acts[(i + steps[key]) % len(acts)], g)
            entry = cache.get(key, steps[key])
            if entry is not None:
                job.state = entry.state
            else:
                job.window = window
            cache.pin(key)
            sched.submit(key[0], job)
        while sched.depth:
            batch = sched.take_batch()
            inflight[:] = batch
            t0 = time.perf_counter()
            stats = runner.run(batch)
            _sync(device)
            dt = time.perf_counter() - t0
            for j in batch:
                if j.error is not None or j.retry_solo:
                    err = j.error or RuntimeError("batched step failed (retry_solo)")
                    raise err
                cache.put(j.key, j.state, j.event)
                cache.unpin(j.key)
                steps[j.key] += 1
            inflight.clear()
            evictions += getattr(stats, "evictions", 0)
            if record:
                lat_ms.append(dt * 1e3)
                batches += 1
                frames += len(batch)
                model_calls += getattr(stats, "model_calls", 0)

    try:
        from worldserve.dynamics.attention.backend import attention_counts
        from worldserve.dynamics.attention.backend import decode_counts as _decode_counts

        def decode_counts() -> dict:  # decode and full attention calls together (either model kind)
            merged = dict(_decode_counts())
            for k, v in attention_counts().items():
                merged[k] = merged.get(k, 0) + v
            return merged
    except ImportError:
        decode_counts = None
    try:
        t0 = time.perf_counter()
        one_round(False)  # cache misses: prefill + step (+ kernel compilation / autotuning)
        res["first_round_s"] = time.perf_counter() - t0
        one_round(False)  # warm
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(torch.device(device))
        before = decode_counts() if decode_counts else {}
        t_start = time.perf_counter()
        rounds = 0
        while rounds < 1 or (time.perf_counter() - t_start < budget_s and rounds < max_rounds):
            one_round(True)
            rounds += 1
        elapsed = time.perf_counter() - t_start
        after = decode_counts() if decode_counts else {}
        res.update(
            rounds=rounds,
            elapsed_s=elapsed,
            batches=batches,
            frames=frames,
            model_calls=model_calls,
            batches_per_s=batches / elapsed,
            frames_per_s=frames / elapsed,
            model_calls_per_s=model_calls / elapsed,
            p50_batch_ms=statistics.median(lat_ms),
            mean_batch_size=frames / batches,
            evictions=evictions,
            state_nbytes_measured=cache.nbytes,
        )
        res["decode_calls"] = {
            f"{b}/{k}": after.get((b, k), 0) - before.get((b, k), 0)
            for (b, k) in after
            if after.get((b, k), 0) - before.get((b, k), 0)
        }
        last = getattr(model, "last_step_attention", None)
        res["last_step_attention"] = list(last) if last else None
        if device.startswith("cuda"):
            res["peak_mem_gib"] = torch.cuda.max_memory_allocated(torch.device(device)) / GIB
    except Exception as e:
        if _is_oom(e):
            res.update(fits=False, reason=f"does not fit (out of memory while running: {str(e).splitlines()[0][:120]})")
        else:
            res.update(error=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
            traceback.print_exc(limit=8)
    finally:
        for j in inflight:  # states of a failed batch that never reached the cache
            if j.state is not None and j.key not in cache:
                try:
                    model.release_state(j.state)
                except Exception:
                    pass
        cache.clear()
        cache.drain_releases()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return res
