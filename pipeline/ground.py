"""Ground and foot contacts for export: the floor from the feet, put at y = 0, and optional foot locking.

* :func:`floor_height`: a low percentile (default 5th) over frames of the lower foot's height, so a few frames of a
  foot dipping through the floor do not drag it down; :func:`put_on_floor` shifts each motion so the floor is y = 0.
  The feet are the skeleton's ankles (or paws): the floor is where the ankles rest, not the soles.
* :func:`foot_contacts`: a foot is in contact where it is near the floor (``height`` body heights) and slow
  (``speed`` body heights per second), for at least ``min_frames`` frames.
* :func:`lock_feet`: during each contact a foot is held at its mean position over the contact (not below the floor),
  blended in and out over ``blend`` frames; the leg follows by two-bone IK (hip fixed, knee in the leg's own plane),
  so bone lengths do not change. Where the hip moves too far for the leg to reach the held point, the foot stops at
  the nearest point it reaches (the leg straight), so it may slide a little there.

Motions are numpy ``[N, L, J, 3]`` (the rig's body joints, y up); export-time work, so plain loops over motions.
"""

from __future__ import annotations

import numpy as np

from pipeline.rigid import Rig

FOOT_WORDS = ("ankle", "paw")


def foot_joints(rig: Rig) -> list[int]:
    """Indices of the rig's feet: ankles, else paws (empty when the skeleton has none)."""
    for word in FOOT_WORDS:
        feet = [j for j, name in enumerate(rig.joints) if word in name.lower()]
        if feet:
            return feet
    return []


def body_height(motions: np.ndarray) -> np.ndarray:
    """``[N]`` median over frames of the vertical extent of the body."""
    y = np.asarray(motions)[..., 1]
    return np.maximum(np.median(y.max(-1) - y.min(-1), axis=1), 1e-6)


def floor_height(motions: np.ndarray, rig: Rig, percentile: float = 5.0) -> np.ndarray:
    """``[N]`` floor height of each motion: a low percentile of the lower foot's height (the lowest joint's
    without feet)."""
    m = np.asarray(motions, np.float64)
    feet = foot_joints(rig)
    lowest = m[:, :, feet, 1].min(-1) if feet else m[..., 1].min(-1)
    return np.percentile(lowest, percentile, axis=1)


def put_on_floor(motions: np.ndarray, rig: Rig, percentile: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Motions shifted so their floor is y = 0, and the shift applied ``[N]`` (subtracted from y)."""
    floor = floor_height(motions, rig, percentile)
    out = np.array(motions, np.float64, copy=True)
    out[..., 1] -= floor[:, None, None]
    return out, floor


def foot_contacts(
    motions: np.ndarray, rig: Rig, fps: float, height: float = 0.05, speed: float = 0.3, min_frames: int = 2
) -> np.ndarray:
    """``[N, L, F]`` contact flags of the feet (:func:`foot_joints` order) of motions standing on y = 0."""
    m = np.asarray(motions, np.float64)
    feet = foot_joints(rig)
    if not feet:
        return np.zeros((*m.shape[:2], 0), bool)
    scale = body_height(m)[:, None, None]
    xz = m[:, :, feet][..., [0, 2]]
    step = np.linalg.norm(np.diff(xz, axis=1), axis=-1) * fps / scale  # [N, L-1, F] body heights per second
    velocity = np.concatenate([step[:, :1], np.maximum(step[:, 1:], step[:, :-1]), step[:, -1:]], 1)
    low = m[:, :, feet, 1] / scale < height
    contact = low & (velocity < speed)
    for n, f in np.ndindex(contact.shape[0], contact.shape[2]):  # drop contacts shorter than min_frames
        for start, end in _runs(contact[n, :, f]):
            if end - start < min_frames:
                contact[n, start:end, f] = False
    return contact


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True values."""
    padded = np.concatenate([[False], flags, [False]]).astype(int)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2], edges[1::2], strict=True))


