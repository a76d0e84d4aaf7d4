"""User-defined skeletons: validated when the config is read, stored with the dataset and the checkpoint, used by
training, sampling and the BVH export; an unknown or mismatched skeleton fails before any work."""

import copy
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import load_config
from pipeline.keypoint_maps import keypoint_map
from pipeline.rigid_export import ExportConfig
from pipeline.sample_stage import _write_export
from pipeline.skeletons import COCO17, Skeleton, skeleton_meta
from pipeline.synthetic import generate_motions
from storage import Workspace
from storage.bvh import read_bvh_positions
from storage.motion_dataset import write_motion_dataset

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "custom_skeleton.yaml"
runner = CliRunner()
TINY = ["--steps", "3", "--layers", "1", "--latent-dim", "16", "--max-len", "16", "--device", "cpu",
        "--batch-size", "4"]  # fmt: skip


def body15() -> Skeleton:
    return load_config(CONFIG).body_model


def write_dataset(ws: Workspace, name: str, skeleton: Skeleton, meta: dict | None = None, drop_joint: bool = False):
    """Clips of ``skeleton`` made from procedural COCO-17 motions (front view) through its derive map."""
    motions = generate_motions(12, 16, seed=0)  # [N, L, 17, 3]
    coco = np.concatenate([motions[..., :2], np.ones(motions.shape[:-1] + (1,))], -1).astype(np.float32)
    mapped = keypoint_map(COCO17, skeleton).apply(coco.reshape(-1, 17, 3)).reshape(12, 16, -1, 3)
    clips = [clip[:, :-1] if drop_joint else clip for clip in mapped]
    index = pd.DataFrame({"clip_id": [f"c{i}" for i in range(12)], "video_id": [f"v{i % 4}" for i in range(12)],
                          "track_id": 0, "start_frame": 0, "mean_conf": 1.0, "mirrored": False,
                          "split": ["test" if i % 4 == 0 else "train" for i in range(12)]})  # fmt: skip
    meta = {**skeleton_meta(skeleton), "fps": 30.0} if meta is None else meta
    write_motion_dataset(ws, name, clips, index, meta, conf_threshold=0.3)


def test_user_skeleton_trains_samples_and_exports_a_bvh(tmp_path):
    skeleton = body15()
    ws = Workspace(tmp_path / "ws")
    write_dataset(ws, "mocap", skeleton)
    out = runner.invoke(app, ["train", "--dataset", "mocap", "-w", str(ws.root), *TINY])
    assert out.exit_code == 0, out.output
    payload = torch.load(Path(ws.root) / "checkpoints" / "mocap" / "last.pt", weights_only=True)
    assert '"body15"' in payload["dataset"]["skeleton_definition"]  # the checkpoint carries the definition
    out = runner.invoke(app, ["sample", "--run", "mocap", "-w", str(ws.root), "--num-samples", "1", "--length", "8",
                              "--steps", "5", "--render", "1", "--device", "cpu"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "(1, 8, 15, 3)" in out.stdout and "skeleton body15 is a tree" in out.stdout
    names, positions = read_bvh_positions((Path(ws.root) / "samples" / "mocap-mas" / "sample_00.bvh").read_text())
    assert set(skeleton.joints) <= set(names) and positions.shape[0] == 8
    assert (Path(ws.root) / "samples" / "mocap-mas" / "sample_00.mp4").stat().st_size > 0


def test_unknown_or_mismatched_skeletons_fail_before_any_work(tmp_path):
    ws = Workspace(tmp_path / "ws")
    write_dataset(ws, "legacy", body15(), meta={"skeleton": "mocap15", "fps": 30.0})  # a name, no definition
    out = runner.invoke(app, ["train", "--dataset", "legacy", "-w", str(ws.root), *TINY])
    assert out.exit_code == 2 and "skeleton 'mocap15' is not built in" in out.output, out.output
    assert not (Path(ws.root) / "checkpoints" / "legacy" / "last.pt").exists()  # refused before training
    write_dataset(ws, "short", body15(), drop_joint=True)  # 14 joints per frame, a 15-joint definition
    out = runner.invoke(app, ["train", "--dataset", "short", "-w", str(ws.root), *TINY])
    assert out.exit_code == 2 and "holds 14 joints per frame but its skeleton 'body15' has 15" in out.output

    # a checkpoint naming a skeleton nobody defines: a clear error from `mas sample`, not a KeyError
    write_dataset(ws, "good", body15())
    assert runner.invoke(app, ["train", "--dataset", "good", "-w", str(ws.root), *TINY]).exit_code == 0
    path = Path(ws.root) / "checkpoints" / "good" / "last.pt"
    payload = torch.load(path, weights_only=True)
    payload["dataset"]["skeleton"], payload["dataset"]["skeleton_definition"] = "mocap15", ""
    torch.save(payload, path)
    out = runner.invoke(app, ["sample", "--run", "good", "-w", str(ws.root), "--device", "cpu"])
    assert out.exit_code == 2 and "skeleton 'mocap15' is not built in" in out.output and "KeyError" not in out.output


def test_a_skeleton_that_is_not_a_tree_gets_a_bvh_and_a_warning(tmp_path, caplog):
    loop = Skeleton("loop4", ("a", "b", "c", "d"), ((0, 1), (1, 2), (2, 3), (3, 0)), (), (0,))
    motions = np.random.default_rng(0).normal(0, 0.3, (1, 6, 4, 3))
    ws = Workspace(tmp_path / "ws")
    with caplog.at_level(logging.WARNING, logger="pipeline.sample_stage"):
        paths, summary = _write_export(ws, ws.samples_dir("s"), motions, loop, 30.0, ExportConfig(rigid=False))
    assert summary["tree"] is False and "not a tree" in summary["note"] and "bones c-d" in summary["note"]
    assert "not a tree" in caplog.text and len(paths) == 1 and paths[0].endswith("sample_00.bvh")


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda s: s.update(name="coco17"), "skeleton name 'coco17' is built in"),
        (lambda s: s["bones"].append(["pelvis", "tail"]), "bones names joint 'tail'"),
        (lambda s: s["derive"].update(pelvis={"left_hip": 0.5, "right_hip": 0.6}), "weights of 'pelvis' sum to 1.1"),
        (lambda s: s["derive"].pop("l_knee"), "joint 'l_knee' is not a coco17 keypoint and has no formula"),
        (lambda s: s.update(root=["ball"], extra_joints=["ball"]), "not among its joints"),
        (lambda s: s.update(extra_joints=["bat"]), "extra_joints ['bat']: the pose stage fills only ball"),
        (lambda s: s["mirror_pairs"].append(["l_hip", "r_knee"]), "a joint appears in two mirror pairs"),
    ],
)
def test_bad_user_skeletons_fail_at_config_load(tmp_path, change, words):
    data = yaml.safe_load(CONFIG.read_text())
    skeleton = copy.deepcopy(data["skeleton"])
    change(skeleton)
    data["skeleton"] = skeleton
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    out = runner.invoke(app, ["check-config", str(path)], env={"COLUMNS": "300"})
    assert out.exit_code == 2 and "skeleton" in out.output and words in " ".join(out.output.split()), out.output
