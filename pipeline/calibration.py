"""Calibrated cameras: a Qualisys ``.qca.txt`` file read exactly as Pose2Sim's ``calibration.py`` reads it.

Pose2Sim (``read_qca`` + ``calib_qca_fun``, pose2sim 0.10.49) does, per camera of model ``video`` or ``none``:
- image size ``(right - left + 1, bottom - top + 1)`` of ``fov_video``, divided by the binning factor;
- intrinsics: focal lengths and principal point divided by 64 (Qualisys stores them in 1/64 sensor units) and by the
  binning factor, the principal point shifted by the ``fov_video`` origin; the distortion coefficients are divided
  by 64 too (as Pose2Sim does; they are then negligible and Pose2Sim triangulates without undistorting);
- extrinsics: the transform's rotation read by column and its position in millimetres → metres; then from the
  Qualisys world-centred pose to the OpenCV camera-centred one (``R ← Rᵀ``, ``t ← −R t``), then rotated by π about
  the camera's x axis (Qualisys cameras look along −z with y up; OpenCV cameras along +z with y down);
- cameras sorted by name in natural order.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class CalibrationError(ValueError):
    """A calibration file that cannot be read."""


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: ``x ~ K (R X + t)`` with X in metres, x in pixels (OpenCV convention)."""

    name: str
    size: tuple[float, float]  # (width, height) in pixels
    K: np.ndarray  # [3, 3]
    dist: np.ndarray  # [4] k1, k2, p1, p2
    R: np.ndarray  # [3, 3] world → camera
    t: np.ndarray  # [3] metres
    residual: float = 0.0  # Qualisys' average residual (mm)

    @property
    def P(self) -> np.ndarray:
        """The 3x4 projection matrix ``K [R | t]``."""
        return self.K @ np.concatenate([self.R, self.t[:, None]], 1)

    @property
    def centre(self) -> np.ndarray:
        """The camera's position in world coordinates (metres)."""
        return -self.R.T @ self.t


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _float(tag: ET.Element, name: str, path: Path) -> float:
    value = tag.get(name)
    if value is None:
        raise CalibrationError(f"{path}: <{tag.tag}> has no attribute {name!r}; is this a Qualisys .qca.txt file?")
    return float(value)


def rotation_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def read_qca(path: str | Path, binning_factor: int = 1) -> list[Camera]:
    """The video cameras of a Qualisys ``.qca.txt`` calibration, in Pose2Sim's conventions (see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"{path}: calibration file not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise CalibrationError(f"{path}: not a Qualisys .qca.txt (XML) file: {exc}") from exc
    cameras = []
    for tag in root.findall("cameras/camera"):
        if not any(model in tag.get("model", "").lower() for model in ("video", "none")):
            continue  # marker cameras: Pose2Sim keeps video cameras only
        fov, intr, tr = tag.find("fov_video"), tag.find("intrinsic"), tag.find("transform")
        if fov is None or intr is None or tr is None:
            raise CalibrationError(f"{path}: camera {tag.get('serial')!r} lacks fov_video, intrinsic or transform")
        left, top = _float(fov, "left", path), _float(fov, "top", path)
        size = ((_float(fov, "right", path) - left + 1) / binning_factor,
                (_float(fov, "bottom", path) - top + 1) / binning_factor)  # fmt: skip
        scale = 64.0 * binning_factor
        fu, fv = _float(intr, "focalLengthU", path) / scale, _float(intr, "focalLengthV", path) / scale
        cu = _float(intr, "centerPointU", path) / scale - left
        cv = _float(intr, "centerPointV", path) / scale - top
        K = np.array([[fu, 0.0, cu], [0.0, fv, cv], [0.0, 0.0, 1.0]])
        names = ("radialDistortion1", "radialDistortion2", "tangentalDistortion1", "tangentalDistortion2")
        dist = np.array([_float(intr, k, path) for k in names]) / scale
        rows = np.array([_float(tr, f"r{i}{j}", path) for i in (1, 2, 3) for j in (1, 2, 3)]).reshape(3, 3)
        position = np.array([_float(tr, k, path) for k in ("x", "y", "z")]) / 1000.0
        r_qualisys = rows.T  # read by column
        r_cam = r_qualisys.T  # world-centred → camera-centred: Qc = R Q + t
        t_cam = -r_cam @ position
        flip = rotation_x(np.pi)
        name, residual = tag.get("serial", f"cam{len(cameras)}"), float(tag.get("avg-residual", 0.0))
        cameras.append(Camera(name, size, K, dist, R=flip @ r_cam, t=flip @ t_cam, residual=residual))
    if not cameras:
        raise CalibrationError(f"{path}: no video camera (model 'video' or 'none') in the calibration")
    return sorted(cameras, key=lambda c: _natural_key(c.name))
