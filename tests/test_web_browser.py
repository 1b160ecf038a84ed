"""The web viewer in a real browser: a real ``detector-app demo`` (virtual glasses publishing the cat
fixture over RTMP, the miniapp, the fixture model, sightings recorded into a temporary DATA_DIR) with
``--web-port``, opened in Debian's headless Chromium through chromedriver and selenium.

``WEB_VIEWER_SCREENSHOT=docs/img/web-viewer.png`` also saves the page there (the README's screenshot).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from detector_app.ingest.addresses import free_port

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                       reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; "
                              "scripts/setup.sh installs them)"),
]


def _wait(pred, timeout: float, what: str, alive=lambda: True):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        assert alive(), f"the demo exited while waiting for {what}"
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _state(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state", timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return None


@pytest.fixture
def demo(tmp_path, fixture_videos):
    port = free_port()
    log = (tmp_path / "demo.log").open("w")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "detector_app", "demo", "--headless", "--duration", "90", "--web-port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT,
    )
    try:
        _wait(lambda: (_state(port) or {}).get("streams"), 40, "the demo's stream in the viewer",
              alive=lambda: proc.poll() is None)
        yield port, proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(25)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
    text = (tmp_path / "demo.log").read_text()
    assert proc.returncode == 0 and "Traceback" not in text and "Task exception" not in text, text[-3000:]


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1440,1000", "--mute-audio", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def test_live_stream_health_and_a_sighting_in_a_real_browser(demo, browser, tmp_path):
    port, proc = demo
    alive = lambda: proc.poll() is None  # noqa: E731
    browser.get(f"http://127.0.0.1:{port}/")
    browser.execute_script("window.__sameDocument = true")  # gone if the page ever reloads

    # the live image: loads, then keeps changing (frame counter and object URL)
    js_img = "const i = document.querySelector('.stream img'); return i && i.complete ? i.naturalWidth : 0"
    assert _wait(lambda: browser.execute_script(js_img), 20, "the first live frame", alive) == 854
    frames = lambda: int(browser.execute_script("return +(document.querySelector('.stream').dataset.frames || 0)"))  # noqa: E731
    src = lambda: browser.execute_script("return document.querySelector('.stream img').src")  # noqa: E731
    f0, s0 = frames(), src()
    time.sleep(2.0)
    f1, s1 = frames(), src()
    assert f1 - f0 >= 6 and s1 != s0, f"the live image did not update: {f0} → {f1} frames in 2 s"

    # health: the stream's fps and the model
    shown_fps = lambda: browser.execute_script(  # noqa: E731
        "return parseFloat(document.querySelector('[data-k=fps]').textContent) || 0")
    fps = _wait(lambda: 10 <= (f := shown_fps()) <= 20 and f, 10, "the stream's fps (10–20) in the health", alive)
    assert "fixture-animals" in browser.execute_script("return document.querySelector('[data-k=model]').textContent")

    # a sighting appears (no reload) with a thumbnail that loads and a clip whose metadata loads
    js_sighting = """
        const li = document.querySelector('.sighting video') && document.querySelector('.sighting video').closest('.sighting');
        if (!li) return null;
        const img = li.querySelector('.thumb'), v = li.querySelector('video');
        return {label: li.querySelector('.label').textContent, thumb: img.complete ? img.naturalWidth : 0,
                ready: v.readyState, duration: v.duration, error: v.error && v.error.code};"""
    got = _wait(lambda: (s := browser.execute_script(js_sighting)) and s["thumb"] > 0 and s["ready"] >= 1 and s,
                45, "a sighting with a thumbnail and a playable clip", alive)
    assert got["label"] == "cat" and got["error"] is None and got["duration"] >= 4.0, got
    assert browser.execute_script("return window.__sameDocument === true"), "the page reloaded"
    assert browser.execute_script("return document.querySelectorAll('.sighting').length") >= 1
    print(f"\nbrowser: {f1 - f0} frames in 2 s, fps shown {fps}, sighting {got}")

    shot = tmp_path / "web-viewer.png"
    if os.environ.get("WEB_VIEWER_SCREENSHOT"):  # the README's picture: also the next, still open sighting
        _wait(lambda: browser.execute_script("return document.querySelectorAll('.sighting').length >= 2 && "
                                             "document.querySelector('[data-k=seen]').textContent.includes('#')"),
              30, "a second sighting, with the cat in view", alive)
    browser.execute_script("document.querySelector('.sighting video').currentTime = 3.0")
    _wait(lambda: browser.execute_script("const v = document.querySelector('.sighting video');"
                                         "return !v.seeking && v.readyState >= 2"), 5, "the clip to seek", alive)
    time.sleep(1.0)  # the controls' spinner fades out
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000
    if os.environ.get("WEB_VIEWER_SCREENSHOT"):
        target = ROOT / os.environ["WEB_VIEWER_SCREENSHOT"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)


def test_token_flow_in_a_real_browser(browser, tmp_path, fixture_videos):
    """Token mode (forced on 127.0.0.1): nothing without it; the printed URL's ?token= once gives the page,
    its API calls, thumbnails and clips (an HttpOnly cookie the page's scripts cannot read)."""
    from detector_app.web.server import WebConfig, WebViewer
    from tests.test_web import _store_with_sightings

    store = _store_with_sightings(tmp_path, 2, fixture_videos["cat_480p15"])
    viewer = WebViewer(WebConfig(port=0, token="browser-token-123"), lambda: [], store, require_token=True).start()
    base = f"http://127.0.0.1:{viewer.port}"
    try:
        browser.get(base + "/")
        body = browser.find_element("tag name", "body").text
        assert "401" in body and "Sightings" not in body
        browser.get(viewer.url)  # http://127.0.0.1:PORT/?token=…, as printed at start
        assert browser.current_url == base + "/", "the token stayed in the address bar"
        js = """const li = document.querySelector('.sighting'); if (!li) return null;
                const img = li.querySelector('.thumb'), v = li.querySelector('video');
                return {n: document.querySelectorAll('.sighting').length, thumb: img.complete ? img.naturalWidth : 0,
                        ready: v ? v.readyState : -1};"""
        got = _wait(lambda: (s := browser.execute_script(js)) and s["thumb"] > 0 and s["ready"] >= 1 and s, 15,
                    "the sightings through the cookie")
        assert got["n"] == 2
        assert browser.execute_script("return document.cookie") == "", "the token cookie is readable by scripts"
    finally:
        viewer.stop()
        store.close()
