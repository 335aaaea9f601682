"""The HTTP API (worldserve.web.api) through the gateway's real FastAPI app, driven in process
(no Ray cluster): Serve's replica context points at a gateway wired to a real Redis and to
stand-ins for the sessions and dynamics deployments."""

from __future__ import annotations

import base64
import inspect
from types import SimpleNamespace

import grpc
import pytest
from _webtest_util import KEY, OTHER_KEY, Dynamics, http, make_gateway
from fastapi import Request

from worldserve.common.errors import NotFound
from worldserve.state.live import LiveState
from worldserve.web import api as web_api
from worldserve.web import gateway


def auth(cred: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {cred}")]


@pytest.fixture
def gw(store, tmp_path, monkeypatch):
    return make_gateway(store, tmp_path, monkeypatch)


def test_the_ingress_module_keeps_its_public_names():
    assert gateway.HTTP_STATUS is web_api.HTTP_STATUS and gateway.HTTP_STATUS[grpc.StatusCode.NOT_FOUND] == 404
    assert callable(gateway.build) and gateway.app.title == "worldserve web gateway"
    src = inspect.getsource(gateway)
    assert "from __future__ import annotations\n" not in src.replace("``from __future__ import annotations``", "")
    assert ".r." not in src and "store.r" not in src  # no raw Redis in the ingress


async def test_a_token_is_minted_for_a_key_and_never_for_a_token(gw, store):
    status, body = await http(gateway.app, "POST", "/v1/tokens", headers=auth(KEY))
    assert status == 200 and body["tenant"] == "acme" and body["expires_in"] == gw.config.live_token_ttl_s
    token = body["token"]
    assert token.startswith("wst_") and await LiveState(store).token_tenant(token) == "acme"
    status, body = await http(gateway.app, "POST", "/v1/tokens", headers=auth(token))
    assert (status, body["code"]) == (401, "UNAUTHENTICATED") and "a token cannot mint a token" in body["message"]
    status, body = await http(gateway.app, "POST", "/v1/tokens")
    assert status == 401
    status, body = await http(gateway.app, "POST", "/v1/tokens", headers=[("authorization", "Basic abc")])
    assert status == 401 and "malformed Authorization header" in body["message"]
    assert gw.rpcs == [("web.MintToken", "OK")] + [("web.MintToken", "UNAUTHENTICATED")] * 3


async def test_every_json_route_authenticates_with_a_key_or_a_token(gw):
    _, minted = await http(gateway.app, "POST", "/v1/tokens", headers=auth(KEY))
    for cred in (KEY, minted["token"]):
        status, body = await http(gateway.app, "GET", "/v1/models", headers=auth(cred))
        assert status == 200 and body["default_model"] == "m" and [m["name"] for m in body["models"]] == ["m"]
    for headers in ([], auth("sk-unknown"), auth("wst_unknown")):
        status, body = await http(gateway.app, "GET", "/v1/models", headers=headers)
        assert status == 401 and body["code"] == "UNAUTHENTICATED"
    status, body = await http(gateway.app, "GET", "/v1/models", headers=auth("wst_unknown"))
    assert "unknown or expired token" in body["message"]
    status, body = await http(gateway.app, "GET", "/v1/sessions/s_x")
    assert status == 401


async def test_sessions_are_created_read_and_forked_as_the_credentials_tenant(gw):
    status, rec = await http(
        gateway.app, "POST", "/v1/sessions", headers=auth(KEY), body={"prompt": "a meadow", "seed": 7}
    )
    assert status == 200, rec
    assert set(rec) == {
        "session_id",
        "model",
        "prompt",
        "seed",
        "step",
        "parent_id",
        "fork_step",
        "created_at",
        "width",
        "height",
        "understood",
    }
    assert (rec["prompt"], rec["seed"], rec["model"], rec["step"]) == ("a meadow", 7, "m", 0)
    assert rec["understood"] is None  # the stub reads captions only
    status, cap = await http(
        gateway.app, "POST", "/v1/sessions", headers=auth(KEY), body={"prompt": "Grass, a pink box on the right"}
    )
    assert status == 200 and cap["understood"] == {
        "spec": {
            "objects": [{"colour": "pink", "kind": "box", "side": "right"}],
            "ground": "grass",
            "time": "day",
            "rain": False,
        },
        "caption": "a pink box on the right, grass, day",
        "source": "grammar",
    }
    assert gw.sessions_stub.created[-1]["tenant"] == "acme"
    sid = rec["session_id"]
    status, got = await http(gateway.app, "GET", f"/v1/sessions/{sid}", headers=auth(KEY))
    assert status == 200 and got == rec
    status, body = await http(gateway.app, "GET", f"/v1/sessions/{sid}", headers=auth(OTHER_KEY))
    assert (status, body["code"]) == (404, "NOT_FOUND")  # another tenant's session is not there
    status, body = await http(gateway.app, "GET", "/v1/sessions/bad%20id!", headers=auth(KEY))
    assert status in (400, 404)
    status, child = await http(gateway.app, "POST", f"/v1/sessions/{sid}/fork", headers=auth(KEY), body={"step": 0})
    assert status == 200 and child["parent_id"] == sid and child["fork_step"] == 0
    status, child = await http(gateway.app, "POST", f"/v1/sessions/{sid}/fork", headers=auth(KEY))
    assert status == 200 and child["parent_id"] == sid  # no body: the current step

    image = base64.b64encode(b"\x89PNG fake").decode()
    status, _ = await http(gateway.app, "POST", "/v1/sessions", headers=auth(KEY), body={"image": image, "model": "m"})
    assert status == 200 and gw.sessions_stub.created[-1]["image"] == b"\x89PNG fake"


@pytest.mark.parametrize(
    "body, words",
    [
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"seed": True}, "seed must be a non-negative integer"),
        ({"model": 3}, "model must be a string"),
        ({"prompt": ["x"]}, "prompt must be a string"),
        ({"image": "not base64!"}, "image must be base64"),
        (b"{not json", "request body is not JSON"),
        (b"[1, 2]", "request body must be a JSON object"),
        (b"x" * 2049, "exceeds 2048"),
    ],
)
async def test_a_bad_create_body_is_a_400_naming_the_problem(store, tmp_path, monkeypatch, body, words):
    gw = make_gateway(store, tmp_path, monkeypatch, max_upload_bytes=1024)
    status, out = await http(gateway.app, "POST", "/v1/sessions", headers=auth(KEY), body=body)
    assert (status, out["code"]) == (400, "INVALID_ARGUMENT") and words in out["message"]
    assert gw.rpcs == [("web.CreateSession", "INVALID_ARGUMENT")] and gw.sessions_stub.created == []


