import numpy as np
import pandas as pd
import pytest

from pipeline.cameras import OFFICIAL_NBA_MEAN_POSE_HEIGHT, pose_height, project, rotation_matrix
from pipeline.config import DatasetConfig, ProcessConfig
from pipeline.dataset_stage import build_dataset
from pipeline.mas_layout import export_mas_layout, import_mas_layout
from pipeline.process import (
    Track,
    crowd_mask,
    cut_clips,
    fill_gaps,
    finalize,
    hampel,
    place_unseen_joints,
    pose_fill,
    process_tracks,
    resample,
    smooth,
    split_by_video,
    split_track,
    tracks_from_poses,
)
from pipeline.skeletons import COCO17, NBA16, mirror
from pipeline.synthetic import generate_motion
from storage import Catalog, Workspace
from storage.motion_dataset import open_motion_dataset
from storage.tables import poses_frame, read_poses, write_poses

CFG = ProcessConfig(min_track_frames=20, clip_min_frames=20, clip_max_frames=40, max_gap_frames=4, min_motion=0.02)


def pixel_track(seed=0, length=90, kind="walk", offset=(640.0, 360.0), video="v0", track_id=1, scale=300.0) -> Track:
    """A real-looking track: a procedural 3D motion seen from a camera, in pixels (y down)."""
    rng = np.random.default_rng(seed)
    motion = generate_motion(rng, length, 30.0, kind)
    xy = project(motion - motion.mean((0, 1)), rotation_matrix([0.5], 0.1), distance=7.0)[0]
    pixels = xy * np.array([scale, -scale]) + np.array(offset)
    keypoints = np.concatenate([pixels, np.full((length, 17, 1), 0.9)], -1).astype(np.float32)
    boxes = np.concatenate([pixels.min(1) - 10, pixels.max(1) + 10], -1)
    return Track(video, track_id, np.arange(length), boxes, keypoints)


def test_tracks_from_poses_roundtrip():
    a, b = pixel_track(0, track_id=1), pixel_track(1, track_id=2)
    frame = pd.concat([poses_frame("v0", t.frames, np.full(len(t), t.track_id), t.boxes, t.keypoints, COCO17.joints)
                       for t in (b, a)])  # fmt: skip
    tracks = tracks_from_poses(frame.sample(frac=1, random_state=0), COCO17)
    assert [t.track_id for t in tracks] == [1, 2]
    np.testing.assert_allclose(tracks[0].keypoints, a.keypoints)
    with pytest.raises(ValueError, match="does not match the skeleton"):
        tracks_from_poses(frame, NBA16)


def test_a_jump_gets_split_and_a_gap_too():
    a, b = pixel_track(0, 60), pixel_track(1, 60, offset=(2200.0, 300.0))  # another person, far away
    joined = Track("v0", 1, np.arange(120), np.concatenate([a.boxes, b.boxes]),
                   np.concatenate([a.keypoints, b.keypoints]))  # fmt: skip
    pieces = split_track(joined, COCO17, CFG)
    assert [len(p) for p in pieces] == [60, 60] and pieces[1].start_frame == 60
    gappy = Track("v0", 1, np.r_[np.arange(50), np.arange(70, 120)], joined.boxes[:100], joined.keypoints[:100])
    gappy.keypoints[50:] = a.keypoints[:50]  # continuous positions, but 20 frames missing
    assert [len(p) for p in split_track(gappy, COCO17, CFG)] == [50, 50]
    assert len(split_track(a, COCO17, CFG)) == 1  # a normal walk is never split


def test_a_short_gap_gets_filled_and_stays_masked():
    track = pixel_track(2, 60)
    truth = track.keypoints.copy()
    broken = track.keypoints.copy()
    wrist = COCO17.index("left_wrist")
    broken[20:23, wrist, :2] = 0.0  # the detector's (0, 0) for a missed joint
    broken[20:23, wrist, 2] = 0.05
    broken[40:50, wrist, 2] = 0.05  # too long to fill
    broken[40:50, wrist, :2] = 0.0
    filled = fill_gaps(Track("v", 1, track.frames, track.boxes, broken), threshold=0.3, max_gap=4)
    np.testing.assert_allclose(filled.keypoints[20:23, wrist, :2], truth[20:23, wrist, :2], atol=6.0)
    assert (filled.keypoints[20:23, wrist, 2] == np.float32(0.05)).all()  # still masked in the loss
    assert (filled.keypoints[40:50, wrist, :2] == 0).all()  # long gap left alone (masked)


