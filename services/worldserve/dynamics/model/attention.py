"""The one attention function the dynamics model calls.

Every attention in the model goes through :func:`attention` (one sequence layout, padded batch)
or :func:`attention_varlen` (ragged batch of sessions, packed); :func:`attention_decode` is the
fused decode step against a padded or a paged KV cache (a pool of pages named per session by a
block table). :func:`resolve_backend` says which backend a call will take; :func:`last_decode` /
:func:`decode_counts` say which decode backend and kernel actually ran. Mask kinds:

- ``"full"``: every query sees every key.
- ``"causal"``: token-level causal; query at absolute position p sees keys at positions <= p.
- ``"frame_causal"``: frame-block-causal; query in frame i (= position // frame_tokens) sees every
  key in frames <= i (spatial attention within a frame, causal over frames).

Queries are aligned to the *end* of the keys unless ``q_start`` says otherwise: query j sits at
absolute position ``q_start + j`` of the key sequence (decode: one new frame of queries against a
KV cache of past frames plus the new frame, so ``q_start = Tk - Tq``).

Optional fused prologue (keyword-only; all functions): ``q_norm_weight``/``k_norm_weight`` (D,)
apply RMSNorm over the head dim (``norm_eps``), then ``rope_cos``/``rope_sin`` rotate the halves
of the head dim (GPT-NeoX layout) by per-key-row angles, shape (B, Tk, D/2) -- queries use the
rows of their positions. The Triton kernels do this on load; SDPA does it unfused first.

Backends
--------
``"triton"``: the kernels in :mod:`worldserve.dynamics.kernels` (flash-style, masked key blocks
skipped). ``"sdpa"``: torch ``scaled_dot_product_attention`` with an explicit boolean mask
(:func:`attention_reference`). Which one runs:

- ``"auto"`` (default): Triton for CUDA tensors in fp16/bf16 with head dim 32, 64 or 128 (the
  variants the AOT gate compiles) when triton is installed; SDPA for everything else -- CPU
  deployments and CI are unchanged. Under ``TRITON_INTERPRET=1``, CPU tensors still go to SDPA
  in ``auto``: the interpreter is orders of magnitude slower and is for tests only, and a test
  session that sets it (``tests/kernels/conftest.py``) must not slow down every other test.
- ``"triton"``: always the kernels; CPU tensors need ``TRITON_INTERPRET=1`` set before the kernel
  modules are first imported (they are imported lazily, on first use). Anything else raises.
- ``"sdpa"``: always SDPA.

If a Triton launch fails in ``auto`` mode (the kernels are compile-gated for sm_90/sm_80 but a
GPU can still refuse one, e.g. out of resources), a ``RuntimeWarning`` is issued once and auto
stays on SDPA for the rest of the process; with the backend forced to ``"triton"`` it raises.

Choose with the environment variable ``WORLDSERVE_ATTENTION=auto|triton|sdpa`` (read on every
call) or, taking precedence, the context manager ``with use_backend("triton"): ...`` (process-wide,
not per thread: it is meant for tests and benchmarks).
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import os
import threading
import warnings
from typing import Callable, Iterator, Literal

import torch
import torch.nn.functional as F

MaskKind = Literal["full", "causal", "frame_causal"]
MASK_KINDS: tuple[str, ...] = ("full", "causal", "frame_causal")
Backend = Literal["auto", "triton", "sdpa"]
BACKENDS: tuple[str, ...] = ("auto", "triton", "sdpa")
BACKEND_ENV = "WORLDSERVE_ATTENTION"

# dtypes / head dims that "auto" sends to Triton on CUDA (kept in sync with kernels._common,
# which is not imported here so that importing the model never imports triton).
_AUTO_DTYPES = (torch.float16, torch.bfloat16)
_AUTO_HEAD_DIMS = (32, 64, 128)

_override_lock = threading.Lock()
_override: list[str] = []  # stack of use_backend() values, innermost last


@contextlib.contextmanager
def use_backend(backend: Backend) -> Iterator[None]:
    """Force the attention backend (``"auto"``, ``"triton"`` or ``"sdpa"``) inside the block.
    Process-wide; nests; takes precedence over ``WORLDSERVE_ATTENTION``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")
    with _override_lock:
        _override.append(backend)
    try:
        yield
    finally:
        with _override_lock:
            # remove this block's entry (the last one equal to it), even if blocks exit out of order
            for i in range(len(_override) - 1, -1, -1):
                if _override[i] == backend:
                    del _override[i]
                    break


