"""BlazePose in tracking mode on one lane and on every lane, for one person and for two (``pose.workers``).

The Sports2D demo clip (first ``--seconds``) is tracked once with the default detector settings; its frames are then
posed by ``MediaPipeBackend.estimate_frames`` (decoding excluded: the frames are in memory), once with the first
person's track alone and once with both people, each with 1 lane and with one lane per usable core, ``--rounds``
rounds interleaved after a warm-up. Every run's keypoints must equal the one-lane run's bit for bit (checked here).

python -m benchmarks.bench_pose_lanes [--seconds 4] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time

import numpy as np

from benchmarks.bench_video import SETTINGS
from benchmarks.common import min_median_max, write_result
from models.hardware import usable_cores
from pipeline import assets
from pipeline.config import Source
from pipeline.detect_track import track_video
from pipeline.download import ingest_file
from pipeline.pose import MediaPipeBackend, PoseFrame, boxes_by_frame
from pipeline.video import iter_frames
from storage import Catalog, Workspace
from storage.tables import read_tracks


def demo_frames(seconds: float) -> list[PoseFrame]:
    """The demo clip's frames with their tracked people, as the pose stage hands them to a backend."""
    ws = Workspace(tempfile.mkdtemp(prefix="mas-bench-lanes-"))
    clip = assets.demo_video()
    video = ingest_file(ws, clip, Source(kind="local", value=str(clip), end=seconds), "demo")
    tracked = track_video(ws, video.video_id, SETTINGS["threads"].detector(), progress=False)
    if tracked.status != "done":
        raise RuntimeError(f"tracking the demo failed: {tracked.error}")
    tracks, _ = read_tracks(ws, video.video_id)
    by_frame = boxes_by_frame(tracks[tracks["track_id"] >= 0])
    path = ws.absolute(Catalog(ws).get("video", video.video_id).outputs[0])
    return [PoseFrame(f, image, *by_frame[f]) for f, image in iter_frames(path) if f in by_frame]


def first_person(frames: list[PoseFrame]) -> list[PoseFrame]:
    track = int(frames[0].track_ids[0])
    keep = [f.track_ids == track for f in frames]
    return [
        PoseFrame(f.frame, f.image, f.boxes[k], f.track_ids[k]) for f, k in zip(frames, keep, strict=True) if k.any()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    both = demo_frames(args.seconds)
    inputs = {"one person": first_person(both), "two people": both}
    lanes = (1, usable_cores())
    times = {(name, w): [] for name in inputs for w in lanes}
    reference = {}
    loads = []
    for round_ in range(-1, args.rounds):  # round -1 warms up: not kept
        loads.append(os.getloadavg()[0])
        for name, frames in inputs.items():
            for workers in lanes:
                backend = MediaPipeBackend(tracking=True, workers=workers)
                start = time.perf_counter()
                out = list(backend.estimate_frames(frames))
                seconds = time.perf_counter() - start
                backend.close()
                reference.setdefault(name, out)
                for a, b in zip(reference[name], out, strict=True):
                    np.testing.assert_array_equal(a, b)  # lanes change how fast, never what
                if round_ >= 0:
                    times[(name, workers)].append(seconds)
                print(f"round {round_ + 1} {name}, {workers} lanes: {seconds:.2f} s", file=sys.stderr)
    rows = [
        "| footage | crops | lanes | s (min / median / max) | crops/s | ratio to 1 lane |",
        "|---|---|---|---|---|---|",
    ]
    for name, frames in inputs.items():
        crops = sum(len(f.boxes) for f in frames)
        one = float(np.median(times[(name, 1)]))
        for workers in lanes:
            median = float(np.median(times[(name, workers)]))
            rows.append(f"| {name} | {crops} | {workers} | {min_median_max(times[(name, workers)])} | "
                        f"{crops / median:.1f} | {one / median:.2f}x |")  # fmt: skip
    body = [f"Command: `python -m benchmarks.bench_pose_lanes {shlex.join(sys.argv[1:])}`. Sports2D demo clip, first "
            f"{args.seconds:g} s, tracked with the default detector settings; BlazePose full in tracking mode "
            "(a fresh detection every 30 frames), frames in memory (no decoding timed); "
            f"{args.rounds} rounds after a warm-up, interleaved. 1-min host load average before each round: "
            + ", ".join(f"{v:.2f}" for v in loads[1:]) + ". Every run's keypoints equal the one-lane run's bit for "
            "bit (checked).", "", *rows]  # fmt: skip
    write_result("pose_lanes", "BlazePose tracking mode: one lane against every lane", "\n".join(body))


if __name__ == "__main__":
    main()
