"""The motion evaluator: official MAS size, held-out early stopping, and the content-hash cache."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models.evaluator import (
    EvaluatorConfig,
    MotionEvaluator,
    embed,
    holdout_split,
    load_evaluator,
    reconstruction_loss,
    train_evaluator,
    validation_windows,
)
from models.trainer import BatchSampler
from pipeline.evaluator_store import load_or_train_evaluator, read_history
from storage import Catalog, Workspace
from storage.motion_dataset import open_motion_dataset

TINY = dict(latent_dim=32, ff_size=64, num_layers=2, num_heads=4, max_len=24)
FAST = dict(max_steps=30, batch_size=16, eval_every=10, progress=False)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    from pipeline.synthetic import build_synthetic_dataset

    workspace = Workspace(tmp_path_factory.mktemp("evaluator-ws"))
    build_synthetic_dataset(workspace, "d", num_motions=64, length=32, seed=0)
    return workspace


@pytest.fixture(scope="module")
def dataset(ws):
    return open_motion_dataset(ws, "d")


def tiny(dataset, **changes) -> EvaluatorConfig:
    return EvaluatorConfig(num_joints=dataset.num_joints, **{**TINY, **changes})


def test_default_config_is_the_official_mas_evaluator():
    config = EvaluatorConfig(num_joints=17)
    assert (config.num_layers, config.latent_dim, config.ff_size, config.num_heads) == (6, 256, 1024, 4)
    assert config.dropout == 0.1
    layer = MotionEvaluator(config).encoder.layers[0]
    assert layer.dropout.p == 0.1 and layer.activation_relu_or_gelu == 2  # gelu


def test_holdout_is_by_video_disjoint_from_training_and_never_test(dataset):
    train_rows, held = holdout_split(dataset, 0.1, seed=0)
    train_split = dataset.split("train")
    assert len(held) >= 1 and len(train_rows) >= 1
    assert (held["split"] == "train").all() and (train_rows["split"] == "train").all()
    assert not set(held["clip_id"]) & set(train_rows["clip_id"])
    assert not set(held["video_id"]) & set(train_rows["video_id"])
    assert set(held["clip_id"]) | set(train_rows["clip_id"]) == set(train_split["clip_id"])
    assert not set(held["clip_id"]) & set(dataset.split("test")["clip_id"])
    assert holdout_split(dataset, 0.1, seed=0)[1]["clip_id"].tolist() == held["clip_id"].tolist()  # seeded
    assert holdout_split(dataset, 0.1, seed=1)[1]["clip_id"].tolist() != held["clip_id"].tolist()
    # the sampler draws only from the rows it is given
    sampler = BatchSampler(dataset, 24, np.random.default_rng(0), rows=train_rows)
    assert set(sampler.offsets) == set(train_rows["offset"]) and not set(sampler.offsets) & set(held["offset"])
    # a train split of one video holds out clips instead
    one_video = dataclasses.replace(dataset, index=dataset.index.assign(video_id="v"))
    train_rows, held = holdout_split(one_video, 0.1, seed=0)
    assert len(held) >= 1 and len(train_rows) >= 1 and not set(held["clip_id"]) & set(train_rows["clip_id"])
    assert (held["split"] == "train").all()


def test_validation_windows_are_fixed_and_padded(dataset):
    rows = dataset.split("train").iloc[:3].copy()
    rows.loc[rows.index[0], "length"] = 10  # pretend the first clip is short: padded, masked out after frame 10
    z, mask, valid = validation_windows(dataset, rows, 24)
    assert z.shape == (3, 24, dataset.num_joints, 2)
    assert valid[0, :10].all() and not valid[0, 10:].any() and not mask[0, 10:].any() and (z[0, 10:] == 0).all()
    assert valid[1:].all()
    again = validation_windows(dataset, rows, 24)
    assert all(np.array_equal(a, b) for a, b in zip((z, mask, valid), again, strict=True))


def test_early_stopping_restores_the_best_weights(dataset):
    config = tiny(dataset)
    # min_delta 0: patience runs out only after `patience` evaluations above the best, so the best is not the last
    model, history = train_evaluator(dataset, config, max_steps=500, batch_size=16, lr=1e-2, eval_every=5,
                                     patience=3, min_delta=0.0, progress=False)  # fmt: skip
    assert history[-1]["step"] < 500  # stopped early
    assert [h["step"] for h in history] == list(range(5, history[-1]["step"] + 1, 5))
    assert all(np.isfinite([h["train_loss"], h["val_loss"]]).all() for h in history)
    val = [h["val_loss"] for h in history]
    assert int(np.argmin(val)) == len(val) - 4 and min(val) < val[-1]
    assert not model.training
    windows = validation_windows(dataset, holdout_split(dataset, 0.1, seed=0)[1], config.max_len)
    assert reconstruction_loss(model, windows) == pytest.approx(min(val), rel=1e-4)
    assert reconstruction_loss(model, windows) == reconstruction_loss(model, windows)  # deterministic


def test_plateau_with_a_tiny_learning_rate_stops_early(dataset):
    _, history = train_evaluator(dataset, tiny(dataset), max_steps=1000, batch_size=8, lr=1e-9, eval_every=5,
                                 patience=2, progress=False)  # fmt: skip
    assert [h["step"] for h in history] == [5, 10, 15]  # first eval sets the reference, two stale ones stop it


def test_too_few_train_clips_is_a_clear_error(dataset):
    first = dataset.split("train").iloc[:1]
    small = dataclasses.replace(dataset, index=first)
    with pytest.raises(ValueError, match="needs at least 2"):
        train_evaluator(small, tiny(dataset), **FAST)
    with pytest.raises(ValueError, match="val_fraction"):
        holdout_split(dataset, 0.0)


def test_store_trains_once_then_loads(ws, dataset):
    config = tiny(dataset)
    first = load_or_train_evaluator(ws, "d", config, **FAST)
    assert first.trained and len(first.key) == 16 and first.folder == ws.evaluator_dir(first.key)
    for name in ("evaluator.pt", "loss.csv", "loss.png"):
        assert ws.exists(f"{first.folder}/{name}")
    assert ws.read_bytes(f"{first.folder}/loss.png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_history(ws, f"{first.folder}/loss.csv") == first.history
    record = Catalog(ws).get("evaluator", first.key)
    assert record.status == "done" and record.key == first.key and record.meta["dataset"] == "d"

    second = load_or_train_evaluator(ws, "d", config, **FAST)
    assert not second.trained and second.key == first.key and second.history == first.history
    z = np.random.default_rng(0).normal(size=(8, 24, dataset.num_joints, 2)).astype(np.float32)
    np.testing.assert_array_equal(embed(first.model, z), embed(second.model, z))

    wider = load_or_train_evaluator(ws, "d", tiny(dataset, latent_dim=48), **FAST)
    assert wider.trained and wider.key != first.key and wider.folder != first.folder
    longer = load_or_train_evaluator(ws, "d", config, **{**FAST, "max_steps": 40})
    assert longer.trained and longer.key not in (first.key, wider.key)


def test_store_marks_failures(tmp_path, dataset):
    from storage.motion_dataset import write_motion_dataset

    ws = Workspace(tmp_path)
    clips = [dataset.clip(0), dataset.clip(1)]
    index = dataset.index.iloc[:2].drop(columns=["offset", "length"]).assign(split=["train", "test"])
    write_motion_dataset(ws, "tiny", clips, index, {"skeleton": dataset.skeleton, "fps": 30.0}, 0.5)
    with pytest.raises(ValueError, match="needs at least 2"):
        load_or_train_evaluator(ws, "tiny", tiny(dataset), **FAST)
    [record] = Catalog(ws).records("evaluator")
    assert record.status == "failed" and "needs at least 2" in record.error


def test_store_on_an_fsspec_workspace(dataset):
    from pipeline.synthetic import build_synthetic_dataset

    ws = Workspace("memory://evaluator-store-test")
    build_synthetic_dataset(ws, "d", num_motions=64, length=32, seed=0)
    first = load_or_train_evaluator(ws, "d", tiny(dataset), **FAST)
    second = load_or_train_evaluator(ws, "d", tiny(dataset), **FAST)
    assert first.trained and not second.trained and ws.exists(f"{first.folder}/loss.png")
    z = np.zeros((2, 24, dataset.num_joints, 2), np.float32)
    np.testing.assert_array_equal(embed(first.model, z), embed(second.model, z))


def test_old_files_without_dropout_still_load(tmp_path, dataset):
    model = MotionEvaluator(tiny(dataset, dropout=0.2))
    config = dataclasses.asdict(model.config)
    torch.save({"config": config, "state": model.state_dict()}, tmp_path / "new.pt")
    assert load_evaluator(str(tmp_path / "new.pt")).config.dropout == 0.2
    del config["dropout"]
    torch.save({"config": config, "state": model.state_dict()}, tmp_path / "old.pt")
    loaded = load_evaluator(str(tmp_path / "old.pt"))
    assert loaded.config.dropout == 0.1
    z = np.zeros((2, 24, dataset.num_joints, 2), np.float32)
    np.testing.assert_allclose(embed(loaded, z), embed(model.eval(), z), rtol=1e-6)


def test_an_evaluator_is_never_reused_for_other_data(tmp_path, dataset):
    """Keyed by the dataset's content, not its name or run: a dataset rebuilt under the same name (another run's
    data) gets its own evaluator, and the first one is still found for the first data."""
    from pipeline.synthetic import build_synthetic_dataset

    ws = Workspace(tmp_path)
    build_synthetic_dataset(ws, "shared-name", num_motions=64, length=32, seed=0)
    fast = {**FAST, "max_steps": 10, "eval_every": 5}
    first = load_or_train_evaluator(ws, "shared-name", tiny(dataset), **fast)
    build_synthetic_dataset(ws, "shared-name", num_motions=64, length=32, seed=1)  # other motions, same name
    second = load_or_train_evaluator(ws, "shared-name", tiny(dataset), **fast)
    assert second.trained and second.key != first.key and second.folder != first.folder
    build_synthetic_dataset(ws, "other-name", num_motions=64, length=32, seed=1)  # the same data, another name
    third = load_or_train_evaluator(ws, "other-name", tiny(dataset), **fast)
    assert not third.trained and third.key == second.key
