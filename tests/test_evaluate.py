import numpy as np
import pytest
from typer.testing import CliRunner

from models.evaluator import EvaluatorConfig
from models.metrics import (
    HEADLINE_3D,
    aligned_mpjpe_pairs,
    aligned_pair_errors,
    aligned_sq_error_matrix,
    bone_length_variation,
    diversity,
    evaluate_3d,
    fid,
    foot_metrics,
    mean_ci,
    nearest_neighbour_mpjpe,
    normalize_3d,
    precision_recall,
    root_travel_climb,
)
from models.trainer import TrainConfig
from pipeline import baselines
from pipeline.cli import app
from pipeline.evaluate_stage import (
    HEADLINE_2D,
    EvalCamera,
    draw_indices,
    embed_once,
    markdown_report,
    project_for_eval,
    ranking_failures,
    run_evaluation,
)
from pipeline.sample_stage import run_sampling
from pipeline.skeletons import COCO17
from pipeline.synthetic import generate_motions
from pipeline.train_stage import run_training
from storage import Catalog
from storage.motion_dataset import open_motion_dataset, read_truth_3d

TINY_MODEL = dict(latent_dim=32, ff_size=64, num_layers=2, num_heads=4, dropout=0.0, max_len=32, device="cpu")
TINY_EVALUATOR = EvaluatorConfig(num_joints=1, latent_dim=32, ff_size=64, num_layers=2)


def _yaw(theta: float) -> np.ndarray:
    return np.array([[np.cos(theta), 0, np.sin(theta)], [0, 1, 0], [-np.sin(theta), 0, np.cos(theta)]])


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


def test_mpjpe_aligns_heading_only_never_scale():
    ref = generate_motions(12, 30, seed=0).astype(np.float64)
    moved = ref[:6] @ _yaw(1.1).T + np.array([2.0, 0.3, -1.0])  # another heading and place
    np.testing.assert_allclose(aligned_mpjpe_pairs(moved, ref[:6], COCO17.root), 0.0, atol=1e-9)
    np.testing.assert_allclose(np.diag(aligned_sq_error_matrix(moved, ref[:6], COCO17.root)), 0.0, atol=1e-9)
    # no per-pair scale: a shrunken copy is as far as the shrinking moves it (0.3 x its own size), never closer
    shrunk = 0.7 * ref[:6]
    sq = np.diag(aligned_sq_error_matrix(shrunk, ref[:6], COCO17.root))
    centred = ref[:6] - ref[:6][:, :, list(COCO17.root)].mean((1, 2), keepdims=True)
    np.testing.assert_allclose(sq, (0.09 * (centred**2).sum(-1)).mean((1, 2)), rtol=1e-9)
    # the closed-form heading is the best one: brute force over a fine grid of yaw angles
    a, b = ref[0] - ref[0][:, list(COCO17.root)].mean((0, 1)), ref[7] - ref[7][:, list(COCO17.root)].mean((0, 1))
    brute = min(np.linalg.norm(a @ _yaw(t).T - b, axis=-1).mean() for t in np.linspace(-np.pi, np.pi, 3601))
    assert aligned_mpjpe_pairs(a[None], b[None], COCO17.root)[0] == pytest.approx(brute, abs=2e-4)
    # nearest neighbours by squared error: precision and coverage match a brute-force search on MPJPE closely
    gen, real = ref[:5] + 0.02, ref[5:]
    full = np.array([[aligned_mpjpe_pairs(g[None], r[None], COCO17.root)[0] for r in real] for g in gen])
    precision, coverage = nearest_neighbour_mpjpe(gen, real, COCO17.root)
    assert precision == pytest.approx(full.min(1).mean(), rel=0.05)
    assert coverage == pytest.approx(full.min(0).mean(), rel=0.05)