def test_hampel_rejects_a_spike_and_smoothing_keeps_shape():
    track = pixel_track(3, 60)
    spiky = track.keypoints.copy()
    spiky[30, 5, :2] += 400
    cleaned, rejected = hampel(Track("v", 1, track.frames, track.boxes, spiky))
    assert rejected >= 1 and cleaned.keypoints[30, 5, 2] == 0.0
    assert np.abs(cleaned.keypoints[30, 5, :2] - track.keypoints[30, 5, :2]).max() < 30
    for method in ("savgol", "butterworth", "one_euro"):
        out = smooth(track, method, 7, 30.0)
        assert np.abs(out.keypoints[..., :2] - track.keypoints[..., :2]).mean() < 5.0, method
    with pytest.raises(ValueError):
        smooth(track, "kalman", 7, 30.0)


def test_resample_halves_and_cut_clips():
    track = pixel_track(4, 91)
    half = resample(track, 60.0, 30.0)
    assert len(half) == 46
    np.testing.assert_allclose(half.keypoints[1], track.keypoints[2], atol=1e-4)
    clips = cut_clips(track, 20, 40)
    assert [len(c) for c in clips] == [40, 40] and clips[1].start_frame == 40  # 11-frame remainder dropped


def test_crowd_scene_is_dropped_and_lone_tracks_kept():
    crowd = [pixel_track(i, 40, "arm_swing", offset=(640.0 + 5 * i, 360.0), track_id=i) for i in range(8)]
    loner = pixel_track(9, 40, offset=(100.0, 100.0), track_id=99, scale=60)
    mask = crowd_mask([*crowd, loner], max_overlapping=4)
    assert mask[:8].all() and not mask[8]


def test_process_tracks_counts_drops_and_handles_nans():
    walk = pixel_track(5, 90)
    static = pixel_track(6, 90, track_id=2, offset=(100.0, 100.0), scale=80)
    static.keypoints[:] = static.keypoints[:1]  # frozen person
    dim = pixel_track(7, 90, track_id=3, offset=(1200.0, 360.0), scale=80)
    dim.keypoints[..., 2] = 0.1
    short = pixel_track(8, 10, track_id=4, offset=(1200.0, 100.0), scale=80)
    nan_track = pixel_track(9, 90, track_id=5, offset=(300.0, 600.0), scale=80)
    nan_track.keypoints[:, 0, :] = np.nan  # a joint the backend never predicted
    cloth = pixel_track(10, 90, track_id=6, offset=(900.0, 500.0), scale=60)  # a small skeleton in a large box
    centre = cloth.boxes.reshape(-1, 2, 2).mean(1)
    cloth.boxes = np.concatenate([centre - 200, centre + 200], -1)  # what the pose model "found" on a detected object
    assert pose_fill(walk, COCO17, 0.3) > 0.7 and pose_fill(cloth, COCO17, 0.3) < 0.35
    lying = pixel_track(11, 90)  # a person lying down fills the box's width: plausible
    lying.keypoints[..., :2] = lying.keypoints[..., ::-1][..., 1:3]
    lying.boxes = lying.boxes[:, [1, 0, 3, 2]]
    assert pose_fill(lying, COCO17, 0.3) > 0.7
    result = process_tracks([walk, static, dim, short, nan_track, cloth], COCO17, CFG, 30.0, 30.0)
    assert result.dropped["static"] >= 1 and result.dropped["low_confidence"] >= 1 and result.dropped["too_short"] == 1
    assert result.dropped["implausible_pose"] == 1
    assert process_tracks([cloth], COCO17, CFG.model_copy(update={"min_pose_fill": 0.0}), 30.0, 30.0).clips  # off
    assert len(result.clips) == 4  # walk and nan_track, two 40-frame clips each
    for clip in result.clips:
        assert np.isfinite(clip).all() and clip.shape[1:] == (17, 3)
    assert (result.clips[-1][:, 0, 2] == 0).all()  # the never-seen joint is masked, not invented
    # ...and what the models are fed there stays on the body (the head's place), not the clip's mean root (0, 0)
    clip = result.clips[-1]
    np.testing.assert_allclose(clip[:, 0, :2], clip[:, 1:, :2].mean(1), atol=1e-5)  # the seen joints' centre


