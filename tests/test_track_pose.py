"""Detection, tracking and pose on real footage with real offline weights, plus config-built models for the rest."""

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.assets import PERSON_DETECTOR_CLASSES
from pipeline.config import DetectorConfig, PoseConfig, Source
from pipeline.detect_track import WeightsError, load_yolo, resolve_class_ids, track_video
from pipeline.download import ingest_file
from pipeline.overlay import write_overlay
from pipeline.pose import MediaPipeBackend, VitPoseBackend, YoloPoseBackend, crop_square, nearest_ball, pose_video
from pipeline.skeletons import COCO17
from storage import Catalog, Workspace
from storage.tables import keypoints_of, read_poses, read_tracks
from tests.test_download import make_video


@pytest.fixture(scope="module")
def tracked_demo(tmp_path_factory, demo_clip, person_detector):
    ws = Workspace(tmp_path_factory.mktemp("demo-ws"))
    video = ingest_file(ws, Path(demo_clip), Source(kind="local", value="demo", end=4.0), "sports2d demo")
    assert video.status == "done" and video.meta["frames"] == 120
    cfg = DetectorConfig(weights=str(person_detector), classes=["person"], class_names=PERSON_DETECTOR_CLASSES,
                         batch=8)  # fmt: skip
    result = track_video(ws, video.video_id, cfg, progress=False)
    assert result.status == "done", result.error
    return ws, video.video_id, cfg


def test_two_persistent_tracks_on_real_footage(tracked_demo):
    ws, video_id, cfg = tracked_demo
    tracks, meta = read_tracks(ws, video_id)
    assert meta["fps"] == 30.0 and meta["frames"] == 120
    lengths = tracks.groupby("track_id").size().sort_values(ascending=False)
    assert len(lengths) == 2 and (lengths >= 60).all(), lengths.to_dict()  # two people, tracked for >2 s, no copies
    cleanup = Catalog(ws).get("tracks", video_id).meta["cleanup"]  # what the cleanup did, counted by reason
    assert cleanup["tracks"] == 2 and cleanup == meta["cleanup"] and isinstance(cleanup["rejected"], dict)
    assert track_video(ws, video_id, cfg, progress=False).status == "skipped"  # finished work is not redone


def test_mediapipe_keypoints_lie_inside_their_boxes(tracked_demo, monkeypatch):
    import pipeline.pose

    ws, video_id, _ = tracked_demo
    made = []  # the backend pose_video makes is closed by it (graphs, lane threads); one given to it is not
    make_backend = pipeline.pose.make_backend
    monkeypatch.setattr(pipeline.pose, "make_backend", lambda *args: made.append(make_backend(*args)) or made[0])
    result = pose_video(ws, video_id, PoseConfig(backend="mediapipe"), "coco17", progress=False)
    assert result.status == "done", result.error
    assert made[0]._pose._graph is None and made[0]._lanes == [] and made[0].open_graphs == 0
    given = MediaPipeBackend()
    assert pose_video(ws, video_id, PoseConfig(backend="mediapipe"), "coco17", backend=given, force=True,
                      progress=False).status == "done"  # fmt: skip
    assert given._pose._graph is not None
    given.close()
    poses, meta = read_poses(ws, video_id)
    assert meta["skeleton"] == "coco17" and meta["backend"] == "mediapipe"
    main_tracks = poses["track_id"].value_counts().index[:2]
    for track_id in main_tracks:
        rows = poses[poses["track_id"] == track_id]
        kp = keypoints_of(rows, COCO17.joints)
        box = rows[["x1", "y1", "x2", "y2"]].to_numpy()
        confident = kp[..., 2] > 0.5
        assert confident.mean() > 0.6
        margin = 0.1 * (box[:, 2:] - box[:, :2]).max(1, keepdims=True)
        inside = ((kp[..., 0] >= box[:, :1] - margin) & (kp[..., 0] <= box[:, 2:3] + margin)
                  & (kp[..., 1] >= box[:, 1:2] - margin) & (kp[..., 1] <= box[:, 3:4] + margin))  # fmt: skip
        per_frame = (inside | ~confident).all(1)
        assert per_frame.mean() > 0.9, (track_id, per_frame.mean())
    mp4, png = write_overlay(ws, video_id)
    capture = cv2.VideoCapture(mp4)
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 120
    assert cv2.imread(png) is not None


