"""Session logic independent of gRPC: create (from a prompt or an upload), fork, export."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from worldserve.common.codec import PNG, decode_frame, encode_frame
from worldserve.common.config import Config
from worldserve.common.errors import InvalidArgument
from worldserve.sessions.store import SessionRecord, SessionStore

MAX_TTL_S = 30 * 24 * 3600


class SessionsCore:
    def __init__(
        self,
        store: SessionStore,
        config: Config,
        *,
        generate: Callable[..., Awaitable[bytes]],
        frame_info: Callable[[], Awaitable[dict]],
    ):
        self.store = store
        self.config = config
        self._generate = generate  # prompt -> PNG bytes (the image app)
        self._frame_info = frame_info
        self._info: dict | None = None

    async def info(self) -> dict:
        if self._info is None:
            self._info = await self._frame_info()
        return self._info

    def _ttl(self, ttl_s: int) -> int:
        if ttl_s and not 60 <= ttl_s <= MAX_TTL_S:
            raise InvalidArgument(f"ttl_s={ttl_s} is out of range [60, {MAX_TTL_S}]")
        return ttl_s or self.config.session_ttl_s

    async def create_from_prompt(
        self, tenant: str, prompt: str, *, seed: int, steps: int = 0, guidance: float = 0.0, ttl_s: int = 0
    ) -> tuple[SessionRecord, bytes]:
        if not prompt or not prompt.strip():
            raise InvalidArgument("prompt is empty")
        ttl = self._ttl(ttl_s)
        info = await self.info()
        png = await self._generate(prompt, seed, steps, guidance)
        rec = await self.store.create(
            tenant, model=self.config.model_name, prompt=prompt, seed=seed,
            width=info["width"], height=info["height"], first_frame=png, ttl_s=ttl,
        )
        return rec, png

    async def create_from_image(self, tenant: str, frame, *, seed: int, ttl_s: int = 0) -> tuple[SessionRecord, bytes]:
        ttl = self._ttl(ttl_s)
        info = await self.info()
        rgb = decode_frame(frame, max_bytes=self.config.max_upload_bytes, expect_size=(info["width"], info["height"]))
        png = encode_frame(rgb, PNG).data
        rec = await self.store.create(
            tenant, model=self.config.model_name, prompt="", seed=seed,
            width=info["width"], height=info["height"], first_frame=png, ttl_s=ttl,
        )
        return rec, png
