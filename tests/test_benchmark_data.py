"""Benchmark datasets from known 3D motions: held-out 3D truth never reaches training."""

import numpy as np
import pytest

from models.trainer import BatchSampler
from pipeline.benchmark_data import (
    build_benchmark_dataset,
    load_motions_npz,
    project_window,
    resample_clip,
    split_clips,
)
from pipeline.skeletons import COCO17
from pipeline.synthetic import build_synthetic_dataset, generate_motion, generate_motions
from storage import Workspace
from storage.motion_dataset import normalisation_stats, open_motion_dataset, read_truth_3d

NUM, LENGTH = 40, 32


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    ws = Workspace(tmp_path_factory.mktemp("bench-ws"))
    result = build_synthetic_dataset(ws, "bench", num_motions=NUM, length=LENGTH, seed=0)
    dataset = open_motion_dataset(ws, "bench")
    return ws, result, dataset, read_truth_3d(ws, dataset)


def _rows(dataset, split):
    rows = dataset.index[dataset.index["split"] == split]
    return rows, np.stack([dataset.clip(i) for i in rows.index])


def _max_reprojection_match(dataset, truth_windows) -> float:
    """Smallest max-abs difference between a train 2D row and any ``truth_windows`` seen from that row's camera.

    Zero would mean that one of those 3D windows, projected as training data, IS a train row (a leak).
    """
    rows, train_2d = _rows(dataset, "train")
    best = np.inf
    for (_, row), xy in zip(rows.iterrows(), train_2d, strict=True):
        for window in truth_windows:
            seen = project_window(window, COCO17, row["azimuth"], row["elevation"], 7.0)
            best = min(best, float(np.abs(seen[..., :2] - xy[..., :2]).max()))
    return best


def test_build_splits_whole_motions_and_writes_truth(bench):
    ws, result, dataset, truth = bench
    assert truth is not None and truth.fps == 30.0 and dataset.meta["test_fraction"] == 0.2
    assert result.num_clips == NUM and result.num_train_windows + result.num_test_windows == NUM
    assert 1 <= len(result.test_clips) < NUM and not set(result.train_clips) & set(result.test_clips)
    assert not ws.exists(f"{dataset.folder}/ground_truth_3d.npy") and ws.exists(result.truth_path)
    assert list(result) == result.paths and result.truth_path in result.paths  # the old list-of-paths use still works
    for split, array, ids in (("train", truth.train, truth.train_ids), ("test", truth.test, truth.test_ids)):
        rows, xy = _rows(dataset, split)
        assert list(rows["clip_id"]) == list(ids) and array.shape == (len(rows), LENGTH, 17, 3)
        assert set(rows["source_clip"]) == set(result.train_clips if split == "train" else result.test_clips)
        assert (xy[..., 2] == 1).all() and {"azimuth", "elevation", "kind"} <= set(rows.columns)
        # the truth is the source motion itself (world units, not centred) and the 2D row is its projection
        motions = generate_motions(NUM, LENGTH, 30.0, seed=0)
        for (_, row), window, clip in zip(rows.iterrows(), array, xy, strict=True):
            np.testing.assert_array_equal(window, motions[int(row["source_clip"].split("-")[1])])
            seen = project_window(window, COCO17, row["azimuth"], row["elevation"], 7.0)
            np.testing.assert_allclose(seen, clip, atol=1e-5)