def current_backend() -> str:
    """The backend setting in effect: the innermost ``use_backend``, else the env var, else auto."""
    if _override:
        return _override[-1]
    b = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if b not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={b!r}; expected one of {BACKENDS}")
    return b


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


# Set when a Triton launch failed in "auto" mode (e.g. a compile error or out of shared memory
# on a GPU the kernels were never run on): auto then stays on SDPA for the rest of the process.
_triton_failed: str | None = None


def _guarded(launch: Callable[[], torch.Tensor]) -> torch.Tensor | None:
    """Run a Triton launch; in "auto" mode a failure of the kernel itself (not of the caller's
    arguments) warns once, disables Triton for the process and returns None (-> SDPA). A forced
    "triton" backend raises."""
    global _triton_failed
    try:
        return launch()
    except (ValueError, TypeError):
        raise
    except Exception as e:  # noqa: BLE001 -- triton raises many types (CompilationError, OutOfResources, ...)
        if current_backend() != "auto":
            raise
        _triton_failed = f"{type(e).__name__}: {e}"
        warnings.warn(f"Triton attention failed, using torch SDPA from now on: {_triton_failed}", RuntimeWarning,
                      stacklevel=3)
        return None


def _use_triton(q: torch.Tensor, head_dim: int, empty: bool) -> bool:
    backend = current_backend()
    if backend == "sdpa":
        return False
    if backend == "triton":
        if not _triton_installed():
            raise RuntimeError("attention backend 'triton' forced but triton is not installed")
        if not (q.is_cuda or _interpreting()):
            raise RuntimeError(
                "attention backend 'triton' forced for a CPU tensor: needs CUDA tensors, or "
                "TRITON_INTERPRET=1 set before the kernels are first used"
            )
        return not empty
    return (
        q.is_cuda
        and _triton_failed is None
        and not empty
        and q.dtype in _AUTO_DTYPES
        and head_dim in _AUTO_HEAD_DIMS
        and _triton_installed()
    )


