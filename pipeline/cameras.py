"""Cameras: view rotations, perspective and orthographic projection, and the 2D normalisation.

One implementation serves training data, MAS and evaluation; every function takes numpy arrays or torch tensors and
returns the same kind.

Conventions
-----------
World (3D motions): right-handed, **y up**, the subject near the origin. A view is an orbit around the vertical axis
by ``azimuth`` followed by a tilt by ``elevation``; a positive elevation looks DOWN on the subject, like a broadcast
camera: a point on the floor one unit further from the camera appears higher in the image (by 0.171 units at the
default pi/16 and distance 7). This is the official MAS code's convention (``utils/math_utils.py``: row vectors
``motion @ R_y(az) @ R_x(el)``), i.e. ``R = R_x(-el) R_y(-az)`` on column vectors; ``tests/test_cameras.py`` pins it
against that formula. After rotation by ``R`` a point is in camera coordinates: x right, y up, z away from the
camera; the camera sits at z = -distance.
Then (seed, Theorem 2)::

    orthographic:  p = R_xy X
    perspective:   p = distance * R_xy X / (distance + R_z X)

2D data: image keypoints (y down, pixels) become the data's coordinates through :func:`normalize_2d`: y is flipped up,
the clip is centred on the mean root position and divided by the body size (median over frames of the RMS distance of
the body joints from their centroid, times :data:`BODY_SIZE_TO_UNIT`). The same function normalises projected 3D
motions for evaluation, so both live in one coordinate system.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

DEFAULT_ELEVATION = math.pi / 16
DEFAULT_DISTANCE = 7.0  # data units (see the README's camera model: about 10 mean-pose heights)
# The official NBA geometry (sample/mas.py, data_loaders/nba/config.py): distance 7 in 3D units where 2D = 3D / 0.75
# and the NBA mean pose is 3.30 2D units tall, so the camera is 7 / (3.30 * 0.75) = 2.83 mean-pose heights away.
OFFICIAL_NBA_MEAN_POSE_HEIGHT = 3.3007  # data_loaders/nba/Mean.npy: head y (1.6786) minus foot y (-1.6221)
OFFICIAL_DISTANCE_IN_HEIGHTS = 7.0 / (OFFICIAL_NBA_MEAN_POSE_HEIGHT * 0.75)
DEFAULT_SUBJECT_HEIGHT_M = 1.8  # what one mean-pose height stands for when distances are given in metres
# An adult's RMS joint spread is about a quarter of the body height, so dividing by (spread / 0.25) makes one data
# unit about one body height; the MAS camera distance (7) is measured in these units.
BODY_SIZE_TO_UNIT = 0.25


def pose_height(mean_pose: Any) -> float:
    """Vertical extent of a mean pose ``[J, 2]`` (y up) in its units: the body height that camera distances in
    metres are measured with (the official code's NBA mean pose: 3.30)."""
    y = np.asarray(mean_pose, dtype=np.float64)[:, 1] if not _is_torch(mean_pose) else mean_pose[:, 1].double().cpu()
    return float(y.max() - y.min())


def metres_to_units(distance_m: float, mean_pose: Any, subject_height_m: float = DEFAULT_SUBJECT_HEIGHT_M) -> float:
    """A camera distance in metres as data units: ``distance_m / subject_height_m`` mean-pose heights."""
    if not distance_m > 0 or not subject_height_m > 0:
        raise ValueError(f"camera distance ({distance_m} m) and subject height ({subject_height_m} m) must be positive")
    height = pose_height(mean_pose)
    if not height > 0:
        raise ValueError("cannot convert a distance in metres: the dataset's mean pose has no height; "
                         "give the distance in data units instead")  # fmt: skip
    return distance_m / subject_height_m * height


def camera_distance(projection: str, distance: float, distance_m: float | None, subject_height_m: float,
                    mean_pose: Any) -> float | None:  # fmt: skip
    """The perspective camera distance in data units (None for orthographic cameras): ``distance_m`` converted with
    :func:`metres_to_units` when given, else ``distance`` (data units)."""
    if projection == "orthographic":
        return None
    return metres_to_units(distance_m, mean_pose, subject_height_m) if distance_m is not None else distance


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _like(value: Any, ref: Any) -> Any:
    """``value`` as the array type (and dtype/device for torch) of ``ref``."""
    if _is_torch(ref):
        import torch

        dtype = ref.dtype if ref.is_floating_point() else torch.float32
        return torch.as_tensor(value, dtype=dtype, device=ref.device)
    return np.asarray(value, dtype=np.result_type(ref, np.float32) if np.asarray(ref).dtype.kind == "f" else np.float64)


def rotation_matrix(azimuth: Any, elevation: Any = DEFAULT_ELEVATION) -> np.ndarray:
    """World → camera rotations ``[..., 3, 3]`` for broadcastable ``azimuth`` and ``elevation`` (radians).

    ``R = R_x(-elevation) @ R_y(-azimuth)`` (the official code's ``R_y(az) R_x(el)`` applied to row vectors; a
    positive elevation looks down). Returns a float64 numpy array (convert with :func:`_like` where needed).
    """
    az, el = np.broadcast_arrays(np.asarray(azimuth, dtype=np.float64), np.asarray(elevation, dtype=np.float64))
    ca, sa, ce, se = np.cos(-az), np.sin(-az), np.cos(-el), np.sin(-el)
    zero, one = np.zeros_like(az), np.ones_like(az)
    r_y = np.stack([np.stack([ca, zero, sa], -1), np.stack([zero, one, zero], -1), np.stack([-sa, zero, ca], -1)], -2)
    r_x = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, ce, -se], -1), np.stack([zero, se, ce], -1)], -2)
    return r_x @ r_y


