"""End to end over real gRPC through Serve's proxy, on a real local Ray cluster and Redis."""

from __future__ import annotations

import base64
import io
import os
import signal
import threading
import time

import grpc
import numpy as np
import pytest
from PIL import Image

from worldserve.client import WorldClient, action
from worldserve.v1 import common_pb2, dynamics_pb2

pytestmark = pytest.mark.e2e


def rgb(frame) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(frame.data)).convert("RGB"))


def code_of(fn) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as ei:
        fn()
    e = ei.value
    assert "Traceback" not in (e.details() or ""), e.details()
    return e.code(), e.details()


def test_health_and_model_info(client):
    for app in ("image", "sessions", "dynamics"):
        assert client.health(app) == "SERVING"
    info = client.model_info()
    assert info.name == "platformer" and info.is_default and info.tier == "quality"
    assert info.frame_width == 64 and info.frame_height == 64
    assert "left" in info.keys and info.context_frames >= 2
    assert [a.name for a in info.mouse_axes] == ["mouse_x", "mouse_y"]
    assert info.runtime.device == "cpu" and info.runtime.dtype == "float32"
    assert info.runtime.attention_backend == "sdpa" and info.runtime.batch_invariant


def serve_details():
    """Serve's deployment details (every deployment's config as the controller holds it).

    Test-only private read: Ray 2.60 offers them publicly only over the dashboard's REST API
    (GET /api/serve/applications/, `serve status`), and the test cluster runs without a dashboard;
    the public schema ServeInstanceDetails reads them."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeInstanceDetails

    return ServeInstanceDetails.model_validate(_get_global_client().get_serve_details())


def assert_holds(got, want, where: str) -> None:
    """``got`` (a Serve schema, a dict or a value) holds every key of ``want`` with its value."""
    if isinstance(want, dict):
        got = got.model_dump() if hasattr(got, "model_dump") else got
        for k, v in want.items():
            assert k in got, f"{where}.{k} missing: {got}"
            assert_holds(got[k], v, f"{where}.{k}")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def test_serve_runs_every_deployment_with_the_configs_options(cluster):
    """worldserve.deploy (public Serve API) deploys deploy/serve/worldserve.yaml with this run's
    overrides: every option the config lists per deployment is in force in Serve, the custom
    autoscaling policy and the request router included, and the replica counts follow."""
    from ray import serve

    from worldserve.deploy import load_config
    from worldserve.local import replica_counts

    cfg = load_config(deployment_overrides=cluster["deployment_overrides"], extra_models=cluster["extra_models"])
    details = serve_details()
    assert str(getattr(details.proxy_location, "value", details.proxy_location)) == cfg["proxy_location"]
    assert details.grpc_options.grpc_servicer_functions == cfg["grpc_options"]["grpc_servicer_functions"]
    proxies = serve.status().proxies
    assert proxies and all(str(getattr(s, "value", s)) == "HEALTHY" for s in proxies.values()), proxies
    counts = replica_counts()
    checked = set()
    for app in cfg["applications"]:
        got = details.applications[app["name"]].deployments
        assert sorted(got) == sorted(d["name"] for d in app["deployments"]), app["name"]
        for want in app["deployments"]:
            name = want["name"]
            dc = got[name].deployment_config
            for option, value in want.items():  # every option the config lists, nested ones key by key
                if option != "name":
                    assert_holds(getattr(dc, option), value, f"{name}.{option}")
            assert counts[f"{app['name']}/{name}"] == want["autoscaling_config"]["min_replicas"], name
            checked.add(name)
    assert {"DynamicsModel-platformer", "DynamicsModel-platformer-fast", "ImageService"} <= checked
    fast = details.applications["dynamics"].deployments["DynamicsModel-platformer-fast"].deployment_config
    assert "DeadlineAwarePolicy" in str(fast.autoscaling_config) and "ConsistentHashRouter" in str(
        fast.request_router_config
    )


def test_two_models_serve_side_by_side(cluster, client):
    """The two shipped tiers (the open world model beside them: tests/e2e/test_open_world.py)."""
    listed = client.list_models()
    assert listed.default_model == "platformer"
    assert [(m.name, m.tier, m.sample_steps) for m in listed.models][:2] == [
        ("platformer", "quality", 1),
        ("platformer-fast", "fast", 1),
    ]
    assert client.model_info("platformer-fast").sample_steps == 1
    code, msg = code_of(lambda: client.model_info("nope"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'platformer', 'platformer-fast'" in msg
    code, msg = code_of(lambda: client.create_session(prompt="a red door on the left, grass, day", model="nope"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown model 'nope'" in msg and "'platformer-fast'" in msg

    q = [client.create_session(prompt="a red door on the left, grass, day", seed=7) for _ in range(3)]
    f = [
        client.create_session(prompt="a red door on the left, grass, day", seed=7, model="platformer-fast")
        for _ in range(3)
    ]
    assert {s.model for s in q} == {"platformer"} and {s.model for s in f} == {"platformer-fast"}
    assert client.get_session(f[0].session_id).model == "platformer-fast"
    frames: dict[str, list] = {}
    models: dict[str, set] = {}
    replicas: dict[str, set] = {}

    def play(s):
        frames[s.session_id], models[s.session_id], replicas[s.session_id] = [], set(), set()
        for k in ["right", "right", "jump", "left"]:
            r, call = client.dynamics.Step.with_call(
                dynamics_pb2.StepRequest(session_id=s.session_id, action=action([k])),
                metadata=client._md("dynamics", s.session_id),
                timeout=120,
            )
            md = dict(call.trailing_metadata())
            models[s.session_id].add(md["worldserve-model"])
            replicas[s.session_id].add(md["worldserve-replica"])
            frames[s.session_id].append(rgb(r.frame))

    ts = [threading.Thread(target=play, args=(s,)) for s in q + f]  # sessions of both models at once
    [t.start() for t in ts]
    [t.join() for t in ts]
    for s in q:
        assert models[s.session_id] == {"platformer"} and len(replicas[s.session_id]) == 1  # session-affine
        assert all("platformer-fast" not in r for r in replicas[s.session_id])
    for s in f:
        assert models[s.session_id] == {"platformer-fast"} and "platformer-fast" in next(iter(replicas[s.session_id]))
    # one model: same seed + same actions -> bitwise the same frames (batch-invariant on CPU)
    for group in (q, f):
        a = frames[group[0].session_id]
        for s in group[1:]:
            assert all(np.array_equal(x, y) for x, y in zip(a, frames[s.session_id]))
    assert not np.array_equal(frames[q[0].session_id][-1], frames[f[0].session_id][-1])  # 4 vs 1 sampler steps


def test_a_session_of_a_model_no_longer_served(cluster, client):
    import asyncio

    from worldserve.state.store import SessionStore

    s = client.create_session(prompt="a red door on the left, grass, day", seed=1)

    async def rebind():
        store = SessionStore.from_url(cluster["redis"].url)
        await store.r.hset(store._rec("tenant-a", s.session_id), "model", "retired-model")
        await store.close()

    asyncio.run(rebind())
    code, msg = code_of(lambda: client.step(s.session_id, ["left"]))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "'retired-model'" in msg


def test_create_step_fork_export_delete(client):
    s = client.create_session(prompt="a red door on the left, grass", seed=3, include_first_frame=True)
    assert s.step == 0 and s.first_frame.width == 64
    keys = ["right", "left", "up", "jump"]
    frames = [rgb(client.step(s.session_id, [keys[i % 4]]).frame) for i in range(16)]
    assert client.get_session(s.session_id).step == 16
    assert all(f.shape == (64, 64, 3) for f in frames)

    a = client.fork_session(s.session_id, step=8)
    b = client.fork_session(s.session_id, step=8)
    c = client.fork_session(s.session_id, step=8)
    assert a.step == 8 and a.parent_id == s.session_id and a.fork_step == 8
    fa = [rgb(client.step(a.session_id, ["right"]).frame) for _ in range(4)]
    fb = [rgb(client.step(b.session_id, ["right"]).frame) for _ in range(4)]
    fc = [rgb(client.step(c.session_id, ["left", "jump"], {"mouse_x": 0.5}).frame) for _ in range(4)]
    # same seed + same history + same actions -> same frames (tolerance: float rounding across batches)
    for x, y in zip(fa, fb):
        assert np.abs(x.astype(int) - y.astype(int)).mean() < 1.0
    assert np.abs(fa[-1].astype(int) - fc[-1].astype(int)).mean() > 1.0, "different actions must give different frames"

    exported = list(client.export_session(s.session_id))
    assert [e.step for e in exported] == list(range(17))
    assert list(exported[1].action.keys) == ["right"] and not exported[0].action.keys
    assert np.array_equal(rgb(exported[16].frame), frames[15])
    assert s.session_id in {x.session_id for x in client.list_sessions(page_size=2)}

    assert client.delete_session(s.session_id)
    assert code_of(lambda: client.get_session(s.session_id))[0] == grpc.StatusCode.NOT_FOUND
    from worldserve.v1 import sessions_pb2

    before = {x.session_id for x in client.list_sessions()}
    bad_format = sessions_pb2.CreateSessionRequest(prompt="grass, day", include_first_frame=True, format=99)
    code, msg = code_of(lambda: client.sessions.CreateSession(bad_format, metadata=client._md("sessions"), timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "format" in msg
    assert {x.session_id for x in client.list_sessions()} == before  # nothing left behind
    code, msg = code_of(lambda: client.delete_session(s.session_id))  # deleting twice: nothing to delete
    assert code == grpc.StatusCode.NOT_FOUND and s.session_id in msg
    forged = base64.urlsafe_b64encode(b"nan|s_x").decode()
    code, msg = code_of(
        lambda: client.sessions.ListSessions(
            sessions_pb2.ListSessionsRequest(page_token=forged), metadata=client._md("sessions"), timeout=30
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in msg
    assert client.get_session(a.session_id).step == 12  # branches own their history


def test_rollout_play_batch(client):
    s = client.create_session(prompt="a red door on the left, grass, day", seed=1)
    got = [r.step for r in client.rollout(s.session_id, ["right", "left+jump", "noop"])]
    assert got == [1, 2, 3]
    got = [r.step for r in client.play(s.session_id, ["up", "down"])]
    assert got == [4, 5]
    t = client.create_session(prompt="a red door on the left, grass, day", seed=2)
    r = client.step_batch(
        [
            dynamics_pb2.StepRequest(session_id=s.session_id, action=action(["left"])),
            dynamics_pb2.StepRequest(
                session_id=t.session_id, action=action(["right"]), format=common_pb2.FRAME_FORMAT_RAW_RGB8
            ),
            dynamics_pb2.StepRequest(session_id="s_nope", action=action([])),
        ]
    )
    assert r.results[0].ok.step == 6
    assert len(r.results[1].ok.frame.data) == 64 * 64 * 3
    assert r.results[2].error.code == grpc.StatusCode.NOT_FOUND.value[0]


def test_a_step_batch_of_sessions_with_history_answers_every_item(client):
    """Regression: several items of one StepBatch once waited forever in Serve's router."""
    sids = [client.create_session(prompt="a red door on the left, grass, day", seed=i).session_id for i in range(4)]
    for s in sids:
        client.step(s, ["right"])
    for _ in range(3):
        r = client.step_batch([dynamics_pb2.StepRequest(session_id=s, action=action(["right"])) for s in sids])
        assert all(x.HasField("ok") for x in r.results), r