def test_3d_scale_is_each_motions_own_body_size():
    ref = generate_motions(40, 30, seed=0)
    scaled = ref * 1.8 + np.array([0.0, 5.0, 0.0])  # the same motions in other units and place (e.g. metres)
    np.testing.assert_allclose(normalize_3d(scaled, COCO17), normalize_3d(ref, COCO17), atol=1e-5)
    same = evaluate_3d(ref[:20] * 0.3, ref[:20], COCO17)  # a shrunken copy buys nothing and loses nothing
    assert same["mpjpe"] < 1e-5 and same["speed_w1"] < 1e-6
    with pytest.raises(ValueError, match="NaN"):
        normalize_3d(np.full((1, 4, 17, 3), np.nan), COCO17)
    assert bone_length_variation(ref, COCO17) < 1e-6
    noisy = ref + np.random.default_rng(1).normal(0, 0.03, ref.shape)
    assert bone_length_variation(noisy, COCO17) > 0.05
    floating = ref.copy()
    floating[..., 1] += np.linspace(0, 1.0, 30)[None, :, None]  # rising into the air
    assert foot_metrics(floating, COCO17)["floating"] > foot_metrics(ref, COCO17)["floating"]


def test_mpjpe_rootrel_ignores_the_root_path_and_mpjpe_traj_measures_it():
    ref = generate_motions(20, 30, seed=0).astype(np.float64)
    rng = np.random.default_rng(4)
    path = np.cumsum(rng.normal(0, 0.05, (20, 30, 1, 3)), axis=1)  # an arbitrary root path per frame
    moved = ref + path
    scores = evaluate_3d(moved, ref, COCO17)
    assert scores["mpjpe_rootrel"] < 1e-9  # the same poses: 0 root-relative, wherever the root goes
    assert scores["mpjpe_traj"] > 0.05 and scores["mpjpe"] > 0.05
    same = evaluate_3d(ref, ref, COCO17)
    assert max(same["mpjpe_rootrel"], same["mpjpe"], same["mpjpe_pose"], same["mpjpe_traj"]) < 1e-9
    # pose and trajectory parts of one pair, pinned: a vertical-only path leaves the heading alone (yaw 0), so the
    # pose error is 0 and the trajectory error is the mean distance of the clip-centred vertical offsets
    rise = np.zeros((20, 30, 1, 3))
    rise[..., 1] = np.sin(np.linspace(0, 3, 30))[None, :, None] * np.linspace(0.1, 0.5, 20)[:, None, None]
    errors = aligned_pair_errors(ref + rise, ref, COCO17.root)
    np.testing.assert_allclose(errors["pose"], 0.0, atol=1e-9)
    expected = np.abs(rise[..., 0, 1] - rise[..., 0, 1].mean(1, keepdims=True)).mean(1)
    np.testing.assert_allclose(errors["traj"], expected, rtol=1e-9)
    np.testing.assert_allclose(errors["mpjpe"], expected, rtol=1e-9)  # every joint moves with the root
    # with a path that turns the heading too, the joint error stays within the sum of its parts
    errors = aligned_pair_errors(moved, ref, COCO17.root)
    assert (errors["mpjpe"] <= errors["pose"] + errors["traj"] + 1e-12).all() and (errors["pose"] > 0).any()
    np.testing.assert_allclose(errors["mpjpe"], aligned_mpjpe_pairs(moved, ref, COCO17.root))


def test_mpjpe_rootrel_shows_depth_that_a_root_drift_hides_from_mpjpe():
    """A flat lift (depth zeroed in a random camera's frame) scores worse than real motion root-relative; a real
    motion drifting 1.5 body heights over the clip scores as real root-relative but worse than the flat lift on the
    clip-centred mpjpe (issue 32: trajectory errors swamp the pose)."""
    n, length = 120, 40
    motions = generate_motions(2 * n, length, seed=3).astype(np.float64)
    train, test = motions[:n], motions[n:]
    rng = np.random.default_rng(0)
    theta = rng.uniform(-np.pi, np.pi, n)[:, None, None]
    flat = np.stack([np.cos(theta) * train[..., 0] + np.sin(theta) * train[..., 2], train[..., 1],
                     np.zeros_like(train[..., 0])], -1)  # fmt: skip
    direction = rng.normal(size=(n, 1, 1, 3)) * np.array([1.0, 0.0, 1.0])
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    drift = train + 1.5 * np.linspace(0, 1, length)[None, :, None, None] * direction
    real, flat, drift = (evaluate_3d(m, test, COCO17) for m in (train, flat, drift))
    assert real["mpjpe_rootrel"] * 2 < flat["mpjpe_rootrel"]
    assert drift["mpjpe_rootrel"] == pytest.approx(real["mpjpe_rootrel"], rel=1e-6)
    assert drift["mpjpe"] > flat["mpjpe"] and drift["mpjpe_traj"] > 2 * real["mpjpe_traj"]
    assert drift["travel"] > real["travel"] + 0.5  # the drift adds 1.5, in a random direction to the walk


