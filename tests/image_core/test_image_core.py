import numpy as np
import pytest

from worldserve.common.config import Config
from worldserve.common.errors import InvalidArgument
from worldserve.image.core import ImageCore, load_backend


@pytest.fixture(scope="module")
def core():
    return ImageCore(load_backend(Config.load({}, env={})))


def test_generate_default_size_and_determinism(core):
    a = core.generate("a red door on the left", seed=3)
    b = core.generate("a red door on the left", seed=3)
    c = core.generate("a blue door on the right", seed=3)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"prompt": " "}, "prompt is empty"),
        ({"prompt": "x", "width": 100, "height": 64}, "100x64"),
        ({"prompt": "x", "steps": 65}, "steps=65"),
        ({"prompt": "x", "guidance": 99.0}, "guidance=99.0"),
        ({"prompt": "x" * 3000}, "3000 characters"),
    ],
)
def test_bad_input_quotes_the_value(core, kw, match):
    with pytest.raises(InvalidArgument, match=match):
        core.generate(**kw)