def test_video_without_people_and_corrupt_video_leave_others_intact(tracked_demo, tmp_path, person_detector):
    ws, demo_id, cfg = tracked_demo
    before = ws.read_bytes(ws.tracks_path(demo_id))
    empty_scene = ingest_file(ws, make_video(tmp_path / "nobody.mp4", frames=20), Source(kind="local", value="x"), "x")
    result = track_video(ws, empty_scene.video_id, cfg, progress=False)
    assert result.status == "done" and result.tracks == 0
    posed = pose_video(ws, empty_scene.video_id, PoseConfig(backend="mediapipe"), "coco17", progress=False)
    assert posed.status == "done" and posed.rows == 0
    corrupt = tmp_path / "broken.mp4"
    corrupt.write_bytes(b"not a video at all" * 100)
    bad = ingest_file(ws, corrupt, Source(kind="local", value="x"), "broken")
    assert bad.status == "failed" and ("OpenCV cannot open" in bad.error or "no decodable" in bad.error)
    with pytest.raises(ValueError, match="run `mas download`"):
        track_video(ws, bad.video_id, cfg, progress=False)
    assert ws.read_bytes(ws.tracks_path(demo_id)) == before
    assert Catalog(ws).is_done("tracks", demo_id)


def test_missing_weights_name_the_file_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsError, match="does-not-exist.pt"):
        load_yolo("does-not-exist.pt")
    with pytest.raises(ValueError, match="class_names"):
        resolve_class_ids({0: "Normal", 1: "Fall"}, ["person"], None)
    assert resolve_class_ids({0: "Normal", 1: "Fall"}, ["person"], PERSON_DETECTOR_CLASSES) == {0: "person",
                                                                                               1: "person"}  # fmt: skip


def test_yolo_pose_backend_shapes_with_a_config_built_model():
    from ultralytics import YOLO

    backend = YoloPoseBackend(model=YOLO("yolo11n-pose.yaml"), imgsz=128)
    image = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 100, 200], [150, 20, 300, 230]], np.float32)
    out = backend.estimate(image, boxes)
    assert out.shape == (2, 17, 3)
    assert backend.estimate(image, np.zeros((0, 4), np.float32)).shape == (0, 17, 3)


def test_vitpose_backend_with_a_config_built_model():
    import torch
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessor

    torch.manual_seed(0)  # random weights: an unseeded draw put a keypoint outside the bounds below once in a while
    backbone = VitPoseBackboneConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                     num_experts=6, part_features=8, out_indices=[1])  # fmt: skip
    model = VitPoseForPoseEstimation(VitPoseConfig(backbone_config=backbone, num_labels=17))
    backend = VitPoseBackend(model=model, processor=VitPoseImageProcessor(), dataset_index=5, skeleton="apt36k17",
                             device="cpu")  # fmt: skip
    image = np.zeros((240, 320, 3), np.uint8)
    boxes = np.array([[10, 10, 100, 200], [150, 20, 300, 230], [0, 0, 50, 50]], np.float32)
    out = backend.estimate(image, boxes)
    assert out.shape == (3, 17, 3) and np.isfinite(out).all()
    size = (boxes[:, 2:] - boxes[:, :2]).max(1)[:, None]  # ViTPose looks at the box widened to 3:4 and enlarged by 1.25
    assert ((out[..., 0] >= boxes[:, :1] - 0.5 * size) & (out[..., 0] <= boxes[:, 2:3] + 0.5 * size)).all()
    assert ((out[..., 1] >= boxes[:, 1:2] - 0.5 * size) & (out[..., 1] <= boxes[:, 3:4] + 0.5 * size)).all()
    # the model's own keypoint set must match; nba16 is made from its COCO-17 keypoints (tests/test_keypoint_maps.py)
    with pytest.raises(ValueError, match="predicts 17 keypoints but skeleton halpe26 has 26"):
        VitPoseBackend(model=model, processor=VitPoseImageProcessor(), skeleton="halpe26", device="cpu")
    with pytest.raises(WeightsError, match="could not load ViTPose weights"):
        VitPoseBackend(weights=str(Path("/nonexistent/vitpose")), device="cpu")


