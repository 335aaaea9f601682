"""Shared fixtures: a real redis-server process on a random loopback port, never a stand-in."""

from __future__ import annotations

import pytest

from worldserve.common.redis_server import EmbeddedRedis, EmbeddedRedisCluster


def pytest_collection_modifyitems(config, items):
    """The end-to-end tests run last. Their Ray cluster is session scoped: it stays up, this process
    connected to it, until the session ends, and a test after it would meet Ray in-process (its
    metrics going to Ray's; a web test was seen to hang that way in CI)."""
    items.sort(key=lambda item: "e2e" in item.path.parts)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    srv = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield srv
    srv.stop()


@pytest.fixture
async def store(redis_server):
    from worldserve.state.store import SessionStore

    s = SessionStore.from_url(redis_server.url, default_ttl_s=600)
    await flush(s.r)
    yield s
    await s.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A real three-master Redis Cluster on loopback (redis-server in cluster mode)."""
    c = EmbeddedRedisCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    yield c
    c.stop()


async def flush(r) -> None:
    """Empty a Redis or every master of a Redis Cluster."""
    from redis.asyncio.cluster import RedisCluster

    if isinstance(r, RedisCluster):
        await r.flushdb(target_nodes=RedisCluster.PRIMARIES)
    else:
        await r.flushdb()


@pytest.fixture
def redis_flush():
    """``await redis_flush(client)`` empties a Redis or a Redis Cluster (for fixtures elsewhere)."""
    return flush
