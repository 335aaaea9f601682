"""The store's tests run twice: against one redis-server and against a three-master Redis Cluster
(its Lua scripts and transactions must stay within one slot)."""

import pytest


@pytest.fixture(params=["redis", "cluster"])
def redis_url(request):
    if request.param == "redis":
        return request.getfixturevalue("redis_server").url
    return request.getfixturevalue("redis_cluster").url


@pytest.fixture
async def store(redis_url, redis_flush):
    from worldserve.state.store import SessionStore

    s = SessionStore.from_url(redis_url, default_ttl_s=600)
    await redis_flush(s.r)
    yield s
    await s.close()