def test_no_test_motion_reaches_training(bench):
    ws, result, dataset, truth = bench
    train_rows, train_2d = _rows(dataset, "train")
    test_rows, test_2d = _rows(dataset, "test")
    # (i) disjoint clip ids and source clips (video_id is the source clip: splits are by clip)
    assert not set(truth.train_ids) & set(truth.test_ids)
    assert not set(train_rows["clip_id"]) & set(test_rows["clip_id"])
    assert not set(train_rows["source_clip"]) & set(test_rows["source_clip"])
    assert (dataset.index["video_id"] == dataset.index["source_clip"]).all()
    # (ii) every train 2D window is far from every test 2D window (same normalisation; a copied window gives ~1e-7;
    # two different motions of one kind under nearby cameras come within ~0.02 mean abs, ~0.1 max abs) ...
    diff = np.abs(train_2d[:, None, ..., :2] - test_2d[None, ..., :2])
    assert diff.mean(axis=(2, 3, 4)).min() > 0.01 and diff.max(axis=(2, 3, 4)).min() > 0.05
    # ... the held-out 3D motions are not among the train 3D windows ...
    gaps_3d = np.abs(truth.train[:, None] - truth.test[None]).max(axis=(2, 3, 4))
    assert gaps_3d.min() > 0.05
    # ... and no held-out 3D motion seen from any train row's camera gives that train row
    assert _max_reprojection_match(dataset, truth.test) > 0.05
    # (iii) every window the trainer draws is a slice of a train window, never of a test window
    max_len = 20
    sampler = BatchSampler(dataset, max_len, np.random.default_rng(0))
    z_train = (train_2d[..., :2] - dataset.mean) / dataset.std
    z_test = (test_2d[..., :2] - dataset.mean) / dataset.std
    offsets = range(LENGTH - max_len + 1)
    train_slices = np.stack([z_train[:, o : o + max_len] for o in offsets], 1)  # [N, O, max_len, J, 2]
    test_slices = np.stack([z_test[:, o : o + max_len] for o in offsets], 1)
    drawn_rows = set()
    for _ in range(50):
        z, mask, valid = sampler.draw(8)
        assert valid.all() and mask.all()  # every clip is LENGTH >= max_len frames: no padding
        for window in z:
            to_train = np.abs(train_slices - window).max(axis=(2, 3, 4))
            to_test = np.abs(test_slices - window).max(axis=(2, 3, 4))
            assert to_train.min() < 1e-5, "a drawn window is no slice of a train clip"
            assert to_test.min() > 0.05, "a drawn window matches a test clip"
            drawn_rows.add(int(np.argwhere(to_train < 1e-5)[0, 0]))
    assert len(drawn_rows) > 0.8 * len(train_rows)  # the draws cover the train split, so the check has reach
    # (iv) normalisation statistics come from the train clips only
    mean, std = normalisation_stats(list(train_2d), dataset.conf_threshold)
    np.testing.assert_array_equal(dataset.mean, mean)
    np.testing.assert_array_equal(dataset.std, std)
    all_mean, _ = normalisation_stats(list(train_2d) + list(test_2d), dataset.conf_threshold)
    assert not np.array_equal(all_mean, mean)


def test_leak_detector_has_teeth(tmp_path):
    """The re-projection check above does fire when one motion sits in both splits under two names."""
    motions = list(generate_motions(6, LENGTH, 30.0, seed=3))
    clips = motions + [motions[k] for k in range(6)]  # clip 6 + k duplicates clip k
    names = [f"m{i}" for i in range(12)]
    ws = Workspace(tmp_path)
    result = build_benchmark_dataset(ws, "leaky", clips, 30.0, COCO17, length=LENGTH, test_fraction=0.5, seed=0,
                                     clip_names=names)  # fmt: skip
    leaked = [k for k in range(6) if (f"m{k}" in result.test_clips) != (f"m{k + 6}" in result.test_clips)]
    assert leaked, "seed 0 should put some duplicated motion on both sides"
    dataset = open_motion_dataset(ws, "leaky")
    assert _max_reprojection_match(dataset, read_truth_3d(ws, dataset).test) < 1e-4


