"""The causal DiT kind through the registry and the engine (a real Redis, tiny random folders in the
published layout): a prompt-only world refuses keys with INVALID_ARGUMENT, a world with action
modules names a key outside its space, the session's text embedding is read with every prefill
(exact after an eviction), and a broken folder is a ModelLoadError naming model, file and tensor.
The served cluster: tests/e2e/test_open_world.py."""

import json
import re

import numpy as np
import pytest

from worldserve.client import text_embedding
from worldserve.common.codec import PNG, decode_frame, encode_frame
from worldserve.common.config import Config
from worldserve.common.errors import InvalidArgument
from worldserve.dynamics.engine.core import Engine
from worldserve.dynamics.engine.types import StepRequest
from worldserve.dynamics.registry import ModelLoadError, load_model

TEXT_DIM = 16


def load(folder, name="ow"):
    from worldserve.dynamics.models.causal_dit.testing import TINY_OPTIONS

    cfg = Config.load(
        {"models": [{"name": name, "kind": "causal_dit", "path": str(folder), "options": dict(TINY_OPTIONS)}]},
        env={},
    )
    return load_model(cfg.models[0], cfg, "cpu")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from worldserve.dynamics.models.causal_dit.testing import write_tiny_folder

    root = tmp_path_factory.mktemp("causal_dit")
    return {
        "actions": write_tiny_folder(root / "actions", text_dim=TEXT_DIM),
        "prompt_only": write_tiny_folder(root / "prompt_only", actions=False),
    }


@pytest.fixture
async def engine_of(store):
    made = []

    def make(model, name="ow"):
        e = Engine(model, store, Config.load({"max_batch_size": 8}, env={}), model_name=name, batch_invariant=True)
        e.start()
        made.append(e)
        return e

    yield make
    for e in made:
        await e.close()


async def new_session(store, model, name="ow", seed=3, text=None):
    i = model.info
    rgb = np.random.default_rng(seed).integers(0, 255, (i.frame_height, i.frame_width, 3), dtype=np.uint8)
    kw = {"text": text, "text_tokens": 4} if text else {}
    return await store.create(
        "t",
        model=name,
        prompt="",
        seed=seed,
        width=i.frame_width,
        height=i.frame_height,
        first_frame=encode_frame(rgb, PNG).data,
        **kw,
    )


async def test_a_prompt_only_world_takes_no_actions(folders, store, engine_of):
    model = load(folders["prompt_only"])
    assert model.info.action_space.keys == () and model.info.action_space.mouse_axes == ()
    engine = engine_of(model)
    s = await new_session(store, model)
    with pytest.raises(InvalidArgument, match="takes no actions"):
        await engine.step(StepRequest("t", s.session_id, ("forward",)))
    with pytest.raises(InvalidArgument, match="takes no actions"):
        await engine.step(StepRequest("t", s.session_id, (), {"yaw": 0.5}))
    out = await engine.step(StepRequest("t", s.session_id))  # no action: the world plays on
    assert out.step == 1


async def test_actions_outside_the_space_are_named_and_the_text_reaches_every_prefill(folders, store, engine_of):
    model = load(folders["actions"])
    space = model.info.action_space
    assert space.keys and space.mouse_axes and model.info.extra["text_dim"] == TEXT_DIM
    engine = engine_of(model)
    blob = text_embedding(np.random.default_rng(0).normal(size=(4, TEXT_DIM)).astype(np.float32))
    s = await new_session(store, model, text=blob)
    with pytest.raises(InvalidArgument, match="'jump'"):
        await engine.step(StepRequest("t", s.session_id, ("jump",)))
    with pytest.raises(InvalidArgument, match="'mouse_x'"):
        await engine.step(StepRequest("t", s.session_id, (), {"mouse_x": 0.2}))
    # warm, then evicted before every step: bitwise the same frames (the text is read again)
    twin = await new_session(store, model, text=blob)
    plain = await new_session(store, model)  # same seed and frame, no text: other frames
    keys = [(space.keys[0],), (space.keys[-1],), ()]
    warm, cold, other = [], [], []
    for k in keys:
        warm.append(
            decode_frame((await engine.step(StepRequest("t", s.session_id, k))).frame.to_pb(), max_bytes=1 << 24)
        )
        engine.evict("t", twin.session_id)
        cold.append(
            decode_frame((await engine.step(StepRequest("t", twin.session_id, k))).frame.to_pb(), max_bytes=1 << 24)
        )
        other.append(
            decode_frame((await engine.step(StepRequest("t", plain.session_id, k))).frame.to_pb(), max_bytes=1 << 24)
        )
    assert all(np.array_equal(a, b) for a, b in zip(warm, cold))
    assert not all(np.array_equal(a, b) for a, b in zip(warm, other)), "the text embedding changed nothing"


@pytest.mark.parametrize("damage", ["missing", "shape", "field", "pickle"])
def test_a_broken_folder_is_a_load_error_naming_model_file_and_tensor(tmp_path, damage):
    from safetensors.torch import load_file, save_file

    from worldserve.dynamics.models.causal_dit.testing import write_tiny_folder

    folder = write_tiny_folder(tmp_path / "m")
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    config = folder / "transformer" / "config.json"
    if damage == "field":
        config.write_text(json.dumps({**json.loads(config.read_text()), "not_a_wan_field": 1}))
        want = [str(config), "unknown config field 'not_a_wan_field'"]
    elif damage == "pickle":
        weights.rename(weights.with_suffix(".bin"))
        want = ["pickle", "convert them to safetensors"]
    else:
        state = load_file(str(weights))
        if damage == "missing":
            del state["proj_out.weight"]
            want = [str(weights), "missing tensor 'proj_out.weight'"]
        else:
            state["proj_out.weight"] = state["proj_out.weight"][:-1].clone()
            want = [str(weights), "tensor 'proj_out.weight' has shape"]
        save_file(state, str(weights))
    with pytest.raises(ModelLoadError, match=re.escape("model 'ow': ")) as e:
        load(folder)
    assert all(w in str(e.value) for w in want), str(e.value)
    assert "\n" not in str(e.value)


def test_the_kind_is_registered_and_random_is_the_tiny_model():
    from worldserve.dynamics.registry import REGISTRY

    assert "causal_dit" in REGISTRY.names()
    cfg = Config.load(
        {
            "models": [
                {
                    "name": "r",
                    "kind": "causal_dit",
                    "path": "random",
                    "options": {"latent_height": 4, "latent_width": 6},
                }
            ]
        },
        env={},
    )
    model = load_model(cfg.models[0], cfg, "cpu")
    assert (model.info.frame_width, model.info.frame_height) == (48, 32)  # the options' latent grid x 8
    bad = Config.load(
        {"models": [{"name": "r", "kind": "causal_dit", "path": "random", "options": {"chunk": 2}}]}, env={}
    )
    with pytest.raises(ModelLoadError, match="model 'r': unknown causal_dit option 'chunk'"):
        load_model(bad.models[0], bad, "cpu")
