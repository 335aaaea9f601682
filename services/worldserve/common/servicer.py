"""What every Serve ingress deployment shares: config, tenants, metrics, health, error mapping.

Serve's gRPC proxy calls a deployment method named like the RPC with the request message and a
``grpc_context`` keyword. Handlers stay thin (authenticate -> validate -> convert -> delegate) and
carry :func:`rpc`, which maps exceptions to status codes through one table and records metrics.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from grpc_health.v1 import health_pb2

from worldserve.common.auth import KeyRing
from worldserve.common.config import Config
from worldserve.common.errors import Unauthenticated, grpc_method
from worldserve.common.metrics import ServiceMetrics


class ServiceBase:
    service: str = ""

    def __init__(self, config: dict[str, Any] | None = None):
        logging.getLogger("worldserve").setLevel(logging.INFO)
        self.config = Config.load(config)
        self.keys = KeyRing.load(self.config.api_keys_file or None)
        path = self.config.api_keys_file
        self._keys_mtime = os.path.getmtime(path) if path and os.path.exists(path) else None
        self.metrics = ServiceMetrics(self.service)
        self.serving = True

    def tenant(self, grpc_context) -> str:
        md = grpc_context.invocation_metadata() if grpc_context is not None else []
        try:
            return self.keys.authenticate(md)
        except Unauthenticated:
            if not self._reload_keys():
                raise
            return self.keys.authenticate(md)

    def _reload_keys(self) -> bool:
        """Pick up keys added to the key file since start (checked only on an unknown key)."""
        path = self.config.api_keys_file
        if not path or not os.path.exists(path) or os.path.getmtime(path) == self._keys_mtime:
            return False
        self._keys_mtime = os.path.getmtime(path)
        self.keys = KeyRing.load(path)
        return True

    # grpc.health.v1.Health, answered per application (the `application` metadata picks the app).
    async def Check(self, request: health_pb2.HealthCheckRequest, grpc_context=None) -> health_pb2.HealthCheckResponse:
        status = health_pb2.HealthCheckResponse.SERVING if self.serving else health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, grpc_context=None):
        yield await self.Check(request, grpc_context=grpc_context)


rpc = grpc_method