def build_mask(
    tq: int, tk: int, *, frame_tokens: int, mask: MaskKind, q_start: int | None = None, device=None
) -> torch.Tensor | None:
    """Boolean mask (Tq, Tk), True where a query may attend; None for ``"full"``."""
    if mask not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {mask!r}; expected one of {MASK_KINDS}")
    if mask == "full":
        return None
    q_start = tk - tq if q_start is None else q_start
    qpos = torch.arange(tq, device=device) + q_start  # (Tq,)
    kpos = torch.arange(tk, device=device)  # (Tk,)
    if mask == "causal":
        return kpos[None, :] <= qpos[:, None]
    return (kpos[None, :] // frame_tokens) <= (qpos[:, None] // frame_tokens)


def qk_prologue_reference(
    x: torch.Tensor,  # (B, H, T, D)
    *,
    norm_weight: torch.Tensor | None = None,  # (D,)
    norm_eps: float = 1e-6,
    rope_cos: torch.Tensor | None = None,  # (B, T, D/2) angles of each row of x
    rope_sin: torch.Tensor | None = None,
) -> torch.Tensor:  # (B, H, T, D)
    """RMSNorm over the head dim (fp32, times the weight), then rotate-half RoPE (GPT-NeoX layout),
    one cast back at the end: what the kernels fuse on load, unfused."""
    weight, eps, cos, sin = norm_weight, norm_eps, rope_cos, rope_sin
    if weight is None and cos is None:
        return x
    xf = x.float()
    if weight is not None:
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    if cos is not None:
        c, s = cos.float()[:, None], sin.float()[:, None]  # broadcast over heads
        x1, x2 = xf.chunk(2, dim=-1)
        xf = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
    return xf.to(x.dtype)


def _fusable(q_norm_weight, k_norm_weight, rope_cos, rope_sin) -> bool | None:
    """True: the kernels can fuse the prologue (they fuse exactly the model's QK RMSNorm + RoPE);
    False: a partial prologue, applied unfused before the kernel; None: no prologue."""
    if (q_norm_weight is None) != (k_norm_weight is None):
        raise ValueError("pass both q_norm_weight and k_norm_weight, or neither")
    if (rope_cos is None) != (rope_sin is None):
        raise ValueError("pass both rope_cos and rope_sin, or neither")
    if q_norm_weight is None and rope_cos is None:
        return None
    return q_norm_weight is not None and rope_cos is not None


def _varlen_q_rows(cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor) -> torch.Tensor:
    """Packed key rows of every packed query (queries aligned to the end of their keys)."""
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    rows = [torch.arange(ck[b + 1] - (cq[b + 1] - cq[b]), ck[b + 1]) for b in range(len(cq) - 1)]
    return torch.cat(rows).to(cu_seqlens_k.device) if rows else torch.zeros(0, dtype=torch.long)


def attention_reference(
    q: torch.Tensor,  # (B, H, Tq, D)
    k: torch.Tensor,  # (B, H, Tk, D)
    v: torch.Tensor,  # (B, H, Tk, D)
    *,
    frame_tokens: int,
    mask: MaskKind = "frame_causal",
    q_start: int | None = None,
    scale: float | None = None,
    q_norm_weight: torch.Tensor | None = None,
    k_norm_weight: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
    rope_cos: torch.Tensor | None = None,
    rope_sin: torch.Tensor | None = None,
) -> torch.Tensor:  # (B, H, Tq, D)
    """torch SDPA with an explicit boolean mask: the CPU path and the kernels' reference."""
    tq, tk = q.shape[-2], k.shape[-2]
    qs = tk - tq if q_start is None else q_start
    if q_norm_weight is not None or rope_cos is not None:
        qc = rope_cos[:, qs: qs + tq] if rope_cos is not None else None
        qn = rope_sin[:, qs: qs + tq] if rope_sin is not None else None
        q = qk_prologue_reference(q, norm_weight=q_norm_weight, norm_eps=norm_eps, rope_cos=qc, rope_sin=qn)
        k = qk_prologue_reference(k, norm_weight=k_norm_weight, norm_eps=norm_eps, rope_cos=rope_cos,
                                        rope_sin=rope_sin)
    m = build_mask(tq, tk, frame_tokens=frame_tokens, mask=mask, q_start=q_start, device=q.device)
    gqa = q.shape[-3] != k.shape[-3]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=scale, enable_gqa=gqa)


