"""Frames per second of the video stages (decode, detect + track, pose, overlay) on the Sports2D demo clip.

python -m benchmarks.bench_video [--seconds 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from benchmarks.common import write_result
from pipeline import assets
from pipeline.config import DetectorConfig, PoseConfig, Source
from pipeline.detect_track import track_video
from pipeline.download import ingest_file
from pipeline.overlay import write_overlay
from pipeline.pose import pose_video
from pipeline.video import iter_frames
from storage import Workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--imgsz", type=int, default=640)
    args = parser.parse_args()
    ws = Workspace(tempfile.mkdtemp(prefix="mas-bench-video-"))
    clip = assets.demo_video()
    video = ingest_file(ws, clip, Source(kind="local", value=str(clip), end=args.seconds), "demo")
    frames = video.meta["frames"]
    path = ws.absolute(f"videos/{video.video_id}/video.mp4")
    timings = {}
    start = time.perf_counter()
    sum(1 for _ in iter_frames(path))
    timings["decode"] = time.perf_counter() - start
    detector = DetectorConfig(weights=str(assets.person_detector_weights()), class_names=assets.PERSON_DETECTOR_CLASSES,
                              imgsz=args.imgsz)  # fmt: skip
    start = time.perf_counter()
    tracked = track_video(ws, video.video_id, detector, progress=False)
    timings["detect + track (YOLOv8 person detector, ByteTrack)"] = time.perf_counter() - start
    start = time.perf_counter()
    posed = pose_video(ws, video.video_id, PoseConfig(backend="mediapipe"), "coco17", progress=False)
    timings[f"pose (BlazePose, {posed.rows} boxes)"] = time.perf_counter() - start
    start = time.perf_counter()
    write_overlay(ws, video.video_id)
    timings["overlay"] = time.perf_counter() - start
    lines = ["| stage | seconds | frames/s |", "|---|---|---|"]
    lines += [f"| {k} | {v:.1f} | {frames / v:.1f} |" for k, v in timings.items()]
    body = (f"Sports2D demo clip, first {args.seconds} s ({frames} frames, 1768x994), {tracked.tracks} tracks, "
            f"detector imgsz {args.imgsz}.\n\n" + "\n".join(lines))  # fmt: skip
    write_result("video", "Video stages throughput", body)


if __name__ == "__main__":
    main()
