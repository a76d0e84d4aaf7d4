"""Parquet tables of tracks and poses, one file per video, with their metadata in the file's schema.

Tracks: ``video_id, frame, track_id, class, score, x1, y1, x2, y2`` (pixels).
Poses:  ``video_id, frame, track_id, x1, y1, x2, y2`` then ``<joint>_x, <joint>_y, <joint>_c`` per joint (pixels, y
down; ``_c`` the detector's confidence, NaN coordinates where a joint was not predicted), then ``time_s`` (the
decoder's timestamp of the frame in seconds: real times for variable-frame-rate video; absent in files written before
it existed). Metadata: skeleton, fps, width, height, backend, vfr. A keypoint with low confidence or at (0, 0) is
never a real position: consumers mask it.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from storage.workspace import Workspace

TRACK_COLUMNS = ["video_id", "frame", "track_id", "class", "score", "x1", "y1", "x2", "y2"]
BOX_COLUMNS = ["x1", "y1", "x2", "y2"]
_META_KEY = b"mas_pipeline"


def pose_columns(joints: tuple[str, ...] | list[str]) -> list[str]:
    return [f"{j}_{c}" for j in joints for c in ("x", "y", "c")]


def _write(ws: Workspace, path: str, frame: pd.DataFrame, meta: dict[str, Any]) -> str:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META_KEY: json.dumps(meta).encode()})
    with ws.atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def _read(ws: Workspace, path: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    if not ws.exists(path):
        raise FileNotFoundError(f"{path} does not exist; run the stage that makes it first")
    try:
        with ws.local_copy(path) as local:
            table = pq.read_table(local)
    except (pa.ArrowException, OSError) as exc:  # truncated, or not Parquet at all
        raise ValueError(f"{path} is not a readable Parquet file ({type(exc).__name__}: {exc}); rerun the stage "
                         "that makes it (it recomputes a damaged file), or with --force") from exc  # fmt: skip
    meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
    return table.to_pandas(), meta


def write_tracks(ws: Workspace, video_id: str, frame: pd.DataFrame, meta: dict[str, Any]) -> str:
    missing = [c for c in TRACK_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"tracks table lacks columns {missing}")
    return _write(ws, ws.tracks_path(video_id), frame[TRACK_COLUMNS], meta)


def read_tracks(ws: Workspace, video_id: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    return _read(ws, ws.tracks_path(video_id))


def poses_frame(
    video_id: str, frames: np.ndarray, track_ids: np.ndarray, boxes: np.ndarray, keypoints: np.ndarray,
    joints: tuple[str, ...], times: np.ndarray | None = None,
) -> pd.DataFrame:  # fmt: skip
    """Build a poses table from arrays: ``frames [N]``, ``track_ids [N]``, ``boxes [N, 4]``, ``keypoints [N, J, 3]``
    and optionally ``times [N]`` (seconds)."""
    keypoints = np.asarray(keypoints, dtype=np.float32)
    if keypoints.ndim != 3 or keypoints.shape[1:] != (len(joints), 3):
        raise ValueError(f"keypoints must be [N, {len(joints)}, 3] for this skeleton, got {keypoints.shape}")
    data: dict[str, Any] = {
        "video_id": np.full(len(frames), video_id, dtype=object),
        "frame": np.asarray(frames, dtype=np.int64),
        "track_id": np.asarray(track_ids, dtype=np.int64),
    }
    boxes = np.asarray(boxes, dtype=np.float32).reshape(len(frames), 4)
    for k, name in enumerate(BOX_COLUMNS):
        data[name] = boxes[:, k]
    flat = keypoints.reshape(len(frames), len(joints) * 3)
    for k, name in enumerate(pose_columns(joints)):
        data[name] = flat[:, k]
    if times is not None:
        data["time_s"] = np.asarray(times, dtype=np.float64).reshape(len(frames))
    return pd.DataFrame(data)


def write_poses(ws: Workspace, video_id: str, frame: pd.DataFrame, meta: dict[str, Any]) -> str:
    if "skeleton" not in meta or "fps" not in meta:
        raise ValueError("poses metadata needs 'skeleton' and 'fps'")
    return _write(ws, ws.poses_path(video_id), frame, meta)


def read_poses(ws: Workspace, video_id: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    return _read(ws, ws.poses_path(video_id))


def keypoints_of(frame: pd.DataFrame, joints: tuple[str, ...]) -> np.ndarray:
    """``[N, J, 3]`` keypoints of a poses table; raises naming the skeleton mismatch if columns are missing."""
    columns = pose_columns(joints)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"poses table does not match the skeleton: missing columns {missing[:6]}...")
    return frame[columns].to_numpy(np.float32).reshape(len(frame), len(joints), 3)
