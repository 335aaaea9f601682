"""Shared fixtures: a real redis-server process on a random loopback port, never a stand-in."""

from __future__ import annotations

import pytest

from worldserve.common.redis_server import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    srv = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield srv
    srv.stop()


@pytest.fixture
async def store(redis_server):
    from worldserve.sessions.store import SessionStore

    s = SessionStore.from_url(redis_server.url, default_ttl_s=600)
    await s.r.flushdb()
    yield s
    await s.close()