def test_unseen_joints_are_placed_near_the_body_with_their_usual_offset():
    rng = np.random.default_rng(0)
    pose = rng.normal(size=(1, 5, 2))
    path = np.linspace([0.0, 0.0], [4.0, 1.0], 30)[:, None]  # a body that moves 4 units
    xy = pose + path
    holed = xy.copy()
    holed[10:20, 2] = np.nan  # joint 2 unseen for 10 frames
    holed[:, 4] = np.nan  # joint 4 never seen
    holed[25] = np.nan  # a frame that sees nobody
    placed = place_unseen_joints(holed)
    assert np.isfinite(placed).all()
    np.testing.assert_allclose(placed[10:20, 2], xy[10:20, 2], atol=0.6)  # near where it really was
    np.testing.assert_array_equal(placed[:10, :4], xy[:10, :4])  # seen joints untouched
    centroid = xy[:, :4].mean(1)
    frames = np.r_[0:10, 20:25]  # frames that see joints 0-3 (their centroid is the body's centre)
    np.testing.assert_allclose(placed[frames, 4], centroid[frames], atol=1e-6)  # never seen: the body's centre
    assert np.abs(placed[25] - xy[25]).max() < 2.0  # interpolated frame stays with the body
    assert (place_unseen_joints(np.full((3, 2, 2), np.nan)) == 0).all()


def test_root_centring_per_frame_is_the_official_layout():
    walk = pixel_track(5, 90)
    frame_cfg = ProcessConfig(**{**CFG.model_dump(), "root_centring": "frame"})
    per_clip = process_tracks([walk], COCO17, CFG, 30.0, 30.0).clips[0]
    per_frame = process_tracks([walk], COCO17, frame_cfg, 30.0, 30.0).clips[0]
    root = list(COCO17.root)
    np.testing.assert_allclose(per_frame[:, root, :2].mean(1), 0.0, atol=1e-5)  # hip at (0, 0) in every frame
    assert np.abs(per_clip[:, root, :2].mean(1)).max() > 0.1  # the default keeps the trajectory
    np.testing.assert_allclose(per_frame[..., :2], per_clip[..., :2] - per_clip[:, root, :2].mean(1, keepdims=True),
                               atol=1e-5)  # fmt: skip


def test_mirrored_clips_and_split_by_video():
    tracks = [pixel_track(i, 60, video=f"vid{i}", track_id=1) for i in range(6)]
    processed = process_tracks(tracks, COCO17, CFG, 30.0, 30.0)
    clips, index = finalize(processed, COCO17, ProcessConfig(**{**CFG.model_dump(), "test_fraction": 0.34}))
    by_video = index.groupby("video_id")["split"].nunique()
    assert (by_video == 1).all()  # no video in both splits
    assert set(index["split"]) == {"train", "test"}
    assert not index.loc[index["split"] == "test", "mirrored"].any()
    original = index[(index["split"] == "train") & ~index["mirrored"]].index[0]
    twin = index[(index["mirrored"]) & (index["start_frame"] == index.at[original, "start_frame"])
                 & (index["video_id"] == index.at[original, "video_id"])].index[0]  # fmt: skip
    np.testing.assert_array_equal(mirror(clips[twin], COCO17), clips[original])
    assert split_by_video(["a", "b", "c"], 0.34, 1) == split_by_video(["c", "b", "a"], 0.34, 1)


