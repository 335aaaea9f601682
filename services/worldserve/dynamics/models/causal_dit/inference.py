"""Streaming inference of a causal DiT: one chunk of latent frames per session, over its KV cache.

A step makes ``chunk_frames`` new latent frames for every session of a batch (Self-Forcing's
few-step sampler, flow matching as Wan: ``x_t = (1 - sigma) * x0 + sigma * noise``, the network
predicts ``v = noise - x0`` at ``timestep = 1000 * sigma``):

1. the chunk starts from Gaussian noise drawn from a generator seeded by (session seed, step)
   only, so a session's frames never depend on the rest of the batch;
2. each denoising pass runs the network on the chunk at the pass's sigma; its tokens attend to the
   session's cached frames (sink + window) and to the chunk itself (mask ``"full"``: the cache
   holds exactly what the chunk may see), nothing written; ``x0 = x_t - sigma * v``, re-noised to
   the next sigma with the generator's next draw;
3. the commit pass runs the clean chunk (sigma 0) and writes its keys/values into the session's
   spare pages, in the attention launch of every layer (``write_kv``); the state then caches the
   chunk and evicts the frames the next chunk will not see (:mod:`.kv`).

Attention goes through ``attention_decode`` with block tables over the model's page pool (one
row per session: its cached frames' pages in frame order, then its spare pages); batched across
sessions with uneven cache lengths (``cache_seqlens``). On CUDA in bf16 that is the Triton paged
decode kernel; on CPU the torch SDPA reference runs the same path. The network is the one module
(``network.CausalWanTransformer``), used through its seam: ``embed``, ``time_embed``,
``block_forward`` with this module's ``self_attn``, ``head``.

Sessions of a batch sit at different absolute frames: RoPE and the action windows are per session
(``network.rope`` / ``network.action_windows`` of the sessions' first frames), the same values the
full forward gives those frames.

Text: each session's cross-attention context (``network.text_context`` of its zero-padded prompt
embedding) is computed once, at prefill, and kept with the state (text_len x dim: 1.5 MiB for
Wan2.1-1.3B in bf16); the per-layer text keys/values are recomputed per pass (about 1% of a pass's
FLOPs at 480x832; caching them would cost ``2 * layers * text_len * dim`` elements, 90 MiB a session). CFG does not apply: these models are
distilled to a few steps without guidance.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from worldserve.dynamics.attention.backend import attention_decode
from worldserve.dynamics.layers.kv_pages import PagePool

from .actions import ActionWindows, FrameActions
from .kv import DiTState
from .network import CausalWanTransformer
from .options import CausalDiTOptions


def noise_seed(seed: int, step: int) -> int:
    """A 63-bit generator seed, a stable function of (session seed, absolute step) (BLAKE2b: the
    same in every process and on every machine)."""
    seed, step = operator.index(seed), operator.index(step)
    digest = hashlib.blake2b(f"worldserve.causal_dit:{seed}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def chunk_noise(seed: int, step: int, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(n, *shape) float32 CPU: the initial noise of a step's chunk, then the re-noising draws of
    its later passes, from one generator seeded by (seed, step)."""
    g = torch.Generator(device="cpu").manual_seed(noise_seed(seed, step))
    return torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for _ in range(n)])


