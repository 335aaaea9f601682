import grpc
import numpy as np
import pytest

from worldserve.common import codec
from worldserve.common.auth import KeyRing, add_key, hash_key, new_key
from worldserve.common.config import Config
from worldserve.common.errors import (
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    StreamFailed,
    Unauthenticated,
    grpc_method,
    status_of,
)
from worldserve.v1 import common_pb2


def test_keyring_from_file_and_env(tmp_path):
    k1, k2 = new_key(), new_key()
    f = tmp_path / "keys.json"
    add_key(f, "acme", k1)
    assert oct(f.stat().st_mode & 0o777) == "0o600"
    assert k1 not in f.read_text()  # stored hashed
    ring = KeyRing.load(f, env={"WORLDSERVE_API_KEYS": f"beta:{hash_key(k2)}"})
    assert ring.authenticate([("authorization", f"Bearer {k1}")]) == "acme"
    assert ring.authenticate([("Authorization", f"bearer {k2}")]) == "beta"
    with pytest.raises(Unauthenticated, match="missing"):
        ring.authenticate([])
    with pytest.raises(Unauthenticated, match="unknown"):
        ring.authenticate([("authorization", "Bearer nope")])
    with pytest.raises(Unauthenticated, match="malformed"):
        ring.authenticate([("authorization", k1)])
    with pytest.raises(ValueError, match="invalid tenant"):
        KeyRing.from_entries([("Bad Tenant", hash_key("x"))])


def test_status_table_and_no_traceback():
    assert status_of(InvalidArgument("bad 3"))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert status_of(NotFound("session 'x' not found")) == (grpc.StatusCode.NOT_FOUND, "session 'x' not found")
    assert status_of(Conflict("raced"))[0] == grpc.StatusCode.ABORTED
    assert status_of(FailedPrecondition("at 3"))[0] == grpc.StatusCode.FAILED_PRECONDITION
    code, msg = status_of(ZeroDivisionError("secret internals"))
    assert code == grpc.StatusCode.INTERNAL and "secret" not in msg and "Traceback" not in msg


def test_a_redis_between_roles_is_unavailable_a_redis_bug_internal():
    """A failover's transient answers (a demoted primary, a replica cut off, a slot moving) are
    UNAVAILABLE (the SDK retries them; a step's request id keeps the retry exactly once); any
    other Redis error is a bug (INTERNAL)."""
    import redis.exceptions as rex

    for e in (
        rex.ConnectionError("refused"),
        rex.BusyLoadingError("LOADING"),
        rex.ReadOnlyError("You can't write against a read only replica."),
        rex.MasterDownError("Link with MASTER is down"),
        rex.TryAgainError("Multiple keys request during rehashing of slot"),
        rex.ClusterDownError("The cluster is down"),
        # the same conditions as plain error replies (inside a pipeline or a script)
        rex.ResponseError("NOREPLICAS Not enough good replicas to write."),
        rex.ResponseError("UNBLOCKED force unblock from blocking operation, instance state changed"),
        rex.ResponseError("READONLY You can't write against a read only replica."),
        rex.ResponseError(  # as a pipelined script's error (seen in a failover)
            "Command # 1 (EVAL local k = redis.call('HGET', KEYS[1], 'r:' .. ARGV[1]) ...) of pipeline caused "
            'error: ("Error running script (call to f_bd45): @user_script:6: @user_script: 6: -READONLY You '
            "can't write against a read only replica.\",)"
        ),
        rex.ResponseError(
            "Command # 2 (WAIT 1 1000) of pipeline caused error: ('WAIT cannot be used with replica instances.',)"
        ),
    ):
        assert status_of(e) == (grpc.StatusCode.UNAVAILABLE, "session store unavailable; retry later"), e
    assert status_of(rex.ResponseError("ERR wrong number of arguments"))[0] == grpc.StatusCode.INTERNAL


def test_errors_cross_replicas_pickled_with_their_attributes():
    """A model replica raises, the ingress re-raises: the error travels pickled (Ray's cloudpickle).
    An ``__init__`` with other arguments than ``args`` once arrived as UnserializableException
    (INTERNAL) and a plain ResourceExhausted lost its retry_after_s."""
    import pickle

    import cloudpickle

    from worldserve.common.errors import ResourceExhausted
    from worldserve.common.quotas import QuotaExceeded

    errors = [
        QuotaExceeded("steps_per_s", "t1", "quota steps_per_s: wait 0.5 s", retry_after_s=0.5),
        ResourceExhausted("queue full", retry_after_s=1.25),
        NotFound("session 'x' not found"),
        InvalidArgument("bad 3"),
    ]
    for e in errors:
        for dumps, loads in ((pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)):
            back = loads(dumps(e))
            assert type(back) is type(e) and back.args == e.args and vars(back) == vars(e)
            assert status_of(back) == status_of(e)
    back = pickle.loads(pickle.dumps(errors[0]))
    assert (back.quota, back.tenant, back.retry_after_s) == ("steps_per_s", "t1", 0.5)
    assert status_of(back)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_status_message_is_one_short_line_whatever_it_quotes():
    from worldserve.common.errors import MAX_MESSAGE_CHARS

    full = f"bad caption {'x' * 100_000!r}"
    code, msg = status_of(InvalidArgument(full))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert msg.startswith("bad caption 'xxx") and msg.endswith(f"({len(full) - MAX_MESSAGE_CHARS} more characters)")
    assert len(msg) < MAX_MESSAGE_CHARS + 40
    code, msg = status_of(NotFound("session 'a\nb\x1b[31mred' not found"))
    assert msg == "session 'a b [31mred' not found"  # no newline, no escape character


