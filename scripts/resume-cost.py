"""What a served model's state costs in Redis and per step, through the engine on a real Redis
(one replica, one thread, one session walking right):

    python scripts/resume-cost.py MODEL [STEPS] [--cold]

Prints the mean step time (``--cold``: the state evicted before every step, so each step rebuilds
it from Redis) and the bytes of the session's log hash in Redis afterwards.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time

import numpy as np
import torch

from worldserve.common.codec import PNG, encode_frame
from worldserve.common.config import Config
from worldserve.common.redis_server import EmbeddedRedis
from worldserve.dynamics.engine.core import Engine
from worldserve.dynamics.engine.types import StepRequest
from worldserve.dynamics.registry import load_model
from worldserve.state.store import SessionStore


async def measure(name: str, steps: int, cold: bool) -> None:
    srv = EmbeddedRedis(tempfile.mkdtemp()).start()
    try:
        store = SessionStore.from_url(srv.url, default_ttl_s=600)
        config = Config.load({}, env={})
        engine = Engine(load_model(config.model_spec(name), config, "cpu"), store, config, model_name=name)
        engine.start()
        info = engine.info
        rgb = np.random.default_rng(1).integers(0, 255, (info.frame_height, info.frame_width, 3), dtype=np.uint8)
        rec = await store.create(
            "t",
            model=name,
            prompt="p",
            seed=1,
            width=info.frame_width,
            height=info.frame_height,
            first_frame=encode_frame(rgb, PNG).data,
        )
        await engine.step(StepRequest("t", rec.session_id, ("right",)))
        t0 = time.perf_counter()
        for _ in range(steps):
            if cold:
                engine.evict("t", rec.session_id)
            await engine.step(StepRequest("t", rec.session_id, ("right",)))
        per = (time.perf_counter() - t0) / steps
        nbytes = await store.r.memory_usage(store._log("t", rec.session_id), samples=0)
        print(
            f"{name}: {'cold' if cold else 'warm'} step {per * 1000:.1f} ms; "
            f"log {nbytes / 1024:.0f} KiB in Redis after {steps + 1} steps"
        )
        await engine.close()
        await store.close()
    finally:
        srv.stop()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    if not args:
        raise SystemExit(__doc__)
    torch.set_num_threads(1)
    asyncio.run(measure(args[0], int(args[1]) if len(args) > 1 else 40, "--cold" in sys.argv))