def frame_actions(
    net: CausalWanTransformer, actions: dict[int, torch.Tensor], first_frame: int, num_frames: int
) -> FrameActions:
    """One session's actions per pixel frame for latent frames first_frame .. +num_frames (what
    ``network.action_windows`` reads), from ``actions`` (latent frame -> its step's (A,) action
    vector; missing: no key, mouse at rest). Pixel frame 0 belongs to latent frame 0, pixel frame
    p >= 1 to latent frame ``(p - 1) // r + 1``; the vector is the keyboard's ``keyboard_dim_in``
    entries, then the mouse's."""
    ac = net.config.action_config
    assert ac is not None
    start, stop = ac.pixel_range(first_frame, num_frames)
    r = ac.vae_time_compression_ratio
    K = ac.keyboard_dim_in if ac.enable_keyboard else 0
    M = ac.mouse_dim_in if ac.enable_mouse else 0
    rows = []
    for p in range(start, stop):
        vec = actions.get(0 if p == 0 else (p - 1) // r + 1)
        rows.append(vec if vec is not None else torch.zeros(K + M))
    per_pixel = torch.stack(rows).float()[None].to(net.patch_embedding.weight.device)  # (1, F_px, K + M)
    return FrameActions(
        keyboard=per_pixel[..., :K] if K else None,
        mouse=per_pixel[..., K : K + M] if M else None,
        first_pixel_frame=start,
    )


@dataclass
class ChunkBatch:
    """What the passes of one chunk share for a batch of sessions."""

    states: list[DiTState]
    first_frames: list[int]  # each session's first frame of the chunk
    num_frames: int  # frames in the chunk (the same for every session)
    rope: tuple[torch.Tensor, torch.Tensor]  # (B, N, hd) cos, sin: per-session RoPE of the chunk's tokens
    windows: ActionWindows | None
    context: torch.Tensor | None  # (B, L, D) text contexts, or None (no cross-attention)
    block_table: torch.Tensor  # (B, max_pages) int32
    cache_lens: torch.Tensor  # (B,) int32 cached rows
    max_len: int
    gather: list[dict]  # per layer: the SDPA reference's gathered pages, shared by the chunk's passes


class ChunkInference:
    """The network's passes over sessions' paged KV caches (see the module docstring)."""

    def __init__(self, net: CausalWanTransformer, options: CausalDiTOptions, latent_hw: tuple[int, int]):
        self.net = net
        self.options = options
        p = net.config.patch_size
        self.grid_hw = (latent_hw[0] // p[1], latent_hw[1] // p[2])  # token grid of a latent frame
        self.frame_tokens = self.grid_hw[0] * self.grid_hw[1]

    @property
    def device(self) -> torch.device:
        return self.net.patch_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.net.patch_embedding.weight.dtype

    def batch(
        self,
        states: Sequence[DiTState],
        first_frames: Sequence[int],
        num_frames: int,
        actions: Sequence[dict[int, torch.Tensor]],
    ) -> ChunkBatch:
        """Block tables, RoPE, action windows and text contexts of a chunk of ``num_frames`` frames
        starting at each session's ``first_frames[i]``; ``actions[i]``: session i's latent frame ->
        action vector, the chunk's frames included."""
        net, dev, S = self.net, self.device, self.frame_tokens
        h, w = self.grid_hw
        rope = net.rope(list(first_frames), num_frames, h, w)  # (B, N, hd) x2
        windows = None
        if net.has_actions:
            per_session = [frame_actions(net, a, f0, num_frames) for a, f0 in zip(actions, first_frames)]
            windows = net.action_windows(per_session, list(first_frames), num_frames)  # (B, f, W, .)
        texts = [st.text for st in states if st.text is not None]
        if texts and len(texts) != len(states):
            raise ValueError("a batch mixes sessions with and without a text context; step them apart")
        context = torch.stack(texts) if texts else None  # (B, L, D)
        rows = [st.block_row(num_frames) for st in states]
        width = max(len(r) for r in rows)
        bt = torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.int32)  # (B, max_pages)
        lens = torch.tensor([len(st.frames) * S for st in states], dtype=torch.int32)  # (B,)
        if dev.type != "cpu":
            bt, lens = bt.to(dev, non_blocking=True), lens.to(dev, non_blocking=True)
        return ChunkBatch(
            states=list(states),
            first_frames=list(first_frames),
            num_frames=num_frames,
            rope=rope,
            windows=windows,
            context=context,
            block_table=bt,
            cache_lens=lens,
            max_len=max(len(st.frames) for st in states) * S,
            gather=[{} for _ in range(net.config.num_layers)],
        )

    def forward(
        self, batch: ChunkBatch, pool: PagePool, x: torch.Tensor, sigma: float, commit: bool
    ) -> torch.Tensor | None:
        """One pass on the chunk's latents x (B, C, f, h, w) at noise level ``sigma``: the flow
        prediction (B, C_out, f, h, w) float32, or (``commit``) None after writing the chunk's
        keys/values into the sessions' spare pages (of ``pool``)."""
        net, S = self.net, self.frame_tokens
        B, f = x.shape[0], batch.num_frames
        tokens, grid = net.embed(x.to(self.dtype))  # (B, N, D)
        t = torch.full((B, f), 1000.0 * sigma, device=self.device)  # (B, f) timestep per latent frame
        temb = net.time_embed(t)

        def self_attn(layer: int):
            def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # (B, H, N, hd) each
                return attention_decode(
                    q,
                    k,
                    v,
                    pool.k(layer),
                    pool.v(layer),
                    batch.cache_lens,
                    frame_tokens=S,
                    mask="full",
                    write_kv=commit,
                    max_cache_len=batch.max_len,
                    block_table=batch.block_table,
                    page_size=S,
                    gather_cache=batch.gather[layer],
                )  # (B, H, N, hd)

            return attend

        for i in range(net.config.num_layers):
            tokens = net.block_forward(i, tokens, temb, batch.context, batch.rope, self_attn(i), batch.windows)
        if commit:
            return None
        return net.head(tokens, temb, grid).float()  # (B, C_out, f, h, w)

    def generate(
        self,
        batch: ChunkBatch,
        pool: PagePool,
        noise: torch.Tensor,
        trace: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The chunk's few-step sampling from ``noise`` (passes, B, C, f, h, w) then its commit
        pass: returns the clean chunk x0 (B, C, f, h, w) float32. ``trace`` (tests): gets each
        denoising pass's prediction."""
        sigmas = self.options.sigmas()  # (passes + 1,) ending at 0
        x = noise[0].to(self.device)  # (B, C, f, h, w) float32 sampler state
        x0 = x
        for k in range(len(sigmas) - 1):
            v = self.forward(batch, pool, x, sigmas[k], commit=False)
            assert v is not None
            if trace is not None:
                trace.append(v)
            x0 = x - sigmas[k] * v  # (B, C, f, h, w)
            if k + 2 < len(sigmas):  # re-noise to the next pass's sigma with fresh seeded noise
                x = (1 - sigmas[k + 1]) * x0 + sigmas[k + 1] * noise[k + 1].to(self.device)
        self.forward(batch, pool, x0, 0.0, commit=True)
        return x0

    def commit(self, batch: ChunkBatch, pool: PagePool, x0: torch.Tensor) -> None:
        """The commit pass alone (prefill of frames whose keys/values were not kept)."""
        self.forward(batch, pool, x0, 0.0, commit=True)
