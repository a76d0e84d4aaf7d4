"""Variable-frame-rate video: frame times come from the decoder, are stored with the poses and used to resample."""

import fractions

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.config import PoseConfig, Source
from pipeline.download import ingest_file
from pipeline.pose import pose_video
from pipeline.process import Track, resample, tracks_from_poses
from pipeline.skeletons import COCO17
from pipeline.video import is_variable_rate, iter_frames, iter_timed_frames, probe_video, write_trimmed
from storage import Catalog, Workspace
from storage.tables import poses_frame, read_poses, write_tracks
from tests.test_download import make_video

av = pytest.importorskip("av", reason="PyAV (a dev dependency) writes the variable-frame-rate test clip")

# 1 s at 30 fps, then 2 s at 10 fps: a phone clip that slowed down in low light
VFR_TIMES = np.concatenate([np.arange(30) / 30, 1 + np.arange(20) / 10])


def make_vfr_video(path, times=VFR_TIMES, size=(256, 120)):
    """An MPEG-4 clip whose frames carry the presentation times ``times`` (seconds, millisecond time base); a box
    moves by 4 px per frame, so a frame's content tells which source frame it is (:func:`_box_frame`)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.time_base = stream.codec_context.time_base = fractions.Fraction(1, 1000)
        for i, t in enumerate(times):
            image = np.full((size[1], size[0], 3), 30, np.uint8)
            cv2.rectangle(image, (5 + 4 * i, 20), (35 + 4 * i, 90), (200, 100, 50), -1)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = int(round(t * 1000)), fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def test_the_decoder_gives_real_frame_times(tmp_path):
    vfr = make_vfr_video(tmp_path / "vfr.mp4")
    info = probe_video(vfr)
    assert info.frames == 50  # the stream's single "fps" is an average (about 17) that no part of the clip has
    times = np.array([t for _, t, _ in iter_timed_frames(vfr)])
    np.testing.assert_allclose(times, VFR_TIMES, atol=1e-3)
    assert is_variable_rate(times)
    cfr = make_video(tmp_path / "cfr.mp4", frames=30, fps=15.0)
    cfr_times = np.array([t for _, t, _ in iter_timed_frames(cfr)])
    np.testing.assert_allclose(cfr_times, np.arange(30) / 15.0, atol=1e-3)
    assert not is_variable_rate(cfr_times)
    assert [i for i, _, _ in iter_timed_frames(cfr, 10, 13)] == [10, 11, 12]


def test_resampling_by_timestamps_keeps_real_speed():
    """A joint moving at 100 px/s, seen at 30 fps then 10 fps: resampled to 30 fps by its timestamps it still moves
    100 px/s; by frame number over the average rate it would not."""
    n = len(VFR_TIMES)
    keypoints = np.zeros((n, 17, 3), np.float32)
    keypoints[..., 0] = (100 * VFR_TIMES)[:, None]
    keypoints[..., 2] = 0.9
    boxes = np.zeros((n, 4), np.float32)
    track = Track("v", 1, np.arange(n), boxes, keypoints, times=VFR_TIMES.copy())
    out = resample(track, src_fps=n / 2.9, dst_fps=30.0)
    assert len(out) == 88  # 2.9 s at 30 fps
    np.testing.assert_allclose(out.keypoints[:, 0, 0], 100 * np.arange(88) / 30, atol=1e-3)
    np.testing.assert_allclose(out.keypoints[..., 2], 0.9)  # consecutive frames: nothing is a gap
    np.testing.assert_allclose(out.times, np.arange(88) / 30)
    assert out.frames[30] == 30 and out.frames[33] == 31 and out.frames[-1] == 49  # nearest source frames in time
    by_frames = resample(Track("v", 1, np.arange(n), boxes, keypoints), src_fps=n / 2.9, dst_fps=30.0)
    assert np.abs(by_frames.keypoints[:, 0, 0] - 100 * np.arange(len(by_frames)) / 30).max() > 20  # the old way


def test_the_pose_stage_stores_frame_times_and_flags_vfr(tmp_path):
    ws = Workspace(tmp_path / "ws")
    video = ingest_file(ws, make_vfr_video(tmp_path / "vfr.mp4"), Source(kind="local", value="x"), "vfr")
    assert video.status == "done"
    frames = np.arange(50)
    tracks = pd.DataFrame({"video_id": video.video_id, "frame": frames, "track_id": 1, "class": "person",
                           "score": 0.9, "x1": 5.0 + 4 * frames, "y1": 20.0, "x2": 35.0 + 4 * frames,
                           "y2": 90.0})  # fmt: skip
    path = write_tracks(ws, video.video_id, tracks, {"fps": 17.0, "width": 160, "height": 120})
    Catalog(ws).mark_done("tracks", video.video_id, key="k", outputs=[path])
    result = pose_video(ws, video.video_id, PoseConfig(backend="mediapipe"), "coco17", progress=False)
    assert result.status == "done", result.error
    table, meta = read_poses(ws, video.video_id)
    assert meta["vfr"] is True and Catalog(ws).get("poses", video.video_id).meta["vfr"] is True
    np.testing.assert_allclose(table.sort_values("frame")["time_s"].to_numpy(), VFR_TIMES, atol=1e-3)
    [track] = tracks_from_poses(table, COCO17)
    np.testing.assert_allclose(track.times, VFR_TIMES, atol=1e-3)


def test_poses_without_times_still_process_by_frame_rate():
    table = poses_frame("v", np.arange(5), np.ones(5), np.zeros((5, 4)), np.zeros((5, 17, 3)), COCO17.joints)
    assert "time_s" not in table.columns
    [track] = tracks_from_poses(table, COCO17)
    assert track.times is None
    with pytest.raises(ValueError, match="timestamps do not increase"):
        resample(Track("v", 1, np.arange(3), np.zeros((3, 4)), np.zeros((3, 17, 3)), times=np.array([0, 0.1, 0.1])),
                 30.0, 30.0)  # fmt: skip


def _box_frame(image: np.ndarray, step: int = 4) -> int:
    """The source frame a frame of the test clips shows: its box's centre is at x = 20 + ``step`` i."""
    row = np.abs(image[55].astype(int) - 30).sum(-1)  # background: grey 30
    return int(np.floor((np.flatnonzero(row > 60).mean() - 20) / step + 0.5))


