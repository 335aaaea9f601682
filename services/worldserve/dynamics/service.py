"""The dynamics application: one thin gRPC ingress, one deployment per served model.

- ``DynamicsService`` (the ingress, CPU only): authenticates, validates, converts protobufs to
  typed requests (:mod:`worldserve.dynamics.engine.types`), finds the session's model and delegates to
  that model's deployment through a deployment handle carrying the session id, so the
  consistent-hash router keeps a session on one replica of its model.
- ``DynamicsModel-<name>`` (``ModelServer``, one deployment per entry of ``Config.models``): loads
  the model through the registry and runs the engine (scheduler, state cache, runner, output).

A Step, file by file: ``service.py`` (``DynamicsService.Step``) -> ``front.py`` (``StepFront.step``,
shared with the web gateway) -> ``service.py`` (``ModelServer.step``, in the model's replica) ->
``engine/core.py`` (``Engine.step``) -> ``engine/scheduler.py`` -> ``engine/runner.py``
(``Runner.run``) -> the model (``models/canvas/model.py``: ``CanvasWorldModel.step``).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import time
from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig

from worldserve.common.codec import PNG, check_format
from worldserve.common.config import Config, batch_invariant, setup_torch
from worldserve.common.errors import InvalidArgument, NotFound, status_of
from worldserve.common.metrics import ServiceMetrics
from worldserve.common.quotas import Quotas
from worldserve.common.servicer import ServiceBase, rpc
from worldserve.common.serving import DeploymentOptions
from worldserve.dynamics.engine.types import Priority, RateCharge, StepOutput, StepRequest
from worldserve.dynamics.front import StepFront, model_deployment_name
from worldserve.state.quotas import QuotaEnforcer
from worldserve.state.store import check_request_id, check_session_id
from worldserve.v1 import common_pb2
from worldserve.v1 import dynamics_pb2 as pb

log = logging.getLogger("worldserve.dynamics")

STEP_BATCH_CONCURRENCY = 64  # items of one StepBatch in flight at once (bounds its Redis and model work)
YIELD_EVERY = 64  # a StepBatch's per-item loops give the event loop to other requests this often
DEADLINE_WINDOW_S = 10.0  # the window of the deadline figures a model replica reports for autoscaling
STREAM_PACE_S = 5.0  # a Rollout's or Play's step waits at most this long for room in the tenant's step rate
UNARY_PACE_S = 0.1  # a Step or StepBatch waits this long at most for room; a longer wait is refused ...
UNARY_HOLD_S = 0.25  # ... after holding the refusal this long (a client looping on refusals loops slowly)


def model_info_dict(name: str, tier: str, model, batch_inv: bool) -> dict:
    """A model's info and runtime as plain data (what the ingress and the benchmark read)."""
    i, rt = model.info, model.runtime
    return {
        "name": name,
        "tier": tier,
        "frame_width": i.frame_width,
        "frame_height": i.frame_height,
        "keys": list(i.action_space.keys),
        "mouse_axes": list(i.action_space.mouse_axes),
        "discrete_actions": i.action_space.discrete_actions,
        "latent_actions": i.action_space.latent_actions,
        "context_frames": i.context_frames,
        "sample_steps": i.sample_steps,
        "default_guidance": i.default_guidance,
        "events_supported": i.events_supported,
        "event_max_bytes": i.event_max_bytes,
        "events": list(i.events),
        "parameters": i.parameters,
        "text_dim": int(i.extra.get("text_dim") or 0),
        "text_len": int(i.extra.get("text_len") or 0) if i.extra.get("text_dim") else 0,
        "runtime": {
            "device": rt.device,
            "dtype": rt.dtype,
            "attention_backend": rt.attention_backend,
            "decode_kernel": rt.decode_kernel,
            "batch_invariant": batch_inv,
        },
    }


# --------------------------------------------------------------------------------------------------
# one model: DynamicsModel-<name>


