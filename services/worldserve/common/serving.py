"""Per-deployment options handed to an application builder, applied with ``Deployment.options``.

A serve config lists options per deployment (``applications[].deployments[]``: autoscaling with
its policy, request router, ``ray_actor_options``, ...). Deployed as a config (``serve deploy``,
the RayService's serveConfigV2), Serve's controller applies them itself. Deployed from Python
(`worldserve.deploy`), the public API can only set them where the ``Deployment`` objects are, in
the builder: deploy passes them under ``args[OPTIONS_ARG]`` and each builder hands its deployments
to :meth:`DeploymentOptions.apply` before binding them, then calls :meth:`DeploymentOptions.check`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the builders hold ray; this module imports nothing of it
    from ray.serve import Deployment

OPTIONS_ARG = "deployment_options"


class DeploymentOptions:
    """The ``{deployment name: Deployment.options kwargs}`` a builder was given (popped from its args)."""

    def __init__(self, args: dict[str, Any]):
        given = args.pop(OPTIONS_ARG, None) or {}
        if not isinstance(given, Mapping) or not all(isinstance(v, Mapping) for v in given.values()):
            raise TypeError(f"args[{OPTIONS_ARG!r}] must map deployment names to option dicts")
        self._options = {name: dict(opts) for name, opts in given.items()}
        self._built: list[str] = []

    def apply(self, deployment: Deployment, name: str | None = None) -> Deployment:
        """``deployment`` (renamed to ``name`` when given) with its configured options applied."""
        if name is not None and name != deployment.name:
            deployment = deployment.options(name=name)
        self._built.append(deployment.name)
        opts = self._options.get(deployment.name)
        return deployment.options(**opts) if opts else deployment

    def take(self, name: str) -> dict[str, Any]:
        """The options given for deployment ``name``, for a builder that makes it some other way
        (e.g. Ray Serve LLM's ``build_llm_deployment(..., override_serve_options=...)``)."""
        self._built.append(name)
        return dict(self._options.get(name) or {})

    def check(self) -> None:
        """Refuse options for a deployment the builder did not make (a typo would otherwise be dropped)."""
        missing = sorted(set(self._options) - set(self._built))
        if missing:
            raise ValueError(
                f"options given for deployment(s) {missing} that this application does not build; "
                f"it builds {sorted(self._built)}"
            )