def test_resampling_60_to_30_fps_halves_frames_and_interpolates():
    clip = generate_motion(np.random.default_rng(1), length=60, fps=60.0, kind="walk")
    half = resample_clip(clip, 60.0, 30.0)
    assert half.shape == (30, 17, 3)
    np.testing.assert_allclose(half, clip[::2], atol=1e-6)
    odd = resample_clip(clip, 25.0, 30.0)  # a non-integer ratio: linear interpolation in time
    times = np.arange(len(odd)) / 30.0
    assert len(odd) == int(59 / 25 * 30) + 1 and times[-1] <= 59 / 25
    expected = np.stack([np.interp(times, np.arange(60) / 25.0, clip[:, j, c]) for j in range(17) for c in range(3)],
                        -1).reshape(len(odd), 17, 3)  # fmt: skip
    np.testing.assert_allclose(odd, expected, atol=1e-5)
    np.testing.assert_array_equal(resample_clip(clip, 30.0, 30.0), clip)


def test_windows_of_a_source_clip_stay_in_one_split(tmp_path):
    rng = np.random.default_rng(5)
    lengths = [130, 90, 200, 75, 160, 20, 110, 140]  # at 60 fps; the 20-frame clip is too short for a window
    clips = [generate_motion(rng, n, 60.0) for n in lengths]
    ws = Workspace(tmp_path)
    result = build_benchmark_dataset(ws, "user", clips, 60.0, COCO17, fps=30.0, length=24, stride=8, seed=2,
                                     clip_names=[f"take{i}" for i in range(8)])  # fmt: skip
    dataset = open_motion_dataset(ws, "user")
    truth = read_truth_3d(ws, dataset)
    index = dataset.index
    assert result.short_clips == ["take5"] and "take5" not in set(index["source_clip"])
    assert (index.groupby("source_clip")["split"].nunique() == 1).all()
    assert (index["video_id"] == index["source_clip"]).all() and (index["length"] == 24).all()
    assert set(result.test_clips) == set(index.loc[index["split"] == "test", "source_clip"])
    assert dataset.meta["fps"] == 30.0 and dataset.meta["stride"] == 8 and dataset.meta["short_clips"] == 1
    counts = index.groupby("source_clip").size()
    for i, n in enumerate(lengths):
        if n >= 24 * 2:  # frames at 30 fps: floor((n - 1) / 2) + 1; windows every 8 frames
            assert counts[f"take{i}"] == ((n - 1) // 2 + 1 - 24) // 8 + 1
    windows = dict(zip(truth.train_ids, truth.train, strict=True)) | dict(zip(truth.test_ids, truth.test, strict=True))
    for _, row in index.iterrows():
        source = resample_clip(clips[int(row["source_clip"][4:])], 60.0, 30.0)
        np.testing.assert_allclose(windows[row["clip_id"]], source[row["start_frame"] : row["start_frame"] + 24],
                                   atol=1e-6)  # fmt: skip


def test_load_motions_npz_both_layouts_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    motions = generate_motions(3, 40, 30.0, seed=1)
    np.savez(tmp_path / "a.npz", motions=motions, fps=np.array([30.0, 60.0, 25.0]))
    clips, fps = load_motions_npz(tmp_path / "a.npz")
    assert fps == [30.0, 60.0, 25.0] and len(clips) == 3
    for clip, motion in zip(clips, motions, strict=True):
        np.testing.assert_array_equal(clip, motion)
    named = {f"walk{i}": generate_motion(rng, 30 + i, 50.0) for i in (10, 2, 1)}
    np.savez(tmp_path / "b.npz", **named, fps=50)
    clips, fps = load_motions_npz(tmp_path / "b.npz")
    assert [len(c) for c in clips] == [31, 32, 40] and fps == [50.0] * 3  # natural order: walk1, walk2, walk10
    np.testing.assert_array_equal(clips[2], named["walk10"])
    np.savez(tmp_path / "c.npz", first=motions[0], second=motions[1])
    clips, fps = load_motions_npz(tmp_path / "c.npz")
    assert fps == [30.0, 30.0] and len(clips) == 2  # no fps key: 30 fps
    result = build_benchmark_dataset(Workspace(tmp_path / "ws"), "npz", clips, fps, COCO17, length=20, seed=0)
    assert result.num_clips == 2 and result.num_train_windows == result.num_test_windows == 2


def test_loader_errors_name_file_key_and_shape(tmp_path):
    motion = generate_motions(1, 20, 30.0)[0]
    bad = motion.copy()
    bad[7, 3, 1] = np.nan
    np.savez(tmp_path / "nan.npz", good=motion, broken=bad)
    with pytest.raises(ValueError, match=r"nan\.npz: clip 'broken' holds NaN or inf values \(first at frame 7\)"):
        load_motions_npz(tmp_path / "nan.npz")
    np.savez(tmp_path / "flat.npz", motions=motion)
    with pytest.raises(ValueError, match=r"flat\.npz: key 'motions' must have shape \[N, L, J, 3\].*\(20, 17, 3\)"):
        load_motions_npz(tmp_path / "flat.npz")
    np.savez(tmp_path / "clip2d.npz", a=motion[..., :2])
    with pytest.raises(ValueError, match=r"clip2d\.npz: key 'a' must be one clip of shape \[L, J, 3\]"):
        load_motions_npz(tmp_path / "clip2d.npz")
    np.savez(tmp_path / "fps.npz", motions=motion[None].repeat(3, 0), fps=[30.0, 60.0])
    with pytest.raises(ValueError, match=r"fps\.npz: key 'fps' must be a scalar or have shape \[3\]"):
        load_motions_npz(tmp_path / "fps.npz")
    np.savez(tmp_path / "empty.npz", fps=30)
    with pytest.raises(ValueError, match="holds no motions"):
        load_motions_npz(tmp_path / "empty.npz")


def test_builder_errors(tmp_path):
    ws = Workspace(tmp_path)
    motions = list(generate_motions(4, 30, 30.0))
    bad = [m.copy() for m in motions]
    bad[2][5, 0, 0] = np.inf
    with pytest.raises(ValueError, match="clip 'clip-00002' holds NaN or inf"):
        build_benchmark_dataset(ws, "x", bad, 30.0, COCO17, length=20)
    with pytest.raises(ValueError, match=r"clip 'clip-00000': expected shape \[L, 17, 3\].*\(30, 16, 3\)"):
        build_benchmark_dataset(ws, "x", [m[:, :16] for m in motions], 30.0, COCO17, length=20)
    with pytest.raises(ValueError, match="at least 2 source clips"):
        build_benchmark_dataset(ws, "x", motions[:1], 30.0, COCO17, length=20)
    with pytest.raises(ValueError, match=r"the train split has no window of 60 frames.*use a smaller length"):
        build_benchmark_dataset(ws, "x", motions, 30.0, COCO17, length=60)
    long_train = [np.concatenate([m, m]) for m in motions]  # seed 0 holds out clip 2 (checked below): too short
    long_train[2] = motions[2]
    assert split_clips(4, 0.2, 0).tolist() == [False, False, True, False]
    with pytest.raises(ValueError, match=r"the test split has no window of 50 frames.*\(clip-00002\)"):
        build_benchmark_dataset(ws, "x", long_train, 30.0, COCO17, length=50, seed=0)
    assert not ws.exists(f"{ws.dataset_dir('x')}/meta.json")  # nothing written on errors
    assert split_clips(2, 0.01, 0).sum() == 1 and split_clips(5, 0.99, 0).sum() == 4  # one clip at least each side


def test_input_units_do_not_change_the_2d_data(tmp_path):
    """Motions in millimetres give the same 2D dataset as in body units: the camera distance is in body units."""
    clips = list(generate_motions(6, 30, seed=4))
    datasets = []
    for scale, name in ((1.0, "units"), (1000.0, "mm")):
        ws = Workspace(tmp_path / name)
        build_benchmark_dataset(ws, name, [c * scale for c in clips], 30.0, COCO17, length=30, seed=1)
        datasets.append(open_motion_dataset(ws, name))
    np.testing.assert_allclose(np.asarray(datasets[0].clips), np.asarray(datasets[1].clips), atol=1e-4)