@serve.deployment(
    max_ongoing_requests=128,  # batching needs many concurrent steps in one replica
    ray_actor_options={"num_cpus": 0.5},
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 32},
    request_router_config=RequestRouterConfig(
        request_router_class="ray.serve.experimental.consistent_hash_router:ConsistentHashRouter"
    ),
)
class ModelServer:
    """One served model's replica: the model (from the registry) and its engine."""

    def __init__(self, config: dict[str, Any] | None, model_name: str):
        from worldserve.dynamics.registry import load_model
        from worldserve.state.store import SessionStore

        logging.getLogger("worldserve").setLevel(logging.INFO)
        self.config = Config.load(config)
        self.spec = self.config.model_spec(model_name)
        device = setup_torch(self.config)  # Ray alone would leave torch one thread (OMP_NUM_THREADS=1)
        self.model = load_model(self.spec, self.config, device)  # ModelLoadError: this replica never starts
        if hasattr(self.model, "configure_state_pool"):  # the model preallocates its state memory
            self.model.configure_state_pool(self.config.state_cache_bytes)
        if self.config.archive_url and self.model.info.context_frames > self.config.hot_window_steps:
            raise ValueError(
                f"model {self.spec.name!r} reads {self.model.info.context_frames} frames of context but "
                f"hot_window_steps={self.config.hot_window_steps}: archiving would trim its window"
            )
        self.batch_invariant = batch_invariant(self.config, device, self.spec)
        self.metrics = ServiceMetrics("dynamics")
        self.store = SessionStore.from_config(
            self.config, observe=lambda op, s: self.metrics.redis_latency.observe(s, op=op)
        )
        self._engine = None
        self._deadline_hist: collections.deque[tuple[float, int, int]] = collections.deque()
        try:
            self.replica_id = serve.get_replica_context().replica_id.to_full_id_str()  # the actor name
        except Exception:
            self.replica_id = "local"

    @property
    def engine(self):
        if self._engine is None:  # built inside the replica's event loop
            from worldserve.dynamics.engine.core import Engine

            self._engine = Engine(
                self.model,
                self.store,
                self.config,
                self.metrics,
                model_name=self.spec.name,
                batch_invariant=self.batch_invariant,
                enforcer=QuotaEnforcer(self.store, self.metrics),
            )
            self._engine.start()
        return self._engine

    async def step(self, req: StepRequest) -> tuple[StepOutput, str]:
        """The step, and the replica that made it (for debugging affinity and failover)."""
        return await self.engine.step(req), self.replica_id

    async def step_seconds(self) -> float:
        """This replica's model seconds per step over recent batches (0.0: no step yet)."""
        return self._engine.item_s if self._engine is not None else 0.0

    async def check_actions(self, actions: list[tuple[tuple[str, ...], dict, str | None]]) -> None:
        self.engine.check_actions(actions)

    async def info(self) -> dict:
        return model_info_dict(self.spec.name, self.spec.tier, self.model, self.batch_invariant)

    async def evict(self, tenant: str, session_id: str) -> bool:
        return self.engine.evict(tenant, session_id)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Custom autoscaling metrics (Serve calls this often, at no fixed period): over the last
        ``DEADLINE_WINDOW_S``, the share of frame-deadline steps (Play, live play, Steps with
        deadline_ms) missed and how many a second there were.
        worldserve.dynamics.autoscale.DeadlineAwarePolicy scales on them."""
        now = time.monotonic()
        met, missed = self._engine.deadline_counts if self._engine is not None else (0, 0)
        hist = self._deadline_hist
        hist.append((now, met, missed))
        while len(hist) > 2 and hist[1][0] <= now - DEADLINE_WINDOW_S:
            hist.popleft()
        t0, met0, missed0 = hist[0]
        n_met, n_missed = met - met0, missed - missed0
        n = n_met + n_missed
        return {
            "deadline_miss_ratio": n_missed / n if n else 0.0,
            "deadline_steps_per_s": n / (now - t0) if now > t0 else 0.0,
        }

    async def check_health(self) -> None:
        if self._engine is not None:
            self._engine.check_alive()


# --------------------------------------------------------------------------------------------------
# the ingress


MAX_DEADLINE_MS = 60_000


def _deadline(ms: int) -> float:
    if not 1 <= ms <= MAX_DEADLINE_MS:
        raise InvalidArgument(f"deadline_ms={ms} is out of range [1, {MAX_DEADLINE_MS}]")
    return time.time() + ms / 1000.0


def _rate(q: Quotas, wait_s: float, hold_s: float = 0.0) -> RateCharge | None:
    """The tenant's step rate for the model replica to charge (None: unlimited)."""
    return RateCharge(q.steps_per_s, q.step_burst, wait_s, hold_s) if q.steps_per_s else None