async def test_a_bad_fork_step_is_a_400(gw):
    status, out = await http(gateway.app, "POST", "/v1/sessions/s_x/fork", headers=auth(KEY), body={"step": "3"})
    assert status == 400 and "step must be an integer" in out["message"]


async def test_errors_map_through_the_one_status_table(store, tmp_path, monkeypatch):
    class Down(Dynamics):
        def list_models(self):
            raise NotFound("no models")

    make_gateway(store, tmp_path, monkeypatch, dynamics=Down())
    status, out = await http(gateway.app, "GET", "/v1/models", headers=auth(KEY))
    assert (status, out) == (404, {"code": "NOT_FOUND", "message": "no models"})

    class Broken(Dynamics):
        def list_models(self):
            raise RuntimeError("secret detail")

    make_gateway(store, tmp_path, monkeypatch, dynamics=Broken())
    status, out = await http(gateway.app, "GET", "/v1/models", headers=auth(KEY))
    assert status == 500 and out["code"] == "INTERNAL" and "secret" not in out["message"]


async def test_the_page_and_health_need_no_credentials(gw):
    status, body = await http(gateway.app, "GET", "/healthz")
    assert (status, body) == (200, {"status": "ok"})
    status, page = await http(gateway.app, "GET", "/")
    assert status == 200 and b"<html" in page.lower()


def test_the_http_decorator_shows_fastapi_the_routes_parameters_less_the_tenant():
    async def route(self, session_id: str, tenant: str):
        return tenant

    shown = inspect.signature(web_api.http("x.Y")(route))
    assert list(shown.parameters) == ["self", "session_id", "request"]
    assert shown.parameters["request"].annotation is Request

    async def with_request(self, request: Request, tenant: str):
        return tenant

    assert list(inspect.signature(web_api.http("x.Y")(with_request)).parameters) == ["self", "request"]
    with pytest.raises(TypeError, match="public route has no tenant"):
        web_api.http("x.Y", auth=web_api.PUBLIC)(route)
    with pytest.raises(ValueError):
        web_api.http("x.Y", auth="cookie")


async def test_the_http_decorator_resolves_the_tenant_once_for_the_route(store):
    calls = []

    class Owner:
        def __init__(self):
            live = LiveState(store)
            self.api = web_api.HttpApi(
                config=None,
                store=store,
                live=live,
                sessions=None,
                dynamics=None,
                authenticate=lambda md: calls.append(list(md)) or "acme",
                metrics=SimpleNamespace(record_rpc=lambda *a: calls.append(a[:2])),
            )

        @web_api.http("web.Get")
        async def get(self, session_id: str, tenant: str):
            return {"sid": session_id, "tenant": tenant}

    request = Request(
        {
            "type": "http",
            "method": "GET",
            "path": "/",
            "headers": [(b"authorization", b"Bearer k1")],
            "query_string": b"",
        }
    )
    assert await Owner().get(session_id="s_1", request=request) == {"sid": "s_1", "tenant": "acme"}
    assert calls == [[("authorization", "Bearer k1")], ("web.Get", "OK")]
