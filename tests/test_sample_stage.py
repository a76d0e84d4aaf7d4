import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from models.hardware import cpu_native_bf16
from models.mas import SamplingError
from models.trainer import TrainConfig
from pipeline.cli import app
from pipeline.rigid_export import ExportConfig
from pipeline.sample_stage import run_sampling
from pipeline.skeletons import COCO17, NBA16
from pipeline.synthetic import generate_motions
from pipeline.train_stage import run_training
from storage import Catalog
from storage.bvh import bvh_tree, read_bvh_positions, to_bvh

TINY = dict(latent_dim=32, ff_size=64, num_layers=2, num_heads=4, dropout=0.0, max_len=32, device="cpu")


@pytest.fixture(scope="module")
def trained_ws(synthetic_ws):
    run_training(synthetic_ws, "synth", "tiny", TrainConfig(steps=20, batch_size=8, lr=1e-3, **TINY), progress=False)
    return synthetic_ws


def test_bvh_roundtrip_reproduces_positions():
    motion = generate_motions(1, 12, seed=3)[0]
    text = to_bvh(motion, COCO17.joints, COCO17.bones, COCO17.root, fps=30)
    assert text.startswith("HIERARCHY\nROOT Root") and "Frames: 12" in text and "Frame Time: 0.033333" in text
    names, world = read_bvh_positions(text)
    assert sorted(names[1:]) == sorted(COCO17.joints)
    order = [COCO17.index(n) for n in names[1:]]
    np.testing.assert_allclose(world[:, 1:] / 100.0, motion[:, order], atol=1e-5)
    with pytest.raises(ValueError, match="NaN"):
        to_bvh(np.full_like(motion, np.nan), COCO17.joints, COCO17.bones, COCO17.root, 30)


def test_bvh_tree_is_a_tree_for_every_human_skeleton():
    for skeleton in (COCO17, NBA16):
        parent = bvh_tree(skeleton.num_joints, skeleton.bones, skeleton.root)
        for j in range(skeleton.num_joints):
            seen, k = set(), j
            while k != -1:
                assert k not in seen
                seen.add(k)
                k = parent[k]


def test_sampling_writes_outputs_and_is_idempotent(trained_ws):
    first = run_sampling(trained_ws, "tiny", "s1", num_samples=2, length=16, render=1, progress=False, device="cpu")
    assert first.motions.shape == (2, 16, 17, 3) and np.isfinite(first.motions).all() and not first.skipped
    names = sorted(p.rsplit("/", 1)[1] for p in first.paths)
    assert names == ["motions.npz", "rigid.npz", "sample_00.bvh", "sample_00.mp4", "sample_00_rigid.mp4",
                     "sample_00_rigid.png", "sample_00_views.png", "sample_01.bvh"]  # fmt: skip
    rigid = np.load(next(p for p in first.paths if p.endswith("rigid.npz")))
    assert rigid["positions"].shape == (2, 16, 17, 3) and rigid["rotations"].shape == (2, 16, 28, 4)
    names, world = read_bvh_positions(open(next(p for p in first.paths if p.endswith("sample_01.bvh"))).read())
    joints = [names.index(str(j)) for j in rigid["joint_names"]]
    np.testing.assert_allclose(world[:, joints] / 100, rigid["positions"][1], atol=1e-5)  # the BVH is the npz
    record = Catalog(trained_ws).get("sample", "s1")
    assert "coco17 is not a tree" in record.meta["export"]["note"]
    assert record.meta["export"]["tree_bone_variation_max"] < 1e-9 and record.meta["export"]["fit_error_max"] < 1.0
    video = cv2.VideoCapture(next(p for p in first.paths if p.endswith(".mp4")))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 16
    ok, frame = video.read()
    assert ok and frame.std() > 5  # something was drawn
    again = run_sampling(trained_ws, "tiny", "s1", num_samples=2, length=16, render=1, progress=False, device="cpu")
    assert again.skipped and np.array_equal(again.motions, first.motions)
    free = run_sampling(trained_ws, "tiny", "s1", num_samples=2, length=16, render=1, progress=False, device="cpu",
                        export=ExportConfig(rigid=False))  # fmt: skip
    assert free.skipped and not any(p.endswith("rigid.npz") for p in free.paths)  # re-exported, not re-sampled
    names, world = read_bvh_positions(open(next(p for p in free.paths if p.endswith("sample_00.bvh"))).read())
    np.testing.assert_allclose(world[:, 1:] / 100, first.motions[0][:, [COCO17.index(n) for n in names[1:]]],
                               atol=1e-5)  # fmt: skip
    assert Catalog(trained_ws).get("sample", "s1").meta["export"]["settings"]["rigid"] is False
    other = run_sampling(trained_ws, "tiny", "s1", num_samples=2, length=16, render=0, seed=1, progress=False,
                         device="cpu")  # fmt: skip
    assert not other.skipped  # new parameters invalidate the finished record
    assert Catalog(trained_ws).get("sample", "s1").status == "done"


def test_sampling_refuses_a_checkpoint_of_another_skeleton(trained_ws):
    with pytest.raises(SamplingError, match="trained on skeleton 'coco17', not 'nba16'"):
        run_sampling(trained_ws, "tiny", "s2", num_samples=1, length=8, render=0, expected_skeleton="nba16",
                     progress=False, device="cpu")  # fmt: skip


def test_cli_train_and_sample(trained_ws):
    runner = CliRunner()
    ws = trained_ws.root
    args = ["train", "--dataset", "synth", "--run", "cli", "-w", ws, "--steps", "3", "--layers", "1"]
    out = runner.invoke(app, [*args, "--latent-dim", "16", "--max-len", "16", "--device", "cpu", "--batch-size", "4"])
    assert out.exit_code == 0, out.output
    assert "step 3" in out.stdout and ("(bf16)" if cpu_native_bf16() else "(fp32)") in out.stdout
    out = runner.invoke(app, ["sample", "--run", "cli", "-w", ws, "--num-samples", "1", "--length", "8", "--steps",
                              "5", "--render", "0", "--device", "cpu"])  # fmt: skip
    assert out.exit_code == 0, out.output
    # one sample: passes of 5 motions x 9 tokens through a 16-wide model, where int8 is the fastest precision with or
    # without native bf16 (checked against fp32)
    assert "(1, 8, 17, 3)" in out.stdout and "(int8)" in out.stdout and "precision: auto → int8" in out.stdout
    assert "export: skeleton coco17 is not a tree" in out.stdout
    bad = runner.invoke(app, ["sample", "--run", "cli", "-w", ws, "--device", "cpu", "--precision", "fp16"],
                        env={"COLUMNS": "200"})  # fmt: skip
    assert bad.exit_code == 2 and "'fp16' is not one of 'auto', 'fp32', 'int8', 'bf16'" in bad.output, bad.output
    missing = runner.invoke(app, ["sample", "--run", "nope", "-w", ws])
    assert missing.exit_code == 2 and "no checkpoint" in missing.output
    no_data = runner.invoke(app, ["train", "--dataset", "absent", "-w", ws, "--steps", "1"])
    assert no_data.exit_code == 2 and "run `mas process`" in no_data.output