TWO_VIEW_SEPARATION = 2 * math.pi / 3


def view_azimuths(num_views: int) -> np.ndarray:
    """Evenly spaced azimuths ``-pi + 2*pi*i/V`` (the MAS views), except for two views: the paper's Table 3
    ablation "#views=2 (120°)" places them 120° apart (``-pi``, ``-pi/3``); the official code's formula would give
    opposite views (``-pi``, ``0``), from which depth is nearly unobservable."""
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    if num_views == 2:
        return np.array([-math.pi, -math.pi + TWO_VIEW_SEPARATION])
    return -math.pi + 2 * math.pi * np.arange(num_views) / num_views


def view_rotations(num_views: int, elevation: float = DEFAULT_ELEVATION) -> np.ndarray:
    """``[V, 3, 3]`` rotations of the MAS views."""
    return rotation_matrix(view_azimuths(num_views), elevation)


def to_camera(points: Any, rotations: Any) -> Any:
    """Rotate world points ``[..., L, J, 3]`` into every camera of ``rotations [V, 3, 3]``: ``[..., V, L, J, 3]``."""
    rot = _like(rotations, points)
    if _is_torch(points):  # one [N, 3] x [3, 3V] matrix product, then views moved in front of frames
        cam = points.reshape(-1, 3) @ rot.reshape(-1, 3).T
        return cam.reshape(*points.shape[:-1], rot.shape[0], 3).movedim(-2, -4)
    return np.einsum("vij,...lkj->...vlki", rot, points)


def project(points: Any, rotations: Any, distance: float | None = DEFAULT_DISTANCE, mode: str = "perspective") -> Any:
    """Project world motions ``[..., L, J, 3]`` into views ``[V, 3, 3]``: ``[..., V, L, J, 2]``.

    ``mode`` is ``"perspective"`` (camera at ``distance`` from the origin) or ``"orthographic"``.
    """
    return _image_plane(to_camera(points, rotations), distance, mode)


