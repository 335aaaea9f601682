"""Frames that differ between a session stepped warm and its twin rebuilt before every step from
what the engine keeps in Redis (``worldserve.dynamics.testkit.check_exact_resume``), per served
model, walking right then back left:

    python scripts/replay-check.py [STEPS] [--forget]

``--forget`` drops the models' resume data: the twin is rebuilt from its latent window alone, as
the engine did before models declared ``resume_data``.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from worldserve.common.config import Config
from worldserve.dynamics.registry import load_model
from worldserve.dynamics.testkit import away_and_back, check_exact_resume


class Forgetful:
    def __init__(self, model):
        self._m = model

    def __getattr__(self, name):
        return getattr(self._m, name)

    def resume_data(self, state):
        return None


def main(argv: list[str]) -> None:
    steps = int(next((a for a in argv if not a.startswith("-")), "80"))
    torch.set_num_threads(1)
    config = Config.load({}, env={})
    first = torch.from_numpy(np.random.default_rng(7).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    for spec in config.models:
        model = load_model(spec, config, "cpu")
        t0 = time.perf_counter()
        r = check_exact_resume(
            Forgetful(model) if "--forget" in argv else model,
            first,
            away_and_back(model.info.action_space, steps),
            seed=3,
        )
        print(
            f"{spec.name}: {len(r.differing)}/{r.steps} frames differ"
            + (f" (from step {r.differing[0]})" if r.differing else "")
            + f"; resume data kept {r.resume_bytes} B; {time.perf_counter() - t0:.1f} s"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
