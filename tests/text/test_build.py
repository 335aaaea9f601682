"""The text app's builder without a cluster: its settings, and a bad model folder that fails only
this application (the builder never raises for it). Ray Serve LLM's deployment built over a real
folder (it reads the job's runtime_env: Ray must be up) is checked in tests/e2e/test_text.py."""

from __future__ import annotations

import pytest

from worldserve.common.config import Config
from worldserve.common.registry import ModelLoadError
from worldserve.common.serving import OPTIONS_ARG
from worldserve.text.service import LLM_DEFAULTS, LLM_DEPLOYMENT, TextService, build, llm_settings, text_model_folder


def test_llm_settings_merge_over_the_defaults():
    s = llm_settings({"engine_kwargs": {"dtype": "bfloat16"}, "num_cpus": 1})
    assert s["engine_kwargs"]["dtype"] == "bfloat16"
    assert s["engine_kwargs"]["max_model_len"] == LLM_DEFAULTS["engine_kwargs"]["max_model_len"]
    assert s["engine_kwargs"]["structured_outputs_config"]["disable_any_whitespace"] is True
    assert s["num_cpus"] == 1 and LLM_DEFAULTS["num_cpus"] == 0.25  # the defaults are not touched


@pytest.mark.parametrize(
    "given, match",
    [
        ({"engine_kwarg": {}}, r"unknown field\(s\) \['engine_kwarg'\]"),
        ({"device": "tpu"}, "llm.device='tpu'"),
        ({"num_cpus": -1}, "llm.num_cpus=-1"),
        ("cpu", "must be a mapping"),
    ],
)
def test_bad_llm_settings_are_refused(given, match):
    with pytest.raises(ValueError, match=match):
        llm_settings(given)


def test_the_default_folder_is_the_shipped_weights():
    assert text_model_folder(Config()).endswith("worldserve/weights/text")
    assert text_model_folder(Config(text_model_path="/m")) == "/m"
    with pytest.raises(ValueError, match="'random' is not supported"):
        text_model_folder(Config(text_model_path="random"))


async def test_a_bad_folder_builds_an_app_that_fails_alone_naming_the_file(tmp_path):
    options = {"TextService": {"max_ongoing_requests": 7}, LLM_DEPLOYMENT: {"max_ongoing_requests": 9}}
    app = build({"text_model_path": str(tmp_path), OPTIONS_ARG: options})  # no raise: only this app fails
    d = app._bound_deployment
    assert d.name == "TextService" and d.max_ongoing_requests == 7
    config, llm, folder_error = d.init_args
    assert llm is None and folder_error == f"text model: {str(tmp_path / 'config.json')!r} not found"
    cls = TextService.func_or_class
    replica = cls.__new__(cls)  # as Serve builds a replica with an async constructor
    with pytest.raises(ModelLoadError, match="config.json' not found"):
        await replica.__init__(config, llm, folder_error)  # what its replica raises at start-up


def test_options_for_an_unknown_deployment_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\['Nope'\]"):
        build({"text_model_path": str(tmp_path), OPTIONS_ARG: {"Nope": {"max_ongoing_requests": 1}}})