def _to_request(
    tenant: str,
    r: pb.StepRequest,
    priority: Priority | None = None,
    request_id: str | None = None,
    deadline_ms: int | None = None,
    rate: RateCharge | None = None,
) -> StepRequest:
    """``priority``: the class of the RPC (StepBatch, Rollout: BULK; Play: INTERACTIVE); None: a
    Step, INTERACTIVE when it carries a frame deadline, else NORMAL. ``deadline_ms``: the deadline
    of a Play step. ``request_id``: the id to record (a Rollout's "<id>/<i>"); None: the
    request's own, checked. ``rate``: the step-rate quota the model replica charges."""
    check_session_id(r.session_id)
    deadline = None
    if priority is None:
        priority = Priority.NORMAL
        if r.HasField("deadline_ms"):
            priority, deadline = Priority.INTERACTIVE, _deadline(r.deadline_ms)
    elif priority == Priority.INTERACTIVE and deadline_ms is not None:
        deadline = _deadline(deadline_ms)
    return StepRequest(
        tenant=tenant,
        session_id=r.session_id,
        keys=tuple(r.action.keys),
        mouse=dict(r.action.mouse),
        event=r.action.event if r.action.HasField("event") else None,
        expected_step=r.expected_step if r.HasField("expected_step") else None,
        guidance=r.guidance if r.HasField("guidance") else None,
        fmt=check_format(r.format),
        priority=priority,
        deadline=deadline,
        request_id=check_request_id(r.request_id) if request_id is None else request_id,
        rate=rate,
    )


def _to_pb_info(d: dict, default_model: str) -> pb.ModelInfo:
    rt = d["runtime"]
    return pb.ModelInfo(
        name=d["name"],
        tier=d["tier"],
        frame_width=d["frame_width"],
        frame_height=d["frame_height"],
        keys=d["keys"],
        mouse_axes=[pb.MouseAxis(name=a, min=-1.0, max=1.0) for a in d["mouse_axes"]],
        discrete_actions=d["discrete_actions"],
        latent_actions=d["latent_actions"],
        context_frames=d["context_frames"],
        sample_steps=d["sample_steps"],
        default_guidance=d["default_guidance"],
        events_supported=d["events_supported"],
        events=d.get("events", []),
        parameters=d["parameters"],
        is_default=d["name"] == default_model,
        text_dim=d.get("text_dim", 0),
        text_len=d.get("text_len", 0),
        runtime=pb.ModelRuntime(
            device=rt["device"],
            dtype=rt["dtype"],
            attention_backend=rt["attention_backend"],
            decode_kernel=rt["decode_kernel"],
            batch_invariant=rt["batch_invariant"],
        ),
    )