def test_bad_input_and_tenancy(cluster, client):
    s = client.create_session(prompt="a red door on the left, grass, day", seed=0)
    with WorldClient(cluster["target"], cluster["key_b"]) as other:
        assert code_of(lambda: other.get_session(s.session_id))[0] == grpc.StatusCode.NOT_FOUND
        assert code_of(lambda: other.step(s.session_id, ["left"]))[0] == grpc.StatusCode.NOT_FOUND
    for key in ("", "ws_wrong"):
        with WorldClient(cluster["target"], key) as anon:
            assert code_of(lambda: anon.get_session(s.session_id))[0] == grpc.StatusCode.UNAUTHENTICATED
            assert code_of(lambda: anon.model_info())[0] == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(lambda: client.get_session("s_missing"))[0] == grpc.StatusCode.NOT_FOUND
    code, msg = code_of(lambda: client.create_session(prompt="  "))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "prompt is empty" in msg
    code, msg = code_of(lambda: client.step(s.session_id, ["jmp"]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'jmp'" in msg
    code, msg = code_of(lambda: client.step(s.session_id, [], {"mouse_x": 7.5}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "7.5" in msg
    code, msg = code_of(lambda: client.generate_image("a red door on the left, grass, day", width=100, height=64))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "100x64" in msg
    big = common_pb2.Frame(format=common_pb2.FRAME_FORMAT_PNG, data=b"\x89PNG" + b"\0" * (5 * 1024 * 1024))
    code, msg = code_of(lambda: client.create_session(image=big))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "exceeds" in msg
    wrong = common_pb2.Frame(format=common_pb2.FRAME_FORMAT_RAW_RGB8, data=bytes(32 * 32 * 3), width=32, height=32)
    code, msg = code_of(lambda: client.create_session(image=wrong))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "32x32" in msg
    ok = common_pb2.Frame(format=common_pb2.FRAME_FORMAT_RAW_RGB8, data=bytes(64 * 64 * 3), width=64, height=64)
    assert client.create_session(image=ok).step == 0
    code, msg = code_of(lambda: client.step(s.session_id, ["left"], expected_step=5))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "step 0" in msg


@pytest.mark.parametrize("expected", [False, True])
def test_racing_steps_exactly_one_lands(client, expected):
    s = client.create_session(prompt="a red door on the left, grass, day", seed=0)
    results: list = [None] * 4
    barrier = threading.Barrier(4)

    def go(i):
        barrier.wait()
        try:
            results[i] = client.step(s.session_id, ["right"], expected_step=0 if expected else None).step
        except grpc.RpcError as e:
            results[i] = e.code()

    ts = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert results.count(1) == 1, results
    want = grpc.StatusCode.FAILED_PRECONDITION if expected else grpc.StatusCode.ABORTED
    assert results.count(want) == 3, results
    assert client.get_session(s.session_id).step == 1


def test_killing_the_replica_loses_no_acknowledged_step(client):
    import ray

    s = client.create_session(prompt="a red door on the left, grass, day", seed=5)
    _, call = client.dynamics.Step.with_call(
        dynamics_pb2.StepRequest(session_id=s.session_id, action=action(["right"])),
        metadata=client._md("dynamics", s.session_id),
        timeout=120,
    )
    replica = dict(call.trailing_metadata())["worldserve-replica"]
    acked = [1]
    stop = threading.Event()

    def player():
        def actions():
            while not stop.is_set():
                yield dynamics_pb2.PlayRequest(session_id=s.session_id, action=action(["left"]))
                time.sleep(0.05)

        try:
            for r in client.dynamics.Play(actions(), metadata=client._md("dynamics", s.session_id), timeout=120):
                acked.append(r.step)
        except grpc.RpcError:
            pass

    t = threading.Thread(target=player)
    t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(acked) >= 4, "Play made no progress"
    ray.kill(ray.get_actor(replica, namespace="serve"), no_restart=True)  # the trailer names the actor
    time.sleep(1.0)
    stop.set()
    t.join(60)
    last_acked = max(acked)
    stored = client.get_session(s.session_id).step
    assert stored >= last_acked  # nothing acknowledged is lost (a step may land unacknowledged)
    exported = [e.step for e in client.export_session(s.session_id, include_frames=False)]
    assert exported == list(range(stored + 1))
    deadline = time.monotonic() + 120
    while True:
        try:
            r, call = client.dynamics.Step.with_call(
                dynamics_pb2.StepRequest(session_id=s.session_id, action=action(["up"]), expected_step=stored),
                metadata=client._md("dynamics", s.session_id),
                timeout=120,
            )
            break
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL) or time.monotonic() > deadline:
                raise
            time.sleep(1)
    assert r.step == stored + 1
    assert dict(call.trailing_metadata())["worldserve-replica"] != replica


def test_metrics_reach_the_node_prometheus_endpoint(cluster, client):
    """Runs last: by now every service has handled requests. Ray exports with a `ray_` prefix."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    for model in ("platformer", "platformer-fast"):  # a step of each: a replica restarted since has stepped
        s = client.create_session(prompt="a red door on the left, grass, day", seed=0, model=model)
        client.step(s.session_id, ["left"])
    want = {
        "ray_worldserve_dynamics_requests",
        "ray_worldserve_dynamics_request_duration_seconds",
        "ray_worldserve_dynamics_batch_size",
        "ray_worldserve_dynamics_queue_depth",
        "ray_worldserve_dynamics_active_sessions",
        "ray_worldserve_dynamics_context_cache_hits",
        "ray_worldserve_dynamics_context_cache_misses",
        "ray_worldserve_dynamics_frames_generated",
        "ray_worldserve_dynamics_model_steps",
        "ray_worldserve_dynamics_state_cache_bytes",
        "ray_worldserve_dynamics_routed_requests",
        "ray_worldserve_sessions_requests",
        "ray_worldserve_sessions_redis_op_duration_seconds",
        "ray_worldserve_image_requests",
        "ray_worldserve_image_images_generated",
    }
    served = {("platformer", "sdpa", "sdpa"), ("platformer-fast", "sdpa", "sdpa")}

    def kernels(fams) -> set:
        f = fams.get("ray_worldserve_dynamics_model_steps")
        return (
            {(s.labels.get("model"), s.labels.get("backend"), s.labels.get("kernel")) for s in f.samples}
            if f
            else set()
        )

    # each replica's metrics reach the node's endpoint on their own schedule: wait for every name
    # and for both shipped models' steps (seen: the fast tier's line a scrape later than the other's)
    deadline = time.monotonic() + 90
    while True:
        text = urllib.request.urlopen(cluster["metrics_url"], timeout=10).read().decode()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        missing = want - set(fams)
        requests = fams.get("ray_worldserve_dynamics_requests")
        codes = {smp.labels.get("code") for smp in requests.samples} if requests else set()
        # the refused request's line may come a scrape after the answered ones' (seen in CI)
        done = not missing and served <= kernels(fams) and {"OK", "INVALID_ARGUMENT"} <= codes
        if done or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert not missing, f"not exported: {sorted(missing)}"
    codes = {smp.labels.get("code") for smp in fams["ray_worldserve_dynamics_requests"].samples}
    assert "OK" in codes and "INVALID_ARGUMENT" in codes
    assert served <= kernels(fams), kernels(fams)
    for f in fams.values():  # bounded labels only: no session ids or keys
        for smp in f.samples:
            assert not any(str(v).startswith(("s_", "ws_")) for v in smp.labels.values()), smp


def test_a_broken_model_folder_never_becomes_healthy(cluster, tmp_path):
    """A model whose folder lacks its weights: its deployment fails at start-up with an error that
    names the file, and no replica of it ever reports healthy (deployed as its own app beside the
    running ones, which keep serving)."""
    from ray import serve

    from worldserve.dynamics.service import ModelServer

    (tmp_path / "config.json").write_text("{}")
    args = {"redis_url": cluster["redis"].url, "models": [{"name": "broken", "path": str(tmp_path)}]}
    try:
        with pytest.raises(RuntimeError, match="broken-model failed"):  # serve.run waits, then gives up
            serve.run(
                # one start-up try (Serve's default is 3 per replica): a broken folder never mends
                ModelServer.options(name="DynamicsModel-broken", max_constructor_retry_count=1).bind(args, "broken"),
                name="broken-model",
                route_prefix=None,
            )
        app = serve.status().applications["broken-model"]
        assert app.status == "DEPLOY_FAILED", app
        dep = app.deployments["DynamicsModel-broken"]
        assert not any(getattr(k, "value", k) == "RUNNING" and n for k, n in dep.replica_states.items())
        msg = app.message + " ".join(d.message for d in app.deployments.values())
        assert "model 'broken'" in msg and "model.safetensors' not found" in msg, msg
    finally:
        serve.delete("broken-model")
    with WorldClient(cluster["target"], cluster["key_a"]) as c:
        assert c.health("dynamics") == "SERVING"


def test_streams_end_with_the_error_status(cluster, client):
    """Rollout, Play and ExportSession answer the error's status, not OK with an empty stream."""
    s = client.create_session(prompt="a red door on the left, grass, day", seed=2)
    cases = [
        (lambda: list(client.rollout("s_missing", ["right"])), grpc.StatusCode.NOT_FOUND, "not found"),
        (lambda: list(client.rollout(s.session_id, [])), grpc.StatusCode.INVALID_ARGUMENT, "Rollout of 0 actions"),
        (
            lambda: list(client.rollout(s.session_id, ["right"] * 5 + ["jmp"])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "actions[5]: unknown key 'jmp'",
        ),
        (
            lambda: list(client.rollout(s.session_id, ["right"], expected_step=7)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "not the expected step 7",
        ),
        (lambda: list(client.play("s_missing", ["left"])), grpc.StatusCode.NOT_FOUND, "not found"),
        (lambda: list(client.export_session("s_missing")), grpc.StatusCode.NOT_FOUND, "not found"),
    ]
    with WorldClient(cluster["target"], "ws_wrong") as anon:
        cases += [
            (lambda: list(anon.rollout(s.session_id, ["right"])), grpc.StatusCode.UNAUTHENTICATED, ""),
            (lambda: list(anon.export_session(s.session_id)), grpc.StatusCode.UNAUTHENTICATED, ""),
        ]
        for fn, want, text in cases:
            code, msg = code_of(fn)
            assert code == want and text in msg, (code, msg)
            assert "\n" not in msg and len(msg) < 500
    assert client.get_session(s.session_id).step == 0  # the bad rollouts took no step


def test_sdk_steps_through_a_redis_stall_land_exactly_once(cluster):
    """Redis stops answering for longer than the store's timeout while a client steps: Steps answered
    UNAVAILABLE may have landed; the SDK retries them with their request ids, and every call is one
    step -- none lost, none applied twice."""

    from worldserve.client import WorldClient

    pid = cluster["redis"].proc.pid
    with WorldClient(cluster["target"], cluster["key_a"], timeout_s=60, retry_s=60) as c:
        s = c.create_session(prompt="a red door on the left, grass, day", seed=3)
        acked, errors = [], []

        def player():
            try:
                for _ in range(8):
                    acked.append(c.step(s.session_id, ["right"]).step)
            except grpc.RpcError as e:
                errors.append(e)

        t = threading.Thread(target=player)
        t.start()
        deadline = time.monotonic() + 60
        while len(acked) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(7.0)  # past redis_timeout_s (5 s): the steps in flight answer UNAVAILABLE
        finally:
            os.kill(pid, signal.SIGCONT)
        t.join(120)
        assert not errors, errors
        assert c.retries >= 1  # the stall did fail a call
        assert acked == list(range(1, 9)), acked
        assert c.get_session(s.session_id).step == 8
        # a retry of a landed step by hand: same id, same step back, nothing applied
        r1 = c.step(s.session_id, ["up"], request_id="by-hand")
        r2 = c.step(s.session_id, ["up"], request_id="by-hand", fmt="raw")
        assert r1.step == r2.step == 9 and c.get_session(s.session_id).step == 9
        assert len(r2.frame.data) == 64 * 64 * 3


def test_a_request_for_the_wrong_application_is_unimplemented(client):
    s = client.create_session(prompt="a red door on the left, grass, day", seed=1)
    md = [m for m in client._md("dynamics", s.session_id) if m[0] != "application"]
    for app in ("sessions", "image"):
        code, msg = code_of(
            lambda: client.dynamics.Step(
                dynamics_pb2.StepRequest(session_id=s.session_id, action=action(["up"])),
                metadata=md + [("application", app)],
                timeout=60,
            )
        )
        assert code == grpc.StatusCode.UNIMPLEMENTED, (app, code, msg)
        assert msg == (
            f"DynamicsService.Step is served by application 'dynamics', not {app!r}: "
            "send the metadata application: dynamics"
        )
    code, msg = code_of(
        lambda: list(
            client.dynamics.Rollout(
                dynamics_pb2.RolloutRequest(session_id=s.session_id, actions=[action(["up"])]),
                metadata=md + [("application", "sessions")],
                timeout=60,
            )
        )
    )
    assert code == grpc.StatusCode.UNIMPLEMENTED and "application: dynamics" in msg
    assert client.get_session(s.session_id).step == 0  # nothing stepped


def _flood(target: str, key: str, fmt: int, stop, batches, errors) -> None:
    """A flooding tenant's loop (its own process): StepBatches of 1,000 unknown sessions. Niced: a
    real flooder runs on its own machine; here its client-side work (building and parsing 1,000-item
    messages) would otherwise take this 2-core box's CPU from the server, which is what is tested."""
    import os

    from worldserve.client import WorldClient, action
    from worldserve.v1 import dynamics_pb2

    os.nice(15)
    with WorldClient(target, key, timeout_s=60, retry_s=0) as c:
        reqs = [
            dynamics_pb2.StepRequest(session_id=f"s_flood{i}", action=action(["up"]), format=fmt) for i in range(1000)
        ]
        while not stop.is_set():
            try:
                r = c.step_batch(reqs)
                with batches.get_lock():
                    batches.value += 1
                assert all(x.HasField("error") for x in r.results)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:  # the step-rate quota: expected
                    errors.put(e.code().name)


def test_two_tenants_flooding_step_batch_do_not_hurt_a_third(cluster):
    """Two tenants loop StepBatches of 1,000 unknown sessions (and bad formats), each from its own
    process (as two clients would: in this process their threads would take the quiet client's
    GIL); a third steps its session as usual: it sees no error, and its p99 stays within 2x its
    quiet p99 (plus 50 ms: this machine's two cores also run the flooders)."""
    import multiprocessing as mp

    from worldserve.common.auth import add_key, new_key

    key_c = new_key()
    add_key(cluster["tmp"] / "keys.json", "tenant-c", key_c)
    with WorldClient(cluster["target"], key_c, timeout_s=60, retry_s=0) as quiet:
        s = quiet.create_session(prompt="a red door on the left, grass, day", seed=4)

        def p99(n: int) -> float:
            lat = []
            for _ in range(n):
                t0 = time.perf_counter()
                quiet.step(s.session_id, ["right"])
                lat.append(time.perf_counter() - t0)
            return float(np.percentile(lat, 99))

        p99(5)  # warm
        calm = p99(100)
        ctx = mp.get_context("spawn")
        stop, batches, errors = ctx.Event(), ctx.Value("i", 0), ctx.Queue()
        procs = [
            ctx.Process(target=_flood, args=(cluster["target"], k, f, stop, batches, errors))
            for k, f in ((cluster["key_a"], 0), (cluster["key_b"], 99))
        ]
        for p in procs:
            p.start()
        try:
            time.sleep(3.0)  # the flooders' processes start and flood
            loud = p99(100)  # any error here fails the test
        finally:
            stop.set()
            for p in procs:
                p.join(60)
        assert batches.value >= 4, batches.value  # the flood did run beside the quiet steps
        assert errors.empty(), errors.get()
        print(f"quiet tenant p99: {calm * 1e3:.0f} ms alone, {loud * 1e3:.0f} ms beside {batches.value} flood batches")
        assert loud <= 2 * calm + 0.05, (calm, loud)  # not starved (was: UNAVAILABLE, 19 s stalls)


def _sdk_player(cluster, session_id: str, n: int, acked: list[int], errors: list) -> threading.Thread:
    def run():
        with WorldClient(cluster["target"], cluster["key_a"], timeout_s=60, retry_s=90) as c:
            try:
                for _ in range(n):
                    acked.append(c.step(session_id, ["right"]).step)
            except grpc.RpcError as e:
                errors.append(e)
            acked.append(-c.retries)  # last: how many retries it took (negated)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_sdk_steps_through_a_replica_kill_and_a_redis_restart_land_exactly_once(cluster, client):
    """The replica holding the session is killed, later Redis restarts (graceful stop, same data):
    a client stepping through both with the SDK's retries gets steps 1..n, each exactly once."""
    import ray

    s = client.create_session(prompt="a blue box on the right, snow, day", seed=11)
    r, call = client.dynamics.Step.with_call(
        dynamics_pb2.StepRequest(session_id=s.session_id, action=action(["right"]), request_id="first"),
        metadata=client._md("dynamics", s.session_id),
        timeout=120,
    )
    replica = dict(call.trailing_metadata())["worldserve-replica"]
    acked: list[int] = [1]
    errors: list = []
    t = _sdk_player(cluster, s.session_id, 15, acked, errors)
    deadline = time.monotonic() + 60
    while len(acked) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    ray.kill(ray.get_actor(replica, namespace="serve"), no_restart=True)
    while len(acked) < 9 and time.monotonic() < deadline + 60:
        time.sleep(0.05)
    redis = cluster["redis"]
    redis.stop()  # SIGTERM: the AOF is flushed
    time.sleep(2.0)
    redis.start()
    t.join(180)
    retries = -acked.pop()
    assert not errors, errors
    assert acked == list(range(1, 17)), acked
    assert client.get_session(s.session_id).step == 16
    print(f"16 steps through a replica kill and a Redis restart: {retries} retries")


def test_sdk_steps_through_a_redis_sigkill_land_exactly_once(cluster, client):
    """Redis is SIGKILLed mid-play (no shutdown: the AOF is not flushed by it) and started again on
    its data: every step the SDK saw acknowledged is still there, and none landed twice (Redis
    writes the AOF before it replies; only a crash of the host can lose the last second)."""
    s = client.create_session(prompt="a red door on the left, grass, day", seed=12)
    acked: list[int] = []
    errors: list = []
    t = _sdk_player(cluster, s.session_id, 16, acked, errors)
    deadline = time.monotonic() + 60
    while len(acked) < 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    redis = cluster["redis"]
    os.kill(redis.proc.pid, signal.SIGKILL)
    redis.proc.wait(10)
    time.sleep(1.0)
    redis.start()
    t.join(180)
    retries = -acked.pop()
    assert not errors, errors
    assert acked == list(range(1, 17)), acked
    with WorldClient(cluster["target"], cluster["key_a"], timeout_s=60) as c:
        assert c.get_session(s.session_id).step == 16
        got = [e.step for e in c.export_session(s.session_id, include_frames=False)]
    assert got == list(range(0, 17))  # every acknowledged step is in the log, once
    print(f"16 steps through a Redis SIGKILL: {retries} retries")


def test_older_steps_move_to_the_archive_and_export_reads_both_tiers(cluster, client):
    """A session longer than a chunk: its older steps go to the archive (the cluster's local folder),
    Redis keeps the hot window and the tail, and ExportSession streams one trajectory."""
    import redis as redis_sync

    s = client.create_session(prompt="a cyan box on the right, grass, day", seed=21)
    frames = [r.frame.data for r in client.rollout(s.session_id, ["right", "left", "up", "right"] * 25)]
    assert len(frames) == 100
    r = redis_sync.Redis.from_url(cluster["redis"].url)
    rec_key = f"ws:tenant-a:{{{s.session_id}}}"
    deadline = time.monotonic() + 60
    while int(r.hget(rec_key, "archived") or -1) < 63 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert int(r.hget(rec_key, "archived")) == 63  # one full chunk of 64 (steps 0..63)
    # archived steps older than the hot window (32) when the archiver ran left Redis
    assert 31 <= int(r.hget(rec_key, "trimmed")) <= 63
    assert r.hget(rec_key + ":log", "f:10") is None and r.hget(rec_key + ":log", "f:90") is not None
    got = list(client.export_session(s.session_id, include_frames=True))
    assert [e.step for e in got] == list(range(101))
    assert [e.frame.data for e in got[1:]] == frames  # the same frames, from the archive and from Redis
    assert list(got[5].action.keys) == ["right"]
