"""Animation-ready export of sampled 3D motions: rigid rig, floor at y = 0, optional foot locking, BVH + npz.

:func:`export_rigid` fits :mod:`pipeline.rigid` to every motion (in chunks, float64 on the CPU), puts each on its
floor (:mod:`pipeline.ground`), optionally locks the feet, and solves the rotations of the result again with the same
bone lengths (exact: cleaning keeps the lengths). :func:`write_rigid_outputs` writes ``sample_XX.bvh`` (root position
+ rotation channels, constant OFFSETs) for every motion and ``rigid.npz`` for retargeting:

``node_names [K]``, ``node_parents [K]`` (-1 for the root), ``node_joint [K]`` (the skeleton joint at each node, -1
for the virtual root and helper nodes), ``offsets [N, K, 3]`` (rest offsets from the parent), ``rotations
[N, L, K, 4]`` (local quaternions w, x, y, z: node k's rotation in its parent's frame, node 0's in the world),
``root_translation [N, L, 3]``, ``positions [N, L, J, 3]`` (forward kinematics of the above, the joints of
``joint_names``), ``bone_lengths [N, B]`` with ``bones [B, 2]``, ``floor_shift [N]`` (subtracted from y), ``fps``,
``skeleton``, ``loose_bones`` and ``settings`` (JSON).
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass

import numpy as np
import torch

from pipeline.ground import body_height, clean_for_export
from pipeline.rigid import RigidMotions, bone_variation, build_rig, fit_rigid, rigid_bvh
from pipeline.skeletons import Skeleton

CHUNK = 128  # motions fitted at once (float64 rotations of 128 x 120 frames x 28 nodes: about 30 MB)


@dataclass(frozen=True)
class ExportConfig:
    rigid: bool = True  # False: the old BVH with position channels on every joint (free points, as sampled)
    clean_feet: bool = False  # lock the feet during detected contacts (two-bone IK)
    floor_percentile: float = 5.0

    def to_dict(self) -> dict:
        return asdict(self)


def rigid_note(skeleton: Skeleton) -> str:
    """What the rigid export holds for this skeleton, in one sentence (for the catalog and the log)."""
    rig = build_rig(skeleton)
    if rig.is_tree:
        return f"skeleton {skeleton.name} is a tree: every bone keeps one length per motion"
    loose = ", ".join(f"{a}-{b}" for a, b in rig.loose_bones)
    return (f"skeleton {skeleton.name} is not a tree: the BVH follows a spanning tree of its bones; the bones "
            f"closing its cycles ({loose}) are pulled towards one length by loop closure, not held exactly "
            "(loose_bone_cv)")  # fmt: skip


def export_rigid(motions: np.ndarray, skeleton: Skeleton, fps: float, config: ExportConfig | None = None):
    """Fitted rigs ``[RigidMotions, ...]`` (one per chunk of motions), the floor shift ``[N]`` and a summary dict."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny ops: threads only add waiting (8x slower on a busy 2-core host)
    try:
        return _export_rigid(motions, skeleton, fps, config or ExportConfig())
    finally:
        torch.set_num_threads(threads)


def _export_rigid(motions: np.ndarray, skeleton: Skeleton, fps: float, config: ExportConfig):
    raw = np.asarray(motions, np.float64)[:, :, skeleton.body_joints]
    rig = build_rig(skeleton)
    chunks, shifts, errors, variation, contact, loose = [], [], [], [], [], []
    for start in range(0, len(raw), CHUNK):
        part = torch.as_tensor(raw[start : start + CHUNK])
        fitted = fit_rigid(part, skeleton)
        height = torch.as_tensor(body_height(part.numpy()))[:, None, None]
        errors.append(((fitted.positions - part).norm(dim=-1) / height).flatten(1))
        cleaned, info = clean_for_export(fitted.positions.numpy(), rig, fps, lock=config.clean_feet,
                                         percentile=config.floor_percentile)  # fmt: skip
        final = fit_rigid(torch.as_tensor(cleaned), skeleton, lengths=fitted.lengths, loop_iters=0)
        variation.append(bone_variation(final.positions, rig))
        pairs = [_cv(final.positions, a, b) for a, b in rig.loose_pairs]
        loose.append(torch.stack(pairs, 1) if pairs else torch.zeros(len(part), 0, dtype=part.dtype))
        shifts.append(info.pop("floor_shift"))
        contact.append(info.pop("contact_fraction", None))
        chunks.append(final)
    error = torch.cat(errors)
    summary = {
        "note": rigid_note(skeleton),
        "fit_error_mean": round(float(error.mean()), 5),  # body heights, rigid vs sampled joints
        "fit_error_max": round(float(error.max()), 5),
        "tree_bone_variation_max": float(torch.cat(variation).max()),  # (max - min) / mean over time, worst bone
        "loose_bone_cv": {
            f"{rig.joints[a]}-{rig.joints[b]}": round(float(v), 5)
            for (a, b), v in zip(rig.loose_pairs, torch.cat(loose).mean(0), strict=True)
        },
        "settings": config.to_dict(),
        "feet": info["feet"],
    }
    if config.clean_feet and info["feet"]:
        summary["contact_fraction"] = round(float(np.mean(contact)), 4)
    return chunks, np.concatenate(shifts), summary


def _cv(positions: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """``[N]`` std/mean over time of the distance between joints ``a`` and ``b``."""
    length = (positions[:, :, a] - positions[:, :, b]).norm(dim=-1)
    return length.std(1) / length.mean(1).clamp_min(1e-9)


def rigid_npz_bytes(chunks: list[RigidMotions], floor_shift: np.ndarray, skeleton: Skeleton, fps: float,
                    summary: dict) -> bytes:  # fmt: skip
    parts = [chunk.to_npz_dict() for chunk in chunks]
    shared = ("node_names", "node_parents", "node_joint", "joint_names", "bones")
    arrays = {k: parts[0][k] for k in shared}
    arrays.update({k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k not in shared})
    rig = chunks[0].rig
    arrays.update(floor_shift=floor_shift.astype(np.float32), fps=np.array(float(fps)),
                  skeleton=np.array(skeleton.name), loose_bones=np.array(rig.loose_bones, dtype=str).reshape(-1, 2),
                  settings=np.array(json.dumps(summary)))  # fmt: skip
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def write_rigid_outputs(ws, folder: str, motions: np.ndarray, skeleton: Skeleton, fps: float,
                        config: ExportConfig) -> tuple[list[str], dict, np.ndarray]:  # fmt: skip
    """``sample_XX.bvh`` per motion and ``rigid.npz``; returns their paths, the summary and the exported joint
    positions ``[N, L, J, 3]`` (body joints)."""
    chunks, shifts, summary = export_rigid(motions, skeleton, fps, config)
    paths = [ws.write_bytes(f"{folder}/rigid.npz", rigid_npz_bytes(chunks, shifts, skeleton, fps, summary))]
    index = 0
    for chunk in chunks:
        for i in range(len(chunk.root)):
            paths.append(ws.write_text(f"{folder}/sample_{index:02d}.bvh", rigid_bvh(chunk, i, fps)))
            index += 1
    positions = torch.cat([chunk.positions for chunk in chunks]).numpy()
    return paths, summary, positions
