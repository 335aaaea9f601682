"""Training and evaluation data, generated from the platformer (``worldserve.worlds``).

Training uses trajectory seeds ``[0, n)``; evaluation uses seeds from ``HELDOUT_SEED`` on, so the
evaluation worlds (level layouts, captions, action sequences) are never seen in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from worldserve.worlds import Game, caption_of, generate_trajectory
from worldserve.worlds.platformer import KEYS
from worldserve.worlds.splits import random_spec_in

HELDOUT_SEED = 1_000_000
"""Evaluation trajectories and captions use seeds >= this; training uses seeds below it."""


def action_matrix(actions: list[tuple[str, ...]], keys: tuple[str, ...] = KEYS, n_mouse: int = 2) -> np.ndarray:
    """Key tuples -> (T, len(keys) + n_mouse) float32 multi-hot (mouse axes stay 0: the game ignores them)."""
    out = np.zeros((len(actions), len(keys) + n_mouse), np.float32)
    index = {k: i for i, k in enumerate(keys)}
    for t, held in enumerate(actions):
        for k in held:
            out[t, index[k]] = 1.0
    return out


@dataclass
class TrajectoryData:
    """N trajectories of T frames: frames (N, T, 64, 64, 3) uint8, actions (N, T, A) float32,
    events N x T texts, captions N."""

    frames: np.ndarray
    actions: np.ndarray
    events: list[list[str]]
    captions: list[str]

    @property
    def n(self) -> int:
        return self.frames.shape[0]

    @property
    def length(self) -> int:
        return self.frames.shape[1]


def make_trajectories(seeds: range | list[int], steps: int, *, event_p: float = 0.05) -> TrajectoryData:
    trajs = [
        generate_trajectory(s, steps, spec=random_spec_in(np.random.default_rng([s, 3]), "train"), event_p=event_p)
        for s in seeds
    ]
    return TrajectoryData(
        np.stack([t.frames for t in trajs]),
        np.stack([action_matrix(t.actions) for t in trajs]),
        [t.events for t in trajs],
        [t.caption for t in trajs],
    )


def caption_batch(rng: np.random.Generator, n: int) -> tuple[list[str], np.ndarray]:
    """n random captions and the first frames they describe: (n, 64, 64, 3) uint8."""
    specs = [random_spec_in(rng, "train") for _ in range(n)]
    return [caption_of(s) for s in specs], np.stack([Game(s, 0).reset() for s in specs])


def step_generator(seed: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """RNGs for one training iteration, a pure function of (run seed, iteration): a resumed run
    draws exactly the batches and noise an uninterrupted one would."""
    rng = np.random.default_rng([seed, step])
    g = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    return rng, g
