"""Overlays for checking results by eye: boxes, track ids and skeletons drawn on the video (mp4) and a snapshot."""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.skeletons import resolve_skeleton
from pipeline.video import VideoError, check_written, iter_frames
from storage import Catalog, Workspace
from storage.locks import ArtifactLock
from storage.tables import keypoints_of, read_poses, read_tracks


def _colour(track_id: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(track_id + 7)
    return tuple(int(c) for c in rng.integers(60, 255, 3))


def draw_frame(image_rgb: np.ndarray, boxes, track_ids, keypoints, skeleton, threshold: float = 0.3) -> np.ndarray:
    """Return a BGR copy of the frame with boxes, ids and skeletons (joints under ``threshold`` not drawn)."""
    canvas = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    scale = max(1, round(canvas.shape[0] / 500))
    for box, tid, kp in zip(boxes, track_ids, keypoints, strict=True):
        colour = _colour(int(tid))
        x1, y1, x2, y2 = (int(v) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, scale)
        cv2.putText(canvas, f"id {int(tid)}", (x1, max(y1 - 5, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, colour,
                    scale)  # fmt: skip
        if kp is None:
            continue
        ok = (kp[:, 2] >= threshold) & np.isfinite(kp[:, :2]).all(1)
        for a, b in skeleton.bones:
            if ok[a] and ok[b]:
                cv2.line(canvas, tuple(int(v) for v in kp[a, :2]), tuple(int(v) for v in kp[b, :2]), colour, 2 * scale)
        for j in np.flatnonzero(ok):
            cv2.circle(canvas, tuple(int(v) for v in kp[j, :2]), 2 * scale, (255, 255, 255), -1)
    return canvas


def write_overlay(ws: Workspace, video_id: str, max_width: int = 960, threshold: float = 0.3) -> tuple[str, str]:
    """Write ``overlays/<video_id>.mp4`` and ``overlays/<video_id>.png`` (the frame with the most people).

    Part of the pose stage: it holds the video's ``poses`` lock, removes the temporary files a killed overlay of the
    video left, and reads the video back before it takes its name (:func:`check_written`; a full disk raises
    ``DiskFullError`` naming the file)."""
    with ArtifactLock(ws, "poses", video_id) as lock:
        lock.remove_leftovers(ws.path("overlays"), [f"{video_id}.mp4", f"{video_id}.png"])
        return _write_overlay(ws, video_id, max_width, threshold)


def _write_overlay(ws: Workspace, video_id: str, max_width: int, threshold: float) -> tuple[str, str]:
    catalog = Catalog(ws)
    video = catalog.get("video", video_id)
    tracks, meta = read_tracks(ws, video_id)
    poses, pose_meta = read_poses(ws, video_id) if catalog.is_done("poses", video_id) else (None, {})
    skeleton = resolve_skeleton(pose_meta.get("skeleton", "coco17"), pose_meta.get("skeleton_definition"),
                                f"poses of {video_id}")  # fmt: skip
    people = tracks[tracks["track_id"] >= 0]
    by_frame = {f: g for f, g in people.groupby("frame")}
    pose_by_frame = {f: g for f, g in poses.groupby("frame")} if poses is not None else {}
    busiest = int(people["frame"].value_counts().idxmax()) if len(people) else 0
    snapshot = None
    mp4 = ws.overlay_path(video_id)
    with ws.local_copy(ws.absolute(video.outputs[0])) as local, ws.atomic_path(mp4) as tmp:
        writer, written = None, 0
        for frame, image in iter_frames(local):
            group = by_frame.get(frame)
            if group is not None:
                posed = pose_by_frame.get(frame)
                kps = {}
                if posed is not None:
                    for tid, kp in zip(posed["track_id"], keypoints_of(posed, skeleton.joints), strict=True):
                        kps[int(tid)] = kp
                boxes = group[["x1", "y1", "x2", "y2"]].to_numpy()
                ids = group["track_id"].to_numpy()
                canvas = draw_frame(image, boxes, ids, [kps.get(int(t)) for t in ids], skeleton, threshold)
            else:
                canvas = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            if canvas.shape[1] > max_width:
                factor = max_width / canvas.shape[1]
                canvas = cv2.resize(canvas, (max_width, int(round(canvas.shape[0] * factor / 2)) * 2))
            if writer is None:
                writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), float(meta["fps"]),
                                         (canvas.shape[1], canvas.shape[0]))  # fmt: skip
            writer.write(canvas)
            written += 1
            if frame == busiest:
                snapshot = canvas
        if writer is None:
            raise VideoError(f"{local}: no frame decodes, so there is no overlay to draw")
        writer.release()
        check_written(tmp, written)  # before the rename: OpenCV's writer says nothing of a full disk
    png = mp4.removesuffix(".mp4") + ".png"
    if snapshot is not None:
        ok, encoded = cv2.imencode(".png", snapshot)
        ws.write_bytes(png, encoded.tobytes())
    return mp4, png
