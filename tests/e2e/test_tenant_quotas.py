"""Per-tenant quotas on a real local cluster: two replicas of each ingress share one Redis, so a
quota holds wherever a call lands; refusals are RESOURCE_EXHAUSTED with RetryInfo where waiting
helps, and the SDK waits and retries."""

from __future__ import annotations

import time
import urllib.request

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from worldserve.client import STATUS_DETAILS_KEY, WorldClient, retry_after
from worldserve.common.auth import add_key, new_key

QUOTAS = {
    "max_sessions": 3,
    "steps_per_s": 2,
    "step_burst": 4,
    "max_step_batch": 4,
    "max_rollout_actions": 4,
    "max_ttl_s": 3600,
}


def quota_of(e: grpc.RpcError) -> str | None:
    for k, v in e.trailing_metadata() or ():
        if k == STATUS_DETAILS_KEY:
            for d in status_pb2.Status.FromString(v).details:
                f = error_details_pb2.QuotaFailure()
                if d.Unpack(f):
                    return f.violations[0].description
    return None


@pytest.fixture(scope="module")
def limited(cluster):
    """A tenant with small quotas, added to the running cluster's key file."""
    key = new_key()
    add_key(cluster["tmp"] / "keys.json", "quota-t", key, QUOTAS)
    return key


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value.details()
    return e.value


@pytest.mark.e2e
def test_live_sessions_and_ttl_ceiling(cluster, limited):
    with WorldClient(cluster["target"], limited, timeout_s=120, retry_s=0) as c:
        sids = [c.create_session(prompt="a red door on the left, grass, day", seed=i).session_id for i in range(2)]
        sids.append(c.fork_session(sids[0]).session_id)  # a fork counts too
        for call in (
            lambda: c.create_session(prompt="a red door on the left, grass, day", seed=9),
            lambda: c.fork_session(sids[0]),
        ):
            e = refused(call)
            assert "max_sessions" in e.details() and quota_of(e) == "max_sessions"
            assert 0 < retry_after(e) <= 24 * 3600  # when the soonest session expires
        assert len(list(c.list_sessions())) == 3  # the refusals left nothing behind
        c.delete_session(sids.pop())
        sids.append(c.create_session(prompt="a red door on the left, grass, day", seed=5).session_id)
        e = refused(lambda: c.create_session(prompt="a red door on the left, grass, day", seed=1, ttl_s=7200))
        assert quota_of(e) == "max_ttl_s" and retry_after(e) is None
        for sid in sids:
            c.delete_session(sid)


@pytest.mark.e2e
def test_step_rate_refuses_with_retry_info_across_replicas_and_the_sdk_waits(cluster, limited):
    with WorldClient(cluster["target"], limited, timeout_s=120, retry_s=0) as c:
        sids = [c.create_session(prompt="a red door on the left, grass, day", seed=i).session_id for i in range(3)]
        try:
            time.sleep(2.5)  # the bucket is full again (4 steps at 2/s)
            t0 = time.monotonic()
            ok, refusals = 0, []
            while time.monotonic() - t0 < 4.0:  # hammer: the calls land on both ingress replicas
                try:
                    c.step(sids[ok % 3], ["right"])
                    ok += 1
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.details()
                    refusals.append(e)
            elapsed = time.monotonic() - t0
            assert refusals, "the rate never refused"
            assert ok <= 4 + 2 * elapsed + 1, f"{ok} steps admitted in {elapsed:.1f} s at 2/s, burst 4"
            e = refusals[-1]
            assert quota_of(e) == "steps_per_s" and "steps_per_s" in e.details()
            assert 0 < retry_after(e) <= 0.51
            # a StepBatch is all or none: 3 items need 3 tokens; refused whole, nothing applied
            before = [c.get_session(s).step for s in sids]
            e = refused(lambda: c.step_batch([c._step_req(s, ["left"], None, None, "png", None) for s in sids]))
            assert quota_of(e) == "steps_per_s" and 0.5 < retry_after(e) <= 1.51
            assert [c.get_session(s).step for s in sids] == before
            # request limits: waiting does not help, no RetryInfo
            e = refused(lambda: c.step_batch([c._step_req(f"s_{i}", [], None, None, "png", None) for i in range(5)]))
            assert quota_of(e) == "max_step_batch" and retry_after(e) is None
            e = refused(lambda: list(c.rollout(sids[0], ["right"] * 5)))
            assert "max_rollout_actions" in e.details()
        finally:
            with WorldClient(cluster["target"], limited, timeout_s=120, retry_s=30) as patient:
                out = patient.step_batch([patient._step_req(s, ["right"], None, None, "png", None) for s in sids])
                assert all(r.HasField("ok") for r in out.results)  # the SDK waited for room
                frames = list(patient.rollout(sids[0], ["right"] * 4))  # a Rollout is paced, not refused
                assert len(frames) == 4
                for sid in sids:
                    patient.delete_session(sid)


@pytest.mark.e2e
def test_quota_rejections_are_exported(cluster, limited):
    from prometheus_client.parser import text_string_to_metric_families

    deadline = time.monotonic() + 90
    while True:  # Ray exports every ~10 s, each replica on its own
        text = urllib.request.urlopen(cluster["metrics_url"], timeout=30).read().decode()
        quotas = {
            s.labels.get("quota")
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if s.name.endswith("quota_rejections_total") and s.labels.get("tenant") == "quota-t"
        }
        if {"steps_per_s", "max_sessions", "max_step_batch"} <= quotas or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert {"steps_per_s", "max_sessions", "max_step_batch"} <= quotas
