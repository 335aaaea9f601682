"""The model registry: entry points of separately installed packages, the shipped kind, and the
start-up errors of a bad model folder."""

import json
import re
import sys
import textwrap
from pathlib import Path

import pytest

from worldserve.common.config import Config, ModelSpec
from worldserve.dynamics.interface import DynamicsModelProtocol
from worldserve.dynamics.registry import REGISTRY, ModelLoadError, load_model


@pytest.fixture
def plugin_on_path(tmp_path, monkeypatch):
    """A separately 'installed' package: a module plus a dist-info folder declaring an entry point
    in the worldserve.dynamics_models group, found through sys.path like any installed package."""
    root = str(__import__("pathlib").Path(__file__).resolve().parents[2])
    (tmp_path / "acme_worlds.py").write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {root!r})
        from tests.dynamics.toy_model import load
    """)
    )
    dist = tmp_path / "acme_worlds-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-worlds\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[worldserve.dynamics_models]\nacme_toy = acme_worlds:load\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("acme_worlds", None)


def test_an_installed_package_adds_a_model_kind(plugin_on_path):
    assert "acme_toy" in REGISTRY.names()
    cfg = Config.load(
        {"models": [{"name": "acme", "kind": "acme_toy", "path": "random", "options": {"context_frames": 3}}]}, env={}
    )
    model = load_model(cfg.models[0], cfg, "cpu")
    assert isinstance(model, DynamicsModelProtocol)
    assert model.info.context_frames == 3


def test_the_shipped_kinds_are_entry_points_too():
    from importlib.metadata import entry_points

    assert {"world_model", "scroll_canvas"} <= {ep.name for ep in entry_points(group="worldserve.dynamics_models")}
    cfg = Config.load(
        {
            "models": [
                {"name": "w", "path": "random", "sample_steps": 3},
                {"name": "c", "kind": "scroll_canvas", "path": "random"},
            ]
        },
        env={},
    )
    model = load_model(cfg.models[0], cfg, "cpu")
    assert isinstance(model, DynamicsModelProtocol)
    assert model.info.sample_steps == 3 and model.runtime.dtype == "float32"
    canvas = load_model(cfg.models[1], cfg, "cpu")
    assert isinstance(canvas, DynamicsModelProtocol) and type(canvas).__name__ == "CanvasWorldModel"
    assert canvas.info.sample_steps == 1


def test_a_published_diffusers_folder_needs_no_kind(tmp_path):
    """A folder in diffusers' layout (transformer/config.json names WanTransformer3DModel) is served
    by the causal DiT kind without ``kind:`` in the config."""
    from worldserve.dynamics.models.causal_dit.testing import TINY_OPTIONS, write_tiny_folder

    folder = write_tiny_folder(tmp_path / "published")
    cfg = Config.load({"models": [{"name": "w", "path": str(folder), "options": TINY_OPTIONS}]}, env={})
    model = load_model(cfg.models[0], cfg, "cpu")
    assert type(model).__name__ == "CausalDiTWorldModel" and model.info.frame_width == 64


def test_unknown_kind_names_the_known_ones():
    cfg = Config.load({"models": [{"name": "x", "kind": "nope"}]}, env={})
    with pytest.raises(ModelLoadError, match=r"model 'x'.*no model kind 'nope'.*world_model"):
        load_model(cfg.models[0], cfg, "cpu")


def _folder(tmp_path, **drop):
    from worldserve.dynamics.models.transformer import WorldModel, WorldModelConfig

    d = tmp_path / "m"
    WorldModel.random(WorldModelConfig(dim=64, n_layers=1, n_heads=1, event_dim=0)).save_pretrained(d)
    return d


def test_missing_weights_name_the_file(tmp_path):
    d = _folder(tmp_path)
    (d / "model.safetensors").unlink()
    cfg = Config.load({"models": [{"name": "q", "path": str(d)}]}, env={})
    with pytest.raises(ModelLoadError, match=r"model 'q'.*model\.safetensors' not found"):
        load_model(cfg.models[0], cfg, "cpu")


def test_missing_config_names_the_file(tmp_path):
    d = _folder(tmp_path)
    (d / "config.json").unlink()
    cfg = Config.load({"models": [{"name": "q", "path": str(d)}]}, env={})
    with pytest.raises(ModelLoadError, match=r"config\.json' not found"):
        load_model(cfg.models[0], cfg, "cpu")


def test_mismatched_config_names_both_files(tmp_path):
    d = _folder(tmp_path)
    c = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**c, "dim": 128}))  # the weights are for dim 64
    cfg = Config.load({"models": [{"name": "q", "path": str(d)}]}, env={})
    with pytest.raises(ModelLoadError, match=r"model\.safetensors' does not match .*config\.json'"):
        load_model(cfg.models[0], cfg, "cpu")


def test_missing_folder(tmp_path):
    cfg = Config.load({"models": [{"name": "q", "path": str(tmp_path / "none")}]}, env={})
    with pytest.raises(ModelLoadError, match="model folder .* not found"):
        load_model(cfg.models[0], cfg, "cpu")


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"models": []}, "models is empty"),
        ({"models": [{"name": "A b"}]}, "model name 'A b'"),
        ({"models": ["a", "a"]}, "duplicate names"),
        ({"models": [{"name": "a", "colour": 1}]}, "unknown fields"),
        ({"default_model": "zz"}, "not one of the served models"),
        ({"models": [{"name": "a", "sample_steps": 100}]}, "sample_steps"),
        ({"dtype": "int8"}, "dtype"),
        ({"batch_invariant": "maybe"}, "batch_invariant"),
    ],
)
def test_config_bounds(bad, match):
    with pytest.raises(ValueError, match=match):
        Config.load(bad, env={})


def test_image_registry():
    from worldserve.image.core import REGISTRY as IMAGES
    from worldserve.image.core import load_backend

    assert {"tiny_text_to_image", "caption_decoder"} <= set(IMAGES.names())
    backend = load_backend(Config.load({"image_model_path": "random"}, env={}))
    assert backend.supported_sizes[0] == (64, 64) and type(backend).__name__ == "CaptionDecoder"
    old = load_backend(Config.load({"image_model_path": "random", "image_model_kind": "tiny_text_to_image"}, env={}))
    assert type(old).__name__ == "TinyTextToImage"
    assert ModelSpec(name="ok").kind == ""  # the folder's config.json names it


def test_a_spec_without_a_kind_takes_its_folders_kind(tmp_path):
    cfg = Config.load(
        {
            "models": [
                {"name": "c", "path": "shipped:dynamics"},
                {"name": "t", "path": "shipped:transformer"},
                {"name": "r", "path": "random"},
            ]
        },
        env={},
    )
    kinds = [type(load_model(s, cfg, "cpu")).__name__ for s in cfg.models]
    assert kinds == ["CanvasWorldModel", "WorldModel", "WorldModel"]
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(ModelSpec(name="x", path="shipped:nope"), cfg, "cpu")


def test_a_served_model_may_override_batch_invariance():
    from worldserve.common.config import batch_invariant

    cfg = Config.load({"models": [{"name": "q"}, {"name": "f", "batch_invariant": "off"}]}, env={})
    assert batch_invariant(cfg, "cpu", cfg.models[0]) is True  # the cluster's auto: on for CPU
    assert batch_invariant(cfg, "cpu", cfg.models[1]) is False
    assert batch_invariant(cfg, "cuda:0", ModelSpec(name="g", batch_invariant="on")) is True
    with pytest.raises(ValueError, match="batch_invariant='sometimes'"):
        Config.load({"models": [{"name": "x", "batch_invariant": "sometimes"}]}, env={})


@pytest.fixture
def shipped_without_weights(tmp_path, monkeypatch):
    """The package's weights folders as an install that lost its safetensors files leaves them."""
    import shutil

    import worldserve.common.config as config_module

    shipped = tmp_path / "weights"
    for name in ("dynamics", "fast", "image"):
        (shipped / name).mkdir(parents=True)
        shutil.copy(Path(config_module.SHIPPED_WEIGHTS) / name / "config.json", shipped / name / "config.json")
    monkeypatch.setattr(config_module, "SHIPPED_WEIGHTS", str(shipped))
    return shipped


