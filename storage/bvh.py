"""BVH export of joint-position motions (opens in Blender and other BVH readers).

The hierarchy is a spanning tree of the skeleton's bones, grown from a virtual ``Root`` joint placed at the mean of
the root joints; joints the bones do not reach hang from ``Root``. Each joint carries position channels (its offset
from its parent, frame by frame) and zero rotations, so the file reproduces the joint positions exactly without
inventing joint rotations that the data does not contain. Units: the motion's (about one unit per body height),
scaled by ``scale``.
"""

from __future__ import annotations

from collections import deque

import numpy as np


def bvh_tree(num_joints: int, bones: tuple[tuple[int, int], ...], root: tuple[int, ...]) -> list[int]:
    """Parent of each joint (-1 for joints under the virtual root), by breadth-first search from the root joints."""
    neighbours: dict[int, list[int]] = {j: [] for j in range(num_joints)}
    for a, b in bones:
        neighbours[a].append(b)
        neighbours[b].append(a)
    parent = [-2] * num_joints
    queue = deque(root)
    for r in root:
        parent[r] = -1
    while queue:
        joint = queue.popleft()
        for other in neighbours[joint]:
            if parent[other] == -2:
                parent[other] = joint
                queue.append(other)
    return [-1 if p == -2 else p for p in parent]


def to_bvh(
    motion: np.ndarray,
    joint_names: tuple[str, ...],
    bones: tuple[tuple[int, int], ...],
    root: tuple[int, ...],
    fps: float,
    scale: float = 100.0,
) -> str:
    """BVH text of ``motion [L, J, 3]`` (y up)."""
    motion = np.asarray(motion, dtype=np.float64) * scale
    if motion.ndim != 3 or motion.shape[1] != len(joint_names) or motion.shape[2] != 3:
        raise ValueError(f"BVH export expects [L, {len(joint_names)}, 3], got {motion.shape}")
    if not np.isfinite(motion).all():
        raise ValueError("BVH export: the motion holds NaN or inf values")
    parent = bvh_tree(len(joint_names), bones, root)
    root_pos = motion[:, list(root)].mean(1)  # [L, 3]
    children: dict[int, list[int]] = {j: [] for j in range(-1, len(joint_names))}
    for j, p in enumerate(parent):
        children[p].append(j)

    def position(j: int) -> np.ndarray:
        return root_pos if j == -1 else motion[:, j]

    lines = ["HIERARCHY", "ROOT Root", "{", "\tOFFSET 0.0 0.0 0.0",
             "\tCHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation"]  # fmt: skip
    order: list[int] = []

    def write(j: int, depth: int) -> None:
        pad = "\t" * depth
        offset = motion[0, j] - position(parent[j])[0]
        lines.extend(
            [
                f"{pad}JOINT {joint_names[j]}",
                f"{pad}{{",
                f"{pad}\tOFFSET {offset[0]:.6f} {offset[1]:.6f} {offset[2]:.6f}",
                f"{pad}\tCHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation",
            ]
        )
        order.append(j)
        for child in children[j]:
            write(child, depth + 1)
        if not children[j]:
            lines.extend([f"{pad}\tEnd Site", f"{pad}\t{{", f"{pad}\t\tOFFSET 0.0 0.0 0.0", f"{pad}\t}}"])
        lines.append(f"{pad}}}")

    for child in children[-1]:
        write(child, 1)
    lines.append("}")
    lines += ["MOTION", f"Frames: {len(motion)}", f"Frame Time: {1.0 / fps:.6f}"]
    zeros = "0.000000 0.000000 0.000000"
    for f in range(len(motion)):
        values = [" ".join(f"{v:.6f}" for v in root_pos[f]) + " " + zeros]
        for j in order:
            local = motion[f, j] - position(parent[j])[f]
            values.append(" ".join(f"{v:.6f}" for v in local) + " " + zeros)
        lines.append(" ".join(values))
    return "\n".join(lines) + "\n"


def read_bvh_positions(text: str) -> tuple[list[str], np.ndarray]:
    """Joint names and world positions ``[L, J, 3]`` of a BVH written by :func:`to_bvh` (position channels only)."""
    header, motion = text.split("MOTION")
    names: list[str] = []
    parents: list[int] = []
    stack: list[int | None] = []
    pending: int | None = None
    for line in header.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] in ("ROOT", "JOINT"):
            parents.append(next((s for s in reversed(stack) if s is not None), -1))
            names.append(words[1])
            pending = len(names) - 1
        elif words[0] == "End":
            pending = None
        elif words[0] == "{":
            stack.append(pending)
        elif words[0] == "}":
            stack.pop()
    rows = motion.strip().splitlines()[2:]
    local = np.array([[float(v) for v in row.split()] for row in rows]).reshape(len(rows), len(names), 6)[..., :3]
    world = np.zeros_like(local)
    for j, p in enumerate(parents):  # parents come before children in the file
        world[:, j] = local[:, j] + (world[:, p] if p >= 0 else 0.0)
    return names, world