def test_crop_and_ball_helpers():
    image = np.arange(100 * 100 * 3, dtype=np.uint8).reshape(100, 100, 3)
    crop, origin, side = crop_square(image, np.array([90, 90, 110, 130]))
    assert crop.shape[0] == crop.shape[1] == int(round(side)) and (origin < 100).all()
    assert crop[-1, -1].sum() == 0  # outside the image: zero padding
    ball = nearest_ball(np.array([0, 0, 10, 10]), np.array([[100, 100, 110, 110, 0.9], [8, 8, 12, 12, 0.7]]))
    np.testing.assert_allclose(ball, [10, 10, 0.7])
    assert nearest_ball(np.array([0, 0, 1, 1]), np.zeros((0, 5)))[2] == 0.0


def test_boxes_by_frame_keeps_each_frames_rows_in_table_order():
    from pipeline.pose import boxes_by_frame

    table = pd.DataFrame({"frame": [3, 1, 3, 1, 7], "track_id": [5, 2, 6, 9, 1], "x1": [0.0, 1, 2, 3, 4],
                          "y1": 0.0, "x2": 10.0, "y2": 20.0})  # fmt: skip
    found = boxes_by_frame(table)
    assert list(found) == [1, 3, 7]
    for frame, group in table.groupby("frame"):
        boxes, track_ids = found[frame]
        np.testing.assert_array_equal(track_ids, group["track_id"].to_numpy())
        np.testing.assert_array_equal(boxes, group[["x1", "y1", "x2", "y2"]].to_numpy(np.float32))
        assert boxes.dtype == np.float32
    assert boxes_by_frame(table.iloc[:0]) == {}


def test_mediapipe_backend_on_a_blank_image_finds_nobody():
    backend = MediaPipeBackend()
    out = backend.estimate(np.zeros((200, 200, 3), np.uint8), np.array([[10, 10, 150, 190]], np.float32))
    assert out.shape == (1, 17, 3) and (out[..., 2] == 0).all() and np.isnan(out[..., :2]).all()


