"""Processing throughput: clips per second turning synthetic pixel tracks into a dataset (10k clips by default).

python -m benchmarks.bench_process [--clips 10000]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np
import pandas as pd

from benchmarks.common import write_result
from pipeline.cameras import project, rotation_matrix
from pipeline.config import ProcessConfig
from pipeline.process import ProcessedClips, Track, finalize, process_tracks
from pipeline.skeletons import COCO17
from pipeline.synthetic import generate_motions


def pixel_tracks(count: int, length: int, seed: int = 0) -> list[Track]:
    motions = generate_motions(count, length, seed=seed)
    rng = np.random.default_rng(seed)
    tracks = []
    for i, motion in enumerate(motions):
        xy = project(motion - motion.mean((0, 1)), rotation_matrix([rng.uniform(-3, 3)], 0.1), 7.0)[0]
        pixels = xy * np.array([300.0, -300.0]) + np.array([640.0, 360.0])
        conf = rng.uniform(0.5, 1.0, (length, 17, 1))
        keypoints = np.concatenate([pixels, conf], -1).astype(np.float32)
        boxes = np.concatenate([pixels.min(1) - 10, pixels.max(1) + 10], -1)
        tracks.append(Track(f"video{i // 10}", i, np.arange(length), boxes, keypoints))
    return tracks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=10_000)
    parser.add_argument("--length", type=int, default=60)
    args = parser.parse_args()
    tracks = pixel_tracks(args.clips, args.length)
    cfg = ProcessConfig(min_track_frames=30, clip_min_frames=30, clip_max_frames=args.length, max_overlapping_tracks=50)
    start = time.perf_counter()
    parts = [process_tracks(tracks[i : i + 10], COCO17, cfg, 30.0, 30.0) for i in range(0, len(tracks), 10)]
    processed = ProcessedClips(
        clips=[c for p in parts for c in p.clips],
        index=pd.concat([p.index for p in parts], ignore_index=True),
        dropped=sum((p.dropped for p in parts), Counter()),
        stats={},
    )  # one call per video of 10 tracks, as the dataset stage does
    clips, index = finalize(processed, COCO17, cfg)
    seconds = time.perf_counter() - start
    body = (f"{args.clips} synthetic tracks of {args.length} frames (COCO-17): {len(processed.clips)} clips kept "
            f"({dict(processed.dropped)}), {len(clips)} with mirrored copies, in {seconds:.1f} s — "
            f"**{len(processed.clips) / seconds:.0f} clips/s**.")  # fmt: skip
    write_result("process", "Dataset processing throughput", body)


if __name__ == "__main__":
    main()