def test_travel_and_climb_of_known_root_paths():
    pose = generate_motions(1, 1, seed=0).astype(np.float64)[0, 0]  # [J, 3]
    frames = 21
    t = np.linspace(0, 1, frames)[:, None]
    paths = [
        np.hstack([0.6 * t, 0.3 * t, 0.8 * t]),  # a straight line 1.0 long (3-4-5), rising 0.3
        np.hstack([0.5 * np.sin(np.pi * t), -0.2 * t, 0 * t]),  # out 0.5 and back: 1.0 long, ends where it began
        np.hstack([np.cos(np.pi * t), 0 * t, np.sin(np.pi * t)]),  # half a unit circle: 20 chords of pi/20
    ]
    motions = np.stack([pose[None] + p[:, None] for p in paths])
    travel, climb = root_travel_climb(motions, COCO17.root)
    half_circle = 20 * 2 * np.sin(np.pi / 40)
    np.testing.assert_allclose(travel, [1.0, 1.0, half_circle], rtol=1e-9)
    np.testing.assert_allclose(climb, [0.3, 0.2, 0.0], atol=1e-12)
    # evaluate_3d reports medians in body heights: whatever the units, the same numbers
    body = normalize_3d(motions, COCO17)  # one fixed pose: one body size for all three motions
    height = np.linalg.norm(motions[0, 1] - motions[0, 0]) / np.linalg.norm(body[0, 1] - body[0, 0])
    for units in (1.0, 1000.0):
        scores = evaluate_3d(motions * units, motions, COCO17)
        assert scores["travel"] == pytest.approx(1.0 / height, rel=1e-6)  # median of 1.0, 1.0, 3.13
        assert scores["climb"] == pytest.approx(0.2 / height, rel=1e-6)  # median of 0.3, 0.2, 0.0


def test_3d_headline_metrics_rank_real_motion_above_trivial_baselines():
    """The floor (real train 3D vs held-out test 3D) beats every trivial baseline beyond the CI on every 3D headline
    metric, at the same n, on the procedural benchmark."""
    n, draws = 120, 3
    motions = generate_motions(n * draws + n, 40, seed=3)
    train, test = motions[: n * draws], motions[n * draws :]
    rng = np.random.default_rng(0)
    flat_xy = train[..., :2] - train[..., :2].mean(2, keepdims=True)  # a side-on orthographic "2D clip" of each
    sets = {
        "floor": train,
        "frozen": baselines.frozen_mean_pose(train, COCO17, len(train)),
        "flat": baselines.flat_lift(flat_xy),
        "random depth": baselines.random_depth_lift(flat_xy, rng),
        "shuffled": baselines.time_shuffled(train, rng),
    }
    scores = {}
    for label, motions_3d in sets.items():
        rows = [evaluate_3d(motions_3d[d * n : (d + 1) * n], test, COCO17) for d in range(draws)]
        scores[label] = {m: mean_ci([r[m] for r in rows]) for m in (*HEADLINE_3D, "mpjpe")}
    assert "mpjpe_rootrel" in HEADLINE_3D
    for label in ("frozen", "flat", "random depth", "shuffled"):
        for metric in (*HEADLINE_3D, "mpjpe"):  # mpjpe: no longer a headline, still ranks real motion first
            (floor, floor_ci), (base, base_ci) = scores["floor"][metric], scores[label][metric]
            assert floor + floor_ci < base - base_ci, (metric, label, scores["floor"][metric], scores[label][metric])


