"""Pictures for people: 3D motions with an orbiting camera (mp4), side-by-side views and 2D pose strips (PNG).

Everything renders off-screen with matplotlib's Agg backend; videos are written with OpenCV.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import cv2  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.skeletons import Skeleton  # noqa: E402
from pipeline.video import check_written  # noqa: E402

LEFT, RIGHT, CENTRE = "#1f77b4", "#d62728", "#444444"


def _side(joint: str) -> str:
    """'left', 'right' or 'centre' from a joint name (``left_knee`` / ``LKnee`` style)."""
    for side in ("left", "right"):
        if joint.lower().startswith(side) or (joint[:1] == side[0].upper() and joint[1:2].isupper()):
            return side
    return "centre"


def _bone_colour(skeleton: Skeleton, a: int, b: int) -> str:
    sides = {_side(skeleton.joints[a]), _side(skeleton.joints[b])}
    return {"left": LEFT, "right": RIGHT}.get(sides.pop(), CENTRE) if len(sides) == 1 else CENTRE


def _fig_to_rgb(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def write_video(frames: list[np.ndarray], path: str, fps: float) -> str:
    """Write RGB frames to an mp4 file (``mp4v``)."""
    if not frames:
        raise ValueError("no frames to write")
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot open a video writer for {path}")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    check_written(path, len(frames))  # OpenCV's writer says nothing of a full disk: read the file back
    return path


def render_motion_3d(
    motion: np.ndarray, skeleton: Skeleton, path: str, fps: float = 30.0, orbit_degrees: float = 360.0, title: str = ""
) -> str:
    """An mp4 of a 3D motion ``[L, J, 3]`` (y up) seen by a camera orbiting ``orbit_degrees`` over the clip."""
    motion = np.asarray(motion, dtype=np.float64)
    length = len(motion)
    centre = motion.reshape(-1, 3).mean(0)
    radius = max(float(np.abs(motion - centre).max()), 1e-3)
    ground = motion[..., 1].min()
    fig = plt.figure(figsize=(4, 4), dpi=100)
    ax = fig.add_subplot(projection="3d")
    frames = []
    for f in range(length):
        ax.cla()
        ax.set_xlim(centre[0] - radius, centre[0] + radius)
        ax.set_ylim(centre[2] - radius, centre[2] + radius)
        ax.set_zlim(centre[1] - radius, centre[1] + radius)
        ax.set_box_aspect((1, 1, 1))
        ax.set_axis_off()
        grid = np.linspace(-radius, radius, 5)
        for g in grid:
            ax.plot([centre[0] + g] * 2, [centre[2] - radius, centre[2] + radius], [ground] * 2, c="#dddddd", lw=0.6)
            ax.plot([centre[0] - radius, centre[0] + radius], [centre[2] + g] * 2, [ground] * 2, c="#dddddd", lw=0.6)
        pose = motion[f]
        for a, b in skeleton.bones:
            ax.plot([pose[a, 0], pose[b, 0]], [pose[a, 2], pose[b, 2]], [pose[a, 1], pose[b, 1]],
                    c=_bone_colour(skeleton, a, b), lw=2.2)  # fmt: skip
        ax.scatter(pose[:, 0], pose[:, 2], pose[:, 1], s=6, c="black")
        ax.view_init(elev=15, azim=-90 + orbit_degrees * f / max(length - 1, 1))
        ax.set_title(f"{title} frame {f + 1}/{length}", fontsize=8)
        frames.append(_fig_to_rgb(fig))
    plt.close(fig)
    return write_video(frames, path, fps)


def plot_pose_2d(ax, xy: np.ndarray, skeleton: Skeleton, conf: np.ndarray | None = None, threshold: float = 0.0):
    """Draw one 2D pose (y up) on ``ax``; joints below ``threshold`` are drawn hollow and their bones dashed."""
    ok = np.ones(len(xy), bool) if conf is None else conf >= threshold
    for a, b in skeleton.bones:
        style = "-" if ok[a] and ok[b] else ":"
        ax.plot(xy[[a, b], 0], xy[[a, b], 1], style, c=_bone_colour(skeleton, a, b), lw=1.8)
    ax.scatter(xy[ok, 0], xy[ok, 1], s=8, c="black", zorder=3)
    ax.scatter(xy[~ok, 0], xy[~ok, 1], s=10, facecolors="none", edgecolors="grey", zorder=3)


def views_strip(
    views: np.ndarray, skeleton: Skeleton, path: str, frames: int = 6, titles: list[str] | None = None
) -> str:
    """PNG grid with one row per view ``[V, L, J, 2]`` and ``frames`` evenly spaced frames per row."""
    views = np.asarray(views)
    num_views, length = views.shape[:2]
    picks = np.linspace(0, length - 1, min(frames, length)).astype(int)
    fig, axes = plt.subplots(num_views, len(picks), figsize=(1.6 * len(picks), 1.8 * num_views), squeeze=False)
    # every cell is centred on its pose with one common half-size, so a walking person stays large and in view
    centres = views.mean(axis=2)  # [V, L, 2]
    half = 1.1 * float(np.abs(views - centres[:, :, None]).max())
    for v in range(num_views):
        for k, f in enumerate(picks):
            ax = axes[v, k]
            plot_pose_2d(ax, views[v, f], skeleton)
            ax.set_xlim(centres[v, f, 0] - half, centres[v, f, 0] + half)
            ax.set_ylim(centres[v, f, 1] - half, centres[v, f, 1] + half)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_ylabel(titles[v] if titles else f"view {v}", fontsize=7)
            if v == 0:
                ax.set_title(f"frame {f}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=90)
    plt.close(fig)
    return path


def azimuth_label(azimuth: float) -> str:
    return f"az {math.degrees(azimuth):.0f}°"