@serve.deployment(
    name="DynamicsService",
    max_ongoing_requests=512,
    ray_actor_options={"num_cpus": 0.1},
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 64},
)
class DynamicsService(ServiceBase):
    service = "dynamics"

    def __init__(self, config: dict[str, Any] | None, models: dict[str, Any]):
        from worldserve.state.store import SessionStore
        from worldserve.text.client import TextClient

        super().__init__(config)
        self.default_model = self.config.default_model_name
        self.store = SessionStore.from_config(
            self.config, observe=lambda op, s: self.metrics.redis_latency.observe(s, op=op)
        )
        self.enforcer = QuotaEnforcer(self.store, self.metrics)
        m_routed = self.metrics.counter("routed_requests", "Steps routed to each model's deployment", ("model",))
        # models: model name -> DeploymentHandle of DynamicsModel-<name>
        self.front = StepFront(
            self.store,
            dict(models),
            list(models),
            self.default_model,
            on_routed=lambda model: m_routed.inc(model=model),
            parse_event=TextClient(self.config).parse_event,
        )

    async def model_info(self, model: str = "") -> dict:
        return await self.front.model_info(model)

    async def list_models(self) -> tuple[list[dict], str]:
        """Every served model's info (plain data), and the default model's name."""
        return await self.front.list_models(), self.default_model

    async def catalog(self) -> dict:
        """For the sessions app: the default model and each served model's frame size, text
        embedding width (0: it takes none) and declared events."""
        infos = await self.front.list_models()
        return {
            "default": self.default_model,
            "models": {
                i["name"]: {
                    "width": i["frame_width"],
                    "height": i["frame_height"],
                    "text_dim": i.get("text_dim", 0),
                    "text_len": i.get("text_len", 0),
                    "events": i.get("events", []),
                }
                for i in infos
            },
        }

    async def _step(self, req: StepRequest, grpc_context=None) -> pb.StepResponse:
        out, model, replica = await self.front.step(req)
        if grpc_context is not None:
            grpc_context.set_trailing_metadata([("worldserve-replica", replica), ("worldserve-model", model)])
        return pb.StepResponse(session_id=out.session_id, step=out.step, frame=out.frame.to_pb(), event=out.event)

    # -- RPCs -------------------------------------------------------------------------------------
    @rpc("Step", empty=pb.StepResponse)
    async def Step(self, request: pb.StepRequest, tenant: str, grpc_context=None) -> pb.StepResponse:
        req = _to_request(tenant, request, rate=_rate(self.quotas(tenant), UNARY_PACE_S, UNARY_HOLD_S))
        return await self._step(req, grpc_context)

    @rpc("StepBatch", empty=pb.StepBatchResponse)
    async def StepBatch(self, request: pb.StepBatchRequest, tenant: str, grpc_context=None) -> pb.StepBatchResponse:
        n = len(request.steps)
        if n > self.config.max_queue:
            raise InvalidArgument(f"StepBatch of {n} steps exceeds the limit of {self.config.max_queue}")
        quotas = self.quotas(tenant)
        self.enforcer.check_step_batch(tenant, quotas, n)
        seen: set[str] = set()
        for s in request.steps:
            if s.session_id in seen:
                raise InvalidArgument(f"session {s.session_id[:80]!r} appears more than once in one StepBatch")
            seen.add(s.session_id)
        # every item counts against the step rate, valid or not (each costs work); all or none,
        # before any per-item work
        await self.enforcer.charge_steps(tenant, quotas, n, wait_s=UNARY_PACE_S, hold_s=UNARY_HOLD_S)
        reqs: list[StepRequest | BaseException] = []
        for i, s in enumerate(request.steps):  # each item converts and fails on its own
            try:
                reqs.append(_to_request(tenant, s, Priority.BULK))
            except Exception as e:
                reqs.append(e)
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)  # a big batch lets other tenants' requests through meanwhile
        # every item's session in one round trip; then a bounded number of items in flight at once
        valid = [r for r in reqs if isinstance(r, StepRequest)]
        await self.front.prefetch(tenant, [r.session_id for r in valid])
        gate = asyncio.Semaphore(STEP_BATCH_CONCURRENCY)

        async def one(r: StepRequest) -> pb.StepResponse:
            async with gate:
                # a fresh context per item: Serve's router, handed several calls that carry one
                # request's context at once, was seen to leave all but one unassigned for good
                return await asyncio.create_task(self._step(r), context=contextvars.Context())

        # items that failed to convert or name no known session are answered without a task each
        outs: list[pb.StepResponse | BaseException | None] = []
        for r in reqs:
            if isinstance(r, StepRequest) and not self.front.known(tenant, r.session_id):
                r = NotFound(f"session {r.session_id!r} not found")
            outs.append(r if isinstance(r, BaseException) else None)
        runnable = [(i, r) for i, r in enumerate(reqs) if outs[i] is None]
        done = await asyncio.gather(*(one(r) for _, r in runnable), return_exceptions=True)  # type: ignore[arg-type]
        for (i, _), o in zip(runnable, done):
            outs[i] = o
        results = []
        for i, o in enumerate(outs):
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
            if isinstance(o, BaseException):
                code, msg = status_of(o)
                results.append(pb.StepResult(error=common_pb2.ErrorStatus(code=code.value[0], message=msg)))
            else:
                results.append(pb.StepResult(ok=o))
        return pb.StepBatchResponse(results=results)

    @rpc("Rollout", empty=pb.StepResponse)
    async def Rollout(self, request: pb.RolloutRequest, tenant: str, grpc_context=None):
        n = len(request.actions)
        if not 1 <= n <= self.config.max_rollout_actions:
            raise InvalidArgument(f"Rollout of {n} actions is out of range [1, {self.config.max_rollout_actions}]")
        quotas = self.quotas(tenant)
        self.enforcer.check_rollout(tenant, quotas, n)
        check_session_id(request.session_id)
        check_format(request.format)
        check_request_id(request.request_id)
        await self.front.check_actions(
            tenant,
            request.session_id,  # all first: a bad action 5 takes no step
            [(tuple(a.keys), dict(a.mouse), a.event if a.HasField("event") else None) for a in request.actions],
        )
        # a stream's steps are paced to the tenant's rate (refused only past STREAM_PACE_S: Serve's
        # proxy drops a failed stream's trailing metadata, so a refusal could not carry RetryInfo)
        rate = _rate(quotas, STREAM_PACE_S)
        for i, a in enumerate(request.actions):
            req = pb.StepRequest(session_id=request.session_id, action=a, format=request.format)
            if i == 0 and request.HasField("expected_step"):
                req.expected_step = request.expected_step
            if request.HasField("guidance"):
                req.guidance = request.guidance
            rid = f"{request.request_id}/{i}" if request.request_id else ""
            yield await self._step(_to_request(tenant, req, Priority.BULK, request_id=rid, rate=rate))

    @rpc("Play", empty=pb.StepResponse)
    async def Play(self, request_stream, tenant: str, grpc_context=None):
        sid, fmt = None, PNG
        async for msg in request_stream:
            if sid is None:
                if not msg.session_id:
                    raise InvalidArgument("the first Play message must name the session_id")
                sid, fmt = msg.session_id, msg.format or PNG
            r = _to_request(
                tenant,
                pb.StepRequest(session_id=sid, action=msg.action, format=fmt, request_id=msg.request_id),
                Priority.INTERACTIVE,
                deadline_ms=msg.deadline_ms or self.config.play_deadline_ms,
                rate=_rate(self.quotas(tenant), STREAM_PACE_S),
            )  # paced to the rate
            yield await self._step(r)

    @rpc("GetModelInfo", empty=pb.ModelInfo)
    async def GetModelInfo(self, request: pb.GetModelInfoRequest, tenant: str, grpc_context=None) -> pb.ModelInfo:
        return _to_pb_info(await self.model_info(request.model), self.default_model)

    @rpc("ListModels", empty=pb.ListModelsResponse)
    async def ListModels(self, request: pb.ListModelsRequest, tenant: str, grpc_context=None) -> pb.ListModelsResponse:
        infos, _ = await self.list_models()
        return pb.ListModelsResponse(
            models=[_to_pb_info(i, self.default_model) for i in infos], default_model=self.default_model
        )


def build(args: dict[str, Any]):
    """Serve application builder: ``import_path: worldserve.dynamics.service:build``; ``args`` are
    Config overrides (``models`` names the served models, each its own deployment)."""
    args = dict(args or {})
    options = DeploymentOptions(args)
    config = Config.load(args)
    handles = {
        m.name: options.apply(ModelServer, name=model_deployment_name(m.name)).bind(args, m.name) for m in config.models
    }
    app = options.apply(DynamicsService).bind(args, handles)
    options.check()
    return app
