"""The open world model kind (a Wan-lineage causal video DiT, kind ``causal_dit``) served beside the
shipped models on the real local cluster: a tiny random instance in the published (diffusers)
folder layout, with keyboard + mouse action modules and a text embedding input (the cluster
fixture's third model, ``open-world``).

ListModels shows it with its action space; sessions of the three models step concurrently; a live
WebSocket session on it plays; replay is exact after an eviction; an action outside its space, or
a text embedding of the wrong width, answers INVALID_ARGUMENT; a broken model folder (a missing
tensor, a wrong shape, an unknown config field) is a start-up error naming the model, the file and
the tensor, and that replica never reports healthy while the cluster keeps serving. (A prompt-only
model stepped with keys: tests/dynamics/test_engine_causal_dit.py, in process, to spare a fourth
deployment.)
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import grpc
import numpy as np
import pytest
import requests
from PIL import Image

from worldserve.client import WorldClient, action, text_embedding
from worldserve.v1 import common_pb2, dynamics_pb2

pytestmark = pytest.mark.e2e

OPEN_WORLD = "open-world"  # the cluster fixture's third model (tests/e2e/conftest.py)
OPEN_WORLD_TEXT_DIM = 16

TENANT = "tenant-a"


def rgb(frame) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(frame.data)).convert("RGB"))


def png(w: int, h: int, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def code_of(fn) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as ei:
        fn()
    assert "Traceback" not in (ei.value.details() or ""), ei.value.details()
    return ei.value.code(), ei.value.details()


@pytest.fixture(scope="module")
def world(cluster):
    """The open world model's info, and a first frame of its size."""
    assert (cluster["open_world"]["name"], cluster["open_world"]["text_dim"]) == (OPEN_WORLD, OPEN_WORLD_TEXT_DIM)
    with WorldClient(cluster["target"], cluster["key_a"], timeout_s=120) as c:
        info = c.model_info(OPEN_WORLD)
    first = common_pb2.Frame(format=common_pb2.FRAME_FORMAT_PNG, data=png(info.frame_width, info.frame_height))
    return {"info": info, "first": first}


def embedding(width: int = OPEN_WORLD_TEXT_DIM, tokens: int = 6, seed: int = 0) -> bytes:
    return text_embedding(np.random.default_rng(seed).normal(size=(tokens, width)).astype(np.float32))


def open_session(client, world, seed: int = 5, text: bool = True):
    return client.create_session(
        image=world["first"], seed=seed, model=OPEN_WORLD, text_embedding=embedding() if text else b""
    )


def test_list_models_shows_the_open_world_with_its_action_space(client, world):
    listed = client.list_models()
    assert [m.name for m in listed.models] == ["platformer", "platformer-fast", OPEN_WORLD]
    info = world["info"]
    assert info.tier == "open" and not info.is_default
    assert len(info.keys) > 0 and len(info.mouse_axes) > 0, info  # keyboard + mouse modules
    assert all(a.min == -1.0 and a.max == 1.0 for a in info.mouse_axes)
    assert info.text_dim == OPEN_WORLD_TEXT_DIM and client.model_info("platformer").text_dim == 0
    assert info.runtime.device == "cpu" and info.runtime.attention_backend == "sdpa"
    assert info.parameters > 0 and info.frame_width > 0 and info.frame_height > 0


def test_sessions_of_the_three_models_step_concurrently(client, world):
    info = world["info"]
    keys = list(info.keys)
    axis = info.mouse_axes[0].name
    sessions = {
        "platformer": [client.create_session(prompt="a red door on the left, grass, day", seed=7) for _ in range(2)],
        "platformer-fast": [
            client.create_session(prompt="a red door on the left, grass, day", seed=7, model="platformer-fast")
            for _ in range(2)
        ],
        OPEN_WORLD: [open_session(client, world) for _ in range(2)],
    }
    plays = {
        "platformer": [action(["right"]), action(["jump"]), action(["left"])],
        "platformer-fast": [action(["right"]), action(["jump"]), action(["left"])],
        OPEN_WORLD: [action([keys[0]]), action([keys[-1]], {axis: 0.5}), action([])],
    }
    frames: dict[str, list[np.ndarray]] = {}
    served: dict[str, set[str]] = {}
    errors: list[BaseException] = []

    def play(model, s):
        try:
            frames[s.session_id], served[s.session_id] = [], set()
            for a in plays[model]:
                r, call = client.dynamics.Step.with_call(
                    dynamics_pb2.StepRequest(session_id=s.session_id, action=a),
                    metadata=client._md("dynamics", s.session_id),
                    timeout=120,
                )
                served[s.session_id].add(dict(call.trailing_metadata())["worldserve-model"])
                frames[s.session_id].append(rgb(r.frame))
        except BaseException as e:  # reported below
            errors.append(e)

    ts = [threading.Thread(target=play, args=(m, s)) for m, group in sessions.items() for s in group]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert not errors, errors
    for model, group in sessions.items():
        for s in group:
            assert served[s.session_id] == {model}
        a, b = (frames[s.session_id] for s in group)
        assert len(a) == 3 and all(np.array_equal(x, y) for x, y in zip(a, b)), f"{model}: twins differ"
    ow = frames[sessions[OPEN_WORLD][0].session_id]
    assert ow[0].shape == (info.frame_height, info.frame_width, 3)
    assert not np.array_equal(ow[0], ow[1]), "the open world moved"


