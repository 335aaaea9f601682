"""Session logic independent of gRPC: create (from a prompt or an upload), fork, export.

A prompt in the caption grammar goes to the image app as it is; any other prompt is read by the
text app first (``understand``) and the image app is given the understood caption. Either way the
session record keeps how the prompt was understood (``SessionRecord.understood``)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from worldserve.common.codec import PNG, decode_frame, encode_frame
from worldserve.common.config import Config
from worldserve.common.errors import InvalidArgument
from worldserve.common.quotas import MAX_TTL_S, Quotas
from worldserve.common.text_embedding import MAX_TOKENS, check_text_embedding
from worldserve.common.understanding import ParsePrompt, image_prompt, understand_prompt
from worldserve.state.quotas import QuotaEnforcer
from worldserve.state.store import SessionRecord, SessionsFull, SessionStore
from worldserve.text.spec import MAX_TEXT_CHARS

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
        quotas: Callable[[str], Quotas] | None = None,
        enforcer: QuotaEnforcer | None = None,
        understand: ParsePrompt | None = None,
    ):
        """``understand``: the text app's ``parse_prompt`` (None: not deployed; free-text prompts
        answer FAILED_PRECONDITION, captions still work)."""
        self.store = store
        self._understand = understand
        self.config = config
        self._quotas = quotas or (lambda tenant: config.quotas)
        self.enforcer = enforcer or QuotaEnforcer(store)
        self._generate = generate  # prompt -> PNG bytes (the image app)
        self._frame_info = frame_info
        self._catalog = catalog  # the dynamics app: {"default": name, "models": {name: {width, height, text_dim}}}
        self._info: dict | None = None
        self._models: tuple[float, dict] | None = None

    async def info(self) -> dict:
        if self._info is None:
            self._info = await self._frame_info()
        return self._info

    async def resolve_model(self, model: str) -> tuple[str, dict]:
        """The served model a new session binds to (``model`` or the default) and its frame size
        (``width``, ``height``; ``text_dim`` when the catalog says); INVALID_ARGUMENT naming the
        served models for any other name."""
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

    def _text(self, model: str, size: dict, text_embedding: bytes) -> int:
        """The token count of a new session's text embedding (0: none given); INVALID_ARGUMENT when
        the model takes none, or it is malformed, too large or of another width."""
        if not text_embedding:
            return 0
        return check_text_embedding(
            text_embedding,
            model=model,
            text_dim=int(size.get("text_dim") or 0),
            max_bytes=self.config.max_text_embedding_bytes,
            max_tokens=int(size.get("text_len") or MAX_TOKENS),
        )

    def _ttl(self, tenant: str, ttl_s: int) -> int:
        """The TTL of a new session: ``ttl_s``, else the config's default (cut to the tenant's
        ceiling); RESOURCE_EXHAUSTED above the ceiling."""
        if ttl_s and not 60 <= ttl_s <= MAX_TTL_S:
            raise InvalidArgument(f"ttl_s={ttl_s} is out of range [60, {MAX_TTL_S}]")
        q = self._quotas(tenant)
        if ttl_s:
            self.enforcer.check_ttl(tenant, q, ttl_s)
            return ttl_s
        return min(self.config.session_ttl_s, q.max_ttl_s)

    async def _reserve(self, tenant: str) -> str:
        """A session id counted against the tenant's ``max_sessions`` (release it on failure)."""
        q = self._quotas(tenant)
        try:
            sid, n = await self.store.reserve(tenant, q.max_sessions)
        except SessionsFull as e:
            self.enforcer.live_sessions(tenant, e.live)
            raise self.enforcer.sessions_full(tenant, q, e.live, e.soonest_s) from None
        self.enforcer.live_sessions(tenant, n)
        return sid

    async def _reserved(self, tenant: str, make: Callable[[str], Awaitable]):
        """``make(session_id)`` under a reserved id; the reservation is released if it fails."""
        sid = await self._reserve(tenant)
        try:
            return await make(sid)
        except BaseException:
            await self.store.release(tenant, sid)
            raise

    async def create_from_prompt(
        self,
        tenant: str,
        prompt: str,
        *,
        seed: int,
        steps: int = 0,
        guidance: float = 0.0,
        ttl_s: int = 0,
        model: str = "",
        text_embedding: bytes = b"",
    ) -> tuple[SessionRecord, bytes]:
        """``text_embedding``: the session's optional text embedding (worldserve.common.text_embedding)."""
        if not prompt or not prompt.strip():
            raise InvalidArgument("prompt is empty")
        ttl = self._ttl(tenant, ttl_s)
        model, size = await self.resolve_model(model)
        tokens = self._text(model, size, text_embedding)
        info = await self.info()
        if (info["width"], info["height"]) != (size["width"], size["height"]):
            raise InvalidArgument(
                f"model {model!r} makes {size['width']}x{size['height']} frames but the image model makes "
                f"{info['width']}x{info['height']}; create the session from an image of the model's size"
            )
        understood = await understand_prompt(
            prompt, self._understand, max_chars=MAX_TEXT_CHARS
        )  # the request checked first

        async def make(sid: str) -> tuple[SessionRecord, bytes]:  # the quota is taken before the image is made
            png = await self._generate(image_prompt(prompt, understood), seed, steps, guidance)
            rec = await self.store.create(
                tenant,
                model=model,
                prompt=prompt,
                seed=seed,
                width=size["width"],
                height=size["height"],
                first_frame=png,
                ttl_s=ttl,
                session_id=sid,
                text=text_embedding or None,
                text_tokens=tokens,
                understood=understood,
            )
            return rec, png

        return await self._reserved(tenant, make)

    async def create_from_image(
        self, tenant: str, frame, *, seed: int, ttl_s: int = 0, model: str = "", text_embedding: bytes = b""
    ) -> tuple[SessionRecord, bytes]:
        ttl = self._ttl(tenant, ttl_s)
        model, size = await self.resolve_model(model)
        tokens = self._text(model, size, text_embedding)
        rgb = decode_frame(frame, max_bytes=self.config.max_upload_bytes, expect_size=(size["width"], size["height"]))
        png = encode_frame(rgb, PNG).data

        async def make(sid: str) -> tuple[SessionRecord, bytes]:
            rec = await self.store.create(
                tenant,
                model=model,
                prompt="",
                seed=seed,
                width=size["width"],
                height=size["height"],
                first_frame=png,
                ttl_s=ttl,
                session_id=sid,
                text=text_embedding or None,
                text_tokens=tokens,
            )
            return rec, png

        return await self._reserved(tenant, make)

    async def fork(self, tenant: str, session_id: str, *, step: int | None, seed: int | None) -> SessionRecord:
        """A child of the session (counted against ``max_sessions``)."""
        return await self._reserved(
            tenant, lambda sid: self.store.fork(tenant, session_id, step=step, seed=seed, session_id=sid)
        )