class _Ctx:
    def __init__(self):
        self.code = self.details = None

    def set_code(self, c):
        self.code = c

    def set_details(self, d):
        self.details = d


async def test_grpc_method_sets_status_and_returns_empty():
    class S:
        @grpc_method("X", empty=common_pb2.Frame)
        async def X(self, request, grpc_context=None):
            raise InvalidArgument(f"width={request} is odd")

        @grpc_method("Y", empty=common_pb2.Frame)
        async def Y(self, request, grpc_context=None):
            yield 1
            raise NotFound("gone")

    ctx = _Ctx()
    out = await S().X(3, grpc_context=ctx)
    assert (
        out == common_pb2.Frame() and ctx.code == grpc.StatusCode.INVALID_ARGUMENT and ctx.details == "width=3 is odd"
    )
    ctx = _Ctx()
    got = []
    with pytest.raises(StreamFailed, match="^gone$"):  # a stream must raise, or Serve's proxy answers OK
        async for i in S().Y(0, grpc_context=ctx):
            got.append(i)
    assert got == [1] and ctx.code == grpc.StatusCode.NOT_FOUND and ctx.details == "gone"


async def test_rpc_resolves_the_tenant_once_and_maps_a_missing_key():
    from worldserve.common.servicer import ServiceBase, rpc

    class S(ServiceBase):
        service = "x"

        @rpc("X", empty=common_pb2.Frame)
        async def X(self, request, tenant, grpc_context=None):
            return common_pb2.Frame(width=len(tenant))

        @rpc("Y", empty=common_pb2.Frame)
        async def Y(self, request, tenant, grpc_context=None):
            yield tenant

    svc = S({})
    svc.tenant = lambda ctx: "tenant-a" if ctx.ok else svc.keys.authenticate([])  # type: ignore[method-assign]
    ctx = _Ctx()
    ctx.ok = True
    assert (await svc.X(0, grpc_context=ctx)).width == len("tenant-a")
    assert [t async for t in svc.Y(0, grpc_context=ctx)] == ["tenant-a"]
    ctx = _Ctx()
    ctx.ok = False
    assert await svc.X(0, grpc_context=ctx) == common_pb2.Frame()
    assert ctx.code == grpc.StatusCode.UNAUTHENTICATED


def test_config_bounds_and_overrides():
    c = Config.load({"max_batch_size": 8}, env={"REDIS_URL": "redis://h:1/0"})
    assert c.max_batch_size == 8 and c.redis_url == "redis://h:1/0"
    with pytest.raises(ValueError, match="max_batch_size=0"):
        Config.load({"max_batch_size": 0}, env={})
    with pytest.raises(ValueError, match="unknown config field 'batch'"):
        Config.load({"batch": 1}, env={})


@pytest.mark.parametrize("fmt", [codec.PNG, codec.RAW])
def test_frame_roundtrip_lossless(fmt):
    rgb = np.random.default_rng(0).integers(0, 255, (64, 48, 3), dtype=np.uint8)
    f = codec.encode_frame(rgb, fmt)
    assert (f.width, f.height) == (48, 64)
    assert np.array_equal(codec.decode_frame(f, max_bytes=1 << 20), rgb)


def test_frame_decode_rejects_bad_input():
    with pytest.raises(InvalidArgument, match="exceeds the limit"):
        codec.decode_frame(common_pb2.Frame(format=codec.PNG, data=b"x" * 2000), max_bytes=1000)
    with pytest.raises(InvalidArgument, match="cannot decode"):
        codec.decode_frame(common_pb2.Frame(format=codec.PNG, data=b"notapng"), max_bytes=1000)
    with pytest.raises(InvalidArgument, match="does not match 2x2x3"):
        codec.decode_frame(common_pb2.Frame(format=codec.RAW, data=b"123", width=2, height=2), max_bytes=1000)
    jpeg = codec.encode_frame(np.zeros((8, 8, 3), np.uint8), codec.JPEG)
    with pytest.raises(InvalidArgument, match="makes 64x64"):
        codec.decode_frame(jpeg, max_bytes=1 << 20, expect_size=(64, 64))


def test_frame_format_codes_match_the_proto():
    from worldserve.common import codec
    from worldserve.v1 import common_pb2

    assert (codec.PNG, codec.JPEG, codec.RAW) == (
        common_pb2.FRAME_FORMAT_PNG,
        common_pb2.FRAME_FORMAT_JPEG,
        common_pb2.FRAME_FORMAT_RAW_RGB8,
    )


async def test_an_rpc_sent_to_the_wrong_application_is_unimplemented():
    from worldserve.common.servicer import ServiceBase
    from worldserve.v1 import dynamics_pb2

    class Sessions(ServiceBase):
        service = "sessions"

    svc = Sessions({})
    ctx = _Ctx()
    out = await svc.Step(dynamics_pb2.StepRequest(), grpc_context=ctx)
    assert isinstance(out, dynamics_pb2.StepResponse)
    assert ctx.code == grpc.StatusCode.UNIMPLEMENTED
    assert ctx.details == (
        "DynamicsService.Step is served by application 'dynamics', not 'sessions': "
        "send the metadata application: dynamics"
    )
    ctx = _Ctx()
    with pytest.raises(StreamFailed):
        async for _ in svc.Rollout(dynamics_pb2.RolloutRequest(), grpc_context=ctx):
            pass
    assert ctx.code == grpc.StatusCode.UNIMPLEMENTED and "application: dynamics" in ctx.details
    for name in ("CreateSession", "Nope", "_private"):  # its own RPCs and other names stay plain attributes
        with pytest.raises(AttributeError):
            getattr(svc, name)