def test_the_text_embedding_is_kept_forked_and_exported(client, world):
    s = open_session(client, world, seed=9)
    assert s.text_tokens == 6 and client.get_session(s.session_id).text_tokens == 6
    client.step(s.session_id, [world["info"].keys[0]])
    child = client.fork_session(s.session_id)
    assert child.text_tokens == 6
    client.step(child.session_id, [])
    exported = list(client.export_session(child.session_id, include_frames=False))
    assert [e.step for e in exported] == [0, 1, 2] and exported[0].text_embedding == embedding()
    assert not exported[1].text_embedding
    plain = open_session(client, world, seed=9, text=False)  # optional: a session without one plays too
    assert plain.text_tokens == 0 and client.step(plain.session_id, []).step == 1


def test_replay_is_exact_after_an_eviction_before_every_step(cluster, client, world):
    """Like tests/e2e/test_replay.py, shorter: past the tiny model's KV window (sink + recent frames
    rebuilt from Redis), with the text embedding read again at every prefill."""
    from ray import serve

    keys = list(world["info"].keys)
    steps = [[keys[i % len(keys)]] for i in range(12)]
    handle = serve.get_deployment_handle(f"DynamicsModel-{OPEN_WORLD}", app_name="dynamics")
    warm, cold = open_session(client, world, seed=21), open_session(client, world, seed=21)
    warm_frames = [rgb(r.frame) for r in client.rollout(warm.session_id, [action(k) for k in steps])]
    evicted = 0
    for i, k in enumerate(steps):
        evicted += bool(handle.options(session_id=cold.session_id).evict.remote(TENANT, cold.session_id).result())
        assert np.array_equal(rgb(client.step(cold.session_id, k).frame), warm_frames[i]), f"step {i + 1} differs"
    assert evicted == len(steps) - 1