def _write_video_poses(ws, video_id, tracks, fps=30.0, skeleton=COCO17, joints=None):
    names = skeleton.joints if joints is None else joints
    frame = pd.concat([poses_frame(video_id, t.frames, np.full(len(t), t.track_id), t.boxes, t.keypoints,
                                   names) for t in tracks])  # fmt: skip
    path = write_poses(ws, video_id, frame, {"skeleton": skeleton.name, "fps": fps})
    Catalog(ws).mark_done("poses", video_id, key=f"k-{video_id}", outputs=[path])


def test_build_dataset_end_to_end_and_mas_layout(tmp_path):
    ws = Workspace(tmp_path / "ws")
    for v in range(4):
        _write_video_poses(ws, f"video{v}", [pixel_track(10 + v, 100, video=f"video{v}"),
                                              pixel_track(20 + v, 80, video=f"video{v}", track_id=2,
                                                          offset=(150.0, 150.0), scale=100)])  # fmt: skip
    frame, meta = read_poses(ws, "video0")
    assert meta["skeleton"] == "coco17" and len(frame) == 180
    config = DatasetConfig(name="toy", skeleton="coco17", fps=30, sources=[{"kind": "local", "value": "x"}],
                           process=ProcessConfig(**{**CFG.model_dump(), "test_fraction": 0.25}))  # fmt: skip
    result = build_dataset(ws, config)
    assert result.num_clips > 8 and not result.skipped
    names = {p.rsplit("/", 1)[1] for p in result.paths}
    assert {"clips.npy", "index.parquet", "card.md", "card.json", "preview.png", "confidence.png"} <= names
    again = build_dataset(ws, config)
    assert again.skipped
    dataset = open_motion_dataset(ws, "toy")
    assert dataset.num_joints == 17 and dataset.mean.shape == (17, 2)
    assert set(dataset.index["split"]) == {"train", "test"}
    out = export_mas_layout(dataset, str(tmp_path / "mas"))
    import_mas_layout(ws, "toy-imported", out, "coco17", 30.0, 0.3)
    imported = open_motion_dataset(ws, "toy-imported")
    assert len(imported.index) == len(dataset.index)
    np.testing.assert_allclose(np.sort(imported.clips[..., 0].ravel()), np.sort(dataset.clips[..., 0].ravel()))
    _check_official_layout_both_ways(ws, dataset, tmp_path)
    with pytest.raises(ValueError, match="no finished poses"):
        build_dataset(ws, config, video_ids=["nope"])


def test_skeleton_mismatch_videos_are_counted(tmp_path):
    ws = Workspace(tmp_path / "ws")
    _write_video_poses(ws, "good", [pixel_track(1, 90, video="good")])
    nba = pixel_track(2, 90, video="bad")
    nba.keypoints = nba.keypoints[:, :16]
    _write_video_poses(ws, "bad", [nba], skeleton=NBA16)
    config = DatasetConfig(name="mixed", skeleton="coco17", fps=30, sources=[{"kind": "local", "value": "x"}],
                           process=CFG)  # fmt: skip
    result = build_dataset(ws, config)
    assert result.dropped["skeleton_mismatch_videos"] == 1 and result.num_clips >= 2


