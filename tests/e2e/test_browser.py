"""The play page in a real browser: headless Chromium (Debian's `chromium`; .ci/run installs it)
driven by Playwright against a real local cluster. Screenshots go to out/browser/."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from worldserve.client import WorldClient

OUT = Path(__file__).resolve().parents[2] / "out" / "browser"


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    if os.environ.get("CI"):
        pytest.fail("no chromium on PATH: .ci/run installs Debian's chromium; install it (apt-get install chromium)")
    pytest.skip("no chromium on PATH (apt-get install chromium); CI installs it")


@pytest.fixture(scope="module")
def browser(cluster):
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def wait_until(fn, timeout_s: float = 60.0, what: str = ""):
    deadline = time.monotonic() + timeout_s
    while True:
        v = fn()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def open_page(browser, cluster):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    outside: list[str] = []  # nothing may load from outside the cluster
    page.on(
        "request",
        lambda r: (
            outside.append(r.url)
            if not r.url.startswith((cluster["http"], "ws://127.0.0.1", "data:", "blob:"))
            else None
        ),
    )
    page.goto(cluster["http"] + "/")
    page.fill("#key", cluster["key_a"])
    page.click("#connect")
    page.wait_for_function("document.querySelectorAll('#model option').length > 0", timeout=60_000)
    return page, errors, outside


def state(page, expr: str):
    return page.evaluate(f"() => window.worldserve.{expr}")


def test_the_play_page_plays_forks_switches_events_and_shares_a_world(cluster, browser):
    OUT.mkdir(parents=True, exist_ok=True)
    page, errors, outside = open_page(browser, cluster)
    page.fill("#prompt", "a red door on the left, a blue box on the right, grass, day")
    page.fill("#fps", "8")
    page.click("#create")
    wait_until(lambda: state(page, "step") >= 2, what="frames after New world")
    sid = state(page, "session")
    hello = state(page, "hello")
    assert hello["fps"] == min(8, hello["max_fps"]) and page.text_content("#fps-target") == f"{hello['fps']:.1f}"

    # keys: hold right on the picture; the frames advance and the key->frame latency shows
    page.click("#screen")
    page.keyboard.down("ArrowRight")
    wait_until(lambda: state(page, "acked") >= 1, what="a frame showing the key")
    page.wait_for_timeout(1500)
    page.keyboard.up("ArrowRight")
    wait_until(lambda: page.text_content("#k2f") not in ("-", ""), what="key->frame latency")
    fps = float(page.text_content("#fps-now"))
    assert fps > 2.0, fps
    step_before = state(page, "step")
    page.wait_for_timeout(1000)
    assert state(page, "step") > step_before  # the world ticks on its clock
    page.screenshot(path=str(OUT / "play.png"))

    # a world event, switched from the page, lands in the session's trajectory
    page.fill("#event", "night falls")
    page.click("#send-event")
    page.wait_for_timeout(1500)

    # a second tab joins as a spectator and sees the same frames at the same ticks
    watcher, werrors, woutside = open_page(browser, cluster)
    watcher.fill("#join-id", sid)
    watcher.select_option("#role", "spectator")
    watcher.click("#join")
    wait_until(lambda: len(state(watcher, "recent")) >= 8, what="spectator frames")
    assert watcher.text_content("#hud-role") == "spectator"
    mine = {f["tick"]: (f["step"], f["sum"]) for f in state(page, "recent")}
    theirs = state(watcher, "recent")
    common = [f for f in theirs if f["tick"] in mine]
    assert len(common) >= 4, (len(common), len(mine), len(theirs))
    assert all(mine[f["tick"]] == (f["step"], f["sum"]) for f in common)
    wait_until(lambda: "1 + 1 watching" in page.text_content("#players"), what="the roster")
    watcher.screenshot(path=str(OUT / "spectator.png"))

    # fork where we are; play the branch; switch back to the trunk
    page.click("#fork")
    wait_until(lambda: state(page, "session") != sid and state(page, "step") >= 0, what="the fork")
    fork_id = state(page, "session")
    assert page.locator("#branches button").count() == 2
    page.wait_for_timeout(1000)
    page.screenshot(path=str(OUT / "fork.png"))
    page.click(f"#branches button[data-session='{sid}']")
    wait_until(lambda: state(page, "session") == sid and len(state(page, "recent")) >= 2, what="back on the trunk")

    with WorldClient(cluster["target"], cluster["key_a"], timeout_s=120) as c:
        events = [e.action.event for e in c.export_session(sid, include_frames=False) if e.action.event]
        assert "night falls" in events, events
        assert c.get_session(fork_id).parent_id == sid
    for p in (page, watcher):
        p.close()
    assert not errors and not werrors, errors + werrors
    assert not outside and not woutside, outside + woutside
