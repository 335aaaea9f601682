"""Torch references of the attention functions: SDPA with an explicit boolean mask.

What :mod:`.backend` runs on CPU (and wherever the Triton kernels do not apply), and what the
kernels in :mod:`.kernels` are tested against. See :mod:`.backend` for the mask kinds, the query
alignment and the fused prologue (QK RMSNorm + RoPE).
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
        qc = rope_cos[:, qs : qs + tq] if rope_cos is not None else None
        qn = rope_sin[:, qs : qs + tq] if rope_sin is not None else None
        q = qk_prologue_reference(q, norm_weight=q_norm_weight, norm_eps=norm_eps, rope_cos=qc, rope_sin=qn)
        k = qk_prologue_reference(k, norm_weight=k_norm_weight, norm_eps=norm_eps, rope_cos=rope_cos, rope_sin=rope_sin)
    m = build_mask(tq, tk, frame_tokens=frame_tokens, mask=mask, q_start=q_start, device=q.device)
    gqa = q.shape[-3] != k.shape[-3]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=scale, enable_gqa=gqa)


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
        if (
            isinstance(page_size, bool)
            or not isinstance(page_size, int)
            or page_size < 1
            or k_cache.shape[2] != page_size
            or v_cache.shape != k_cache.shape
        ):
            raise ValueError(
                f"paged caches must be pools (P, Hkv, page_size={page_size!r}, D), got "
                f"{tuple(k_cache.shape)} / {tuple(v_cache.shape)}"
            )
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
    kp = qk_prologue_reference(
        k_new, norm_weight=k_norm_weight, norm_eps=norm_eps, rope_cos=rope_cos, rope_sin=rope_sin
    )
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
        out[b : b + 1] = attention_reference(qb, keys, vals, frame_tokens=frame_tokens, mask=m, q_start=L, scale=scale)
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
