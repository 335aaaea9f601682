"""ImageService: the thin Serve ingress over ImageCore."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from worldserve.common.codec import PNG, encode_frame
from worldserve.common.errors import InvalidArgument
from worldserve.common.servicer import ServiceBase, rpc
from worldserve.common.serving import DeploymentOptions
from worldserve.common.understanding import image_prompt, understand_prompt, understood_pb
from worldserve.image.core import MAX_PROMPT_CHARS, ImageCore, load_backend
from worldserve.text.spec import MAX_TEXT_CHARS
from worldserve.v1 import image_pb2 as pb


@serve.deployment(
    name="ImageService",
    max_ongoing_requests=8,
    ray_actor_options={"num_cpus": 0.25},
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4},
)
class ImageService(ServiceBase):
    service = "image"

    def __init__(self, config: dict[str, Any] | None = None):
        super().__init__(config)
        from worldserve.common.config import setup_torch
        from worldserve.text.client import TextClient

        self.core = ImageCore(load_backend(self.config, setup_torch(self.config)))
        self.text = TextClient(self.config)
        self.m_images = self.metrics.counter("images_generated", "Images generated")
        self.m_gen = self.metrics.histogram("generation_duration_seconds", "Model time of one image")
        self._lock = asyncio.Lock()  # one generation at a time per replica; others queue

    async def _generate(self, **kw):
        import time

        async with self._lock:
            t0 = time.perf_counter()
            img = await asyncio.to_thread(self.core.generate, **kw)
            self.m_gen.observe(time.perf_counter() - t0)
        self.m_images.inc()
        return img

    @rpc("GenerateImage", empty=pb.GenerateImageResponse)
    async def GenerateImage(
        self, request: pb.GenerateImageRequest, tenant: str, grpc_context=None
    ) -> pb.GenerateImageResponse:
        """A caption in the grammar is drawn as it is; free text is read by the text app first and
        its understood caption drawn. The response says how the prompt was understood."""
        if len(request.prompt) > MAX_PROMPT_CHARS:  # before the grammar reads it
            raise InvalidArgument(f"prompt of {len(request.prompt)} characters exceeds the limit of {MAX_PROMPT_CHARS}")
        understood = await understand_prompt(request.prompt, self.text.parse_prompt, max_chars=MAX_TEXT_CHARS)
        img = await self._generate(
            prompt=image_prompt(request.prompt, understood),
            seed=request.seed,
            width=request.width,
            height=request.height,
            steps=request.steps,
            guidance=request.guidance,
        )
        return pb.GenerateImageResponse(
            image=encode_frame(img, request.format or PNG), model=self.core.name, understood=understood_pb(understood)
        )

    # -- called by the sessions app through a deployment handle (already authenticated there) ---
    async def generate(self, prompt: str, seed: int, steps: int = 0, guidance: float = 0.0) -> bytes:
        """PNG bytes of the first frame at the default size."""
        img = await self._generate(prompt=prompt, seed=seed, steps=steps, guidance=guidance)
        return encode_frame(img, PNG).data

    async def info(self) -> dict:
        w, h = self.core.default_size
        return {"model": self.core.name, "width": w, "height": h}


def build(args: dict[str, Any]):
    args = dict(args or {})
    options = DeploymentOptions(args)
    app = options.apply(ImageService).bind(args)
    options.check()
    return app
