"""The main job at a tiny size: real footage → poses, synthetic 2D → train → MAS/SDS → evaluation → report."""

import os
import subprocess
import sys
from pathlib import Path

import cv2

from storage.bvh import read_bvh_positions


def test_demo_tiny_end_to_end(tmp_path):
    workspace = tmp_path / "demo"
    mas = Path(sys.executable).with_name("mas")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    result = subprocess.run([str(mas), "demo", "-w", str(workspace), "--size", "tiny", "--device", "cpu"], env=env,
                            capture_output=True, text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "report.html" in result.stdout
    report = workspace / "report"
    text = (report / "report.md").read_text()
    for heading in ("1. Video → tracked 2D poses", "2. 2D dataset → diffusion → MAS → 3D", "3. Evaluation"):
        assert heading in text
    assert "offline fallbacks" in text  # no internet here: the fallbacks were chosen and said so
    assert "2D dataset from the clip (`mas process`) |" in text  # the real clip's tracks went through process
    for row in (
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
        "mas_sample_00_rigid.png",
    ):
        assert row in text, row
    for name in ("overlay.png", "overlay.mp4", "mas_sample_00.mp4", "mas_sample_00_views.png", "loss.png",
                 "metrics.png", "report.html", "mas_sample_00_rigid.png", "mas_sample_00_rigid.mp4",
                 "mas_rigid.npz"):  # fmt: skip
        assert (report / name).stat().st_size > 1000, name
    assert cv2.imread(str(report / "overlay.png")) is not None
    names, positions = read_bvh_positions((report / "mas_sample_00.bvh").read_text())
    assert positions.shape == (24, 28, 3) and "left_knee" in names  # rig: root + 17 joints + 10 helper joints
    assert Path(workspace / "catalog" / "sample" / "demo-mas.json").exists()
