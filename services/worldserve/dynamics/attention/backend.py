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
``"triton"``: the kernels in :mod:`worldserve.dynamics.attention.kernels` (flash-style, masked key blocks
skipped). ``"sdpa"``: torch ``scaled_dot_product_attention`` with an explicit boolean mask
(:func:`attention_reference`). Which one runs:

- ``"auto"`` (default): Triton for CUDA tensors in fp16/bf16 with head dim 32, 64 or 128 (the
  variants the AOT gate compiles) when triton is installed; SDPA for everything else -- CPU
  deployments and CI are unchanged. Under ``TRITON_INTERPRET=1``, CPU tensors still go to SDPA
  in ``auto``: the interpreter is orders of magnitude slower and is for tests only, and a test
  session that sets it (``tests/dynamics/attention/conftest.py``) must not slow down every other test.
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
from collections.abc import Callable, Iterator
from typing import Literal

import torch

from worldserve.dynamics.attention.reference import (  # noqa: F401 (re-exported)
    MASK_KINDS,
    MaskKind,
    _sees_everything,
    _varlen_q_rows,
    attention_decode_reference,
    attention_reference,
    attention_varlen_reference,
    build_mask,
    qk_prologue_reference,
)

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
    except Exception as e:
        if current_backend() != "auto":
            raise
        _triton_failed = f"{type(e).__name__}: {e}"
        warnings.warn(
            f"Triton attention failed, using torch SDPA from now on: {_triton_failed}", RuntimeWarning, stacklevel=3
        )
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
    pro = dict(
        q_norm_weight=q_norm_weight,
        k_norm_weight=k_norm_weight,
        norm_eps=norm_eps,
        rope_cos=rope_cos,
        rope_sin=rope_sin,
    )
    if _use_triton(q, q.shape[-1], q.shape[-2] == 0 or k.shape[-2] == 0):
        from worldserve.dynamics.attention.kernels.flash_prefill import flash_attention

        if _fusable(q_norm_weight, k_norm_weight, rope_cos, rope_sin) is False:
            tq, tk = q.shape[-2], k.shape[-2]
            qs = tk - tq if q_start is None else q_start
            qc = rope_cos[:, qs : qs + tq] if rope_cos is not None else None
            qn = rope_sin[:, qs : qs + tq] if rope_sin is not None else None
            q = qk_prologue_reference(q, norm_weight=q_norm_weight, norm_eps=norm_eps, rope_cos=qc, rope_sin=qn)
            k = qk_prologue_reference(
                k, norm_weight=k_norm_weight, norm_eps=norm_eps, rope_cos=rope_cos, rope_sin=rope_sin
            )
            pro = {}
        out = _guarded(
            lambda: flash_attention(q, k, v, frame_tokens=frame_tokens, mask=mask, q_start=q_start, scale=scale, **pro)
        )
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
        from worldserve.dynamics.attention.kernels.flash_prefill import flash_attention_varlen

        if _fusable(q_norm_weight, k_norm_weight, rope_cos, rope_sin) is False:
            qr = _varlen_q_rows(cu_seqlens_q, cu_seqlens_k)
            # (T, H, D) -> (1, H, T, D) for the shared prologue helper, and back
            q = qk_prologue_reference(
                q.transpose(0, 1)[None],
                norm_weight=q_norm_weight,
                norm_eps=norm_eps,
                rope_cos=rope_cos[qr][None] if rope_cos is not None else None,
                rope_sin=rope_sin[qr][None] if rope_sin is not None else None,
            )[0].transpose(0, 1)
            k = qk_prologue_reference(
                k.transpose(0, 1)[None],
                norm_weight=k_norm_weight,
                norm_eps=norm_eps,
                rope_cos=rope_cos[None] if rope_cos is not None else None,
                rope_sin=rope_sin[None] if rope_sin is not None else None,
            )[0].transpose(0, 1)
            pro = dict(norm_eps=norm_eps)
            rope_cos = rope_sin = None
        out = _guarded(
            lambda: flash_attention_varlen(
                q,
                k,
                v,
                cu_seqlens_q,
                cu_seqlens_k,
                frame_tokens=frame_tokens,
                mask=mask,
                scale=scale,
                max_seqlen_q=max_seqlen_q,
                max_seqlen_k=max_seqlen_k,
                rope_cos=rope_cos,
                rope_sin=rope_sin,
                **pro,
            )
        )
        if out is not None:
            return out
    return attention_varlen_reference(
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        frame_tokens=frame_tokens,
        mask=mask,
        scale=scale,
        rope_cos=rope_cos,
        rope_sin=rope_sin,
        **pro,
    )


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
        from worldserve.dynamics.attention.kernels.flash_decode import flash_decode

        pro = dict(
            q_norm_weight=q_norm_weight,
            k_norm_weight=k_norm_weight,
            norm_eps=norm_eps,
            rope_cos=rope_cos,
            rope_sin=rope_sin,
        )
        if _fusable(q_norm_weight, k_norm_weight, rope_cos, rope_sin) is False:
            q = qk_prologue_reference(
                q, norm_weight=q_norm_weight, norm_eps=norm_eps, rope_cos=rope_cos, rope_sin=rope_sin
            )
            k_new = qk_prologue_reference(
                k_new, norm_weight=k_norm_weight, norm_eps=norm_eps, rope_cos=rope_cos, rope_sin=rope_sin
            )
            pro = {}
        pg = dict(block_table=block_table, page_size=page_size) if paged else {}
        out = _guarded(
            lambda: flash_decode(
                q,
                k_new,
                v_new,
                k_cache,
                v_cache,
                cache_seqlens,
                frame_tokens=frame_tokens,
                mask=mask,
                scale=scale,
                write_kv=write_kv,
                max_cache_len=max_cache_len,
                **pg,
                **pro,
            )
        )
        if out is not None:
            _record_decode("triton", decode_kernel_name("triton", paged))
            return out
    out = attention_decode_reference(
        q,
        k_new,
        v_new,
        k_cache,
        v_cache,
        cache_seqlens,
        frame_tokens=frame_tokens,
        mask=mask,
        scale=scale,
        write_kv=write_kv,
        q_norm_weight=q_norm_weight,
        k_norm_weight=k_norm_weight,
        norm_eps=norm_eps,
        rope_cos=rope_cos,
        rope_sin=rope_sin,
        block_table=block_table,
        page_size=page_size,
        gather_cache=gather_cache,
    )
    _record_decode("sdpa", decode_kernel_name("sdpa", paged))
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
    auto = is_cuda and _triton_failed is None and dt in _AUTO_DTYPES and hd in _AUTO_HEAD_DIMS and _triton_installed()
    return "triton" if auto else "sdpa"
