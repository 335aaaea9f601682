"""SessionService: the thin Serve ingress over SessionsCore and the Redis store."""

from __future__ import annotations

import asyncio
import io
import threading
from typing import Any

from PIL import Image
from ray import serve

from worldserve.common.codec import PNG, check_format, decode_frame, encode_frame, sniff_format
from worldserve.common.errors import NotFound
from worldserve.common.servicer import ServiceBase, rpc
from worldserve.common.serving import DeploymentOptions
from worldserve.common.understanding import understood_pb
from worldserve.sessions.core import SessionsCore
from worldserve.state.quotas import QuotaEnforcer
from worldserve.state.store import SessionRecord, SessionStore
from worldserve.v1 import common_pb2
from worldserve.v1 import sessions_pb2 as pb


def to_pb(rec: SessionRecord) -> pb.Session:
    out = pb.Session(
        session_id=rec.session_id,
        model=rec.model,
        prompt=rec.prompt,
        seed=rec.seed,
        step=rec.step,
        parent_id=rec.parent_id,
        fork_step=rec.fork_step,
        created_at=rec.created_at,
        updated_at=rec.updated_at,
        ttl_s=rec.ttl_s,
        width=rec.width,
        height=rec.height,
        text_tokens=rec.text_tokens,
    )
    understood = understood_pb(rec.understood)
    if understood is not None:
        out.understood.CopyFrom(understood)
    return out


def reencode(png: bytes, fmt: int) -> common_pb2.Frame:
    frame = common_pb2.Frame(format=PNG, data=png)
    if (fmt or PNG) == PNG:  # stored as PNG already: read the size from its header only
        with Image.open(io.BytesIO(png)) as im:
            frame.width, frame.height = im.size
        return frame
    return encode_frame(decode_frame(frame, max_bytes=1 << 30), fmt)