def attention(
    q: torch.Tensor,  # (B, H, Tq, D)
    k: torch.Tensor,  # (B, H, Tk, D)
    v: torch.Tensor,  # (B, H, Tk, D)
    *,
    frame_tokens: int,
    mask: MaskKind = "frame_causal",
    q_start: int | None = None,
    scale: float | None = None,
    q_norm_weight: torch.Tensor | None = None,
    k_norm_weight: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
    rope_cos: torch.Tensor | None = None,
    rope_sin: torch.Tensor | None = None,
) -> torch.Tensor:  # (B, H, Tq, D)
    """Masked attention; see the module docstring for mask kinds, query alignment and backends.
    Strided inputs (e.g. ``(B, T, H, D)`` tensors transposed to ``(B, H, T, D)``) are fine."""
    if mask not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {mask!r}; expected one of {MASK_KINDS}")
    pro = dict(q_norm_weight=q_norm_weight, k_norm_weight=k_norm_weight, norm_eps=norm_eps, rope_cos=rope_cos,
               rope_sin=rope_sin)
    if _use_triton(q, q.shape[-1], q.shape[-2] == 0 or k.shape[-2] == 0):
        from worldserve.dynamics.kernels.flash_prefill import flash_attention

        if _fusable(q_norm_weight, k_norm_weight, rope_cos, rope_sin) is False:
            tq, tk = q.shape[-2], k.shape[-2]
            qs = tk - tq if q_start is None else q_start
            qc = rope_cos[:, qs : qs + tq] if rope_cos is not None else None
            qn = rope_sin[:, qs : qs + tq] if rope_sin is not None else None
            q = qk_prologue_reference(q, norm_weight=q_norm_weight, norm_eps=norm_eps, rope_cos=qc, rope_sin=qn)
            k = qk_prologue_reference(k, norm_weight=k_norm_weight, norm_eps=norm_eps, rope_cos=rope_cos,
                                        rope_sin=rope_sin)
            pro = {}
        out = _guarded(lambda: flash_attention(q, k, v, frame_tokens=frame_tokens, mask=mask, q_start=q_start,
                                               scale=scale, **pro))
        if out is not None:
            _attention_counts[("triton", "flash_attention")] += 1
            return out
    _attention_counts[("sdpa", "sdpa")] += 1
    return attention_reference(q, k, v, frame_tokens=frame_tokens, mask=mask, q_start=q_start, scale=scale, **pro)


def attention_varlen(
    q: torch.Tensor,  # (total_q, H, D) packed queries of all sequences
    k: torch.Tensor,  # (total_k, H, D) packed keys
    v: torch.Tensor,  # (total_k, H, D) packed values
    cu_seqlens_q: torch.Tensor,  # (B + 1,) int32 cumulative query lengths
    cu_seqlens_k: torch.Tensor,  # (B + 1,) int32 cumulative key lengths
    *,
    frame_tokens: int,
    mask: MaskKind = "frame_causal",
    scale: float | None = None,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    q_norm_weight: torch.Tensor | None = None,
    k_norm_weight: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
    rope_cos: torch.Tensor | None = None,  # (total_k, D/2), packed like k
    rope_sin: torch.Tensor | None = None,
) -> torch.Tensor:  # (total_q, H, D)
    """Ragged batch: sequence b's queries are aligned to the end of its keys. On Triton this is
    one launch for the whole batch; pass ``max_seqlen_q/k`` (host ints) to avoid a device sync."""
    if mask not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {mask!r}; expected one of {MASK_KINDS}")
    pro = dict(q_norm_weight=q_norm_weight, k_norm_weight=k_norm_weight, norm_eps=norm_eps)
    if _use_triton(q, q.shape[-1], q.shape[0] == 0 or k.shape[0] == 0):
        from worldserve.dynamics.kernels.flash_prefill import flash_attention_varlen

        if _fusable(q_norm_weight, k_norm_weight, rope_cos, rope_sin) is False:
            qr = _varlen_q_rows(cu_seqlens_q, cu_seqlens_k)
            # (T, H, D) -> (1, H, T, D) for the shared prologue helper, and back
            q = qk_prologue_reference(
                q.transpose(0, 1)[None], norm_weight=q_norm_weight, norm_eps=norm_eps,
                rope_cos=rope_cos[qr][None] if rope_cos is not None else None,
                rope_sin=rope_sin[qr][None] if rope_sin is not None else None,
            )[0].transpose(0, 1)
            k = qk_prologue_reference(
                k.transpose(0, 1)[None], norm_weight=k_norm_weight, norm_eps=norm_eps,
                rope_cos=rope_cos[None] if rope_cos is not None else None,
                rope_sin=rope_sin[None] if rope_sin is not None else None,
            )[0].transpose(0, 1)
            pro = dict(norm_eps=norm_eps)
            rope_cos = rope_sin = None
        out = _guarded(lambda: flash_attention_varlen(
            q, k, v, cu_seqlens_q, cu_seqlens_k, frame_tokens=frame_tokens, mask=mask, scale=scale,
            max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, rope_cos=rope_cos, rope_sin=rope_sin, **pro))
        if out is not None:
            return out
    return attention_varlen_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, frame_tokens=frame_tokens, mask=mask,
                                      scale=scale, rope_cos=rope_cos, rope_sin=rope_sin, **pro)


