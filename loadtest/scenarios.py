"""Locust users for the load scenarios (gRPC through Serve's proxy).

Imported only inside the Locust worker process (loadtest/locust_worker.py): Locust monkey-patches
the standard library with gevent, so grpc is switched to gevent mode before anything uses it.
"""

from __future__ import annotations

import itertools
import time

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import grpc  # noqa: E402
from locust import User, between, constant, constant_pacing, task  # noqa: E402

from loadtest import SCENARIO_CLASSES  # noqa: E402
from worldserve.client import WorldClient  # noqa: E402

KEYS = ["right", "right", "left", "up", "jump", "right", "down", "fire"]
_seq = itertools.count()


class GrpcUser(User):
    """Times each call and reports it to Locust with the tenant as context."""

    abstract = True
    tenant = "tenant-a"
    keys: dict[str, str] = {}  # tenant -> API key (set by the worker)
    fps: float = 0.0

    def on_start(self) -> None:
        self.client = WorldClient(self.host, self.keys[self.tenant], timeout_s=120)
        self.session_id = None

    def on_stop(self) -> None:
        self.client.close()

    def call(self, name: str, fn):
        t0 = time.perf_counter()
        exc = None
        out = None
        try:
            out = fn()
        except grpc.RpcError as e:
            exc = e
        ms = (time.perf_counter() - t0) * 1000
        code = "OK" if exc is None else exc.code().name
        deadline_miss = bool(self.fps) and name.startswith("Step") and ms > 1000.0 / self.fps
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=ms,
            response_length=0,
            exception=exc,
            context={"tenant": self.tenant, "code": code, "deadline_miss": deadline_miss},
        )
        return out

    def ensure_session(self) -> None:
        if self.session_id is None:
            n = next(_seq)
            s = self.call(
                "CreateSession", lambda: self.client.create_session(prompt="a red door on the left, grass, day", seed=n)
            )
            self.session_id = s.session_id if s is not None else None

    def step(self, name: str = "Step") -> None:
        self.ensure_session()
        if self.session_id is not None:
            k = KEYS[int(time.time() * 7) % len(KEYS)]
            # a paced player names its frame deadline: the cluster schedules its steps as interactive
            deadline = int(1000 / self.fps) if self.fps else None
            self.call(name, lambda: self.client.step(self.session_id, [k], deadline_ms=deadline))


class FarmAgent(GrpcUser):
    """Evaluation farm: steps its own session back to back."""

    wait_time = constant(0)

    @task
    def go(self) -> None:
        self.step()


class DynamicsOnlyAgent(GrpcUser):
    """Steps a session created before the load (session_pool), so only the dynamics app is loaded."""

    wait_time = constant(0)
    session_pool: list[str] = []

    def on_start(self) -> None:
        super().on_start()
        self.session_id = self.session_pool[next(_seq) % len(self.session_pool)]

    @task
    def go(self) -> None:
        self.step()


class Player(GrpcUser):
    """Interactive player at a fixed frame rate."""

    fps = 4.0
    wait_time = constant_pacing(1 / 4.0)

    @task
    def go(self) -> None:
        self.step()


class Creator(GrpcUser):
    """Burst of session creation from prompts."""

    wait_time = between(0, 0.05)

    @task
    def go(self) -> None:
        n = next(_seq)
        self.call("CreateSession", lambda: self.client.create_session(prompt=f"a red door on the left {n}", seed=n))


class NoisyTenant(GrpcUser):
    tenant = "noisy"
    wait_time = constant(0)

    @task
    def go(self) -> None:
        self.step("Step[noisy]")


class QuietTenant(GrpcUser):
    fps = 2.0
    wait_time = constant_pacing(1 / 2.0)

    def on_start(self) -> None:
        self.tenant = f"quiet-{next(_seq) % 3}"
        super().on_start()

    @task
    def go(self) -> None:
        self.step("Step[quiet]")


SCENARIOS = {name: [globals()[cls] for cls, _ in classes] for name, classes in SCENARIO_CLASSES.items()}
for _classes in SCENARIO_CLASSES.values():
    for _cls, _weight in _classes:
        globals()[_cls].weight = _weight
