"""`worldserve add-key --quota` and `worldserve quota`: overrides land beside the tenant's key."""

import json

from typer.testing import CliRunner

from worldserve.cli import app


def test_add_key_with_quotas_then_show_and_set(tmp_path, monkeypatch):
    keys = tmp_path / "keys.json"
    monkeypatch.setenv("WORLDSERVE_API_KEYS_FILE", str(keys))
    run = CliRunner()
    r = run.invoke(app, ["add-key", "acme", "--quota", "steps_per_s=20", "--quota", "max_sessions=5"])
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines()[-1].startswith("ws_")  # the key, printed once
    assert json.loads(keys.read_text())["keys"][0]["quotas"] == {"steps_per_s": 20.0, "max_sessions": 5}
    r = run.invoke(app, ["quota", "acme", "max_ttl_s=3600"])
    assert r.exit_code == 0, r.output
    assert "max_ttl_s = 3600  (set)" in r.output and "step_burst = 2048" in r.output
    r = run.invoke(app, ["quota", "acme", "max_sessions=-1"])
    assert r.exit_code != 0 and "max_sessions" in r.output
    r = run.invoke(app, ["quota", "nobody", "max_sessions=1"])
    assert r.exit_code != 0 and "no key" in r.output
    r = run.invoke(app, ["add-key", "b", "--quota", "steps=1"])
    assert r.exit_code != 0
    assert len(json.loads(keys.read_text())["keys"]) == 1  # refused: nothing written