def test_draws_take_new_generated_motions_every_draw():
    draws = draw_indices(50, 10, 3, np.random.default_rng(0), "set", generated=True)
    assert len(draws) == 3 and len(np.unique(np.concatenate(draws))) == 30  # disjoint
    assert len(draw_indices(50, 20, 5, np.random.default_rng(0), "set", generated=True)) == 2  # never reused
    with pytest.raises(ValueError, match="mas sample --num-samples"):
        draw_indices(50, 60, 2, np.random.default_rng(0), "sample set x", generated=True)
    real = draw_indices(50, 20, 4, np.random.default_rng(0), "data", generated=False)
    assert len(real) == 4 and all(len(np.unique(c)) == 20 for c in real)


def test_each_pool_motion_is_embedded_once_and_projected_as_normalize_2d_would():
    from models.evaluator import MotionEvaluator, embed
    from pipeline.cameras import normalize_2d, project, rotation_matrix

    seen = []

    config = EvaluatorConfig(num_joints=17, latent_dim=32, ff_size=64, num_layers=1, max_len=8)
    evaluator = MotionEvaluator(config).eval()
    pool = np.random.default_rng(0).normal(size=(30, 8, 17, 2)).astype(np.float32)
    draws = [np.arange(10), np.arange(5, 15), np.array([29, 0, 3])]
    embeddings = embed_once(evaluator, lambda idx: (seen.append(idx), pool[idx])[1], draws)
    assert len(seen) == 1 and sorted(seen[0]) == sorted(set(np.concatenate(draws)))  # one call, each motion once
    for draw, emb in zip(draws, embeddings, strict=True):
        np.testing.assert_allclose(emb, embed(evaluator, pool[draw]), atol=1e-5)
    # the batched projection equals the per-motion one (project, then normalize_2d with y up, then z-score)
    motions = generate_motions(6, 20, seed=1)
    rng = np.random.default_rng(2)
    azimuths, elevations = rng.uniform(-np.pi, np.pi, 6), rng.uniform(0.0, 0.4, 6)
    mean, std = np.float32(0.1), np.float32(0.5)
    batched = project_for_eval(motions, azimuths, COCO17.root, COCO17.body_joints, mean, std, elevations, 7.0)
    for k in range(6):
        centred = motions[k] - motions[k][:, list(COCO17.root)].mean(axis=(0, 1))
        xy = project(centred.astype(np.float64), rotation_matrix([azimuths[k]], elevations[k]), 7.0)[0]
        norm, _, _ = normalize_2d(xy, None, COCO17.root, COCO17.body_joints, y_down=False)
        np.testing.assert_allclose(batched[k], (norm - mean) / std, atol=2e-5)
    with pytest.raises(ValueError, match="NaN"):
        project_for_eval(np.full_like(motions, np.nan), azimuths, COCO17.root, COCO17.body_joints, mean, std)