def test_blazepose_lite_and_heavy_from_the_npm_package_pose_the_real_demo_like_full(tracked_demo, tmp_path,
                                                                                    monkeypatch):  # fmt: skip
    """mediapipe's wheel ships only the full landmark model; lite and heavy come, checked by sha256, from the npm
    package and load offline. On the demo's real people they must find the same joints as full (a model that did
    not load, or a wrong file, would find nobody or be far off)."""
    from pipeline import assets
    from pipeline.pose import estimate_frames

    ws, video_id, _ = tracked_demo
    frames = _demo_frames(ws, video_id, 12)
    full = np.concatenate(list(estimate_frames(MediaPipeBackend(tracking=True), frames)))
    size = np.concatenate([(f.boxes[:, 2:] - f.boxes[:, :2]).max(1) for f in frames])[:, None]
    for model in ("lite", "heavy"):
        assert assets.blazepose_model(model).name == assets.BLAZEPOSE_MODELS[model]
        other = np.concatenate(list(estimate_frames(MediaPipeBackend(tracking=True, model=model), frames)))
        both = (full[..., 2] > 0.5) & (other[..., 2] > 0.5)
        assert both.mean() > 0.7, (model, both.mean())
        distance = (np.linalg.norm(full[..., :2] - other[..., :2], axis=-1) / size)[both]
        assert np.median(distance) < 0.03, (model, np.median(distance))
    # a tarball that is not the expected one is refused, naming the package and the fix
    monkeypatch.setenv("MAS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(assets.AssetError, match="sha256 differs.*npm pack @mediapipe/pose"):
        assets.npm_file(assets.BLAZEPOSE_NPM[0], assets.BLAZEPOSE_NPM[1], "0" * 64, "pose_landmark_heavy.tflite")
    assert not list((tmp_path / "cache").rglob("*.tflite"))  # nothing unchecked is kept


def test_cli_download_track_pose_on_one_second_of_footage(tmp_path, demo_clip, person_detector):
    import yaml
    from typer.testing import CliRunner

    from pipeline.cli import app

    config = {
        "name": "demo", "skeleton": "coco17", "fps": 30,
        "sources": [{"kind": "local", "value": str(demo_clip), "end": 1.0}],
        "detector": {"weights": str(person_detector), "classes": ["person"], "class_names": PERSON_DETECTOR_CLASSES},
        "pose": {"backend": "mediapipe"},
    }  # fmt: skip
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    ws = str(tmp_path / "ws")
    runner = CliRunner()
    for command in ("download", "track", "pose"):
        result = runner.invoke(app, [command, "-c", str(path), "-w", ws])
        assert result.exit_code == 0, (command, result.output)
        assert "done" in result.stdout
    status = runner.invoke(app, ["status", "-w", ws])
    assert status.stdout.count("done") >= 3
    assert list((tmp_path / "ws" / "overlays").glob("*.mp4"))


class _CentreBackend:
    """A deterministic pose backend for the ball-joint path: every joint at the box centre, confidence 0.9."""

    skeleton = COCO17

    def estimate(self, image, boxes):
        centre = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2, np.full(len(boxes), 0.9)],
                          1)  # fmt: skip
        return np.repeat(centre[:, None], 17, 1).astype(np.float32)


def test_gymnastics_ball_becomes_the_18th_joint(tmp_path):
    import pandas as pd

    from storage.tables import write_tracks

    ws = Workspace(tmp_path / "ws")
    video = ingest_file(ws, make_video(tmp_path / "gym.mp4", frames=6), Source(kind="local", value="x"), "gym")
    rows = []
    for f in range(6):
        rows.append((video.video_id, f, 1, "person", 0.9, 10.0, 10.0, 50.0, 100.0))
        if f != 3:  # the ball is missed in frame 3
            rows += [(video.video_id, f, -1, "sports ball", 0.8, 60.0, 20.0, 70.0, 30.0),
                     (video.video_id, f, -1, "sports ball", 0.6, 140.0, 100.0, 150.0, 110.0)]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["video_id", "frame", "track_id", "class", "score", "x1", "y1", "x2", "y2"])
    path = write_tracks(ws, video.video_id, frame, {"fps": 15.0, "width": 160, "height": 120, "frames": 6})
    Catalog(ws).mark_done("tracks", video.video_id, key="k", outputs=[path])
    result = pose_video(ws, video.video_id, PoseConfig(backend="mediapipe"), "coco17_ball", backend=_CentreBackend(),
                        progress=False)  # fmt: skip
    assert result.status == "done" and result.rows == 6
    poses, meta = read_poses(ws, video.video_id)
    assert meta["skeleton"] == "coco17_ball"
    ball = poses[["ball_x", "ball_y", "ball_c"]].to_numpy()
    np.testing.assert_allclose(ball[[0, 1, 2, 4, 5]], [[65.0, 25.0, 0.8]] * 5, rtol=1e-6)  # the nearer ball
    assert ball[3, 2] == 0.0 and np.isnan(ball[3, :2]).all()  # no ball seen: masked, not invented


