"""The main job at a tiny size: real footage → poses, synthetic 2D → train → MAS/SDS → evaluation → report, run as a
flow on a real Prefect server (PREFECT_API_URL), its report artifact checked in the UI with headless Chromium."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from storage.bvh import read_bvh_positions
from tests.conftest import chromium_page

READ = """
import asyncio, json
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId
async def main():
    async with get_client() as c:
        run = (await c.read_flow_runs())[0]
        tasks = await c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        arts = await c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["demo-report",
                                                                                               "demo-numbers"])))
        print("JSON" + json.dumps({"id": str(run.id), "state": run.state.type.value,
              "tasks": {t.name: t.state.type.value for t in tasks},
              "artifacts": {a.key: {"id": str(a.id), "data": a.data} for a in arts}}))
asyncio.run(main())
"""


def colour_pixels(image: np.ndarray, hex_colour: str, tolerance: int = 6) -> int:
    rgb = [int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]
    return int((np.abs(image.astype(int) - np.array(rgb[::-1])).max(axis=2) <= tolerance).sum())


def test_demo_tiny_end_to_end_on_a_prefect_server(tmp_path, prefect_server):
    url, env = prefect_server
    workspace = tmp_path / "demo"
    mas = Path(sys.executable).with_name("mas")
    result = subprocess.run([str(mas), "demo", "-w", str(workspace), "--size", "tiny", "--device", "cpu"], env=env,
                            capture_output=True, text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "report.html" in result.stdout and "{'" not in result.stdout  # a table, not a Python dict
    assert f"{url}/runs/flow-run/" in result.stdout  # the run is on the user's server, and the output says where
    report = workspace / "report"
    text = (report / "report.md").read_text()
    for heading in ("1. Video → tracked 2D poses", "2. 2D dataset → diffusion → MAS → 3D", "3. Evaluation"):
        assert heading in text
    assert "offline fallbacks" in text  # no internet here: the fallbacks were chosen and said so
    assert "2D dataset from the clip (`mas process`) |" in text  # the real clip's tracks went through process
    rows = (
        "MAS (5 views)",
        "SDS (plain)",
        "real train motions (3D)",
        "frozen mean pose",
        "flat lift (depth 0)",
        "random-depth lift",
        "time-shuffled real",
        "mpjpe_precision",
        "mpjpe_coverage",
        "Ranking check",
        "Animation-ready export",
    )
    for row in rows:
        assert row in text, row
    assert "](mas_sample_00_rigid.png)" in text  # the report file links its pictures (the artifact inlines them)
    for name in ("overlay.png", "overlay.mp4", "mas_sample_00.mp4", "mas_sample_00_views.png", "loss.png",
                 "metrics.png", "report.html", "mas_sample_00_rigid.png", "mas_sample_00_rigid.mp4",
                 "mas_rigid.npz"):  # fmt: skip
        assert (report / name).stat().st_size > 1000, name
    assert cv2.imread(str(report / "overlay.png")) is not None
    names, positions = read_bvh_positions((report / "mas_sample_00.bvh").read_text())
    assert positions.shape == (24, 28, 3) and "left_knee" in names  # rig: root + 17 joints + 10 helper joints
    assert Path(workspace / "catalog" / "sample" / "demo-mas.json").exists()

    read = subprocess.run([sys.executable, "-c", READ], env=env, capture_output=True, text=True, timeout=120)
    assert read.returncode == 0, read.stderr[-2000:]
    run = json.loads(read.stdout.split("JSON", 1)[1])
    assert run["state"] == "COMPLETED"
    assert run["tasks"] == {"video → tracked 2D poses": "COMPLETED", "report": "COMPLETED",
                            "2D dataset → diffusion → MAS → evaluation": "COMPLETED"}  # fmt: skip
    markdown = run["artifacts"]["demo-report"]["data"]
    assert markdown.count("](data:image/png;base64,") == 5 and "](overlay.png)" not in markdown  # with the rigid one
    widest = max(line.count("|") - 1 for line in markdown.splitlines() if line.startswith("|"))
    assert widest <= 7, widest  # tables narrow enough for the UI's artifact pane (wider ones were cut off)
    for row in rows:
        assert row in markdown, row
    numbers = run["artifacts"]["demo-numbers"]["data"]
    values = [r["value"] for r in (json.loads(numbers) if isinstance(numbers, str) else numbers)]
    floats = [v for v in values if isinstance(v, float)]
    assert floats and all(v == float(f"{v:.4g}") for v in floats), values  # 4 significant digits, not 16 decimals

    shot = tmp_path / "report.png"

    def pictures_on_screen(path: Path) -> bool:  # the metrics picture's bars: floor green, trivial red
        image = cv2.imread(str(path))
        return colour_pixels(image, "#55a868") > 200 and colour_pixels(image, "#c44e52") > 200

    page = chromium_page(f"{url}/artifacts/artifact/{run['artifacts']['demo-report']['id']}", tmp_path / "chromium",
                         screenshot=shot, size="1400,9500", expect="time-shuffled real",
                         shot_ok=pictures_on_screen)  # fmt: skip
    assert "time-shuffled real" in page and page.count("<img") >= 4, page[-2000:]
    assert pictures_on_screen(shot)  # the inline images render in the UI