def attention_varlen_reference(
    q: torch.Tensor,  # (total_q, H, D)
    k: torch.Tensor,  # (total_k, H, D)
    v: torch.Tensor,  # (total_k, H, D)
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    *,
    rope_cos: torch.Tensor | None = None,  # (total_k, D/2), packed like k
    rope_sin: torch.Tensor | None = None,
    **kw,
) -> torch.Tensor:  # (total_q, H, D)
    """Per-sequence loop over :func:`attention_reference` (``kw``: its keyword arguments)."""
    out = torch.empty_like(q)
    cq = cu_seqlens_q.tolist()
    ck = cu_seqlens_k.tolist()
    for b in range(len(cq) - 1):
        if cq[b + 1] == cq[b]:
            continue
        qs = q[cq[b] : cq[b + 1]].transpose(0, 1)[None]  # (1, H, tq, D)
        ks = k[ck[b] : ck[b + 1]].transpose(0, 1)[None]
        vs = v[ck[b] : ck[b + 1]].transpose(0, 1)[None]
        rope = {}
        if rope_cos is not None:
            rope = dict(rope_cos=rope_cos[None, ck[b] : ck[b + 1]], rope_sin=rope_sin[None, ck[b] : ck[b + 1]])
        out[cq[b] : cq[b + 1]] = attention_reference(qs, ks, vs, **rope, **kw)[0].transpose(0, 1)
    return out