def test_cli_poses_quick_path_on_one_second_of_footage(tmp_path, monkeypatch, demo_clip, person_detector):
    """`mas poses VIDEO`: no config, no workspace named: tracks, poses and overlay land in ./mas-workspace."""
    from typer.testing import CliRunner

    from pipeline.cli import app
    from storage.tables import read_poses as read_poses_table

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["poses", str(demo_clip), "--end", "1", "--offline"])
    assert result.exit_code == 0, result.output
    printed = dict(line.split(None, 1) for line in result.stdout.splitlines()[1:])
    assert set(printed) == {"video", "tracks", "poses", "overlay", "snapshot"}
    for path in printed.values():
        assert Path(path).is_file() and Path(path).is_relative_to(tmp_path / "mas-workspace"), path
    ws = Workspace(tmp_path / "mas-workspace")
    video_id = result.stdout.split(":")[0]
    poses, meta = read_poses_table(ws, video_id)
    assert meta["skeleton"] == "coco17" and poses["frame"].max() == 29 and len(poses) >= 30
    assert int(cv2.VideoCapture(printed["overlay"]).get(cv2.CAP_PROP_FRAME_COUNT)) == 30
    other_cut = runner.invoke(app, ["poses", str(demo_clip), "--end", "2", "--offline"])
    assert other_cut.exit_code == 2 and "another --workspace" in other_cut.output
    missing = runner.invoke(app, ["poses", str(tmp_path / "nope.mp4"), "--offline"])
    assert missing.exit_code == 2 and "not found" in missing.output