def _parent_joint(rig: Rig, joint: int) -> int:
    b = rig.bone_child.index(joint)
    return rig.bone_parent[b]


def lock_feet(motions: np.ndarray, rig: Rig, contacts: np.ndarray, blend: int = 3) -> np.ndarray:
    """Motions with each foot held still during its contacts (two-bone IK moves the knee; lengths unchanged)."""
    m = np.array(motions, np.float64, copy=True)
    feet = foot_joints(rig)
    length = m.shape[1]
    for f, foot in enumerate(feet):
        knee = _parent_joint(rig, foot)
        hip = _parent_joint(rig, knee) if knee >= 0 else -1
        if knee < 0 or hip < 0:  # a foot without a two-bone leg: nothing to bend
            continue
        for n in range(len(m)):
            target = m[n, :, foot].copy()
            weight = np.zeros(length)
            for start, end in _runs(contacts[n, :, f]):
                held = m[n, start:end, foot].mean(0)
                held[1] = max(held[1], 0.0)  # never under the floor
                for t in range(max(start - blend, 0), min(end + blend, length)):
                    w = 1.0 if start <= t < end else 1.0 - (start - t if t < start else t - end + 1) / (blend + 1)
                    if w > weight[t]:
                        weight[t] = w
                        target[t] = (1 - w) * m[n, t, foot] + w * held
            moved = weight > 0
            if moved.any():
                m[n, moved] = _two_bone_ik(m[n, moved], hip, knee, foot, target[moved])
    return m


def _two_bone_ik(pose: np.ndarray, hip: int, knee: int, foot: int, target: np.ndarray) -> np.ndarray:
    """Poses ``[T, J, 3]`` with ``foot`` moved to ``target [T, 3]`` (clamped to the leg's reach) and ``knee`` placed
    so both bones keep their lengths, in the plane of the hip, the target and the old knee; the foot's own children
    (toes, if any) are not moved."""
    out = pose.copy()
    h, k0, a0 = pose[:, hip], pose[:, knee], pose[:, foot]
    upper = np.linalg.norm(k0 - h, axis=-1)
    lower = np.linalg.norm(a0 - k0, axis=-1)
    to_target = target - h
    distance = np.linalg.norm(to_target, axis=-1)
    reach = np.clip(distance, np.abs(upper - lower) + 1e-6, upper + lower - 1e-6)
    axis = to_target / np.maximum(distance, 1e-9)[:, None]
    pole = k0 - h
    pole = pole - (pole * axis).sum(-1, keepdims=True) * axis
    pole_norm = np.linalg.norm(pole, axis=-1, keepdims=True)
    fallback = np.cross(axis, np.array([1.0, 0.0, 0.0]))  # a straight leg: bend the knee forward-ish
    pole = np.where(pole_norm > 1e-9, pole / np.maximum(pole_norm, 1e-12), fallback / np.maximum(
        np.linalg.norm(fallback, axis=-1, keepdims=True), 1e-12))  # fmt: skip
    cos = np.clip((upper**2 + reach**2 - lower**2) / (2 * upper * reach), -1.0, 1.0)
    out[:, knee] = h + upper[:, None] * (cos[:, None] * axis + np.sqrt(1 - cos**2)[:, None] * pole)
    out[:, foot] = h + reach[:, None] * axis
    return out


def clean_for_export(
    positions: np.ndarray, rig: Rig, fps: float, lock: bool = False, percentile: float = 5.0
) -> tuple[np.ndarray, dict]:
    """Floor at y = 0 and, with ``lock``, feet held during contacts; returns positions and a summary (the floor
    shift ``[N]``, the feet, and the fraction of foot-frames in contact when locking)."""
    grounded, floor = put_on_floor(positions, rig, percentile)
    info = {"floor_shift": floor, "feet": [rig.joints[j] for j in foot_joints(rig)]}
    if lock and info["feet"]:
        contacts = foot_contacts(grounded, rig, fps)
        grounded = lock_feet(grounded, rig, contacts)
        info["contact_fraction"] = float(contacts.mean())
    return grounded, info
