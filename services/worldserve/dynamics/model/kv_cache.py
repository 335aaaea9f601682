"""Per-session KV cache of past frames.

The cache is *streaming*: each frame's keys and values are computed once, by the commit pass right
after the frame is sampled, while it attended to the (at most ``context_frames - 1``) frames before
it, and are never recomputed. Keys carry RoPE of their absolute frame index, and RoPE makes scores
depend only on frame offsets, so cached keys stay valid as the window slides.

Consequence for rebuilding a cache from a stored latent window (``WorldModel.prefill``): while the
session is young (every stored frame saw its full history, i.e. the window starts at step 0) the
rebuilt cache equals the streamed one up to float rounding. Once older frames have slid out, the
oldest frames of the window originally attended to frames that are gone, so a re-prefill is a close
approximation, not bitwise equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class KVCache:
    """Keys/values of one session's past frames, oldest first.

    ``k[l]`` and ``v[l]`` are layer ``l``'s tensors of shape (H, n_frames * frame_tokens, D).
    ``last_step`` is the absolute step index of the newest cached frame (-1 when empty); the
    cached frames are steps ``last_step - n_frames + 1 .. last_step``.
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    frame_tokens: int
    n_frames: int = 0
    last_step: int = -1
    max_frames: int | None = field(default=None)  # window bound; None = unbounded

    @classmethod
    def empty(
        cls,
        n_layers: int,
        n_heads: int,
        head_dim: int,
        frame_tokens: int,
        *,
        max_frames: int | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> "KVCache":
        def z() -> torch.Tensor:
            return torch.zeros(n_heads, 0, head_dim, device=device, dtype=dtype)

        return cls([z() for _ in range(n_layers)], [z() for _ in range(n_layers)], frame_tokens, 0, -1, max_frames)

    @property
    def first_step(self) -> int:
        """Absolute step of the oldest cached frame (``last_step + 1`` when empty)."""
        return self.last_step - self.n_frames + 1

    @property
    def n_layers(self) -> int:
        return len(self.k)

    @property
    def n_tokens(self) -> int:
        return self.n_frames * self.frame_tokens

    @property
    def device(self) -> torch.device:
        return self.k[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.k[0].dtype

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))

    def append(self, k_new: list[torch.Tensor], v_new: list[torch.Tensor], n_frames: int, last_step: int) -> None:
        """Append ``n_frames`` consecutive frames ending at ``last_step`` (per layer (H, n*F, D)),
        sliding the window down to ``max_frames`` in the same copy."""
        if self.n_frames and last_step - n_frames != self.last_step:
            raise ValueError(
                f"frames ending at step {last_step} do not follow the cache's last step {self.last_step}"
            )
        total = self.n_frames + n_frames
        keep = total if self.max_frames is None else min(total, self.max_frames)
        start = (total - keep) * self.frame_tokens  # token offset into [old ++ new]
        for layer in range(self.n_layers):
            old_k, old_v = self.k[layer], self.v[layer]
            if start >= old_k.shape[1]:  # everything old slides out
                s = start - old_k.shape[1]
                self.k[layer], self.v[layer] = k_new[layer][:, s:].contiguous(), v_new[layer][:, s:].contiguous()
            else:
                self.k[layer] = torch.cat([old_k[:, start:], k_new[layer]], dim=1)  # (H, keep*F, D)
                self.v[layer] = torch.cat([old_v[:, start:], v_new[layer]], dim=1)
        self.n_frames = keep
        self.last_step = last_step

    def trim(self, max_frames: int) -> None:
        """Drop the oldest frames so that at most ``max_frames`` remain (views; no copy)."""
        if max_frames < 0:
            raise ValueError(f"max_frames must be >= 0, got {max_frames!r}")
        drop = self.n_frames - max_frames
        if drop <= 0:
            return
        start = drop * self.frame_tokens
        self.k = [t[:, start:] for t in self.k]
        self.v = [t[:, start:] for t in self.v]
        self.n_frames = max_frames

    def clone(self) -> "KVCache":
        """Deep copy (fork a session without re-prefilling)."""
        return KVCache([t.clone() for t in self.k], [t.clone() for t in self.v], self.frame_tokens,
                       self.n_frames, self.last_step, self.max_frames)
