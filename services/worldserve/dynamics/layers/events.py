"""Event text conditioning: a byte-level tokenizer and a small text encoder trained with the model.

An *event* is free text that switches the world mid-play ("night falls", "it starts to rain"); the
text in force for a frame is embedded once per distinct string and added to that frame's
conditioning (with the action and flow-time embeddings). The empty event ("" = none in force)
embeds to exactly zero, so a model stepped without events behaves as one without event
conditioning at all. Nothing is downloaded: the tokenizer is UTF-8 bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from worldserve.common.bytetok import BOS, EOS, PAD, VOCAB, tokenize_bytes  # noqa: F401 (re-exported)
from worldserve.dynamics.layers.actions import normalize_event  # noqa: F401 (re-exported)


def tokenize_events(texts: Sequence[str], max_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Byte-level: ids (B, L) = BOS + UTF-8 bytes + EOS, right-padded; mask (B, L) True on real tokens."""
    return tokenize_bytes(texts, max_bytes, what="event text")


class _Block(nn.Module):
    """Pre-norm single-head transformer block with a key-padding mask (tiny: events are short)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # x (B, L, E), mask (B, L)
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)  # (B, L, E) each
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, :])  # (B, L, E)
        x = x + self.proj(a)
        return x + self.mlp(self.norm2(x))


class EventEncoder(nn.Module):
    """Event texts -> (N, dim) conditioning vectors; "" -> zeros. ``event_dim``: the text
    encoder's width; ``layers``: its blocks; ``dim``: the model's conditioning width."""

    def __init__(self, *, event_dim: int, event_max_bytes: int, layers: int, dim: int):
        super().__init__()
        E = event_dim
        self.max_bytes = event_max_bytes
        self.tok = nn.Embedding(VOCAB, E)
        self.pos = nn.Embedding(event_max_bytes + 2, E)
        self.blocks = nn.ModuleList(_Block(E) for _ in range(layers))
        self.norm = nn.LayerNorm(E)
        self.out = nn.Sequential(nn.Linear(E, dim), nn.SiLU(), nn.Linear(dim, dim))

    def encode_unique(self, texts: Sequence[str]) -> torch.Tensor:
        """Distinct, normalized, non-empty texts -> (U, dim)."""
        dev = self.tok.weight.device
        ids, mask = tokenize_events(texts, self.max_bytes)
        ids, mask = ids.to(dev), mask.to(dev)
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=dev))  # (U, L, E)
        for block in self.blocks:
            x = block(x, mask)
        m = mask[..., None].to(x.dtype)  # (U, L, 1)
        pooled = (self.norm(x) * m).sum(1) / m.sum(1)  # (U, E): mean over real tokens
        return self.out(pooled)  # (U, dim)

    def forward(self, texts: Sequence[str], *, alone: bool = False) -> torch.Tensor:
        """(N,) normalized texts -> (N, dim); each distinct text is encoded once; "" gives zeros.

        ``alone`` (serving): each distinct text is encoded by itself, so its vector depends on the
        text alone, bitwise, not on the other texts of the batch (together they are padded to the
        longest and multiplied as one batch, which rounds differently: see
        :mod:`worldserve.dynamics.layers.rowwise`). Training encodes them together (faster)."""
        uniq = sorted({t for t in texts if t})
        out = torch.zeros(
            len(texts), self.out[-1].out_features, device=self.tok.weight.device, dtype=self.tok.weight.dtype
        )
        if uniq:
            if alone:
                emb = torch.cat([self.encode_unique([t]) for t in uniq])  # (U, dim)
            else:
                emb = self.encode_unique(uniq)  # (U, dim)
            index = {t: i for i, t in enumerate(uniq)}
            rows = [i for i, t in enumerate(texts) if t]
            sel = torch.tensor([index[texts[i]] for i in rows], device=out.device)
            out = out.index_put((torch.tensor(rows, device=out.device),), emb[sel])
        return out
