"""Keypoints of one skeleton made from another's: nba16 from COCO-17 or Halpe-26, and user skeletons' ``derive`` maps.

A target joint is either copied from the source joint of the same name or derived by a formula: an affine
combination of source joints (weights summing to 1, so a derived joint moves with the body under any shift, rotation
or scaling of the image), with optional fall-back formulas tried in order when a source joint of the first is
missing. **The confidence of a derived joint is the minimum confidence of the source joints its formula uses**: it
is no surer than its weakest input. A joint for which every formula lacks a source is missing (confidence 0, NaN
position), never a made-up point. A source joint counts as missing when its confidence is 0 or its position is not
finite.

nba16 (the MAS NBA body model, AlphaPose-derived) from COCO-17; its other 13 joints are COCO joints, copied:

- ``Hip`` (pelvis) = (left_hip + right_hip) / 2, the hip midpoint (Halpe-26's own ``hip`` joint is the same point).
- ``Neck`` = (left_shoulder + right_shoulder) / 2, the shoulder midpoint (Halpe-26's ``neck`` lies on it).
- ``Head`` (the top of the head, Halpe-26's ``head``) = E + 0.5 (E - Neck) = 1.5 E - 0.5 Neck, with E the ear
  midpoint (left_ear + right_ear) / 2, or the eye midpoint when an ear is missing. The factor 0.5: the crown of an
  adult's head lies about half as far above the ears as the ears lie above the shoulder line (about 12 cm vs about
  24 cm), along the same neck-to-head direction.

nba16 from Halpe-26: ``Hip``, ``Neck`` and ``Head`` are Halpe's ``hip``, ``neck`` and ``head``; the rest copied.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.skeletons import Formula, Skeleton, SkeletonError, get_skeleton

_COCO_TO_NBA16 = {
    "Hip": "left_hip right_hip", "RHip": "right_hip", "RKnee": "right_knee", "RAnkle": "right_ankle",
    "LHip": "left_hip", "LKnee": "left_knee", "LAnkle": "left_ankle", "Neck": "left_shoulder right_shoulder",
    "Nose": "nose", "LShoulder": "left_shoulder", "LElbow": "left_elbow", "LWrist": "left_wrist",
    "RShoulder": "right_shoulder", "RElbow": "right_elbow", "RWrist": "right_wrist",
}  # fmt: skip


def _mean(names: str) -> tuple[tuple[str, float], ...]:
    parts = names.split()
    return tuple((p, 1.0 / len(parts)) for p in parts)


def _head_top(ear_or_eye: str) -> tuple[tuple[str, float], ...]:
    """1.5 E - 0.5 Neck with E the midpoint of the left and right ``ear_or_eye`` and Neck the shoulder midpoint."""
    return ((f"left_{ear_or_eye}", 0.75), (f"right_{ear_or_eye}", 0.75), ("left_shoulder", -0.25),
            ("right_shoulder", -0.25))  # fmt: skip


NBA16_FROM_COCO17: dict[str, Formula] = {
    **{joint: (_mean(names),) for joint, names in _COCO_TO_NBA16.items()},
    "Head": (_head_top("ear"), _head_top("eye")),
}
NBA16_FROM_HALPE26: dict[str, Formula] = {
    **NBA16_FROM_COCO17,
    "Hip": ((("hip", 1.0),),),
    "Neck": ((("neck", 1.0),),),
    "Head": ((("head", 1.0),),),
}
BUILTIN_MAPS: dict[tuple[str, str], dict[str, Formula]] = {
    ("coco17", "nba16"): NBA16_FROM_COCO17,
    ("halpe26", "nba16"): NBA16_FROM_HALPE26,
}


@dataclass(frozen=True)
class KeypointMap:
    """Turns keypoints ``[N, J_source, 3]`` of ``source`` into ``[N, J_target, 3]`` of the target's body joints
    (extra joints such as a ball are filled by the pose stage, not here)."""

    source: Skeleton
    target: Skeleton
    # per target body joint: alternatives, each ((source index, weight), ...)
    formulas: tuple[tuple[tuple[tuple[int, float], ...], ...], ...]

    @property
    def is_identity(self) -> bool:
        n = self.source.num_joints
        return len(self.formulas) == n and all(f == (((j, 1.0),),) for j, f in enumerate(self.formulas))

    def apply(self, keypoints: np.ndarray) -> np.ndarray:
        keypoints = np.asarray(keypoints, np.float32)
        if keypoints.ndim != 3 or keypoints.shape[1:] != (self.source.num_joints, 3):
            raise ValueError(f"keypoint map {self.source.name} -> {self.target.name}: expected keypoints "
                             f"[N, {self.source.num_joints}, 3], got {keypoints.shape}")  # fmt: skip
        n = len(keypoints)
        out = np.full((n, len(self.formulas), 3), np.nan, np.float32)
        out[..., 2] = 0.0
        present = (keypoints[..., 2] > 0) & np.isfinite(keypoints).all(-1)
        for j, alternatives in enumerate(self.formulas):
            todo = np.ones(n, bool)
            for terms in alternatives:
                idx = [i for i, _ in terms]
                weights = np.array([w for _, w in terms], np.float32)
                usable = todo & present[:, idx].all(1)
                if usable.any():
                    xy = np.einsum("nkc,k->nc", keypoints[usable][:, idx, :2], weights)
                    out[usable, j, :2] = xy
                    out[usable, j, 2] = keypoints[usable][:, idx, 2].min(1)
                todo &= ~usable
        return out


def _formulas(source: Skeleton, target: Skeleton, derived: dict[str, Formula], how: str) -> KeypointMap:
    rows = []
    for joint in (target.joints[int(j)] for j in target.body_joints):
        formula = derived.get(joint) or ((((joint, 1.0),),) if joint in source.joints else None)
        if formula is None:
            raise SkeletonError(f"skeleton {target.name}: joint {joint!r} is not a {source.name} keypoint and has no "
                                f"formula; {how}")  # fmt: skip
        alternatives = []
        for terms in formula:
            missing = [name for name, _ in terms if name not in source.joints]
            if missing or not terms:
                raise SkeletonError(f"skeleton {target.name}: the formula of {joint!r} uses {missing or 'nothing'}, "
                                    f"not {source.name} keypoints ({', '.join(source.joints)})")  # fmt: skip
            total = sum(w for _, w in terms)
            if abs(total - 1.0) > 1e-6:
                raise SkeletonError(f"skeleton {target.name}: the weights of {joint!r} sum to {total:g}; they must "
                                    "sum to 1 (an affine combination moves with the body)")  # fmt: skip
            alternatives.append(tuple((source.joints.index(name), float(w)) for name, w in terms))
        rows.append(tuple(alternatives))
    unknown = [j for j in derived if j not in target.joints]
    if unknown:
        raise SkeletonError(f"skeleton {target.name}: derive names {unknown}, which are not among its joints")
    return KeypointMap(source, target, tuple(rows))


def keypoint_map(source: Skeleton | str, target: Skeleton) -> KeypointMap:
    """How the pose stage makes ``target``'s body joints from a backend's ``source`` keypoints; a clear
    :class:`SkeletonError` when it cannot (a joint without a source or formula, a bad formula)."""
    source = get_skeleton(source) if isinstance(source, str) else source
    if target.keypoints_from:
        if target.keypoints_from != source.name:
            raise SkeletonError(f"skeleton {target.name} is made from {target.keypoints_from} keypoints "
                                f"(keypoints_from) but the pose backend gives {source.name} keypoints; pick a backend "
                                f"that gives {target.keypoints_from}, or change keypoints_from")  # fmt: skip
        return _formulas(source, target, dict(target.derive), "add it to the skeleton's derive: mapping")
    builtin = BUILTIN_MAPS.get((source.name, target.name))
    if builtin is not None:
        return _formulas(source, target, builtin, "")
    how = (f"give the skeleton `keypoints_from: {source.name}` and a `derive:` formula for it, or pick a backend "
           f"that gives {target.name} keypoints")  # fmt: skip
    return _formulas(source, target, {}, how)
