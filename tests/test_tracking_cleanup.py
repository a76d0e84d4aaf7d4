"""Tracking cleanup on real footage (the Sports2D clip, the real offline detector): NMS, duplicates, stitching."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.assets import PERSON_DETECTOR_CLASSES
from pipeline.config import DetectorConfig, Source, TrackCleanupConfig
from pipeline.detect_track import load_yolo, run_tracker, use_agnostic_nms
from pipeline.download import ingest_file
from pipeline.track_cleanup import box_overlap, clean_tracks, fill_holes, merge_duplicates, stitch_tracklets
from storage import Catalog, Workspace

OFF = TrackCleanupConfig(duplicate_iou=None, stitch_max_gap=0, static_max_motion=None, weak_max_motion=None)


def _window(tmp_path_factory, clip, start, end):
    ws = Workspace(tmp_path_factory.mktemp("cleanup-ws"))  # one per window: a workspace keeps one copy of a source
    video = ingest_file(ws, Path(clip), Source(kind="local", value="demo", start=start, end=end), f"demo {start}-{end}")
    assert video.status == "done", video.error
    record = Catalog(ws).get("video", video.video_id)
    return str(ws.absolute(record.outputs[0])), video.meta["fps"]


def _run(path, person_detector, agnostic, imgsz):
    # every frame detected: the raw tracker output these tests clean up (at stride 2 the walking window's raw
    # output already has just its two tracks)
    cfg = DetectorConfig(weights=str(person_detector), class_names=PERSON_DETECTOR_CLASSES, agnostic_nms=agnostic,
                         imgsz=imgsz, stride=1)  # fmt: skip
    return run_tracker(load_yolo(cfg.weights), path, cfg, "demo", progress=False)


@pytest.fixture(scope="module")
def rolling(tmp_path_factory, demo_clip, person_detector):
    """6.5-7.5 s of the Sports2D clip: the jumper lands and rolls; the detector calls him Normal and Fall at once."""
    path, fps = _window(tmp_path_factory, demo_clip, 6.5, 7.5)
    return _run(path, person_detector, False, 640), _run(path, person_detector, None, 640), fps


@pytest.fixture(scope="module")
def walking(tmp_path_factory, demo_clip, person_detector):
    """3.5-5 s of the Sports2D clip: one person on the roof, one walking below (class-agnostic NMS, auto)."""
    path, fps = _window(tmp_path_factory, demo_clip, 3.5, 5.0)
    table, hists = _run(path, person_detector, None, 480)
    return table, hists, fps


def _overlapping_pairs(table, iou=0.6):
    """Frames x pairs of distinct tracks whose boxes overlap (IoU >= iou): one subject followed twice."""
    pairs = table.merge(table, on="frame", suffixes=("_a", "_b"))
    pairs = pairs[pairs["track_id_a"] < pairs["track_id_b"]]
    overlap = box_overlap(
        pairs[["x1_a", "y1_a", "x2_a", "y2_a"]].to_numpy(), pairs[["x1_b", "y1_b", "x2_b", "y2_b"]].to_numpy()
    )
    return int((overlap[0] >= iou).sum())


def test_agnostic_nms_when_two_classes_map_to_one_target():
    assert use_agnostic_nms({0: "person", 1: "person"}, None)
    assert not use_agnostic_nms({0: "person", 17: "horse", 32: "sports ball"}, None)
    assert not use_agnostic_nms({0: "person", 1: "person"}, False)


def test_one_rolling_person_is_one_track_not_two(rolling):
    (per_class, per_class_hists), (agnostic, agnostic_hists), fps = rolling
    assert _overlapping_pairs(per_class) > 0  # the old behaviour: his Normal and Fall boxes are tracked as two people
    old, _ = clean_tracks(per_class, OFF, fps, per_class_hists)
    assert _overlapping_pairs(old) > 0
    for table, hists in ((per_class, per_class_hists), (agnostic, agnostic_hists)):
        cleaned, report = clean_tracks(table, TrackCleanupConfig(), fps, hists)
        assert _overlapping_pairs(cleaned) == 0, report


def test_two_people_two_tracks_on_real_footage(walking):
    table, hists, fps = walking
    cleaned, report = clean_tracks(table, TrackCleanupConfig(), fps, hists)
    lengths = cleaned.groupby("track_id").size()
    assert len(lengths) == 2 and (lengths >= 0.7 * cleaned["frame"].nunique()).all(), (lengths.to_dict(), report)
    assert report.tracks == 2 and report.raw_tracks > 2 and _overlapping_pairs(cleaned) == 0  # raw: pieces, copies
    assert len(clean_tracks(table, OFF, fps, hists)[0].groupby("track_id")) > 2  # the old behaviour


def test_duplicate_track_of_one_person_is_merged(walking):
    table, _, _ = walking
    longest = table.groupby("track_id").size().idxmax()
    copy = table[table["track_id"] == longest].iloc[::2].copy()  # a second, shorter track on the same person
    copy["track_id"] = 999
    copy[["x1", "x2"]] += 4.0
    merged, n_merged, dropped = merge_duplicates(pd.concat([table, copy]), TrackCleanupConfig())
    assert n_merged >= 1 and dropped >= len(copy) and 999 not in set(merged["track_id"])
    assert merged.groupby(["track_id", "frame"]).size().max() == 1
    assert merge_duplicates(pd.concat([table, copy]), OFF)[1] == 0


def test_stitching_rejoins_a_real_track_cut_in_the_middle(walking):
    table, hists, _ = walking
    longest = table.groupby("track_id").size().idxmax()
    mine = (table["track_id"] == longest).to_numpy()
    frames = np.sort(table.loc[mine, "frame"].unique())
    cut = frames[len(frames) // 2]
    gap = mine & table["frame"].between(cut, cut + 7).to_numpy()  # 8 frames of the track lost
    broken = table.copy()
    broken.loc[mine & (table["frame"] > cut + 7).to_numpy(), "track_id"] = 777
    broken, broken_hists = broken[~gap], hists[~gap]
    whole, links = stitch_tracklets(table[~gap], hists[~gap], TrackCleanupConfig())
    stitched, broken_links = stitch_tracklets(broken, broken_hists, TrackCleanupConfig())
    assert broken_links == links + 1 and 777 not in set(stitched["track_id"])
    np.testing.assert_array_equal(stitched["track_id"].to_numpy(), whole["track_id"].to_numpy())  # same ids as uncut
    assert stitched["track_id"].nunique() >= 2  # the other person's track is never glued on: it overlaps in time
    unstitched, none = stitch_tracklets(broken, broken_hists, OFF)
    assert none == 0 and 777 in set(unstitched["track_id"])


def test_a_still_box_is_rejected_and_counted(walking):
    table, hists, fps = walking
    still = table[table["track_id"] == table.groupby("track_id").size().idxmax()].copy()  # 1.5 s long
    first = still[["x1", "y1", "x2", "y2"]].iloc[0].to_numpy() + [900.0, 0.0, 900.0, 0.0]  # where nobody is
    jitter = np.random.default_rng(0).normal(0, 2.0, (len(still), 4))  # detector jitter of a few pixels
    still[["x1", "y1", "x2", "y2"]] = first + jitter
    still["track_id"] = 555
    unsure = still.assign(track_id=556, score=0.3)  # moves a little more, and the detector is unsure of it
    unsure[["x1", "x2"]] += np.linspace(0, 0.07, len(unsure))[:, None] * (still["y2"] - still["y1"]).to_numpy()[:, None]
    unsure[["y1", "y2"]] += 300.0
    cleaned, report = clean_tracks(pd.concat([table, still, unsure]), TrackCleanupConfig(), fps)
    assert {555, 556}.isdisjoint(cleaned["track_id"]) and report.rejected == {"static": 1, "still_low_score": 1}
    assert cleaned["track_id"].nunique() == 2  # both real people move and stay
    kept, _ = clean_tracks(pd.concat([table, still, unsure]), OFF, fps)
    assert {555, 556} <= set(kept["track_id"])


def test_a_subject_handed_to_another_id_and_back_is_one_track(walking):
    table, hists, fps = walking
    walker = table.groupby("track_id").size().idxmax()
    mine = (table["track_id"] == walker).to_numpy()
    frames = np.sort(table.loc[mine, "frame"].unique())
    middle = frames[len(frames) // 3 : len(frames) // 3 + 12]  # the tracker lost the walker and followed a new id
    switched = table.copy()
    switched.loc[mine & table["frame"].isin(middle).to_numpy(), "track_id"] = 888
    stray = switched[mine & (table["frame"] == frames[-3]).to_numpy()].assign(track_id=888)  # and a stray box later
    switched = pd.concat([switched, stray], ignore_index=True)
    switched_hists = np.concatenate([hists, hists[mine & (table["frame"] == frames[-3]).to_numpy()]])
    cleaned, report = clean_tracks(switched, TrackCleanupConfig(), fps, switched_hists)
    assert report.tracks_split >= 1 and 888 not in set(cleaned["track_id"]), report
    assert set(cleaned.loc[cleaned["frame"].isin(frames), "track_id"]) >= {walker}
    assert cleaned.groupby("track_id").size()[walker] == len(frames)  # every frame of the walker under one id
    unsplit, unsplit_report = clean_tracks(switched, TrackCleanupConfig(split_max_missing=1000), fps, switched_hists)
    # without the cut, stitching cannot rejoin tracks that overlap in time, but the tracklet fills the walker's hole
    assert 888 not in set(unsplit["track_id"]) and unsplit_report.holes_filled == 1, unsplit_report


def test_a_tracklet_filling_another_tracks_hole_is_that_track(walking):
    """The tracker hands the walker to another id for 3 frames (measured on Pose2Sim's SinglePerson cam04 at detector
    stride 2), with a second box in the frame before: the walker's track has a hole there that the tracklet fills.
    Duplicates (1 shared frame of 4) and stitching (the walker runs on both sides) leave it; filling the hole joins
    it. Moved 2 box heights off the walker's path (someone else), it stays apart."""
    table, hists, fps = walking
    walker = table.groupby("track_id").size().idxmax()
    mine = (table["track_id"] == walker).to_numpy()
    frames = np.sort(table.loc[mine, "frame"].unique())
    shared, hole = frames[len(frames) // 2], frames[len(frames) // 2 + 1 : len(frames) // 2 + 4]
    handed = table.copy()
    handed.loc[mine & table["frame"].isin(hole).to_numpy(), "track_id"] = 999
    second = table[mine & (table["frame"] == shared).to_numpy()].assign(track_id=999, score=0.3)
    second[["y2"]] += 40.0  # a taller second box on the walker, as the detector gave there
    handed = pd.concat([handed, second], ignore_index=True)
    handed_hists = np.concatenate([hists, hists[mine & (table["frame"] == shared).to_numpy()]])

    cleaned, report = clean_tracks(handed, TrackCleanupConfig(), fps, handed_hists)
    assert report.holes_filled == 1 and 999 not in set(cleaned["track_id"]), report
    walker_rows = cleaned[cleaned["track_id"] == walker]
    assert len(walker_rows) == walker_rows["frame"].nunique() == len(frames)  # every frame once, under one id
    own = table[mine & (table["frame"] == shared).to_numpy()][["x1", "y1", "x2", "y2"]].to_numpy()
    np.testing.assert_array_equal(walker_rows[walker_rows["frame"] == shared][["x1", "y1", "x2", "y2"]], own)
    assert cleaned["track_id"].nunique() == 2  # the other person is never given to the walker

    _, not_filled = fill_holes(handed, TrackCleanupConfig(stitch_max_gap=0))
    assert not_filled == 0
    elsewhere = handed.copy()
    height = (elsewhere["y2"] - elsewhere["y1"]).to_numpy()
    moved = (elsewhere["track_id"] == 999).to_numpy()
    elsewhere.loc[moved, ["x1", "x2"]] += 2 * height[moved, None]
    kept, kept_report = clean_tracks(elsewhere, TrackCleanupConfig(), fps, handed_hists)
    assert kept_report.holes_filled == 0 and 999 in set(kept["track_id"])