def test_edge_nan_all_nan_and_single_frame_tracks_never_fail():
    """Pose models miss people: NaN frames at a track's ends, tracks never seen, one-frame tracks. The stage trims,
    drops and counts; no numerical library error reaches the user (was: LAPACK 'illegal value' from the smoother)."""
    edges = pixel_track(11, 90, track_id=1)
    edges.keypoints[:7] = np.nan  # the pose model found nobody in the first and last frames
    edges.keypoints[-5:] = np.nan
    edges.keypoints[:7, :, 2] = edges.keypoints[-5:, :, 2] = 0.0
    never = pixel_track(12, 60, track_id=2, offset=(200.0, 600.0), scale=80)
    never.keypoints[:] = np.nan
    single = pixel_track(13, 1, track_id=3, offset=(1100.0, 200.0), scale=80)
    holes = pixel_track(14, 90, track_id=4, offset=(1100.0, 600.0), scale=80)
    holes.keypoints[30:33, :, :2] = np.nan  # a short hole inside: every joint non-finite somewhere
    holes.keypoints[30:33, :, 2] = 0.0
    for smoothing in ("savgol", "butterworth", "one_euro"):
        cfg = CFG.model_copy(update={"smoothing": smoothing})
        result = process_tracks([edges, never, single, holes], COCO17, cfg, 30.0, 30.0)
        assert result.dropped["never_seen"] == 1 and result.dropped["too_short"] >= 1, result.dropped
        trimmed = result.index[result.index["track_id"] == 1]
        assert list(trimmed["start_frame"]) == [7, 47]  # 78 seen frames from frame 7: clips of 40 and 38
        assert (result.index["track_id"] == 4).sum() == 2
        for clip in result.clips:
            assert np.isfinite(clip).all()
    noisy = holes.keypoints.copy()
    noisy[..., :2] += np.random.default_rng(0).normal(0, 3.0, noisy[..., :2].shape)
    smoothed = smooth(Track("v0", 4, holes.frames, holes.boxes, noisy), "savgol", 9, 30.0).keypoints
    assert np.isnan(smoothed[30:33, :, :2]).all()  # holes stay holes (masked); the runs around them are smoothed
    for run in (slice(0, 30), slice(33, 90)):
        error_before = np.abs(noisy[run, :, :2] - holes.keypoints[run, :, :2]).mean()
        assert np.abs(smoothed[run, :, :2] - holes.keypoints[run, :, :2]).mean() < 0.7 * error_before


def test_a_failing_video_is_named_and_skipped(tmp_path):
    ws = Workspace(tmp_path / "ws")
    _write_video_poses(ws, "good", [pixel_track(1, 90, video="good")])
    wrong = pixel_track(2, 90, video="broken")
    wrong.keypoints = wrong.keypoints[:, :16]  # 16 joints inside a file that says coco17
    _write_video_poses(ws, "broken", [wrong], skeleton=COCO17, joints=NBA16.joints)  # a file that lies
    config = DatasetConfig(name="some-bad", skeleton="coco17", fps=30, sources=[{"kind": "local", "value": "x"}],
                           process=CFG)  # fmt: skip
    result = build_dataset(ws, config)
    assert result.dropped["failed_videos"] == 1 and result.num_clips >= 2
    card = ws.read_text(f"{ws.dataset_dir('some-bad')}/card.md")
    assert "failed video `broken` (skipped)" in card
    assert "broken" in Catalog(ws).get("dataset", "some-bad").meta["failed_videos"]