def test_bad_input_answers_invalid_argument(client, world):
    s = open_session(client, world)
    info = world["info"]
    code, msg = code_of(lambda: client.step(s.session_id, ["jump"]))  # a platformer key, not the open world's
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'jump'" in msg, msg
    code, msg = code_of(lambda: client.step(s.session_id, [], {"mouse_x": 0.1}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'mouse_x'" in msg, msg
    code, msg = code_of(lambda: client.step(s.session_id, [], {info.mouse_axes[0].name: 3.0}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and info.mouse_axes[0].name in msg, msg

    wide = OPEN_WORLD_TEXT_DIM * 2
    code, msg = code_of(
        lambda: client.create_session(image=world["first"], model=OPEN_WORLD, text_embedding=embedding(wide))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"width {wide}" in msg and f"text_dim={OPEN_WORLD_TEXT_DIM}" in msg and OPEN_WORLD in msg, msg
    code, msg = code_of(
        lambda: client.create_session(prompt="a red door on the left, grass, day", text_embedding=embedding())
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "model 'platformer' takes no text embedding" in msg
    code, msg = code_of(
        lambda: client.create_session(image=world["first"], model=OPEN_WORLD, text_embedding=b"not safetensors")
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "safetensors" in msg


def test_a_live_websocket_session_on_the_open_world_plays(cluster, world):
    from websockets.sync.client import connect

    from worldserve.web.live import unpack_frame

    info, base = world["info"], cluster["http"]
    headers = {"authorization": f"Bearer {cluster['key_a']}"}
    body = {"image": base64.b64encode(world["first"].data).decode(), "seed": 4, "model": OPEN_WORLD}
    r = requests.post(base + "/v1/sessions", json=body, headers=headers, timeout=60)
    assert r.status_code == 200 and r.json()["model"] == OPEN_WORLD, r.text
    sid = r.json()["session_id"]
    url = f"{base.replace('http://', 'ws://')}/v1/sessions/{sid}/play?role=controller&fps=4&format=png"
    with connect(url, additional_headers=headers, open_timeout=30) as ws:
        hello = json.loads(ws.recv(timeout=30))
        assert hello["type"] == "hello" and sorted(hello["keys"]) == sorted(info.keys), hello
        ws.send(json.dumps({"type": "action", "seq": 1, "keys": [info.keys[0]]}))
        got, deadline = [], time.monotonic() + 60
        while len(got) < 4 or got[-1]["ack"] != 1:
            m = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            if isinstance(m, bytes):
                h, data = unpack_frame(m)
                got.append({**h, "rgb": np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))})
    steps = [g["step"] for g in got]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    assert got[-1]["rgb"].shape == (info.frame_height, info.frame_width, 3)


BROKEN = {
    # what breaks -> what the start-up error must say (besides the model's name)
    "missing": ("proj_out.weight", "missing tensor"),
    "shape": ("proj_out.weight", "has shape"),
    "field": ("not_a_wan_field", "unknown config field"),
}


def broken_folder(root, damage: str):
    """A tiny folder with one fault: a tensor removed, a tensor of the wrong shape, or an unknown
    config field."""
    from safetensors.torch import load_file, save_file

    from worldserve.dynamics.models.causal_dit.testing import write_tiny_folder

    folder = write_tiny_folder(root / damage)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    config = folder / "transformer" / "config.json"
    if damage == "field":
        data = json.loads(config.read_text())
        config.write_text(json.dumps({**data, "not_a_wan_field": 1}))
        return folder, config
    state = load_file(str(weights))
    if damage == "missing":
        del state["proj_out.weight"]
    else:
        state["proj_out.weight"] = state["proj_out.weight"][:-1].clone()
    save_file(state, str(weights))
    return folder, weights


def test_a_broken_open_world_folder_never_becomes_healthy(cluster, tmp_path):
    """Each fault as its own app beside the running ones (deployed at once, not waited on): every
    one fails at start-up naming the model, the file and the tensor or field; none ever has a
    running replica; the cluster keeps serving."""
    from ray import serve

    from worldserve.dynamics.models.causal_dit.testing import TINY_OPTIONS
    from worldserve.dynamics.service import ModelServer

    targets, files = [], {}
    for damage in BROKEN:
        folder, files[damage] = broken_folder(tmp_path, damage)
        name = f"broken-{damage}"
        args = {
            "redis_url": cluster["redis"].url,
            "torch_threads": 1,
            "models": [{"name": name, "kind": "causal_dit", "path": str(folder), "options": dict(TINY_OPTIONS)}],
        }
        # one start-up try each (Serve's default is 3 per replica): a broken folder never mends
        dep = ModelServer.options(
            name=f"DynamicsModel-{name}", ray_actor_options={"num_cpus": 0.1}, max_constructor_retry_count=1
        )
        targets.append(serve.RunTarget(target=dep.bind(args, name), name=f"{name}-app", route_prefix=None))
    try:
        serve.run_many(targets, wait_for_applications_running=False)
        deadline = time.monotonic() + 240
        while True:
            apps = serve.status().applications
            states = {d: str(getattr(apps[f"broken-{d}-app"].status, "value", "")) for d in BROKEN}
            if all(s == "DEPLOY_FAILED" for s in states.values()):
                break
            assert time.monotonic() < deadline, states
            for d in BROKEN:
                dep = apps[f"broken-{d}-app"].deployments.get(f"DynamicsModel-broken-{d}")
                assert dep is None or not any(
                    getattr(k, "value", k) == "RUNNING" and n for k, n in dep.replica_states.items()
                ), f"{d}: a replica of a broken folder runs"
            time.sleep(1.0)
        for damage, (tensor, what) in BROKEN.items():
            app = serve.status().applications[f"broken-{damage}-app"]
            msg = app.message + " ".join(d.message for d in app.deployments.values())
            assert f"model 'broken-{damage}'" in msg and str(files[damage]) in msg, msg
            assert repr(tensor) in msg and what in msg, msg
    finally:
        for damage in BROKEN:
            serve.delete(f"broken-{damage}-app")
    with WorldClient(cluster["target"], cluster["key_a"]) as c:
        assert c.health("dynamics") == "SERVING"
        s = c.create_session(prompt="a red door on the left, grass, day", seed=1)
        assert c.step(s.session_id, ["right"]).step == 1
