"""TextClient without a text app: not deployed answers FAILED_PRECONDITION before any Ray call.
(Timeouts and an app that is down are tested against a real cluster in tests/e2e/test_text.py.)"""

from __future__ import annotations

import grpc
import pytest

from worldserve.common.config import Config
from worldserve.common.errors import FailedPrecondition, status_of
from worldserve.text.client import NOT_DEPLOYED, TextClient


async def test_not_deployed_is_failed_precondition():
    client = TextClient(Config(text_app=""))
    assert not client.deployed
    with pytest.raises(FailedPrecondition, match=NOT_DEPLOYED) as e:
        await client.parse_prompt("a snowy night")
    assert status_of(e.value) == (grpc.StatusCode.FAILED_PRECONDITION, "text understanding is not deployed")
    with pytest.raises(FailedPrecondition, match=NOT_DEPLOYED):
        await client.parse_event("make it rain", ["it starts to rain"])


def test_deployed_when_the_config_names_the_app():
    assert TextClient(Config(text_app="text")).deployed