def test_evaluation_table_has_floor_baselines_and_references(synthetic_ws):
    ws = synthetic_ws
    run_training(ws, "synth", "evalrun", TrainConfig(steps=30, batch_size=8, lr=1e-3, **TINY_MODEL), progress=False)
    run_sampling(ws, "evalrun", "e-mas", num_samples=16, length=24, render=0, progress=False, device="cpu")
    result = run_evaluation(ws, "evalrun", "ev", ["e-mas"], length=24, n=8, repeats=2, evaluator=TINY_EVALUATOR,
                            evaluator_max_steps=40, sds_iterations=10, progress=False, device="cpu")  # fmt: skip
    table = result.table
    dataset = open_motion_dataset(ws, "synth")
    truth = read_truth_3d(ws, dataset)
    assert truth is not None and result.n == 8
    # generated and real 3D are seen through the cameras the dataset's 2D was made with (official: per dataset)
    assert EvalCamera.of(dataset) == EvalCamera((0.0, 0.4), 7.0)
    dataset.meta.pop("elevation_range"), dataset.meta.pop("distance")
    assert EvalCamera.of(dataset) == EvalCamera((np.pi / 16, np.pi / 16), 7.0)  # video data: the MAS cameras
    expected = [
        ("floor", "real train clips (2D)", "-"),
        ("floor", "real train motions (3D)", "all"), ("floor", "real train motions (3D)", "side"),
        ("trivial", "frozen mean pose", "all"), ("trivial", "frozen mean pose", "side"),
        ("trivial", "flat lift (depth 0)", "all"), ("trivial", "flat lift (depth 0)", "side"),
        ("trivial", "random-depth lift", "all"), ("trivial", "random-depth lift", "side"),
        ("trivial", "time-shuffled real", "all"), ("trivial", "time-shuffled real", "side"),
        ("reference", "2D model (plain sampling)", "-"),
        ("reference", "SDS (plain)", "all"), ("reference", "SDS (plain)", "side"),
        ("evaluated", "e-mas", "all"), ("evaluated", "e-mas", "side"),
    ]  # fmt: skip
    assert list(zip(table["kind"], table["method"], table["view"], strict=True)) == expected
    assert (table["n"] == 8).all() and (table["draws"] == 2).all()  # 16 MAS samples: two draws of 8 NEW motions
    three_d = table[table["view"] == "all"]
    assert np.isfinite(three_d[list(HEADLINE_3D)].to_numpy(float)).all()  # held-out 3D truth: 3D metrics
    assert table.loc[table["view"] != "all", "mpjpe"].isna().all()
    assert set(HEADLINE_2D) <= set(table.columns)
    text = markdown_report(table, result.warnings)
    assert "fid ★" in text and "mpjpe_rootrel ★" in text and "floor" in text and "±" in text
    for column in ("| mpjpe |", "| mpjpe_pose |", "| mpjpe_traj |", "| travel |", "| climb |"):
        assert column in text, column  # beside the headline, unstarred
    assert ranking_failures(table) == result.warnings
    assert {p.rsplit("/", 1)[1] for p in result.paths} == {"metrics.csv", "metrics.md", "metrics.png"}
    assert ws.exists(f"{result.evaluator_folder}/loss.csv") and ws.exists(f"{result.evaluator_folder}/loss.png")

    runner = CliRunner()
    out = runner.invoke(app, ["evaluate", "--run", "evalrun", "-w", ws.root, "--name", "ev"])
    assert out.exit_code == 2 and "nothing to evaluate" in out.output
    # a wrong --samples name fails before the evaluator trains (a new evaluator size: nothing cached to load)
    out = runner.invoke(app, ["evaluate", "--run", "evalrun", "-w", ws.root, "--samples", "e-mass", "--n", "8",
                              "--length", "24", "--evaluator-dim", "48", "--device", "cpu",
                              "--name", "typo"])  # fmt: skip
    assert out.exit_code == 2 and "sample set 'e-mass' is not in" in out.output and "mas sample" in out.output
    assert len(Catalog(ws).records("evaluator")) == 1 and Catalog(ws).get("evaluation", "typo") is None
    out = runner.invoke(app, ["evaluate", "--run", "evalrun", "-w", ws.root, "--samples", "e-mas", "--n", "8",
                              "--repeats", "2", "--length", "24", "--evaluator-layers", "2", "--evaluator-dim", "32",
                              "--evaluator-ff", "64", "--evaluator-steps", "40", "--sds-iterations", "10",
                              "--device", "cpu", "--name", "ev-cli"])  # fmt: skip
    assert out.exit_code == 0, out.output
    for row in ("real train motions (3D)", "time-shuffled real", "SDS (plain)", "Ranking check"):
        assert row in out.output
    # the plain 2D row's samples were kept by checkpoint and parameters: the second evaluation reused them
    from pathlib import Path

    kept = list(Path(ws.evaluation_dir("plain-2d-samples")).glob("evalrun-*.npz"))
    assert len(kept) == 1
    with np.load(kept[0]) as npz:
        assert npz["motions"].shape == (16, 24, 17, 2)


