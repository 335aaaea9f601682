"""Engine throughput and kernel correctness of one dynamics replica, in process, without Redis or Ray.

Run from the repository root (``PYTHONPATH=services`` where worldserve is not pip-installed)::

    python -m loadtest.engine_bench                          # the served default model, 1/8/32/128 sessions
    python -m loadtest.engine_bench --large                  # a ~460M-parameter random model of the same architecture
    python -m loadtest.engine_bench --device cpu --quick     # tiny sizes, a few seconds (the CPU smoke test)
    python -m loadtest.engine_bench --kernel-check           # Triton decode/prefill kernels vs SDPA only

Engine part: the scheduler (``Scheduler``), the state cache (``StateCache``) and the runner
(``Runner`` + ``Job``) of :mod:`worldserve.dynamics` are driven exactly as ``Engine`` drives them
in a replica (cache lookup -> submit -> ``take_batch`` -> ``Runner.run`` -> ``cache.put``), minus
Redis: every session starts with a full latent window (``context_frames - 1`` frames, the engine's
cache-miss window) and is then stepped round after round. Reported per session count: model
batches per second, frames per second, the p50 latency of one batch, and beside each the FLOP-count
bound: FLOPs of one frame (``step`` + ``decode`` at batch 1, attention forced to SDPA, counted by
``torch.utils.flop_counter.FlopCounterMode``) against the device's peak dense bf16 FLOP/s.

Each session's state bytes are computed before a run; a run whose states do not fit in memory is
reported as "does not fit (needs X GiB)" instead of being attempted.

Only the declared model interface (:class:`worldserve.dynamics.interface.DynamicsModelProtocol`) is used,
plus ``configure_state_pool`` where the model has it. It needs torch, numpy, pillow, grpcio and
safetensors (a GPU image has them; not Ray, Redis or protobuf): a part whose imports fail is
reported SKIPPED with the missing packages named.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

GIB = 1024**3

# Peak dense (no sparsity) bf16 tensor FLOP/s by device name; the first substring that matches wins.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
)
FALLBACK_GPU_PEAK = 989e12  # an unknown GPU: assume an H200 (said so in the output)
CPU_FLOPS_PER_CORE = 2.5e9 * 32  # nominal: 2.5 GHz x two 8-lane fp32 FMA units

# bf16 kernel tolerance of the repository's kernel tests (tests/dynamics/attention/_kernel_testutil.py):
# |out - ref_fp32| <= ATOL + RTOL * |ref_fp32| elementwise.
KERNEL_TOL = {"bfloat16": (2e-2, 2e-2), "float16": (2e-3, 2e-3), "float32": (2e-5, 2e-5)}

# The large configuration: same architecture, ~460M parameters, 640x360 frames -> 80x45 = 3600 tokens.
LARGE_CONFIG = dict(
    frame_height=360,
    frame_width=640,
    downsample=8,
    latent_channels=16,
    dim=1536,
    n_heads=12,
    n_layers=16,
    context_frames=16,
    sample_steps=4,
    guidance=2.0,
)
# --quick stand-in of the large configuration (CPU smoke test): the same code path, tiny sizes.
LARGE_QUICK_CONFIG = dict(
    frame_height=32,
    frame_width=64,
    downsample=8,
    latent_channels=8,
    dim=128,
    n_heads=2,
    n_layers=2,
    context_frames=8,
    sample_steps=2,
    guidance=2.0,
    ae_channels=8,
    event_dim=0,
)


def log(msg: str = "") -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------------
# Missing packages on a bare machine


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package (google.protobuf)
        return False


OPTIONAL = {
    "numpy": "numpy",
    "PIL": "pillow",
    "safetensors": "safetensors",
    "grpc": "grpcio",
    "google.protobuf": "protobuf",
    "triton": "triton",
}


def missing_packages() -> list[str]:
    """pip names of the optional packages that are not importable here."""
    return [pip for mod, pip in OPTIONAL.items() if not _has(mod)]


# --------------------------------------------------------------------------------------------------
# Device facts


def gpu_peak_flops(name: str) -> tuple[float, str]:
    """(peak dense bf16 FLOP/s, where the figure comes from) of a GPU by its device name."""
    for key, value in PEAK_BF16_FLOPS:
        if key in name:
            return value, f"{name}: {value / 1e12:.0f} TFLOP/s dense bf16 (table)"
    return FALLBACK_GPU_PEAK, f"{name}: not in the table, assuming {FALLBACK_GPU_PEAK / 1e12:.0f} TFLOP/s (H200)"


def peak_flops(device: str) -> tuple[float, str]:
    """(peak dense bf16 FLOP/s, where the figure comes from) of ``device``."""
    import torch

    if device.startswith("cuda"):
        return gpu_peak_flops(torch.cuda.get_device_name(torch.device(device)))
    cores = torch.get_num_threads()
    value = cores * CPU_FLOPS_PER_CORE
    return value, f"CPU, {cores} threads: nominal {value / 1e12:.2f} TFLOP/s fp32 (rough)"


def device_memory_available(device: str, override_gib: float | None) -> float:
    """Bytes available for session state on ``device`` now (an override wins)."""
    import torch

    if override_gib is not None:
        return override_gib * GIB
    if device.startswith("cuda"):
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        cached = torch.cuda.memory_reserved(torch.device(device)) - torch.cuda.memory_allocated(torch.device(device))
        return float(free + cached)
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError):
        return float("inf")


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def _is_oom(e: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(e, oom) or "out of memory" in str(e).lower()


# --------------------------------------------------------------------------------------------------
# Part 1: kernel correctness against SDPA


def _kernel_shapes(quick_cpu: bool) -> list[tuple[str, dict]]:
    """(label, dict(F, D, H, C)) of the served default model and of the large config."""
    from worldserve.dynamics.models.transformer.config import WorldModelConfig

    if quick_cpu:  # interpreter: tiny
        return [("tiny (interpreter)", dict(F=16, D=64, H=2, C=4))]
    shapes = []
    try:
        from worldserve.common.config import model_path

        path = model_path("shipped:transformer", "dynamics")
        data = json.loads(open(os.path.join(path, "config.json")).read()) if path else {}
        default = WorldModelConfig.from_dict(data)
    except Exception:
        default = WorldModelConfig()
    for label, cfg in (("default", default), ("large", WorldModelConfig(**LARGE_CONFIG))):
        shapes.append(
            (
                f"{label} (F={cfg.frame_tokens} D={cfg.head_dim} H={cfg.n_heads} ctx={cfg.context_frames})",
                dict(F=cfg.frame_tokens, D=cfg.head_dim, H=cfg.n_heads, C=cfg.context_frames),
            )
        )
    return shapes


def _compare(name: str, got, ref_lp, ref32, tol: tuple[float, float]) -> tuple[bool, str]:
    atol, rtol = tol
    g, r32 = got.float(), ref32.float()
    err = (g - r32).abs()
    ok = bool(torch_all_finite(g)) and bool((err <= atol + rtol * r32.abs()).all())
    e_lp = (g - ref_lp.float()).abs().max().item()
    e_ref = (ref_lp.float() - r32).abs().max().item()
    line = (
        f"  {name:44s} max|triton - sdpa|={e_lp:.3e}  max|triton - sdpa_fp32|={err.max().item():.3e}  "
        f"(sdpa vs fp32: {e_ref:.3e})  tol {atol:g}+{rtol:g}*|ref|  {'PASS' if ok else 'FAIL'}"
    )
    return ok, line


def torch_all_finite(x) -> bool:
    import torch

    return bool(torch.isfinite(x).all())


def kernel_check(device: str, dtype_name: str, quick_cpu: bool) -> bool:
    """Triton decode (paged, fused prologue, KV write) and prefill (dense + varlen) vs SDPA."""
    import torch

    from worldserve.dynamics.attention import backend as A

    dt = getattr(torch, dtype_name)
    tol = KERNEL_TOL[dtype_name]
    paged = "block_table" in inspect.signature(A.attention_decode).parameters
    if not paged:
        log("  NOTE: attention_decode has no block_table/page_size yet: checking the unpaged decode call")
    all_ok = True
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dt)

    def run(backend: str, fn: Callable[[], Any]):
        with A.use_backend(backend):
            out = fn()
        _sync(device)
        return out

    for label, s in _kernel_shapes(quick_cpu):
        F_, D, H, C = s["F"], s["D"], s["H"], s["C"]
        log(f"- {label}, {dtype_name} on {device}")
        # ---- decode: S sessions with uneven windows, pages scattered over a pool ----
        S = 3
        lens_frames = [C - 1, max(1, (C - 1) // 2), 1]
        P = S * C + 2
        try:
            kpool, vpool = rnd(P, H, F_, D), rnd(P, H, F_, D)
            bt = torch.randperm(P, generator=gen)[: S * C].view(S, C).to(torch.int32).to(device)
            lens = torch.tensor([n * F_ for n in lens_frames], dtype=torch.int32, device=device)
            qn, kn = 1 + rnd(D, scale=0.1), 1 + rnd(D, scale=0.1)
            ang = torch.randn(S, F_, D // 2, generator=gen).to(device) * 3.0
            cos, sin = ang.cos(), ang.sin()  # fp32 tables, as the model passes them
            max_len = max(lens_frames) * F_

            def decode_call(q, k, v, kp, vp, bt_, lens_, cos_, sin_, write_kv):
                kw = dict(
                    frame_tokens=F_,
                    mask="frame_causal",
                    write_kv=write_kv,
                    max_cache_len=max_len,
                    q_norm_weight=qn.to(q.dtype),
                    k_norm_weight=kn.to(q.dtype),
                    norm_eps=1e-6,
                    rope_cos=cos_,
                    rope_sin=sin_,
                )
                if paged:
                    return A.attention_decode(q, k, v, kp, vp, lens_, block_table=bt_, page_size=F_, **kw)
                # unpaged: gather each row's pages into a padded (B, H, C*F, D) cache
                idx = bt_.long()
                kc = kp[idx].permute(0, 2, 1, 3, 4).flatten(2, 3).contiguous()
                vc = vp[idx].permute(0, 2, 1, 3, 4).flatten(2, 3).contiguous()
                return A.attention_decode(q, k, v, kc, vc, lens_, **kw)

            for write_kv, rows in ((False, 2), (True, 1)):  # CFG pass (two rows per session), commit pass
                B = S * rows
                # the model's layout: (B, F, H, D) projections viewed as (B, H, F, D)
                q, k, v = (rnd(B, F_, H, D).transpose(1, 2) for _ in range(3))
                args = (bt.repeat(rows, 1), lens.repeat(rows), cos.repeat(rows, 1, 1), sin.repeat(rows, 1, 1))
                outs = {}
                for backend, cast in (("triton", dt), ("sdpa", dt), ("sdpa32", torch.float32)):
                    kp, vp = kpool.clone().to(cast), vpool.clone().to(cast)
                    o = run(
                        "triton" if backend == "triton" else "sdpa",
                        lambda: decode_call(
                            q.to(cast), k.to(cast), v.to(cast), kp, vp, args[0], args[1], args[2], args[3], write_kv
                        ),
                    )
                    outs[backend] = (o, kp, vp)
                name = f"decode {'paged' if paged else 'padded'} {'commit(write_kv)' if write_kv else 'CFG'} B={B}"
                ok, line = _compare(name + " out", outs["triton"][0], outs["sdpa"][0], outs["sdpa32"][0], tol)
                log(line)
                all_ok &= ok
                if write_kv and paged:
                    ok, line = _compare(name + " K pages", outs["triton"][1], outs["sdpa"][1], outs["sdpa32"][1], tol)
                    log(line)
                    all_ok &= ok
                    ok, line = _compare(name + " V pages", outs["triton"][2], outs["sdpa"][2], outs["sdpa32"][2], tol)
                    log(line)
                    all_ok &= ok
                del outs
        except Exception as e:
            all_ok &= _report_failure("decode", e)
        # ---- prefill: C frames, frame-causal; and a ragged pair (C and C/2 frames) ----
        try:
            T = C * F_
            q, k, v = (rnd(1, T, H, D).transpose(1, 2) for _ in range(3))
            outs = {
                b: run(
                    "triton" if b == "triton" else "sdpa",
                    lambda: A.attention(q.to(c), k.to(c), v.to(c), frame_tokens=F_, mask="frame_causal"),
                )
                for b, c in (("triton", dt), ("sdpa", dt), ("sdpa32", torch.float32))
            }
            ok, line = _compare(f"prefill frame_causal T={T}", outs["triton"], outs["sdpa"], outs["sdpa32"], tol)
            log(line)
            all_ok &= ok
            outs = q = k = v = None  # freed before the next shape
        except Exception as e:
            all_ok &= _report_failure("prefill", e)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        try:
            n_fr = [C, max(1, C // 2)]
            cu = torch.tensor([0, n_fr[0] * F_, (n_fr[0] + n_fr[1]) * F_], dtype=torch.int32, device=device)
            tot, mx = int(cu[-1]), max(n_fr) * F_
            q, k, v = rnd(tot, H, D), rnd(tot, H, D), rnd(tot, H, D)
            outs = {
                b: run(
                    "triton" if b == "triton" else "sdpa",
                    lambda: A.attention_varlen(
                        q.to(c),
                        k.to(c),
                        v.to(c),
                        cu,
                        cu,
                        frame_tokens=F_,
                        mask="frame_causal",
                        max_seqlen_q=mx,
                        max_seqlen_k=mx,
                    ),
                )
                for b, c in (("triton", dt), ("sdpa", dt), ("sdpa32", torch.float32))
            }
            ok, line = _compare(f"prefill varlen frames={n_fr}", outs["triton"], outs["sdpa"], outs["sdpa32"], tol)
            log(line)
            all_ok &= ok
            outs = q = k = v = None  # freed before the next shape
        except Exception as e:
            all_ok &= _report_failure("prefill varlen", e)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    counts = {f"{b}/{k}": n for (b, k), n in A.decode_counts().items()} if hasattr(A, "decode_counts") else {}
    log(f"  decode calls by backend/kernel in this check: {counts}")
    return all_ok


def _report_failure(what: str, e: BaseException) -> bool:
    """Print a failed check; an out-of-memory reference is a skip (True), anything else a failure."""
    if _is_oom(e):
        log(f"  {what}: SKIPPED (out of memory: {str(e).splitlines()[0][:160]})")
        return True
    log(f"  {what}: FAIL ({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''})")
    traceback.print_exc(limit=6)
    return False


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
    return [(s, None if s == 0 else {"keys": keys}, parts.latent_of(lat[s])) for s in range(W)]


def session_state_bytes(model, parts: EngineParts, make_window: Callable[[], list]) -> tuple[int, str]:
    """Bytes of one session's state with a full window, before any run: the model's page size x
    context frames when it reports one, else measured on one prefilled state."""
    info = model.info
    page = (info.extra or {}).get("page_bytes")
    if page:
        return int(page) * info.context_frames, f"{info.context_frames} pages x {int(page) / 2**20:.2f} MiB"
    import torch

    window = make_window()
    lat = torch.stack([torch.as_tensor(z) for _, _, z in window])
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

    lat = torch.stack([torch.as_tensor(z) for _, _, z in window])
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


def _row(r: dict, bound_fps: float) -> str:
    n = r["sessions"]
    mode = "invariant" if r["batch_invariant"] else "batched"
    head = f"  {n:4d} sessions  {mode:9s}"
    if not r.get("fits", True):
        return f"{head}  {r['reason']}"
    if "error" in r:
        return f"{head}  FAILED: {r['error']}"
    bound_bps = bound_fps / r["mean_batch_size"]
    return (
        f"{head}  batches/s {r['batches_per_s']:8.2f} (bound {bound_bps:9.1f}, {100 * r['batches_per_s'] / bound_bps:5.1f}%)"
        f"  frames/s {r['frames_per_s']:9.1f} (bound {bound_fps:9.1f}, {100 * r['frames_per_s'] / bound_fps:5.1f}%)"
        f"  p50 batch {r['p50_batch_ms']:8.2f} ms (bound {1e3 * r['mean_batch_size'] / bound_fps:8.3f} ms)"
        f"  batch {r['mean_batch_size']:.0f}  model calls/s {r['model_calls_per_s']:.1f}"
        + f"  first round (prefill + compile) {r['first_round_s']:.1f} s"
        + (f"  peak mem {r['peak_mem_gib']:.1f} GiB" if "peak_mem_gib" in r else "")
        + (f"  evictions {r['evictions']}" if r.get("evictions") else "")
    )


def engine_bench(args, device: str) -> tuple[bool, dict]:
    """Part 3 (+ part 4: which attention backend / kernel served the steps)."""
    import torch

    parts = engine_parts()
    log(f"driver: {parts.driver}")
    t_load = time.perf_counter()
    if args.large:
        model, config, label = load_large_model(device, args.quick)
    else:
        model, config, label = load_default_model(device)
    load_s = time.perf_counter() - t_load
    from worldserve.common.config import batch_invariant as replica_batch_invariant

    info, rt = model.info, model.runtime
    log(
        f"model: {label}; {info.parameters / 1e6:.1f}M parameters; {info.frame_width}x{info.frame_height} frames; "
        f"context {info.context_frames}; {info.sample_steps} sample steps; guidance {info.default_guidance}; "
        f"loaded in {load_s:.1f} s"
    )
    log(
        f"runtime: device={rt.device} dtype={rt.dtype} attention_backend={rt.attention_backend} "
        f"decode_kernel={rt.decode_kernel or '-'}"
    )
    default_inv = replica_batch_invariant(config, device)
    max_batch = args.max_batch_size or config.max_batch_size
    log(
        f"replica settings: max_batch_size={max_batch} batch_invariant={'on' if default_inv else 'off'} "
        f"(config default for {device})"
    )
    per_session, how = session_state_bytes(model, parts, lambda: _window(model, parts, device))
    log(f"session state: {per_session / 2**20:.1f} MiB per session ({how})")
    _configure_pool(model, per_session)  # probes below need one session, not the default pool
    window = _window(model, parts, device)
    peak, peak_src = peak_flops(device)
    fpf = flops_per_frame(model, parts, window, device)
    bound_fps = peak / fpf if fpf else float("nan")
    log(f"FLOPs per frame (step + decode, batch 1, SDPA, FlopCounterMode): {fpf / 1e9:.3f} GFLOP")
    log(f"peak: {peak_src}; bound = peak / FLOPs per frame = {bound_fps:.1f} frames/s")

    mem_avail0 = device_memory_available(device, args.state_memory_gib)
    reserve = 0.0
    if args.state_memory_gib is None and device.startswith("cuda"):
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
        reserve = max(4 * GIB, 0.10 * total)  # activations, workspace, allocator slack
    runs: list[tuple[int, bool]] = [(n, default_inv) for n in args.sessions]
    inv_n = None
    if not args.large and not args.no_invariant_check:
        inv_n = 32 if 32 in args.sessions or not args.quick else max(args.sessions)
        if (inv_n, default_inv) not in runs:
            runs.append((inv_n, default_inv))
        runs.append((inv_n, not default_inv))
    results = []
    t_begin = time.perf_counter()
    budget_left = float(args.time_budget_s)
    for i, (n, inv) in enumerate(runs):
        spent = time.perf_counter() - t_begin
        share = max(0.2, (args.time_budget_s - spent) / (len(runs) - i) * 0.6)  # warm-up rounds take the rest
        if args.state_memory_gib is None:
            # the model's current state pool (the previous run's) is freed when the next one is configured
            stats = getattr(model, "state_pool_stats", None)
            pool_bytes = int(stats()["bytes"]) if callable(stats) else 0
            mem_avail = device_memory_available(device, None) + pool_bytes - reserve
        else:
            mem_avail = mem_avail0
        r = bench_sessions(
            model,
            parts,
            n=n,
            batch_invariant=inv,
            max_batch=max_batch,
            budget_s=share,
            window=window,
            per_session=per_session,
            mem_avail=mem_avail,
            device=device,
            max_rounds=args.max_rounds,
        )
        r["bound_frames_per_s"] = bound_fps
        if r.get("frames_per_s"):
            r["frames_achieved_fraction"] = r["frames_per_s"] / bound_fps
        results.append(r)
        log(_row(r, bound_fps))
        budget_left = args.time_budget_s - (time.perf_counter() - t_begin)
    ok = all("error" not in r for r in results)
    summary: dict = dict(
        model=label,
        device=device,
        driver=parts.driver,
        parameters=info.parameters,
        runtime=dataclasses.asdict(rt) if dataclasses.is_dataclass(rt) else str(rt),
        flops_per_frame=fpf,
        peak_flops=peak,
        peak_source=peak_src,
        bound_frames_per_s=bound_fps,
        state_bytes_per_session=per_session,
        runs=results,
        budget_left_s=budget_left,
    )
    if inv_n is not None:
        a = next((r for r in results if r["sessions"] == inv_n and r["batch_invariant"]), None)
        b = next((r for r in results if r["sessions"] == inv_n and not r["batch_invariant"]), None)
        if a and b and a.get("frames_per_s") and b.get("frames_per_s"):
            cost = b["frames_per_s"] / a["frames_per_s"]
            summary["batch_invariant_cost"] = cost
            log(
                f"batch-invariant mode at {inv_n} sessions: {a['frames_per_s']:.1f} frames/s vs {b['frames_per_s']:.1f} "
                f"batched: throughput cost {100 * (1 - 1 / cost):.0f}% (batched / invariant = {cost:.2f}x)"
            )
    # part 4: what served the steps
    calls: dict[str, int] = {}
    for r in results:
        for k, v in (r.get("decode_calls") or {}).items():
            calls[k] = calls.get(k, 0) + v
    rt = model.runtime
    last = getattr(model, "last_step_attention", None)
    summary["decode_calls"] = calls
    triton_calls = sum(v for k, v in calls.items() if k.startswith("triton/"))
    log(
        f"served step: runtime.attention_backend={rt.attention_backend} runtime.decode_kernel={rt.decode_kernel or '-'}"
        f" last_step_attention={tuple(last) if last else None}"
    )
    log(f"attention calls (decode and full) in the timed rounds by backend/kernel: {calls or '(no counter)'}")
    if device.startswith("cuda"):
        # bf16 on CUDA must be served by the Triton kernels: SDPA here means they were not used
        # (not selected, or auto mode fell back after a failed launch)
        ran = triton_calls > 0
        sdpa_calls = sum(v for k, v in calls.items() if not k.startswith("triton/"))
        log(
            f"Triton attention kernel ran: {'YES' if ran else 'NO'} ({triton_calls} calls"
            + (f"; WARNING: {sdpa_calls} attention calls ran on SDPA" if sdpa_calls else "")
            + ")"
        )
        ok &= ran and not sdpa_calls and rt.attention_backend == "triton"
    else:
        log(
            f"Triton attention kernel ran: {'yes' if triton_calls else 'no'} ({triton_calls} calls; "
            f"{'expected on CPU' if not device.startswith('cuda') else 'backend is ' + rt.attention_backend})"
        )
    return ok, summary


# --------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtest.engine_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when present")
    ap.add_argument("--sessions", nargs="+", type=int, default=None, help="concurrent sessions (1 8 32 128)")
    ap.add_argument("--large", action="store_true", help="the large random configuration instead of the default model")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and a short budget (CPU smoke test)")
    ap.add_argument("--time-budget-s", type=float, default=None, help="seconds of timed rounds over all runs")
    ap.add_argument("--max-batch-size", type=int, default=0, help="default: the config's max_batch_size")
    ap.add_argument("--max-rounds", type=int, default=200, help="most timed rounds per run")
    ap.add_argument(
        "--state-memory-gib",
        type=float,
        default=None,
        help="memory for session state (default: free device memory minus a reserve)",
    )
    ap.add_argument("--no-invariant-check", action="store_true", help="skip the batch-invariant comparison")
    ap.add_argument("--kernel-check", action="store_true", help="only the Triton kernels vs SDPA check")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (default: torch's; 1 with --quick on CPU)"
    )
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args(argv)
    if a.sessions is None:
        a.sessions = [1, 4] if a.quick else [1, 8, 32, 128]
    if any(n < 1 for n in a.sessions):
        ap.error(f"--sessions must be positive, got {a.sessions}")
    if a.time_budget_s is None:
        a.time_budget_s = 3.0 if a.quick else 90.0
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    miss = missing_packages()
    try:
        import torch
    except ImportError:
        log("engine_bench: torch is not installed; nothing to do (SKIPPED)")
        return 0
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        log("engine_bench: --device cuda but no CUDA device is available")
        return 2
    if args.kernel_check and device == "cpu":
        if "triton" in miss:
            log("kernel check: SKIPPED (triton is not installed)")
            return 0
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernel modules are imported
    threads = args.threads or (1 if args.quick and device == "cpu" else 0)
    if threads:
        torch.set_num_threads(threads)  # a tiny model on a busy CPU: extra threads only contend
    log(
        f"engine_bench: device={device} torch={torch.__version__} python={sys.version.split()[0]}"
        + (f" gpu={torch.cuda.get_device_name()}" if device == "cuda" else f" threads={torch.get_num_threads()}")
    )
    log(f"optional packages missing: {', '.join(miss) if miss else 'none'}")
    t0 = time.perf_counter()
    try:
        if args.kernel_check:
            dtype = "bfloat16" if device == "cuda" else "float32"  # the interpreter's bf16 is broken
            ok = kernel_check(device, dtype, quick_cpu=device == "cpu")
            summary = {"kernel_check": ok}
            log(f"kernel check: {'PASS' if ok else 'FAIL'} ({time.perf_counter() - t0:.1f} s)")
        else:
            ok, summary = engine_bench(args, device)
            log(f"engine bench: {'PASS' if ok else 'FAIL'} ({time.perf_counter() - t0:.1f} s)")
    except ImportError as e:
        log(f"engine_bench: SKIPPED: cannot import what this part needs ({e}); missing: {miss}")
        return 0
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2, default=str)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
