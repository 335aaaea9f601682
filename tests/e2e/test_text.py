"""The text app in the shared cluster: TextService over Serve's gRPC proxy, its handle through
TextClient, a second text app with a corrupt model folder failing alone, and the metrics (ours and
vLLM's engine metrics through Ray Serve LLM) on the node's scrape.

The shared cluster serves the text app over the shipped model (weights/text): what it understands
of a few plain texts is checked word for word (its held-out accuracy is measured by
`python -m worldserve.train text-eval`, see its model card)."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import time
import urllib.request

import grpc
import pytest

from worldserve.common import caption as grammar
from worldserve.v1 import text_pb2, text_pb2_grpc

pytestmark = pytest.mark.e2e


def _stub(cluster):
    ch = grpc.insecure_channel(cluster["target"])
    return ch, text_pb2_grpc.TextServiceStub(ch)


def _md(cluster, key: str | None = None):
    return [("application", "text"), ("authorization", f"Bearer {key or cluster['key_a']}")]


def _check_understood(u, text: str) -> None:
    assert u.source == "text"
    spec = grammar.parse_caption(u.caption)  # the caption is in the grammar ...
    assert grammar.caption_of(spec) == u.caption
    assert spec.ground == u.spec.ground and spec.night == (u.spec.time_of_day == "night") and spec.rain == u.spec.rain
    assert [(o.color, o.kind, o.side) for o in spec.objects] == [(o.colour, o.kind, o.side) for o in u.spec.objects]


@pytest.mark.timeout(1500)  # the first test of a run waits for the shared cluster (up to 1200 s)
def test_parse_prompt_understands_free_text_or_says_it_understood_nothing(cluster):
    ch, stub = _stub(cluster)
    with ch:
        for text, caption in (
            ("A snowy night with a pink door to my right", "a pink door on the right, snow, night"),
            ("gimme a blue crate on the left", "a blue box on the left, grass, day"),
            ("sandy beach, raining, a cyan box on the right", "a cyan box on the right, sand, day, rain"),
        ):
            u = stub.ParsePrompt(text_pb2.ParsePromptRequest(text=text), metadata=_md(cluster), timeout=120)
            _check_understood(u, text)
            assert u.caption == caption, text
        with pytest.raises(grpc.RpcError) as e:
            stub.ParsePrompt(text_pb2.ParsePromptRequest(text="hello"), metadata=_md(cluster), timeout=120)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.value.code(), e.value.details())
        assert e.value.details().startswith("understood nothing in 'hello'; this world knows: colours red")


@pytest.mark.timeout(1500)  # the first test of a run waits for the shared cluster (up to 1200 s)
def test_parse_event_maps_free_text_to_one_of_the_events_or_names_them(cluster):
    ch, stub = _stub(cluster)
    events = ["it starts to rain", "night falls"]
    with ch:
        r = stub.ParseEvent(
            text_pb2.ParseEventRequest(text="make it rain", events=events), metadata=_md(cluster), timeout=120
        )
        assert r.event == "it starts to rain"
        r = stub.ParseEvent(text_pb2.ParseEventRequest(text="stop the rain"), metadata=_md(cluster), timeout=120)
        assert r.event == "the rain stops"  # no events given: every event the text model knows
        with pytest.raises(grpc.RpcError) as e:
            stub.ParseEvent(
                text_pb2.ParseEventRequest(text="do a barrel roll", events=events), metadata=_md(cluster), timeout=120
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details() == "'do a barrel roll' names none of the events: 'it starts to rain', 'night falls'"


@pytest.mark.timeout(1500)  # the first test of a run waits for the shared cluster (up to 1200 s)
def test_concurrent_parses_are_asked_together_and_each_gets_its_own_answer(cluster):
    """TextService asks the engine for concurrent parses together (serve.batch: one completion
    request per answer schema, listing their prompts): each caller still gets the answer to its own
    text, prompts and events of several schemas mixed, and the batches were bigger than one. A text
    the engine refuses (more tokens than it takes) fails alone, INVALID_ARGUMENT."""
    from prometheus_client.parser import text_string_to_metric_families

    def batches() -> tuple[float, float]:  # (parses, batches) of TextService's batched calls so far
        text = urllib.request.urlopen(cluster["metrics_url"], timeout=30).read().decode()
        n = c = 0.0
        for fam in text_string_to_metric_families(text):
            for smp in fam.samples:
                if smp.name == "ray_serve_actual_batch_size_sum" and smp.labels.get("function_name") == "_batched":
                    n += smp.value
                elif smp.name == "ray_serve_actual_batch_size_count" and smp.labels.get("function_name") == "_batched":
                    c += smp.value
        return n, c

    rain, dark = ["it starts to rain", "the rain stops"], ["night falls", "day breaks"]
    want = {
        ("prompt", f"please gimme a {c} crate on the {s}", ()): f"a {c} box on the {s}, grass, day"
        for c in grammar.COLORS
        for s in grammar.SIDES
    }
    want |= {
        ("event", "stop the rain now", tuple(rain)): "the rain stops",
        ("event", "make it rain now", tuple(rain)): "it starts to rain",
        ("event", "let night fall now", tuple(dark)): "night falls",
        ("event", "let it be morning now", tuple(dark)): "day breaks",
    }
    before = batches()
    ch, stub = _stub(cluster)

    def ask(key):
        task, text, events = key
        if task == "prompt":
            u = stub.ParsePrompt(text_pb2.ParsePromptRequest(text=text), metadata=_md(cluster), timeout=120)
            _check_understood(u, text)
            return u.caption
        r = stub.ParseEvent(text_pb2.ParseEventRequest(text=text, events=events), metadata=_md(cluster), timeout=120)
        return r.event

    too_long = ("prompt", "\u20ac" * 299, ())  # under the character bound, over the engine's tokens
    with ch, cf.ThreadPoolExecutor(len(want) + 1) as pool:
        bad = pool.submit(ask, too_long)
        got = dict(zip(want, pool.map(ask, want)))
        with pytest.raises(grpc.RpcError) as e:
            bad.result()
    assert got == want  # the refused text failed alone
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert e.value.details().startswith("the language model refused the text: "), e.value.details()
    deadline = time.monotonic() + 60
    while (after := batches())[1] == before[1] and time.monotonic() < deadline:  # the scrape lags
        time.sleep(3)
    parses, n = after[0] - before[0], after[1] - before[1]
    assert n > 0 and parses / n > 1, (parses, n)


@pytest.mark.timeout(1500)  # the first test of a run waits for the shared cluster (up to 1200 s)
def test_bad_text_is_invalid_argument_and_a_key_is_needed(cluster):
    ch, stub = _stub(cluster)
    with ch:
        with pytest.raises(grpc.RpcError) as e:
            stub.ParsePrompt(text_pb2.ParsePromptRequest(text="x" * 301), metadata=_md(cluster), timeout=60)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details() == "prompt of 301 characters exceeds the limit of 300"
        with pytest.raises(grpc.RpcError) as e:
            stub.ParseEvent(text_pb2.ParseEventRequest(text="  "), metadata=_md(cluster), timeout=60)
        assert (e.value.code(), e.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "event text is empty")
        with pytest.raises(grpc.RpcError) as e:
            stub.ParsePrompt(
                text_pb2.ParsePromptRequest(text="a red door"), metadata=_md(cluster, "ws_nope"), timeout=60
            )
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.timeout(1500)  # the first test of a run waits for the shared cluster (up to 1200 s)
def test_text_client_through_the_handle(cluster):
    """What the sessions, image and dynamics apps call: the handle answers the contract's dict;
    an app that is not there answers UNAVAILABLE within text_timeout_s."""
    from worldserve.common.config import Config
    from worldserve.common.errors import InvalidArgument, Unavailable
    from worldserve.text.client import TextClient

    async def main():
        client = TextClient(Config(text_app="text"))
        try:
            out = await client.parse_prompt("a yellow door on the left at night")
        except InvalidArgument as e:
            assert "understood nothing" in str(e)
        else:
            assert set(out) == {"spec", "caption", "source"} and out["source"] == "text"
            assert grammar.caption_of(grammar.spec_from_dict(out["spec"])) == out["caption"]
        with pytest.raises(InvalidArgument, match="exceeds the limit of 300"):
            await client.parse_event("y" * 301, ["night falls"])
        gone = TextClient(Config(text_app="no-such-text-app", text_timeout_s=2))
        t0 = time.monotonic()
        with pytest.raises(Unavailable, match="text understanding is unavailable"):
            await gone.parse_prompt("a red door on the left")
        assert time.monotonic() - t0 < 30

    asyncio.run(main())


@pytest.mark.timeout(1500)  # the first test of a run waits for the shared cluster (up to 1200 s)
def test_a_corrupt_model_folder_fails_its_app_alone(cluster, tmp_path):
    """A second text app over a folder whose weights file is corrupt: DEPLOY_FAILED naming the
    file; every other application stays RUNNING; then it is deleted."""
    from ray import serve

    from worldserve.text.service import build
    from worldserve.text.testing import write_tiny_text_model

    folder = write_tiny_text_model(tmp_path / "bad")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    app = build({"text_model_path": str(folder), "api_keys_file": str(cluster["tmp"] / "keys.json")})
    serve.run_many(
        [serve.RunTarget(target=app, name="text-bad", route_prefix="/text-bad")],
        wait_for_ingress_deployment_creation=False,
        wait_for_applications_running=False,
    )
    try:
        deadline = time.monotonic() + 420
        while True:
            st = serve.status()
            bad = st.applications.get("text-bad")
            if bad is not None and bad.status in ("DEPLOY_FAILED", "UNHEALTHY"):
                break
            assert time.monotonic() < deadline, f"text-bad still {bad and bad.status}"
            time.sleep(2)
        msg = bad.message + " ".join(d.message for d in bad.deployments.values())
        assert f"{folder / 'model.safetensors'}" in msg and "is not a safetensors file" in msg, msg[:2000]
        others = {n: a.status for n, a in st.applications.items() if n != "text-bad"}
        assert others and all(s == "RUNNING" for s in others.values()), others
    finally:
        serve.delete("text-bad", _blocking=True)
    assert "text-bad" not in serve.status().applications


@pytest.mark.timeout(1500)  # the first test of a run waits for the shared cluster (up to 1200 s)
def test_text_and_vllm_metrics_reach_the_scrape(cluster):
    from prometheus_client.parser import text_string_to_metric_families

    ch, stub = _stub(cluster)
    want = {
        "ray_worldserve_text_parses_total",
        "ray_worldserve_text_parse_duration_seconds_bucket",
        "ray_worldserve_text_requests_total",
        "ray_vllm_num_requests_running",  # vLLM's engine metrics (the dashboard's Text row)
        "ray_vllm_num_requests_waiting",
        "ray_vllm_generation_tokens_total",
        "ray_vllm_prompt_tokens_total",
    }
    deadline = time.monotonic() + 120
    with ch:
        while True:
            try:
                stub.ParsePrompt(text_pb2.ParsePromptRequest(text="a cyan box on the right"), metadata=_md(cluster))
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
            text = urllib.request.urlopen(cluster["metrics_url"], timeout=30).read().decode()
            names = {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
            if want <= names or time.monotonic() > deadline:
                break
            time.sleep(3)
    assert want <= names, f"missing: {sorted(want - names)}; vllm: {sorted(n for n in names if 'vllm' in n)[:40]}"