def test_tracking_keeps_the_process_torch_threads(tmp_path, person_detector):
    """Ultralytics sets torch to cpu_count - 1 threads (1 on 2 cores) when it picks the device; tracking must use
    and leave the process's own count, or training and sampling after it run on one thread."""
    import torch

    from pipeline.detect_track import run_tracker

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        clip = make_video(tmp_path / "clip.mp4", frames=6)
        model = load_yolo(str(person_detector))
        cfg = DetectorConfig(classes=["person"], class_names=PERSON_DETECTOR_CLASSES, imgsz=160)
        run_tracker(model, str(clip), cfg, "clip", progress=False, frames=6)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_truncated_tracks_and_poses_marked_done_are_computed_again(tmp_path, person_detector, caplog):
    import logging
    import os

    ws = Workspace(tmp_path / "ws")
    video = ingest_file(ws, make_video(tmp_path / "scene.mp4", frames=12), Source(kind="local", value="x"), "x")
    cfg = DetectorConfig(weights=str(person_detector), classes=["person"], class_names=PERSON_DETECTOR_CLASSES)
    pose_cfg = PoseConfig(backend="mediapipe")
    assert track_video(ws, video.video_id, cfg, progress=False).status == "done"
    assert pose_video(ws, video.video_id, pose_cfg, "coco17", progress=False).status == "done"
    assert pose_video(ws, video.video_id, pose_cfg, "coco17", progress=False).status == "skipped"
    for path in (ws.tracks_path(video.video_id), ws.poses_path(video.video_id)):
        with open(path, "r+b") as handle:  # truncated after the records said done
            handle.truncate(os.path.getsize(path) // 2)
    with caplog.at_level(logging.WARNING, logger="storage.catalog"):
        assert track_video(ws, video.video_id, cfg, progress=False).status == "done"  # not "skipped"
        assert pose_video(ws, video.video_id, pose_cfg, "coco17", progress=False).status == "done"
    assert "truncated or replaced" in caplog.text and ws.tracks_path(video.video_id) in caplog.text
    assert ws.poses_path(video.video_id) in caplog.text and "computed again" in caplog.text
    read_tracks(ws, video.video_id)
    read_poses(ws, video.video_id)  # whole again
    assert Catalog(ws).is_done("poses", video.video_id)


def _demo_frames(ws, video_id, count):
    """The first ``count`` frames of the tracked demo as the pose stage hands them to a backend."""
    from pipeline.pose import PoseFrame
    from pipeline.video import iter_timed_frames

    tracks, _ = read_tracks(ws, video_id)
    people = tracks[tracks["track_id"] >= 0]
    path = ws.absolute(Catalog(ws).get("video", video_id).outputs[0])
    frames = []
    for frame, _, image in iter_timed_frames(path, 0, count):
        group = people[people["frame"] == frame]
        frames.append(PoseFrame(frame, image, group[["x1", "y1", "x2", "y2"]].to_numpy(np.float32),
                                group["track_id"].to_numpy()))  # fmt: skip
    return frames


def test_mediapipe_tracking_mode_stays_close_to_static_mode_on_real_footage(tracked_demo):
    """Tracking mode (a BlazePose graph per track, regions from the previous landmarks) must pose the two people of
    the demo as the per-crop detector does: measured over the whole 4 s, joints confident in both modes lie a median
    0.5% and a p90 1.5% of the box's longer side apart (2.2 / 6.4 px); the bounds on these first 60 frames are about
    twice that. A crop fed to another track's graph, or landmarks mapped back with the wrong crop, would
    be tens of percent off."""
    from pipeline.pose import estimate_frames, make_backend

    ws, video_id, _ = tracked_demo
    frames = _demo_frames(ws, video_id, 60)
    static = list(estimate_frames(MediaPipeBackend(), frames))
    tracking_backend = make_backend(PoseConfig(backend="mediapipe", mediapipe_tracking=True), "coco17")
    assert isinstance(tracking_backend, MediaPipeBackend) and tracking_backend.tracking
    tracked = list(estimate_frames(tracking_backend, frames))
    assert tracking_backend.open_graphs == 0  # all closed at the end of the video
    a, b = np.concatenate(static), np.concatenate(tracked)
    size = np.concatenate([(f.boxes[:, 2:] - f.boxes[:, :2]).max(1) for f in frames])[:, None]
    both = (a[..., 2] > 0.5) & (b[..., 2] > 0.5)
    assert both.mean() > 0.85 and (b[..., 2] > 0.5).mean() > (a[..., 2] > 0.5).mean() - 0.03
    distance = (np.linalg.norm(a[..., :2] - b[..., :2], axis=-1) / size)[both]
    assert np.median(distance) < 0.012 and np.percentile(distance, 90) < 0.03, np.percentile(distance, [50, 90])


def test_mediapipe_tracking_graphs_end_with_their_tracks_and_a_gap_starts_afresh(tracked_demo):
    """A track's graph lives while the track is in consecutive frames, up to ``redetect_every`` of them. After a gap
    the track starts with a detection, exactly as static mode poses that crop; without the gap the same frame is posed
    from the previous landmarks (not bit-identical to static mode). Ended tracks' graphs are closed or reset for the
    next new track, so no more than the live tracks' graphs and ``MAX_IDLE_GRAPHS`` are ever open."""
    from pipeline.pose import PoseFrame

    ws, video_id, _ = tracked_demo
    frames = _demo_frames(ws, video_id, 8)
    track = int(frames[0].track_ids[0])
    one = [PoseFrame(f.frame, f.image, f.boxes[f.track_ids == track], f.track_ids[f.track_ids == track])
           for f in frames]  # fmt: skip
    static = [MediaPipeBackend().estimate(f.image, f.boxes) for f in one]
    backend = MediaPipeBackend(tracking=True)
    without_gap = list(backend.estimate_frames(one))
    with_gap = list(backend.estimate_frames(one[:5] + one[6:]))  # frame 5 missing
    assert not np.allclose(without_gap[6], static[6], atol=1e-3)  # posed from frame 5's landmarks
    np.testing.assert_allclose(with_gap[5], static[6], atol=1e-4)  # frame 6 after the gap: detected afresh
    assert not np.allclose(with_gap[4], static[4], atol=1e-3)  # frames before the gap were tracked
    redetecting = list(MediaPipeBackend(tracking=True, redetect_every=3).estimate_frames(one))
    np.testing.assert_allclose(redetecting[6], static[6], atol=1e-4)  # a detection every 3 frames: 0, 3, 6
    assert not np.allclose(redetecting[5], static[5], atol=1e-3)
    # every track's crops side by side on worker threads: exactly what one thread computes (real two-person frames)
    both = [f for f in _demo_frames(ws, video_id, 120) if len(f.boxes) >= 2][:10]
    assert len(both) == 10, "the demo clip shows both people"
    serial = list(MediaPipeBackend(tracking=True, workers=1).estimate_frames(both))
    threaded = MediaPipeBackend(tracking=True, workers=2)
    parallel = list(threaded.estimate_frames(both))
    assert len(threaded._lanes) == 2  # the worker threads did run
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)
    threaded.close()
    # the same with graphs given up every 3 frames (waits for their lanes before a reset) and the flip test's
    # mirrored graphs sharing their track's lane, over frames with one, two and no tracks
    mixed = _demo_frames(ws, video_id, 24)
    for options in ({"redetect_every": 3}, {"flip_test": True, "redetect_every": 5}):
        serial = list(MediaPipeBackend(tracking=True, workers=1, **options).estimate_frames(mixed))
        lanes = MediaPipeBackend(tracking=True, workers=2, **options)
        for a, b in zip(serial, lanes.estimate_frames(mixed), strict=True):
            np.testing.assert_array_equal(a, b)
        assert lanes.open_graphs == 0 and not lanes._lane_of and not lanes._last_job
        lanes.close()
    # many short tracks, each in two consecutive frames: graphs are given back as tracks end
    blank = np.zeros((120, 120, 3), np.uint8)
    box = np.array([[10, 10, 110, 110]], np.float32)
    many = [PoseFrame(f, blank, np.repeat(box, 2, 0), np.array([f // 2, 100 + (f + 1) // 2])) for f in range(12)]
    backend = MediaPipeBackend(tracking=True)
    for _ in backend.estimate_frames(many):
        assert len(backend._tracks) == 2 and backend.open_graphs <= 2 + backend.MAX_IDLE_GRAPHS
    assert backend.open_graphs == 0


def test_mediapipe_lanes_share_one_track_between_detections(tracked_demo):
    """One person's stretches between fresh detections are independent, so they go to the least busy lane: both
    lanes pose the one track, bit-identical to one thread, and given-up graphs are reused there (spares) rather
    than a new graph started for every stretch."""
    import threading

    from pipeline.pose import PoseFrame

    class Recording(MediaPipeBackend):
        def _pose_crop(self, crop, graphs=(None, None)):
            self.seen.append((threading.current_thread().name, id(graphs[0])))
            return super()._pose_crop(crop, graphs)

    ws, video_id, _ = tracked_demo
    frames = _demo_frames(ws, video_id, 60)
    track = int(frames[0].track_ids[0])
    one = [PoseFrame(f.frame, f.image, f.boxes[f.track_ids == track], f.track_ids[f.track_ids == track])
           for f in frames]  # fmt: skip
    assert all(len(f.boxes) == 1 for f in one), "the first person is in the demo's first 60 frames"
    serial = list(MediaPipeBackend(tracking=True, workers=1, redetect_every=10).estimate_frames(one))
    lanes = Recording(tracking=True, workers=2, redetect_every=10)
    lanes.seen = []
    for a, b in zip(serial, lanes.estimate_frames(one), strict=True):
        np.testing.assert_array_equal(a, b)
    threads = {name for name, _ in lanes.seen if name.startswith("blazepose-")}
    assert len(threads) == 2, threads  # 6 stretches of 10 frames: both lanes took some
    assert len({graph for _, graph in lanes.seen}) < 6  # fewer graphs than stretches: spares were reused
    assert lanes.open_graphs == 0
    lanes.close()


def _tiny_vitpose(batch):
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessor

    backbone = VitPoseBackboneConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                     num_experts=6, part_features=8, out_indices=[1])  # fmt: skip
    model = VitPoseForPoseEstimation(VitPoseConfig(backbone_config=backbone, num_labels=17)).eval()
    return VitPoseBackend(model=model, processor=VitPoseImageProcessor(), dataset_index=0, device="cpu", batch=batch)


def test_vitpose_batches_crops_across_frames_with_the_per_frame_result():
    """The crops of consecutive frames go through the model together, never more than ``batch`` at a time (a frame
    with more boxes is split); the keypoints equal those of one call per frame."""
    import torch

    from pipeline.pose import PoseFrame, estimate_frames

    torch.manual_seed(0)
    backend = _tiny_vitpose(batch=4)
    rng = np.random.default_rng(0)
    frames = []
    for f, count in enumerate([2, 0, 1, 3, 1, 4, 2, 6]):
        xy = rng.uniform(0, 200, (count, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(30, 120, (count, 2))], 1).astype(np.float32)
        frames.append(PoseFrame(f, rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), boxes, np.arange(count)))
    calls = []
    backend.model.register_forward_hook(lambda module, args, kwargs, out: calls.append(len(kwargs["pixel_values"])),
                                        with_kwargs=True)  # fmt: skip
    per_frame = [backend.estimate(f.image, f.boxes) for f in frames]
    assert calls == [2, 1, 3, 1, 4, 2, 4, 2]  # one call per frame with boxes
    calls.clear()
    batched = list(estimate_frames(backend, iter(frames)))
    assert calls == [3, 4, 4, 2, 4, 2]  # frames 0-2, 3-4, 5, 6, then frame 7's six boxes split
    assert [len(b) for b in batched] == [len(f.boxes) for f in frames]
    for a, b in zip(per_frame, batched, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-3)
    assert np.ptp(np.concatenate(batched)[..., :2]) > 10  # not a degenerate all-equal output


def test_a_video_shorter_than_the_stride_says_why_it_has_no_tracks(tmp_path, demo_clip, person_detector, caplog):
    """A 1-frame video gave 0 tracks at the default stride 2, silently: the detector looks at frames 1, 3, ..."""
    import logging

    import yaml
    from typer.testing import CliRunner

    from pipeline.cli import app

    ws = Workspace(tmp_path / "ws")
    video = ingest_file(ws, Path(demo_clip), Source(kind="local", value="demo", end=0.02), "one frame of the demo")
    assert video.status == "done" and video.meta["frames"] == 1, video
    config = {"name": "oneframe", "skeleton": "coco17", "fps": 30, "sources": [{"kind": "local", "value": "x"}],
              "detector": {"weights": str(person_detector), "classes": ["person"],
                           "class_names": PERSON_DETECTOR_CLASSES, "runtime": "torch"}}  # fmt: skip
    path = tmp_path / "oneframe.yaml"
    path.write_text(yaml.safe_dump(config))
    runner = CliRunner()
    with caplog.at_level(logging.WARNING, logger="pipeline.detect_track"):
        result = runner.invoke(app, ["track", "-c", str(path), "-w", ws.url], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert "0 tracks" in result.stdout and "fewer than detector.stride=2" in result.stdout, result.stdout
    assert "detector.stride=1" in result.stdout and "fewer than detector.stride=2" in caplog.text
    assert Catalog(ws).get("tracks", video.video_id).meta["note"].startswith(f"{video.video_id} has 1 frame,")
    again = runner.invoke(app, ["track", "-c", str(path), "-w", ws.url, "--force", "detector.stride=1"],
                          env={"COLUMNS": "400"})  # fmt: skip
    assert again.exit_code == 0 and "fewer than" not in again.stdout, again.stdout
    assert Catalog(ws).get("tracks", video.video_id).meta["tracks"] >= 1  # the people were there all along