def test_ranking_failures_flags_a_metric_that_cannot_tell_real_from_trivial():
    import pandas as pd

    table = pd.DataFrame([
        {"kind": "floor", "method": "real", "view": "all", "fid": 1.0, "fid_ci95": 0.1, "recall": 0.9,
         "recall_ci95": 0.01},
        {"kind": "trivial", "method": "frozen", "view": "all", "fid": 50.0, "fid_ci95": 1.0, "recall": 0.89,
         "recall_ci95": 0.02},
    ])  # fmt: skip
    assert ranking_failures(table) == []  # recall is a headline in the side view only
    table["view"] = "side"
    failures = ranking_failures(table)
    assert len(failures) == 1 and failures[0].startswith("recall (side)") and "frozen" in failures[0]


def test_benchmark_3d_on_a_users_npz_in_one_command(tmp_path):
    """A user's own 3D motions (60 fps, millimetres) → `mas benchmark-3d` → the full table with floors and baselines."""
    motions = generate_motions(50, 60, fps=60.0, seed=5) * 1000.0  # 1 s clips at 60 fps, in millimetres
    np.savez(tmp_path / "mocap.npz", motions=motions, fps=60.0)
    ws = str(tmp_path / "ws")
    args = ["benchmark-3d", "--motions", str(tmp_path / "mocap.npz"), "--skeleton", "coco17", "-w", ws,
            "--name", "mocap", "--length", "16", "--test-fraction", "0.3", "--steps", "20", "--layers", "1",
            "--latent-dim", "32", "--n", "8", "--repeats", "1", "--sds-iterations", "5", "--evaluator-layers", "1",
            "--evaluator-dim", "32", "--evaluator-ff", "64", "--evaluator-steps", "20", "--device", "cpu",
            "--rigid-bones"]  # fmt: skip
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    for text in ("resampled to 30 fps", "real train motions (3D)", "frozen mean pose", "SDS (plain)", "MAS (5 views)",
                 "MAS + rigid bones",
                 "3D metrics against the held-out 3D motions", "benchmark.md"):  # fmt: skip
        assert text in out.output, text
    report = (tmp_path / "ws" / "evaluations" / "mocap-eval" / "benchmark.md").read_text()
    assert "mpjpe_rootrel ★" in report and "| travel |" in report and "whole clips held out" in report
    # Table 3 rows on the same run and evaluator (cached: no retraining), in their own evaluation at this n
    ablation = CliRunner().invoke(app, [*args[:-1], "--ablation", "views2", "--ablation", "steps20", "--ablation",
                                        "dist2m", "--ablation", "views2"])  # fmt: skip
    assert ablation.exit_code == 0, ablation.output
    assert "training mocap-model" not in ablation.output
    table = (tmp_path / "ws" / "evaluations" / "mocap-ablations-n8" / "benchmark.md").read_text()
    for text in ("MAS, 2 views (120°)", "MAS, 20 respaced steps", "frozen mean pose", "real train motions (3D)"):
        assert text in table, text
    assert ("| MAS, camera 2 m |" in table) != ("Ablation MAS, camera 2 m skipped" in table)  # scored or said why
    assert "| MAS (5 views) |" not in table
    assert table.count("| MAS, 2 views (120°) | all |") == 1
    bad = CliRunner().invoke(app, [*args[:-1], "--ablation", "views4"])
    assert bad.exit_code == 2 and "unknown ablations ['views4']" in bad.output
    bad = CliRunner().invoke(app, ["benchmark-3d", "-w", str(tmp_path / "ws")])
    assert bad.exit_code == 2 and "--motions FILE.npz or --procedural N" in bad.output
    np.savez(tmp_path / "broken.npz", motions=motions[:, :, :16])
    bad = CliRunner().invoke(
        app, ["benchmark-3d", "--motions", str(tmp_path / "broken.npz"), "-w", str(tmp_path / "b")]
    )
    assert bad.exit_code == 2 and "17 joints" in bad.output
