"""Output processing: a new frame -> the bytes Redis stores (PNG) and the client asked for.

Runs in its own small thread pool, beside the model thread, so encoding one batch's frames
overlaps the model's next batch (PIL releases the GIL while it compresses).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from worldserve.common.codec import PNG, EncodedFrame, encode_rgb


class OutputProcessor:
    def __init__(self, threads: int = 2):
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="encode")

    @staticmethod
    def encode_sync(rgb: np.ndarray, fmt: int) -> tuple[bytes, EncodedFrame]:
        """(H, W, 3) uint8 -> (PNG bytes for the session log, the frame in ``fmt``)."""
        png = encode_rgb(rgb, PNG)
        return png.data, png if fmt == PNG else encode_rgb(rgb, fmt)

    async def encode(self, rgb: np.ndarray, fmt: int) -> tuple[bytes, EncodedFrame]:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.encode_sync, rgb, fmt)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
