"""The declared model interface's ActionSpace: the one check of an action's keys, mouse axes and
values (the models' action_vector and the web's live messages both use it)."""

from __future__ import annotations

import pickle

import pytest
import torch

from worldserve.dynamics.interface import ActionError, ActionSpace

SPACE = ActionSpace(keys=("left", "right", "jump"), mouse_axes=("x", "y"), discrete_actions=8)


def test_built_from_a_models_info_as_plain_data():
    info = {"keys": ["left", "right", "jump"], "mouse_axes": ["x", "y"], "discrete_actions": 8, "events_supported": 1}
    assert ActionSpace.from_info(info) == SPACE
    assert ActionSpace.from_info({"keys": [], "mouse_axes": ["x"]}) == ActionSpace(mouse_axes=("x",))
    assert ActionSpace(keys=["a"]).keys == ("a",)  # sequences become tuples: a space is hashable


def test_check_returns_the_keys_and_the_mouse_as_floats():
    assert SPACE.check(["jump", "left"], {"y": -1, "x": 0.5}) == (("jump", "left"), {"y": -1.0, "x": 0.5})
    assert SPACE.check(iter(["left"])) == (("left",), {})
    assert SPACE.check([], {"x": True, "y": "0.25"}) == ((), {"x": 1.0, "y": 0.25})  # anything float() takes


@pytest.mark.parametrize(
    "keys, mouse, what, names, message",
    [
        (["warp", "left", "zz"], {"q": 1}, "keys", ("warp", "zz"), "unknown key 'warp'; expected one of ('left'"),
        ("left", None, "type", ("left",), "not the string 'left'"),
        ([], {"x": 0.0, "q": 0.1}, "axis", ("q",), "unknown mouse axis 'q'; expected one of ('x', 'y')"),
        ([], {"x": 1.5}, "value", ("x",), "must be a finite number in [-1, 1], got 1.5"),
        ([], {"x": float("nan")}, "value", ("x",), "got nan"),
        ([], {"x": 10**400}, "value", ("x",), "must be a finite number"),
        ([], {"x": "left"}, "value", ("x",), "must be a number in [-1, 1], got 'left'"),
    ],
)
def test_the_first_problem_is_named(keys, mouse, what, names, message):
    with pytest.raises(ActionError) as e:
        SPACE.check(keys, mouse)
    assert isinstance(e.value, ValueError) and message in str(e.value)
    assert (e.value.what, e.value.names) == (what, names)
    again = pickle.loads(pickle.dumps(e.value))  # crosses replicas intact
    assert (str(again), again.what, again.names) == (str(e.value), what, names)


def test_numbers_only_takes_json_numbers():
    assert SPACE.check([], {"x": 1, "y": -0.5}, numbers_only=True)[1] == {"x": 1.0, "y": -0.5}
    for v in (True, "0.5", None, [0.5]):
        with pytest.raises(ActionError, match="must be a number in"):
            SPACE.check([], {"x": v}, numbers_only=True)


def test_vector_is_the_keys_multi_hot_then_the_mouse_axes():
    v = SPACE.vector(["jump"], {"y": -0.5})
    assert v.dtype == torch.float32 and v.tolist() == [0.0, 0.0, 1.0, 0.0, -0.5]
    assert torch.equal(SPACE.vector([]), torch.zeros(5))
    with pytest.raises(ValueError, match="unknown key 'warp'"):
        SPACE.vector(["warp"])
