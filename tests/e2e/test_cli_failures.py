"""`worldserve` commands against a running cluster answer a user's mistakes with one line and exit
1: a key the cluster refuses, a model it does not serve, a prompt it does not understand.
(Without a cluster: tests/test_cli_errors.py.)"""

from __future__ import annotations

import pytest
from test_cli_errors import cli, one_line


@pytest.mark.e2e
@pytest.mark.timeout(1500)  # the first test of a run waits for the shared cluster (up to 1200 s)
def test_bad_key_unknown_model_and_unknown_prompt_are_one_line(cluster, tmp_path):
    target = cluster["target"]
    gif = str(tmp_path / "x.gif")
    msg = one_line(cli("play", "--target", target, "--out", gif, home=tmp_path, env={"WORLDSERVE_API_KEY": "wsk_nope"}))
    assert msg.startswith(f"the API key was refused by {target} (") and msg.endswith(
        "use the key `worldserve up` printed (in $WORLDSERVE_HOME/dev_key) or set WORLDSERVE_API_KEY"
    ), msg
    key = {"WORLDSERVE_API_KEY": cluster["key_a"]}
    ok = cli("status", "--target", target, home=tmp_path, env=key)
    assert ok.returncode == 0 and "dynamics  SERVING" in ok.stderr, (ok.returncode, ok.stderr)
    msg = one_line(cli("play", "--target", target, "--model", "no-such-model", "--out", gif, home=tmp_path, env=key))
    assert msg.startswith("INVALID_ARGUMENT: ") and "no-such-model" in msg, msg
    msg = one_line(cli("play", "--target", target, "--prompt", "hello", "--out", gif, home=tmp_path, env=key))
    assert msg.startswith("INVALID_ARGUMENT: understood nothing in 'hello'; this world knows: colours red"), msg
    assert not (tmp_path / "x.gif").exists()
    # eval: a prompt the world does not know fails every world: one line with the first world's error
    ev = ("eval", "--target", target, "--worlds", "2", "--steps", "2", "--dataset", "", "--out", str(tmp_path / "ev"))
    msg = one_line(cli(*ev, "--prompt", "hello", home=tmp_path, env=key))
    assert msg.startswith("every world failed; the first: create: INVALID_ARGUMENT: understood nothing in 'hello'"), msg
    msg = one_line(cli(*ev, "--prompts", "a pink box at night", home=tmp_path, env=key))
    assert msg == "--prompts 'a pink box at night' is not a file (one prompt a line); for a prompt as text use --prompt"
    # free text: each world says what it was understood as, and the game plays that caption beside it
    ok = cli(*ev, "--prompt", "a snowy night with a pink door to my right", home=tmp_path, env=key)
    out = " ".join(ok.stderr.split())
    assert ok.returncode == 0 and "0 failed" in out, ok.stderr
    assert "world 0: 'a snowy night with a pink door to my right' understood as 'a pink door on the right" in out, out
    assert "(the game: " in out, out
    # status: health answers without a key; a refused key is named after it, with its remedy
    r = cli("status", "--target", target, home=tmp_path, env={"WORLDSERVE_API_KEY": "wsk_nope"})
    assert r.returncode == 1 and "dynamics  SERVING" in r.stderr, (r.returncode, r.stderr)
    last = [ln for ln in r.stderr.splitlines() if ln.strip()][-1]
    assert last.startswith(f"error: the API key was refused by {target} ("), r.stderr
