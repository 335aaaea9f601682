"""The byte-level tokenizer shared by the text encoders (image prompts, world events).

Nothing to download: ids are the UTF-8 bytes plus BOS, EOS and PAD.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

BOS, EOS, PAD = 256, 257, 258
VOCAB = 259  # 256 byte values + BOS, EOS, PAD


def tokenize_bytes(texts: Sequence[str], max_bytes: int, what: str = "text") -> tuple[torch.Tensor, torch.Tensor]:
    """ids (B, L) = BOS + UTF-8 bytes + EOS, right-padded; mask (B, L) True on real tokens."""
    rows = []
    for t in texts:
        b = t.encode("utf-8")
        if len(b) > max_bytes:
            raise ValueError(f"{what} is {len(b)} bytes in UTF-8; at most {max_bytes} allowed: {t[:80]!r}")
        rows.append([BOS, *b, EOS])
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return ids, ids != PAD
