"""Median served-step time (step + decode) of dynamics model folders on one CPU thread, the models
interleaved in one run (shared machines are noisy: compare within a run, not across runs):

    python scripts/step-time.py NAME FOLDER [NAME FOLDER ...]

Per model: 1 session and 16 sessions in one batch, 8 rounds of 3 steps each.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from worldserve.train.evaluate import episode, load_dynamics


def main(argv: list[str]) -> None:
    if len(argv) < 2 or len(argv) % 2:
        raise SystemExit(__doc__)
    torch.set_num_threads(1)
    models = {name: load_dynamics(Path(folder)) for name, folder in zip(argv[0::2], argv[1::2])}
    first = episode(0, 1)[0][0]
    times: dict[str, dict[int, list[float]]] = {n: {1: [], 16: []} for n in models}
    for _ in range(8):
        for name, m in models.items():
            for batch in (1, 16):
                z = m.encode(torch.from_numpy(np.stack([first] * batch)))
                states = [m.prefill(z[i : i + 1], m.null_action()[None], 0) for i in range(batch)]
                acts = torch.stack([m.action_vector(["right"])] * batch)
                for step in range(1, 4):
                    t0 = time.perf_counter()
                    m.decode(m.step(states, acts, seeds=[0] * batch, steps=[step] * batch))
                    times[name][batch].append(time.perf_counter() - t0)
                for s in states:
                    m.release_state(s)
    for name, by_batch in times.items():
        print(name, ", ".join(f"{b} session(s): {np.median(v) * 1000:.0f} ms" for b, v in by_batch.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
