"""DynamicsService: the thin Serve ingress over the engine (authenticate -> validate -> delegate)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve

from worldserve.common.codec import PNG
from worldserve.common.errors import InvalidArgument, status_of
from worldserve.common.servicer import ServiceBase, rpc
from worldserve.v1 import common_pb2, dynamics_pb2 as pb

log = logging.getLogger("worldserve.dynamics")


def load_model(config):
    """The dynamics model: ``dynamics_model_path``, else the shipped weights, else random init (seed 0)."""
    from worldserve.common.config import model_path, setup_torch
    from worldserve.dynamics.model import WorldModel

    device = setup_torch(config)  # Ray alone would leave torch one thread (OMP_NUM_THREADS=1)
    path = model_path(config.dynamics_model_path, "dynamics")
    if path:
        return WorldModel.from_pretrained(path, device=device)
    return WorldModel.random(seed=0).to(device)


class DynamicsCore:
    """Model + store + engine; built once per replica (also used directly by the benchmark)."""

    def __init__(self, config):
        from worldserve.dynamics.engine import Engine
        from worldserve.sessions.store import SessionStore

        self.config = config
        self.model = load_model(config)
        self.store = SessionStore.from_url(
            config.redis_url, timeout_s=config.redis_timeout_s, default_ttl_s=config.session_ttl_s
        )
        self.engine: Engine | None = None
        self._engine_cls = Engine

    def ensure_engine(self, metrics):
        if self.engine is None:
            self.store._observe = lambda op, s: metrics.redis_latency.observe(s, op=op)
            self.engine = self._engine_cls(self.model, self.store, self.config, metrics)
            self.engine.start()
        return self.engine

    def model_info(self) -> pb.ModelInfo:
        c = self.model.config
        return pb.ModelInfo(
            name=self.config.model_name,
            frame_width=c.frame_width,
            frame_height=c.frame_height,
            keys=list(c.keys),
            mouse_axes=[pb.MouseAxis(name=a, min=-1.0, max=1.0) for a in c.mouse_axes],
            discrete_actions=2 ** len(c.keys),
            context_frames=c.context_frames,
            sample_steps=c.sample_steps,
            default_guidance=c.guidance,
            events_supported=bool(getattr(self.model, "events_supported", False)),
        )


def _mouse(action: common_pb2.Action) -> dict[str, float]:
    return dict(action.mouse)


@serve.deployment(
    name="DynamicsService",
    max_ongoing_requests=128,  # batching needs many concurrent steps in one replica
    ray_actor_options={"num_cpus": 0.5},
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 32},
)
class DynamicsService(ServiceBase):
    service = "dynamics"

    def __init__(self, config: dict[str, Any] | None = None):
        super().__init__(config)
        self.core = DynamicsCore(self.config)
        self.info = self.core.model_info()
        try:
            self.replica_id = serve.get_replica_context().replica_id.to_full_id_str()  # the actor name
        except Exception:  # noqa: BLE001 - outside Serve
            self.replica_id = "local"

    @property
    def engine(self):
        return self.core.ensure_engine(self.metrics)

    async def _step(self, tenant: str, req: pb.StepRequest) -> pb.StepResponse:
        r = await self.engine.step(
            tenant,
            req.session_id,
            list(req.action.keys),
            _mouse(req.action),
            expected_step=req.expected_step if req.HasField("expected_step") else None,
            guidance=req.guidance if req.HasField("guidance") else None,
            fmt=req.format or PNG,
            event=req.action.event if req.action.HasField("event") else None,
        )
        return pb.StepResponse(session_id=r.session_id, step=r.step, frame=r.frame)

    @rpc("Step", empty=pb.StepResponse)
    async def Step(self, request: pb.StepRequest, grpc_context=None) -> pb.StepResponse:
        out = await self._step(self.tenant(grpc_context), request)
        if grpc_context is not None:  # which replica served it: for debugging affinity and failover
            grpc_context.set_trailing_metadata([("worldserve-replica", self.replica_id)])
        return out

    @rpc("StepBatch", empty=pb.StepBatchResponse)
    async def StepBatch(self, request: pb.StepBatchRequest, grpc_context=None) -> pb.StepBatchResponse:
        tenant = self.tenant(grpc_context)
        ids = [s.session_id for s in request.steps]
        if len(ids) != len(set(ids)):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise InvalidArgument(f"session {dup!r} appears more than once in one StepBatch")
        if len(ids) > self.core.config.max_queue:
            raise InvalidArgument(f"StepBatch of {len(ids)} steps exceeds the limit of {self.core.config.max_queue}")
        outs = await asyncio.gather(*(self._step(tenant, s) for s in request.steps), return_exceptions=True)
        results = []
        for o in outs:
            if isinstance(o, BaseException):
                code, msg = status_of(o)
                results.append(pb.StepResult(error=common_pb2.ErrorStatus(code=code.value[0], message=msg)))
            else:
                results.append(pb.StepResult(ok=o))
        return pb.StepBatchResponse(results=results)

    @rpc("Rollout", empty=pb.StepResponse)
    async def Rollout(self, request: pb.RolloutRequest, grpc_context=None):
        tenant = self.tenant(grpc_context)
        n = len(request.actions)
        if not 1 <= n <= self.core.config.max_rollout_actions:
            raise InvalidArgument(f"Rollout of {n} actions is out of range [1, {self.core.config.max_rollout_actions}]")
        for i, a in enumerate(request.actions):
            self.engine.action(a.keys, _mouse(a), a.event if a.HasField("event") else None)  # validate all first
        for i, a in enumerate(request.actions):
            req = pb.StepRequest(session_id=request.session_id, action=a, format=request.format)
            if i == 0 and request.HasField("expected_step"):
                req.expected_step = request.expected_step
            if request.HasField("guidance"):
                req.guidance = request.guidance
            yield await self._step(tenant, req)

    @rpc("Play", empty=pb.StepResponse)
    async def Play(self, request_stream, grpc_context=None):
        tenant = self.tenant(grpc_context)
        sid, fmt = None, PNG
        async for msg in request_stream:
            if sid is None:
                if not msg.session_id:
                    raise InvalidArgument("the first Play message must name the session_id")
                sid, fmt = msg.session_id, msg.format or PNG
            yield await self._step(tenant, pb.StepRequest(session_id=sid, action=msg.action, format=fmt))

    @rpc("GetModelInfo", empty=pb.ModelInfo)
    async def GetModelInfo(self, request: pb.GetModelInfoRequest, grpc_context=None) -> pb.ModelInfo:
        self.tenant(grpc_context)
        return self.info


app = DynamicsService.bind()


def build(args: dict[str, Any]):
    """Serve application builder: ``import_path: worldserve.dynamics.service:build``; args = config overrides."""
    return DynamicsService.bind(dict(args or {}))