def test_trimming_picks_frames_by_time(tmp_path):
    """A trim of the variable-rate clip is constant-rate at its stream rate, each frame the last source frame at or
    before its time; a trim of a constant-rate clip gives exactly the frames a cut by frame number gives."""
    vfr = make_vfr_video(tmp_path / "vfr.mp4")
    info = write_trimmed(vfr, tmp_path / "vfr-trim.mp4", 0.5, 2.5)
    frames = [image for _, _, image in iter_timed_frames(tmp_path / "vfr-trim.mp4")]
    fps = probe_video(vfr).fps
    assert info.frames == len(frames) == int(np.ceil(2.0 * fps))
    expected = [
        int(np.searchsorted(VFR_TIMES, 0.5 + k / fps + 0.25 / fps, side="right")) - 1 for k in range(len(frames))
    ]
    assert [_box_frame(f) for f in frames] == expected  # 15..27 then each 10 fps frame repeated
    cfr = make_video(tmp_path / "cfr.mp4", frames=45, fps=15.0)
    trimmed = write_trimmed(cfr, tmp_path / "cfr-trim.mp4", 1.0, 2.0)
    shown = [_box_frame(f, step=2) for _, _, f in iter_timed_frames(tmp_path / "cfr-trim.mp4")]
    assert trimmed.frames == 15 and shown == [_box_frame(f, step=2) for _, f in iter_frames(cfr, 15, 30)]
    assert np.abs(np.array(shown) - np.arange(15, 30)).max() <= 1  # the box is found: frames 15..29
