import numpy as np
import pytest
from typer.testing import CliRunner

from models.metrics import (
    aligned_mpjpe_matrix,
    bone_length_variation,
    diversity,
    evaluate_3d,
    fid,
    foot_metrics,
    mean_ci,
    precision_recall,
)
from models.sds import SDSConfig
from models.trainer import TrainConfig
from pipeline.cli import app
from pipeline.evaluate_stage import markdown_table, run_evaluation
from pipeline.sample_stage import run_sampling
from pipeline.skeletons import COCO17
from pipeline.synthetic import generate_motions
from pipeline.train_stage import run_training
from storage.motion_dataset import open_motion_dataset


def test_fid_precision_recall_behave():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8))
    assert abs(fid(x, x)) < 1e-6
    assert fid(x[:200], x[200:]) < 1.0
    assert fid(x, x + 3.0) == pytest.approx(72.0, rel=0.01)  # 8 dims x 3^2
    p, r = precision_recall(x[:200], x[200:])
    assert p > 0.7 and r > 0.7
    p, r = precision_recall(x[:200], x[200:] + 20.0)  # disjoint sets
    assert p == 0.0 and r == 0.0
    collapsed = np.repeat(x[:1], 200, 0) + 1e-3 * rng.normal(size=(200, 8))
    p, r = precision_recall(x[:200], collapsed)
    assert r < 0.1  # mode collapse shows as low recall
    assert diversity(collapsed) < 0.01 < diversity(x)
    mean, half = mean_ci(np.random.default_rng(7).normal(size=50))
    assert abs(mean) < 0.5 and 0.1 < half < 0.6
    with pytest.raises(ValueError, match="needs more than 3"):
        precision_recall(x[:3], x[:10])


def test_3d_metrics_on_known_motions():
    ref = generate_motions(40, 30, seed=0)
    theta = 1.1
    rot = np.array([[np.cos(theta), 0, np.sin(theta)], [0, 1, 0], [-np.sin(theta), 0, np.cos(theta)]])
    moved = (ref[:6] @ rot.T) * 0.7 + np.array([2.0, 0.3, -1.0])  # another heading, scale and place
    np.testing.assert_allclose(np.diag(aligned_mpjpe_matrix(moved, ref[:6], COCO17.root)), 0.0, atol=1e-9)
    assert bone_length_variation(ref, COCO17) < 1e-6
    noisy = ref + np.random.default_rng(1).normal(0, 0.03, ref.shape)
    assert bone_length_variation(noisy, COCO17) > 0.05
    same = evaluate_3d(ref[:20], ref[20:], COCO17)
    worse = evaluate_3d(noisy[:20], ref[20:], COCO17)
    assert worse["mpjpe_precision"] > same["mpjpe_precision"] and worse["fid_3d"] > same["fid_3d"]
    floating = ref.copy()
    floating[..., 1] += np.linspace(0, 1.0, 30)[None, :, None]  # rising into the air
    assert foot_metrics(floating, COCO17)["floating"] > foot_metrics(ref, COCO17)["floating"]


def test_evaluation_end_to_end_and_cli(synthetic_ws):
    tiny = dict(latent_dim=32, ff_size=64, num_layers=2, num_heads=4, dropout=0.0, max_len=32, device="cpu")
    run_training(synthetic_ws, "synth", "evalrun", TrainConfig(steps=30, batch_size=8, lr=1e-3, **tiny),
                 progress=False)  # fmt: skip
    for name, method in (("e-mas", "mas"), ("e-sds", "sds")):
        run_sampling(synthetic_ws, "evalrun", name, method=method, num_samples=16, length=24, render=0, progress=False,
                     device="cpu", sds=SDSConfig(iterations=20))  # fmt: skip
    result = run_evaluation(synthetic_ws, "evalrun", "ev", ["e-mas", "e-sds"], length=24, model_samples=16, repeats=2,
                            subset=16, evaluator_steps=20, evaluator_dim=32, progress=False, device="cpu")  # fmt: skip
    table = result.table
    expected = ["2D model (plain sampling)", "e-mas", "e-mas", "e-sds", "e-sds"]
    test_clips = int((open_motion_dataset(synthetic_ws, "synth").index["split"] == "test").sum())
    if test_clips >= 8:  # the data row needs enough held-out clips for distribution metrics
        expected.insert(0, "data (test split)")
    assert list(table["method"]) == expected
    assert set(table.loc[table["method"] == "e-mas", "view"]) == {"all", "side"}
    assert np.isfinite(table.loc[table["view"] == "all", "mpjpe_precision"]).all()  # 3D truth exists: 3D metrics
    assert "±" in markdown_table(table)
    assert {p.rsplit("/", 1)[1] for p in result.paths} == {"evaluator.pt", "metrics.csv", "metrics.md", "metrics.png"}
    out = CliRunner().invoke(app, ["evaluate", "--run", "evalrun", "-w", synthetic_ws.root, "--name", "ev"])
    assert out.exit_code == 2 and "nothing to evaluate" in out.output