@serve.deployment(
    name="SessionService",
    max_ongoing_requests=64,
    ray_actor_options={"num_cpus": 0.25},
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 16},
)
class SessionService(ServiceBase):
    service = "sessions"

    def __init__(self, config: dict[str, Any] | None = None, image_app: str = "image", dynamics_app: str = "dynamics"):
        super().__init__(config)
        store = SessionStore.from_config(
            self.config, observe=lambda op, s: self.metrics.redis_latency.observe(s, op=op)
        )
        self.image = serve.get_deployment_handle("ImageService", app_name=image_app)
        self.dynamics = serve.get_deployment_handle("DynamicsService", app_name=dynamics_app)
        from worldserve.text.client import TextClient

        self.text = TextClient(self.config)
        self.core = SessionsCore(
            store,
            self.config,
            generate=self._generate,
            frame_info=self._frame_info,
            catalog=self._catalog,
            quotas=self.quotas,
            enforcer=QuotaEnforcer(store, self.metrics),
            understand=self.text.parse_prompt,
        )
        self.store = store
        self.m_created = self.metrics.counter("sessions_created", "Sessions created, by source", ("source",))
        if self.config.archive_url:  # this replica archives due sessions in the background
            threading.Thread(target=self._archive_forever, name="archiver", daemon=True).start()
        self.m_forked = self.metrics.counter("sessions_forked", "Sessions forked")

    def _archive_forever(self) -> None:
        """The archiver, on its own event loop and Redis connections (it runs without requests)."""
        from worldserve.state.archiver import ArchivePolicy, Archiver

        c = self.config
        policy = ArchivePolicy(
            chunk_steps=c.archive_chunk_steps,
            hot_window=c.hot_window_steps,
            rid_keep=c.archive_rid_keep_steps,
            expired_grace_s=c.archive_expired_grace_s,
            lease_s=c.archive_lease_s,
        )

        async def main() -> None:
            store = SessionStore.from_config(c)
            await Archiver(store, store.archive, policy, self.metrics).run()

        asyncio.run(main())

    async def _generate(self, prompt: str, seed: int, steps: int, guidance: float) -> bytes:
        return await self.image.generate.remote(prompt, seed, steps, guidance)

    async def _frame_info(self) -> dict:
        return await self.image.info.remote()

    async def _catalog(self) -> dict:
        return await self.dynamics.catalog.remote()

    @rpc("CreateSession", empty=pb.Session)
    async def CreateSession(self, request: pb.CreateSessionRequest, tenant: str, grpc_context=None) -> pb.Session:
        if request.include_first_frame:
            check_format(request.format)  # before anything is created: a bad format leaves nothing behind
        source = request.WhichOneof("source")
        if source == "image":
            rec, png = await self.core.create_from_image(
                tenant,
                request.image,
                seed=request.seed,
                ttl_s=request.ttl_s,
                model=request.model,
                text_embedding=request.text_embedding,
            )
        else:
            rec, png = await self.core.create_from_prompt(
                tenant,
                request.prompt,
                seed=request.seed,
                steps=request.image_steps,
                guidance=request.image_guidance,
                ttl_s=request.ttl_s,
                model=request.model,
                text_embedding=request.text_embedding,
            )
        self.m_created.inc(source=source or "prompt")
        out = to_pb(rec)
        if request.include_first_frame:
            out.first_frame.CopyFrom(reencode(png, request.format))
        return out

    @rpc("GetSession", empty=pb.Session)
    async def GetSession(self, request: pb.GetSessionRequest, tenant: str, grpc_context=None) -> pb.Session:
        return to_pb(await self.store.get(tenant, request.session_id))

    @rpc("ListSessions", empty=pb.ListSessionsResponse)
    async def ListSessions(
        self, request: pb.ListSessionsRequest, tenant: str, grpc_context=None
    ) -> pb.ListSessionsResponse:
        recs, token = await self.store.list(tenant, page_size=request.page_size, page_token=request.page_token)
        return pb.ListSessionsResponse(sessions=[to_pb(r) for r in recs], next_page_token=token)

    @rpc("ForkSession", empty=pb.Session)
    async def ForkSession(self, request: pb.ForkSessionRequest, tenant: str, grpc_context=None) -> pb.Session:
        rec = await self.core.fork(
            tenant,
            request.session_id,
            step=request.step if request.HasField("step") else None,
            seed=request.seed if request.HasField("seed") else None,
        )
        self.m_forked.inc()
        return to_pb(rec)

    @rpc("DeleteSession", empty=pb.DeleteSessionResponse)
    async def DeleteSession(
        self, request: pb.DeleteSessionRequest, tenant: str, grpc_context=None
    ) -> pb.DeleteSessionResponse:
        if not await self.store.delete(tenant, request.session_id):
            raise NotFound(f"session {request.session_id!r} not found")
        return pb.DeleteSessionResponse(deleted=True)

    @rpc("ExportSession", empty=pb.TrajectoryStep)
    async def ExportSession(self, request: pb.ExportSessionRequest, tenant: str, grpc_context=None):
        async for e in self.store.export(
            tenant, request.session_id, from_step=request.from_step, frames=request.include_frames
        ):
            item = pb.TrajectoryStep(step=e.step)
            if e.action:
                item.action.keys.extend(e.action.get("keys", []))
                item.action.mouse.update(e.action.get("mouse", {}))
                if e.action.get("event"):
                    item.action.event = e.action["event"]
                if e.action.get("event_text"):  # the free text the event was given as
                    item.action.event_text = e.action["event_text"]
            if e.frame is not None:
                item.frame.CopyFrom(reencode(e.frame, request.format))
            if e.text:
                item.text_embedding = e.text
            yield item

    # -- for the web gateway (through a deployment handle; the gateway authenticated the tenant) --
    async def create_for(
        self, tenant: str, *, prompt: str = "", image: bytes = b"", seed: int = 0, model: str = ""
    ) -> SessionRecord:
        if image:
            rec, _ = await self.core.create_from_image(
                tenant, common_pb2.Frame(format=sniff_format(image) or PNG, data=image), seed=seed, model=model
            )
        else:
            rec, _ = await self.core.create_from_prompt(tenant, prompt, seed=seed, steps=0, guidance=0.0, model=model)
        self.m_created.inc(source="image" if image else "prompt")
        return rec

    async def fork_for(self, tenant: str, session_id: str, step: int | None) -> SessionRecord:
        rec = await self.core.fork(tenant, session_id, step=step, seed=None)
        self.m_forked.inc()
        return rec


def build(args: dict[str, Any]):
    args = dict(args or {})
    options = DeploymentOptions(args)
    image_app = args.pop("image_app", "image")
    dynamics_app = args.pop("dynamics_app", "dynamics")
    app = options.apply(SessionService).bind(args, image_app, dynamics_app)
    options.check()
    return app
