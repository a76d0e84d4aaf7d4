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


def matrix_to_euler_zxy(rot: np.ndarray) -> np.ndarray:
    """Degrees ``[..., 3]`` (z, x, y) with ``rot = Rz(z) @ Rx(x) @ Ry(y)``: the BVH channels ``Zrotation Xrotation
    Yrotation`` as Blender and other readers apply them. For ``[L, K, 3, 3]`` the angles are unwrapped over time (the
    first axis) so curves do not jump by 360 degrees."""
    r = np.asarray(rot, np.float64)
    x = np.arcsin(np.clip(r[..., 2, 1], -1.0, 1.0))
    gimbal = np.abs(r[..., 2, 1]) > 1 - 1e-9
    z = np.where(gimbal, np.arctan2(r[..., 1, 0], r[..., 0, 0]), np.arctan2(-r[..., 0, 1], r[..., 1, 1]))
    y = np.where(gimbal, 0.0, np.arctan2(-r[..., 2, 0], r[..., 2, 2]))
    angles = np.stack([z, x, y], -1)
    if angles.ndim >= 3:
        angles = np.unwrap(angles, axis=0)
    return np.degrees(angles)


def _axis_rotation(axis: str, degrees: np.ndarray) -> np.ndarray:
    a = np.radians(degrees)
    c, s, o, i = np.cos(a), np.sin(a), np.zeros_like(a), np.ones_like(a)
    rows = {"X": [i, o, o, o, c, -s, o, s, c], "Y": [c, o, s, o, i, o, -s, o, c], "Z": [c, -s, o, s, c, o, o, o, i]}
    return np.stack(rows[axis], -1).reshape(*a.shape, 3, 3)


def to_rotation_bvh(
    names: tuple[str, ...],
    parents: tuple[int, ...],
    offsets: np.ndarray,
    end_sites: np.ndarray,
    root: np.ndarray,
    local: np.ndarray,
    fps: float,
    scale: float = 100.0,
) -> str:
    """BVH text of a rig: constant ``offsets [K, 3]`` (node 0 is the root; parents before children), the root path
    ``root [L, 3]`` (position channels on the root only) and local rotations ``local [L, K, 3, 3]`` (``Zrotation
    Xrotation Yrotation`` channels on every joint). ``end_sites [K, 3]``: End Site offsets of leaf nodes. Units:
    the motion's times ``scale`` (about centimetres for body-height units)."""
    offsets, end_sites = np.asarray(offsets, np.float64) * scale, np.asarray(end_sites, np.float64) * scale
    root, local = np.asarray(root, np.float64) * scale, np.asarray(local, np.float64)
    k = len(names)
    if offsets.shape != (k, 3) or root.ndim != 2 or local.shape != (len(root), k, 3, 3):
        raise ValueError(f"rotation BVH: shapes do not fit {k} joints: offsets {offsets.shape}, root {root.shape}, "
                         f"rotations {local.shape}")  # fmt: skip
    if not (np.isfinite(root).all() and np.isfinite(local).all() and np.isfinite(offsets).all()):
        raise ValueError("rotation BVH: the motion holds NaN or inf values")
    children: dict[int, list[int]] = {j: [] for j in range(k)}
    for j, p in enumerate(parents[1:], start=1):
        children[p].append(j)
    lines = ["HIERARCHY"]
    order: list[int] = []

    def write(j: int, depth: int) -> None:
        pad = "\t" * depth
        o = offsets[j]
        head = f"ROOT {names[j]}" if j == 0 else f"{pad}JOINT {names[j]}"
        channels = "CHANNELS 6 Xposition Yposition Zposition" if j == 0 else "CHANNELS 3"
        lines.extend([head, f"{pad}{{", f"{pad}\tOFFSET {o[0]:.6f} {o[1]:.6f} {o[2]:.6f}",
                      f"{pad}\t{channels} Zrotation Xrotation Yrotation"])  # fmt: skip
        order.append(j)
        for child in children[j]:
            write(child, depth + 1)
        if not children[j]:
            e = end_sites[j]
            lines.extend([f"{pad}\tEnd Site", f"{pad}\t{{", f"{pad}\t\tOFFSET {e[0]:.6f} {e[1]:.6f} {e[2]:.6f}",
                          f"{pad}\t}}"])  # fmt: skip
        lines.append(f"{pad}}}")

    write(0, 0)
    angles = matrix_to_euler_zxy(local[:, order])  # [L, K, 3]
    lines += ["MOTION", f"Frames: {len(root)}", f"Frame Time: {1.0 / fps:.6f}"]
    for f in range(len(root)):
        values = np.concatenate([root[f], angles[f].ravel()])
        lines.append(" ".join(f"{v:.6f}" for v in values))
    return "\n".join(lines) + "\n"


def read_bvh_positions(text: str) -> tuple[list[str], np.ndarray]:
    """Joint names and world positions ``[L, J, 3]`` of a BVH file (any channels; position channels of a joint
    replace its OFFSET, rotations apply in the order of the CHANNELS line)."""
    header, motion = text.split("MOTION")
    names: list[str] = []
    parents: list[int] = []
    offsets: list[list[float]] = []
    channels: list[list[str]] = []
    stack: list[int | None] = []
    pending: int | None = None
    for line in header.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] in ("ROOT", "JOINT"):
            parents.append(next((s for s in reversed(stack) if s is not None), -1))
            names.append(words[1])
            offsets.append([0.0, 0.0, 0.0])
            channels.append([])
            pending = len(names) - 1
        elif words[0] == "End":
            pending = None
        elif words[0] == "{":
            stack.append(pending)
        elif words[0] == "}":
            stack.pop()
        elif words[0] == "OFFSET" and stack and stack[-1] is not None:
            offsets[stack[-1]] = [float(v) for v in words[1:4]]
        elif words[0] == "CHANNELS":
            channels[-1] = words[2:]
    rows = motion.strip().splitlines()[2:]
    values = np.array([[float(v) for v in row.split()] for row in rows]).reshape(len(rows), -1)
    world = np.zeros((len(rows), len(names), 3))
    world_rot = np.zeros((len(rows), len(names), 3, 3))
    column = 0
    for j, p in enumerate(parents):  # parents come before children in the file
        translation = np.broadcast_to(np.array(offsets[j]), (len(rows), 3)).copy()
        rotation = np.broadcast_to(np.eye(3), (len(rows), 3, 3)).copy()
        for channel in channels[j]:
            v = values[:, column]
            column += 1
            if channel.endswith("position"):
                translation[:, "XYZ".index(channel[0])] = v
            else:
                rotation = rotation @ _axis_rotation(channel[0], v)
        parent_rot = world_rot[:, p] if p >= 0 else np.eye(3)
        world[:, j] = (world[:, p] if p >= 0 else 0.0) + (parent_rot @ translation[..., None])[..., 0]
        world_rot[:, j] = parent_rot @ rotation
    return names, world