def _official_loader(mas_dir, fps=30, og_fps=60, threshold=0.3):
    """What the official code's NBADataset (data_loaders/base_dataset.py, nba/dataset.py) makes of a layout:
    ``motion[::og_fps // fps]``, ``(xy - Mean) / Std``, mask ``conf >= threshold``; by file name."""
    import os

    mean, std = np.load(os.path.join(mas_dir, "Mean.npy")), np.load(os.path.join(mas_dir, "Std.npy"))
    out = {}
    for f in os.listdir(os.path.join(mas_dir, "motions")):
        motion = np.load(os.path.join(mas_dir, "motions", f))[:: og_fps // fps]
        out[f.split(".")[0]] = ((motion[..., :2] - mean) / std, motion[..., [2]] >= threshold)
    return out, mean, std


def _check_official_layout_both_ways(ws, dataset, tmp_path):
    root = list(COCO17.root)
    # ours -> the official loader (60 fps files, official units, hip at (0, 0) in every frame) -> the same numbers
    out = export_mas_layout(dataset, str(tmp_path / "official"), fps=60, scale="official", root_centring="frame")
    scale = OFFICIAL_NBA_MEAN_POSE_HEIGHT / pose_height(dataset.mean)
    loaded, mean, std = _official_loader(out)
    assert len(loaded) == len(dataset.index)
    for row in range(len(dataset.index)):
        clip = np.array(dataset.clip(row))
        z, mask = loaded[str(dataset.index["clip_id"].iat[row])]
        xy = z * std + mean
        expected = (clip[..., :2] - clip[:, root, :2].mean(1, keepdims=True)) * scale
        np.testing.assert_allclose(xy, expected, atol=1e-5)  # every frame back, no interpolated one
        np.testing.assert_array_equal(mask[..., 0], clip[..., 2] >= 0.3)
    raw = np.load(f"{out}/motions/{dataset.index['clip_id'].iat[0]}.npy")
    assert len(raw) == 2 * len(dataset.clip(0)) - 1  # 60 fps in the file
    np.testing.assert_allclose(mean[root].mean(0), 0.0, atol=1e-6)  # the official Mean.npy has the hip at (0, 0)
    # and back: our own export converts back exactly (per-frame centred now)
    import_mas_layout(ws, "toy-back", out, "coco17", 30.0, 0.3)
    back = open_motion_dataset(ws, "toy-back")
    assert back.meta["root_centring"] == "frame"
    first = np.array(dataset.clip(0))
    row = int(np.flatnonzero(back.index["clip_id"] == dataset.index["clip_id"].iat[0])[0])
    np.testing.assert_allclose(back.clip(row)[..., :2], first[..., :2] - first[:, root, :2].mean(1, keepdims=True),
                               atol=1e-5)  # fmt: skip
    # foreign official-style files (no mas_layout.json): 60 fps kept every second frame, normalised to our units
    (tmp_path / "official" / "mas_layout.json").unlink()
    import_mas_layout(ws, "toy-foreign", out, "coco17", 30.0, 0.3, file_fps=60)
    foreign = open_motion_dataset(ws, "toy-foreign")
    clip = foreign.clip(row)
    assert len(clip) == len(first) and foreign.meta["root_centring"] == "frame"
    ratio = np.ptp(clip[..., 1]) / np.ptp(first[..., 1] - first[:, root, 1].mean(1, keepdims=True))
    assert 0.8 < ratio < 1.25  # our body-size units again (not 3.9x larger)
    with pytest.raises(ValueError, match="whole multiple"):
        export_mas_layout(dataset, str(tmp_path / "bad"), fps=45)


def test_mas_layout_commands(synthetic_ws, tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    runner = CliRunner()
    ws = str(synthetic_ws.root)
    out = tmp_path / "official"
    done = runner.invoke(app, ["export-mas", "synth", str(out), "-w", ws, "--fps", "60", "--scale", "official",
                               "--root-centring", "frame"])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "written to" in done.output and len(list((out / "motions").glob("*.npy"))) == 64
    back = runner.invoke(app, ["import-mas", str(out), "--name", "synth-back", "--skeleton", "coco17", "-w", ws])
    assert back.exit_code == 0, back.output
    assert open_motion_dataset(synthetic_ws, "synth-back").meta["root_centring"] == "frame"
    bad = runner.invoke(app, ["export-mas", "synth", str(tmp_path / "x"), "-w", ws, "--fps", "45"])
    assert bad.exit_code == 2 and "whole multiple" in bad.output
    wrong = runner.invoke(app, ["import-mas", str(out), "--name", "w", "--skeleton", "nba16", "-w", ws])
    assert wrong.exit_code == 2 and "17 joints" in wrong.output and "nba16" in wrong.output


def test_a_truncated_poses_file_marked_done_is_named_before_any_work(tmp_path):
    import os

    ws = Workspace(tmp_path / "ws")
    _write_video_poses(ws, "good", [pixel_track(1, 90, video="good")])
    _write_video_poses(ws, "cut", [pixel_track(2, 90, video="cut")])
    path = ws.poses_path("cut")
    with open(path, "r+b") as handle:  # a kill or a full disk of another tool, after the record said done
        handle.truncate(os.path.getsize(path) // 3)
    config = DatasetConfig(name="d", skeleton="coco17", fps=30, sources=[{"kind": "local", "value": "x"}],
                           process=CFG)  # fmt: skip
    with pytest.raises(ValueError, match=rf"poses of 1 video\(s\) are damaged: {path} has \d+ bytes.*rerun `mas pose`"):
        build_dataset(ws, config)
    assert Catalog(ws).get("dataset", "d") is None  # nothing started
    with pytest.raises(ValueError, match=rf"{path} is not a readable Parquet file.*rerun the stage"):
        read_poses(ws, "cut")
