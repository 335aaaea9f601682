"""Session logic independent of gRPC: create (from a prompt or an upload), fork, export."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from worldserve.common.codec import PNG, decode_frame, encode_frame
from worldserve.common.config import Config
from worldserve.common.errors import InvalidArgument
from worldserve.sessions.store import SessionRecord, SessionStore

MAX_TTL_S = 30 * 24 * 3600
CATALOG_TTL_S = 30.0  # how long the served models' list is trusted


class SessionsCore:
    def __init__(
        self,
        store: SessionStore,
        config: Config,
        *,
        generate: Callable[..., Awaitable[bytes]],
        frame_info: Callable[[], Awaitable[dict]],
        catalog: Callable[[], Awaitable[dict]] | None = None,
    ):
        self.store = store
        self.config = config
        self._generate = generate  # prompt -> PNG bytes (the image app)
        self._frame_info = frame_info
        self._catalog = catalog  # the dynamics app: {"default": name, "models": {name: {width, height}}}
        self._info: dict | None = None
        self._models: tuple[float, dict] | None = None

    async def info(self) -> dict:
        if self._info is None:
            self._info = await self._frame_info()
        return self._info

    async def resolve_model(self, model: str) -> tuple[str, dict]:
        """The served model a new session binds to (``model`` or the default) and its frame size;
        INVALID_ARGUMENT naming the served models for any other name."""
        if self._catalog is None:  # no dynamics app to ask: the configured models
            served = {m.name: None for m in self.config.models}
            default = self.config.default_model_name
        else:
            if self._models is None or time.monotonic() - self._models[0] > CATALOG_TTL_S:
                self._models = (time.monotonic(), await self._catalog())
            served, default = self._models[1]["models"], self._models[1]["default"]
        name = model or default
        if name not in served:
            shown = model if len(model) <= 64 else model[:64] + "..."
            raise InvalidArgument(f"unknown model {shown!r}; this cluster serves {', '.join(map(repr, served))}")
        if served[name] is None:  # no catalog: the image model's frame size
            info = await self.info()
            return name, {"width": info["width"], "height": info["height"]}
        return name, served[name]

    def _ttl(self, ttl_s: int) -> int:
        if ttl_s and not 60 <= ttl_s <= MAX_TTL_S:
            raise InvalidArgument(f"ttl_s={ttl_s} is out of range [60, {MAX_TTL_S}]")
        return ttl_s or self.config.session_ttl_s

    async def create_from_prompt(
        self, tenant: str, prompt: str, *, seed: int, steps: int = 0, guidance: float = 0.0, ttl_s: int = 0,
        model: str = "",
    ) -> tuple[SessionRecord, bytes]:
        if not prompt or not prompt.strip():
            raise InvalidArgument("prompt is empty")
        ttl = self._ttl(ttl_s)
        model, size = await self.resolve_model(model)
        info = await self.info()
        if (info["width"], info["height"]) != (size["width"], size["height"]):
            raise InvalidArgument(
                f"model {model!r} makes {size['width']}x{size['height']} frames but the image model makes "
                f"{info['width']}x{info['height']}; create the session from an image of the model's size"
            )
        png = await self._generate(prompt, seed, steps, guidance)
        rec = await self.store.create(
            tenant, model=model, prompt=prompt, seed=seed,
            width=size["width"], height=size["height"], first_frame=png, ttl_s=ttl,
        )
        return rec, png

    async def create_from_image(
        self, tenant: str, frame, *, seed: int, ttl_s: int = 0, model: str = ""
    ) -> tuple[SessionRecord, bytes]:
        ttl = self._ttl(ttl_s)
        model, size = await self.resolve_model(model)
        rgb = decode_frame(frame, max_bytes=self.config.max_upload_bytes, expect_size=(size["width"], size["height"]))
        png = encode_frame(rgb, PNG).data
        rec = await self.store.create(
            tenant, model=model, prompt="", seed=seed,
            width=size["width"], height=size["height"], first_frame=png, ttl_s=ttl,
        )
        return rec, png
