"""How the other applications call the text app (torch- and vLLM-free).

``TextClient(config)`` wraps the text app's deployment handle (``TextService`` in the Serve
application ``config.text_app``) with the errors a caller answers with::

    spec = await TextClient(config).parse_prompt("a snowy night with a pink door to my right")
    # {"spec": {...spec_to_dict form...}, "caption": "a pink door on the right, snow, night", "source": "text"}
    event = await client.parse_event("make it rain", ["it starts to rain", "night falls"])

- ``config.text_app`` empty (the text app is not deployed): FailedPrecondition
  "text understanding is not deployed";
- no answer within ``config.text_timeout_s``, or the app down (its replicas gone, the app deleted
  or unhealthy): Unavailable "text understanding is unavailable: ...";
- what the text app refuses (empty or over-long text, text that names nothing the world knows,
  an answer the world cannot draw) comes through as its InvalidArgument.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from worldserve.common.config import Config
from worldserve.common.errors import FailedPrecondition, Unavailable, WorldserveError, _unwrap

TEXT_DEPLOYMENT = "TextService"
"""The text app's ingress deployment (the one the handle calls)."""

NOT_DEPLOYED = "text understanding is not deployed"


def _unavailable_errors() -> tuple[type[BaseException], ...]:
    """Ray's errors for an application that is down, deleted or not (yet) running."""
    try:
        from ray import exceptions as rx
        from ray.serve import exceptions as sx
    except ImportError:  # pragma: no cover - served code always has ray
        return ()
    return (
        rx.RayActorError,
        rx.ActorUnavailableError,
        rx.WorkerCrashedError,
        rx.NodeDiedError,
        rx.TaskCancelledError,
        sx.DeploymentUnavailableError,
        sx.ReplicaUnavailableError,
        sx.BackPressureError,
        sx.RequestCancelledError,
        sx.RayServeException,
    )


class TextClient:
    """The text app, as the sessions, image and dynamics apps call it (see the module docstring)."""

    def __init__(self, config: Config):
        self.config = config
        self._handle: Any = None

    @property
    def deployed(self) -> bool:
        """Whether the serve config names a text app (``Config.text_app``)."""
        return bool(self.config.text_app)

    def _get_handle(self) -> Any:
        if not self.deployed:
            raise FailedPrecondition(NOT_DEPLOYED)
        if self._handle is None:
            from ray import serve

            try:
                self._handle = serve.get_deployment_handle(TEXT_DEPLOYMENT, app_name=self.config.text_app)
            except Exception as e:  # no Serve here, or the app unknown to the controller
                raise Unavailable(f"text understanding is unavailable: {type(e).__name__}: {e}") from None
        return self._handle

    async def _call(self, method: str, *args: Any) -> Any:
        handle = self._get_handle()
        response = getattr(handle, method).remote(*args)
        try:
            return await asyncio.wait_for(_await(response), timeout=self.config.text_timeout_s)
        except asyncio.TimeoutError:
            cancel = getattr(response, "cancel", None)
            if cancel is not None:
                cancel()
            raise Unavailable(
                f"text understanding is unavailable: no answer within text_timeout_s={self.config.text_timeout_s:g} s"
            ) from None
        except Exception as e:
            inner = _unwrap(e)
            if isinstance(inner, WorldserveError):
                raise inner from None
            if isinstance(inner, _unavailable_errors()) or isinstance(e, _unavailable_errors()):
                raise Unavailable(f"text understanding is unavailable: {type(inner).__name__}") from None
            raise

    async def parse_prompt(self, text: str) -> dict[str, Any]:
        """``{"spec": <spec_to_dict form>, "caption": caption_of(spec), "source": "text"}``."""
        out: dict[str, Any] = await self._call("parse_prompt", text)
        return out

    async def parse_event(self, text: str, events: Sequence[str]) -> str:
        """The one of ``events`` that ``text`` means (InvalidArgument when it means none)."""
        out: str = await self._call("parse_event", text, list(events))
        return out


async def _await(response: Any) -> Any:
    return await response