def attention_decode(
    q: torch.Tensor,  # (B, H, Tn, D) queries of the new frame
    k_new: torch.Tensor,  # (B, H, Tn, D)
    v_new: torch.Tensor,  # (B, H, Tn, D)
    k_cache: torch.Tensor,  # (B, H, Tmax, D) rows [0, cache_seqlens[b]) valid; written in place
    #                         (paged: (P, H, page_size, D) page pool)
    v_cache: torch.Tensor,  # (B, H, Tmax, D) (paged: (P, H, page_size, D))
    cache_seqlens: torch.Tensor,  # (B,) int32 valid cache rows before this step
    *,
    frame_tokens: int,
    mask: MaskKind = "frame_causal",
    scale: float | None = None,
    write_kv: bool = True,
    max_cache_len: int | None = None,
    q_norm_weight: torch.Tensor | None = None,
    k_norm_weight: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
    rope_cos: torch.Tensor | None = None,  # (B, Tn, D/2) angles of the new tokens
    rope_sin: torch.Tensor | None = None,
    block_table: torch.Tensor | None = None,  # (B, max_pages) int32: logical page -> pool page
    page_size: int | None = None,  # cache rows per page (paged only)
    gather_cache: dict | None = None,
) -> torch.Tensor:  # (B, H, Tn, D)
    """One decode step for sessions with uneven cache lengths: the new queries attend to each
    session's cached rows and to the new keys (mask kind applied at absolute positions); with
    ``write_kv`` the new keys (after the prologue) and values are stored at rows
    ``[L_b, L_b + Tn)`` of the caches. ``cache_seqlens`` is not advanced.

    Paged caches: with ``block_table`` (and ``page_size``), ``k_cache``/``v_cache`` are pools of
    pages ``(P, H, page_size, D)``; logical row ``r`` of batch row ``b`` is row ``r % page_size`` of
    page ``block_table[b, r // page_size]``, for reads and for the K/V write. Batch rows may share
    pages (CFG's two branches of one session) when at most one of them writes.

    ``gather_cache`` (paged, SDPA reference only; the kernel ignores it): a dict in which the
    reference keeps each session's pages gathered into contiguous buffers. Pass the same dict to
    calls that read the same pool while the pages they read (rows ``< L_b``) do not change -- e.g.
    one dict per layer for all passes of one model step -- to gather once instead of per call.

    Which backend and kernel ran is recorded: :func:`last_decode` and :func:`decode_counts`
    (see also :func:`resolve_backend`)."""
    if mask not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {mask!r}; expected one of {MASK_KINDS}")
    if (block_table is None) != (page_size is None):
        raise ValueError("pass both block_table and page_size (paged cache), or neither")
    paged = block_table is not None
    if _use_triton(q, q.shape[-1], q.shape[-2] == 0):
        from worldserve.dynamics.kernels.flash_decode import flash_decode

        pro = dict(q_norm_weight=q_norm_weight, k_norm_weight=k_norm_weight, norm_eps=norm_eps, rope_cos=rope_cos,
                   rope_sin=rope_sin)
        if _fusable(q_norm_weight, k_norm_weight, rope_cos, rope_sin) is False:
            q = qk_prologue_reference(q, norm_weight=q_norm_weight, norm_eps=norm_eps, rope_cos=rope_cos,
                                        rope_sin=rope_sin)
            k_new = qk_prologue_reference(k_new, norm_weight=k_norm_weight, norm_eps=norm_eps, rope_cos=rope_cos,
                                        rope_sin=rope_sin)
            pro = {}
        pg = dict(block_table=block_table, page_size=page_size) if paged else {}
        out = _guarded(lambda: flash_decode(q, k_new, v_new, k_cache, v_cache, cache_seqlens, frame_tokens=frame_tokens,
                                            mask=mask, scale=scale, write_kv=write_kv, max_cache_len=max_cache_len,
                                            **pg, **pro))
        if out is not None:
            _record_decode("triton", decode_kernel_name("triton", paged))
            return out
    out = attention_decode_reference(
        q, k_new, v_new, k_cache, v_cache, cache_seqlens, frame_tokens=frame_tokens, mask=mask, scale=scale,
        write_kv=write_kv, q_norm_weight=q_norm_weight, k_norm_weight=k_norm_weight, norm_eps=norm_eps,
        rope_cos=rope_cos, rope_sin=rope_sin, block_table=block_table, page_size=page_size, gather_cache=gather_cache,
    )
    _record_decode("sdpa", decode_kernel_name("sdpa", paged))
    return out


