"""The one attention function the dynamics model calls.

Every attention in the model goes through :func:`attention` (one sequence layout, padded batch)
or :func:`attention_varlen` (ragged batch of sessions, packed). Mask kinds:

- ``"full"``: every query sees every key.
- ``"causal"``: token-level causal; query at absolute position p sees keys at positions <= p.
- ``"frame_causal"``: frame-block-causal; query in frame i (= position // frame_tokens) sees every
  key in frames <= i (spatial attention within a frame, causal over frames).

Queries are aligned to the *end* of the keys unless ``q_start`` says otherwise: query j sits at
absolute position ``q_start + j`` of the key sequence (decode: one new frame of queries against a
KV cache of past frames plus the new frame, so ``q_start = Tk - Tq``).

On CPU this is torch SDPA; the Triton kernels in ``worldserve.dynamics.kernels`` plug in behind
the same signature for CUDA tensors (or under ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

MaskKind = Literal["full", "causal", "frame_causal"]
MASK_KINDS: tuple[str, ...] = ("full", "causal", "frame_causal")


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


def attention_reference(
    q: torch.Tensor,  # (B, H, Tq, D)
    k: torch.Tensor,  # (B, H, Tk, D)
    v: torch.Tensor,  # (B, H, Tk, D)
    *,
    frame_tokens: int,
    mask: MaskKind = "frame_causal",
    q_start: int | None = None,
    scale: float | None = None,
) -> torch.Tensor:  # (B, H, Tq, D)
    """torch SDPA with an explicit boolean mask: the CPU path and the kernels' reference."""
    m = build_mask(q.shape[-2], k.shape[-2], frame_tokens=frame_tokens, mask=mask, q_start=q_start, device=q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=scale)


def attention(
    q: torch.Tensor,  # (B, H, Tq, D)
    k: torch.Tensor,  # (B, H, Tk, D)
    v: torch.Tensor,  # (B, H, Tk, D)
    *,
    frame_tokens: int,
    mask: MaskKind = "frame_causal",
    q_start: int | None = None,
    scale: float | None = None,
) -> torch.Tensor:  # (B, H, Tq, D)
    """Masked attention; see the module docstring for mask kinds and query alignment."""
    return attention_reference(q, k, v, frame_tokens=frame_tokens, mask=mask, q_start=q_start, scale=scale)


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
) -> torch.Tensor:  # (total_q, H, D)
    """Ragged batch: sequence b's queries are aligned to the end of its keys."""
    out = torch.empty_like(q)
    cq = cu_seqlens_q.tolist()
    ck = cu_seqlens_k.tolist()
    for b in range(len(cq) - 1):
        qs = q[cq[b] : cq[b + 1]].transpose(0, 1)[None]  # (1, H, tq, D)
        ks = k[ck[b] : ck[b + 1]].transpose(0, 1)[None]
        vs = v[ck[b] : ck[b + 1]].transpose(0, 1)[None]
        o = attention(qs, ks, vs, frame_tokens=frame_tokens, mask=mask, scale=scale)
        out[cq[b] : cq[b + 1]] = o[0].transpose(0, 1)
    return out