def test_missing_shipped_weights_are_a_start_up_error_never_random_weights(shipped_without_weights):
    from worldserve.image.core import load_backend

    cfg = Config.load({}, env={})  # the defaults: the shipped pair and the shipped image model
    for spec, folder in zip(cfg.models, ("dynamics", "fast")):
        want = str(shipped_without_weights / folder / "model.safetensors")
        with pytest.raises(ModelLoadError, match=re.escape(f"model '{spec.name}': '{want}' not found")):
            load_model(spec, cfg, "cpu")
    want = str(shipped_without_weights / "image" / "model.safetensors")
    with pytest.raises(ModelLoadError, match=re.escape(f"image model 'caption_decoder': '{want}' not found")):
        load_backend(cfg)


def test_random_weights_only_when_the_config_says_random(shipped_without_weights):
    from worldserve.image.core import load_backend

    cfg = Config.load({"dynamics_model_path": "random", "image_model_path": "random"}, env={})
    assert type(load_model(cfg.models[0], cfg, "cpu")).__name__ == "CanvasWorldModel"
    assert type(load_backend(cfg)).__name__ == "CaptionDecoder"


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
@pytest.mark.parametrize("shipped", ["dynamics", "transformer", "image"])
def test_a_corrupt_weights_file_names_the_file(tmp_path, shipped, damage):
    import shutil

    from worldserve.common.config import SHIPPED_WEIGHTS
    from worldserve.image.core import load_backend

    d = tmp_path / shipped
    shutil.copytree(Path(SHIPPED_WEIGHTS) / shipped, d)
    w = d / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes({"garbage": b"\x00garbage" * 10, "truncated": data[: len(data) // 2], "empty": b""}[damage])
    cfg = Config.load({"models": [{"name": "q", "path": str(d)}], "image_model_path": str(d)}, env={})
    with pytest.raises(ModelLoadError, match=re.escape(f"'{w}' is not a safetensors file")) as err:
        load_backend(cfg) if shipped == "image" else load_model(cfg.models[0], cfg, "cpu")
    assert "\n" not in str(err.value)


def test_an_image_model_folder_that_is_missing_or_of_an_unknown_kind(tmp_path):
    from worldserve.image.core import load_backend

    with pytest.raises(
        ModelLoadError, match=re.escape(f"image model 'caption_decoder': model folder '{tmp_path / 'no'}'")
    ):
        load_backend(Config.load({"image_model_path": str(tmp_path / "no")}, env={}))
    with pytest.raises(ModelLoadError, match="image model 'nope': no model kind 'nope'"):
        load_backend(Config.load({"image_model_kind": "nope", "image_model_path": "random"}, env={}))