def _sees_everything(tq: int, q_start: int, tk: int, frame_tokens: int, mask: str) -> bool:
    """True when every query (absolute positions q_start .. q_start + tq - 1) sees all tk keys."""
    if mask == "full":
        return True
    if mask == "causal":
        return q_start >= tk - 1
    return (q_start // frame_tokens + 1) * frame_tokens >= tk


def attention_decode_reference(
    q: torch.Tensor,  # (B, H, Tn, D)
    k_new: torch.Tensor,  # (B, Hkv, Tn, D)
    v_new: torch.Tensor,  # (B, Hkv, Tn, D)
    k_cache: torch.Tensor,  # (B, Hkv, Tmax, D) (paged: (P, Hkv, page_size, D))
    v_cache: torch.Tensor,  # (B, Hkv, Tmax, D) (paged: (P, Hkv, page_size, D))
    cache_seqlens: torch.Tensor,  # (B,) valid cache rows before this step
    *,
    frame_tokens: int,
    mask: MaskKind = "frame_causal",
    scale: float | None = None,
    write_kv: bool = True,
    q_norm_weight: torch.Tensor | None = None,
    k_norm_weight: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
    rope_cos: torch.Tensor | None = None,
    rope_sin: torch.Tensor | None = None,
    block_table: torch.Tensor | None = None,  # (B, max_pages) int32
    page_size: int | None = None,
    gather_cache: dict | None = None,  # see attention_decode
    **_ignored,  # launch options of the kernel (max_cache_len, config)
) -> torch.Tensor:  # (B, H, Tn, D)
    """Per-session loop: prologue, cache + new keys, SDPA with an explicit boolean mask (none when
    every new query sees every key, which is the decode case of ``frame_causal`` with a whole new
    frame), then the new (transformed) keys and values written into the cache.

    Paged: each session's valid rows are gathered from its pages (once per distinct
    ``(block table row, length)`` in the call, so CFG branches sharing a session gather once) and
    the new rows are scattered into the pages the table names."""
    B, _, Tn, _ = q.shape
    out = torch.empty_like(q)
    paged = block_table is not None
    if paged:
        if (isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1
                or k_cache.shape[2] != page_size or v_cache.shape != k_cache.shape):
            raise ValueError(f"paged caches must be pools (P, Hkv, page_size={page_size!r}, D), got "
                             f"{tuple(k_cache.shape)} / {tuple(v_cache.shape)}")
        if block_table.dim() != 2 or block_table.shape[0] != B:
            raise ValueError(f"block_table must be (B={B}, max_pages), got {tuple(block_table.shape)}")
        capacity = block_table.shape[1] * page_size
        bt = block_table.to(device=k_cache.device, dtype=torch.long)
        bt_rows = block_table.tolist()
        n_pool = k_cache.shape[0]
    else:
        capacity = k_cache.shape[2]
    gathered: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {} if gather_cache is None else gather_cache
    # the prologue is elementwise per row: batched once, the same numbers as per session
    qp = qk_prologue_reference(q, norm_weight=q_norm_weight, norm_eps=norm_eps, rope_cos=rope_cos, rope_sin=rope_sin)
    kp = qk_prologue_reference(k_new, norm_weight=k_norm_weight, norm_eps=norm_eps, rope_cos=rope_cos,
                               rope_sin=rope_sin)
    for b, L in enumerate(cache_seqlens.tolist()):
        if L + Tn > capacity:
            raise ValueError(f"cache too small: {L} cached + {Tn} new > capacity {capacity}")
        qb, kb = qp[b : b + 1], kp[b : b + 1]
        if paged:
            n_pages = -(-(L + Tn) // page_size)
            used = bt_rows[b][:n_pages]
            if any(not 0 <= p < n_pool for p in used):
                raise ValueError(f"block_table[{b}] names pages outside the pool of {n_pool}: {used}")
            n_read = -(-L // page_size)
            key = (k_cache.data_ptr(), v_cache.data_ptr(), tuple(used[:n_read]), L, Tn)
            if key not in gathered:
                # the session's pages, gathered once per call into (n_read * page + Tn, Hkv, D)
                # buffers (token-major, like a (P, page, Hkv, D) pool); rows [L, L + Tn) are then
                # overwritten by each batch row's new keys. SDPA takes the transposed view.
                idx = bt[b, :n_read]
                bufs = []
                for cache in (k_cache, v_cache):
                    buf = cache.new_empty(n_read * page_size + Tn, cache.shape[1], cache.shape[3])
                    dst = buf[: n_read * page_size].view(n_read, page_size, cache.shape[1], cache.shape[3])
                    rows_major = cache.transpose(1, 2)  # (P, page, Hkv, D)
                    if rows_major.is_contiguous():  # token-major pool: one gather straight into the buffer
                        torch.index_select(rows_major, 0, idx, out=dst)
                    else:
                        dst.copy_(cache.index_select(0, idx).transpose(1, 2))
                    bufs.append(buf)
                gathered[key] = tuple(bufs)
            kbuf, vbuf = gathered[key]
            kbuf[L : L + Tn] = kb[0].transpose(0, 1)
            vbuf[L : L + Tn] = v_new[b].transpose(0, 1)
            keys, vals = kbuf[: L + Tn].transpose(0, 1)[None], vbuf[: L + Tn].transpose(0, 1)[None]
        else:
            keys = torch.cat((k_cache[b : b + 1, :, :L], kb), dim=2)
            vals = torch.cat((v_cache[b : b + 1, :, :L], v_new[b : b + 1]), dim=2)
        m = "full" if _sees_everything(Tn, L, L + Tn, frame_tokens, mask) else mask
        out[b : b + 1] = attention_reference(qb, keys, vals, frame_tokens=frame_tokens, mask=m, q_start=L,
                                             scale=scale)
        if write_kv:
            if paged:
                rows = torch.arange(L, L + Tn, device=k_cache.device)
                pages, within = bt[b, rows // page_size], rows % page_size
                k_cache[pages, :, within] = kb[0].transpose(0, 1)  # (Tn, Hkv, D)
                v_cache[pages, :, within] = v_new[b].transpose(0, 1)
            else:
                k_cache[b, :, L : L + Tn] = kb[0]
                v_cache[b, :, L : L + Tn] = v_new[b]
    return out


# --------------------------------------------------------------------------------------------------
# Which backend / kernel serves a call (the engine's metrics and GetModelInfo report it).

_decode_counts: collections.Counter = collections.Counter()
_attention_counts: collections.Counter = collections.Counter()
_last_decode: tuple[str, str] | None = None


def decode_kernel_name(backend: str, paged: bool) -> str:
    """The name :func:`attention_decode` records for a backend: ``"flash_decode_paged"`` or
    ``"flash_decode"`` (Triton, paged or not), ``"sdpa"`` (the torch reference, either layout)."""
    if backend == "triton":
        return "flash_decode_paged" if paged else "flash_decode"
    return "sdpa"


def _record_decode(backend: str, kernel: str) -> None:
    global _last_decode
    _last_decode = (backend, kernel)
    _decode_counts[(backend, kernel)] += 1


def last_decode() -> tuple[str, str] | None:
    """``(backend, kernel)`` of the most recent :func:`attention_decode` call in this process
    (``("triton", "flash_decode_paged")``, ``("sdpa", "sdpa")``, ...), None before the first.
    Reflects what actually ran, including an auto-mode fallback to SDPA after a Triton failure."""
    return _last_decode


def decode_counts() -> dict[tuple[str, str], int]:
    """Snapshot of how many :func:`attention_decode` calls ran per ``(backend, kernel)`` in this
    process (monotonic; take differences around a region to count it)."""
    return dict(_decode_counts)


def attention_counts() -> dict[tuple[str, str], int]:
    """The same for :func:`attention` (full or masked attention over a sequence, e.g. the
    scroll-canvas U-Net's): ``("triton", "flash_attention")`` or ``("sdpa", "sdpa")``."""
    return dict(_attention_counts)


def resolve_backend(
    q: torch.Tensor | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    head_dim: int | None = None,
) -> str:
    """The backend (``"triton"`` or ``"sdpa"``) the attention functions pick right now for queries
    like ``q`` -- or, without a tensor, on ``device`` in ``dtype`` with ``head_dim`` -- under the
    current setting (``use_backend`` / ``WORLDSERVE_ATTENTION`` / auto rules, including auto's
    switch to SDPA after a Triton failure). A forced ``"triton"`` reports ``"triton"`` even where
    the call itself would raise (CPU tensors without ``TRITON_INTERPRET=1``)."""
    if q is not None:
        is_cuda, dt, hd = q.is_cuda, q.dtype, q.shape[-1] if head_dim is None else head_dim
    else:
        if device is None or dtype is None or head_dim is None:
            raise ValueError("pass a query tensor, or device, dtype and head_dim")
        is_cuda, dt, hd = torch.device(device).type == "cuda", dtype, head_dim
    backend = current_backend()
    if backend != "auto":
        return backend
    auto = (is_cuda and _triton_failed is None and dt in _AUTO_DTYPES and hd in _AUTO_HEAD_DIMS
            and _triton_installed())
    return "triton" if auto else "sdpa"