def project_each(points: Any, rotations: Any, distance: float | None = DEFAULT_DISTANCE,
                 mode: str = "perspective") -> Any:  # fmt: skip
    """Like :func:`project`, with views of their own per motion: ``points [S, L, J, 3]``, ``rotations [S, V, 3, 3]``
    → ``[S, V, L, J, 2]`` (one batched product instead of a loop over motions)."""
    rot = _like(rotations, points)
    if _is_torch(points):
        import torch

        cam = torch.einsum("svij,sltj->svlti", rot, points)
    else:
        cam = np.einsum("svij,sltj->svlti", rot, points)
    return _image_plane(cam, distance, mode)


def _image_plane(cam: Any, distance: float | None, mode: str) -> Any:
    """Camera coordinates ``[..., 3]`` → image coordinates ``[..., 2]`` (see the module docstring)."""
    if mode == "orthographic":
        return cam[..., :2]
    if mode != "perspective":
        raise ValueError(f"unknown projection mode {mode!r}; use 'perspective' or 'orthographic'")
    if distance is None or distance <= 0:
        raise ValueError(f"perspective projection needs a positive camera distance, got {distance}")
    depth = distance + cam[..., 2:3]
    if (depth <= 0).any():
        reach = float(-cam[..., 2].min())
        raise ValueError(
            f"points behind the camera: the motion reaches {reach:.3g} units towards a camera {distance:.3g} units "
            "away; use a larger camera distance, or centre the clips on the root in every frame "
            "(process.root_centring: frame), which the official code's close cameras assume"
        )
    return distance * cam[..., :2] / depth


def frame_spread(xy: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-frame RMS distance of the valid joints from their centroid: ``xy [L, J, 2]``, ``valid [L, J]`` → ``[L]``,
    NaN for frames with fewer than two valid joints (NaNs of invalid joints never leak in)."""
    w = valid.astype(np.float64)
    count = w.sum(-1)
    pts = np.where(valid[..., None], xy, 0.0).astype(np.float64)
    centroid = pts.sum(1) / np.maximum(count, 1)[:, None]
    spread = np.sqrt((((pts - centroid[:, None]) ** 2).sum(-1) * w).sum(1) / np.maximum(count, 1))
    return np.where(count >= 2, spread, np.nan)


def body_size(xy: np.ndarray, valid: np.ndarray) -> float:
    """Median over frames of :func:`frame_spread` (``xy [L, J, 2]``, ``valid [L, J]`` bool)."""
    spread = frame_spread(xy, valid)
    if np.isnan(spread).all():
        raise ValueError("cannot measure body size: no frame has two or more confident joints")
    return float(np.nanmedian(spread))


def normalize_2d(
    xy: np.ndarray,
    conf: np.ndarray | None,
    root: tuple[int, ...] | list[int],
    body_joints: np.ndarray | None = None,
    conf_threshold: float = 0.0,
    y_down: bool = True,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Map one clip of 2D keypoints ``[L, J, 2]`` into data coordinates.

    Returns ``(xy_normalised, centre [2], scale)`` with ``xy_normalised = (flip(xy) - centre) / scale``. Only joints
    with ``conf > conf_threshold`` (all joints when ``conf`` is None) are used to find the centre and the scale; the
    others are transformed too but must stay masked downstream. ``y_down`` flips image coordinates to y up.
    """
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 3 or xy.shape[-1] != 2:
        raise ValueError(f"normalize_2d expects keypoints [L, J, 2], got {xy.shape}")
    valid = np.isfinite(xy).all(-1)
    if conf is not None:
        valid &= np.asarray(conf) > conf_threshold
    if y_down:
        xy = xy * np.array([1.0, -1.0])
    body = np.arange(xy.shape[1]) if body_joints is None else np.asarray(body_joints)
    scale = body_size(xy[:, body], valid[:, body]) / BODY_SIZE_TO_UNIT
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"degenerate body size {scale}: all confident joints coincide")
    root_idx = list(root)
    root_valid = valid[:, root_idx].all(-1)
    if root_valid.any():
        centre = xy[root_valid][:, root_idx].mean(axis=(0, 1))
    else:  # no frame sees the root: fall back on the mean of all confident joints
        centre = xy[valid].mean(0)
    return ((xy - centre) / scale).astype(np.float32), centre, scale
