"""Skeleton registry: joint names, bones, left/right pairs and root joints of every body model we use.

Bones are pairs of joint indices; ``mirror_pairs`` lists the joints swapped by a left/right mirror; ``root`` names the
joint(s) whose mean is the body's centre. Look skeletons up with :func:`get_skeleton`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Skeleton:
    name: str
    joints: tuple[str, ...]
    bones: tuple[tuple[int, int], ...]
    mirror_pairs: tuple[tuple[int, int], ...]
    root: tuple[int, ...]
    description: str = ""
    extra_joints: tuple[str, ...] = field(default=())  # non-body "joints" such as a ball (no bones, never mirrored)

    def __post_init__(self) -> None:
        n = len(self.joints)
        if len(set(self.joints)) != n:
            raise ValueError(f"skeleton {self.name}: duplicate joint names")
        for a, b in (*self.bones, *self.mirror_pairs):
            if not (0 <= a < n and 0 <= b < n) or a == b:
                raise ValueError(f"skeleton {self.name}: bad joint pair ({a}, {b}) for {n} joints")
        flat = [j for pair in self.mirror_pairs for j in pair]
        if len(set(flat)) != len(flat):
            raise ValueError(f"skeleton {self.name}: a joint appears in two mirror pairs")
        if not self.root or not all(0 <= r < n for r in self.root):
            raise ValueError(f"skeleton {self.name}: bad root {self.root}")

    @property
    def num_joints(self) -> int:
        return len(self.joints)

    def index(self, joint: str) -> int:
        try:
            return self.joints.index(joint)
        except ValueError:
            raise KeyError(f"skeleton {self.name} has no joint {joint!r}; joints: {', '.join(self.joints)}") from None

    @cached_property
    def mirror_permutation(self) -> np.ndarray:
        """Index array ``p`` such that ``motion[..., p, :]`` swaps every left joint with its right twin."""
        perm = np.arange(self.num_joints)
        for a, b in self.mirror_pairs:
            perm[a], perm[b] = b, a
        return perm

    @cached_property
    def body_joints(self) -> np.ndarray:
        """Indices of joints that belong to the body (all but extra joints such as a ball)."""
        return np.array([i for i, j in enumerate(self.joints) if j not in self.extra_joints])


def _pairs(joints: tuple[str, ...], names: list[tuple[str, str]]) -> tuple[tuple[int, int], ...]:
    return tuple((joints.index(a), joints.index(b)) for a, b in names)


def _left_right_pairs(joints: tuple[str, ...], left: str, right: str) -> tuple[tuple[int, int], ...]:
    """Pair every joint containing ``left`` with the same name written with ``right``."""
    pairs = []
    for i, name in enumerate(joints):
        if left in name:
            pairs.append((i, joints.index(name.replace(left, right))))
    return tuple(pairs)


def _chains(joints: tuple[str, ...], chains: list[list[str]]) -> tuple[tuple[int, int], ...]:
    return tuple((joints.index(a), joints.index(b)) for chain in chains for a, b in zip(chain, chain[1:], strict=False))


# --------------------------------------------------------------------------------------------------------- COCO-17
_COCO17 = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
_COCO17_CHAINS = [
    ["left_ear", "left_eye", "nose", "right_eye", "right_ear"],
    ["left_wrist", "left_elbow", "left_shoulder", "right_shoulder", "right_elbow", "right_wrist"],
    ["left_shoulder", "left_hip", "left_knee", "left_ankle"],
    ["right_shoulder", "right_hip", "right_knee", "right_ankle"],
    ["left_hip", "right_hip"],
    ["left_ear", "left_shoulder"],
    ["right_ear", "right_shoulder"],
]
COCO17 = Skeleton(
    name="coco17",
    joints=_COCO17,
    bones=_chains(_COCO17, _COCO17_CHAINS),
    mirror_pairs=_left_right_pairs(_COCO17, "left_", "right_"),
    root=(_COCO17.index("left_hip"), _COCO17.index("right_hip")),
    description="COCO-17 body keypoints (YOLO-pose, ViTPose, BlazePose mapped)",
)

_COCO17_BALL = (*_COCO17, "ball")
COCO17_BALL = Skeleton(
    name="coco17_ball",
    joints=_COCO17_BALL,
    bones=COCO17.bones,
    mirror_pairs=COCO17.mirror_pairs,
    root=COCO17.root,
    description="COCO-17 plus the centre of the nearest sports ball as an 18th joint (rhythmic gymnastics)",
    extra_joints=("ball",),
)

# ------------------------------------------------------------------------------------------------ NBA (16 joints)
_NBA16 = (
    "Hip", "RHip", "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "Neck", "Nose", "Head",
    "LShoulder", "LElbow", "LWrist", "RShoulder", "RElbow", "RWrist",
)  # fmt: skip
NBA16 = Skeleton(
    name="nba16",
    joints=_NBA16,
    bones=_chains(
        _NBA16,
        [
            ["LWrist", "LElbow", "LShoulder", "Neck"],
            ["RWrist", "RElbow", "RShoulder", "Neck"],
            ["LAnkle", "LKnee", "LHip", "Hip"],
            ["RAnkle", "RKnee", "RHip", "Hip"],
            ["Hip", "Neck", "Nose", "Head"],
        ],
    ),
    mirror_pairs=_left_right_pairs(_NBA16, "L", "R"),
    root=(_NBA16.index("Hip"),),
    description="16-joint AlphaPose-derived body model of the MAS NBA dataset",
)

# ---------------------------------------------------------------------------------------------- APT-36K horse-17
_APT36K17 = (
    "left_eye", "right_eye", "nose", "neck", "root_of_tail",
    "left_shoulder", "left_elbow", "left_front_paw", "right_shoulder", "right_elbow", "right_front_paw",
    "left_hip", "left_knee", "left_back_paw", "right_hip", "right_knee", "right_back_paw",
)  # fmt: skip
APT36K17 = Skeleton(
    name="apt36k17",
    joints=_APT36K17,
    bones=_chains(
        _APT36K17,
        [
            ["neck", "left_eye", "nose", "right_eye", "neck"],
            ["neck", "left_shoulder", "left_elbow", "left_front_paw"],
            ["neck", "right_shoulder", "right_elbow", "right_front_paw"],
            ["neck", "root_of_tail"],
            ["root_of_tail", "left_hip", "left_knee", "left_back_paw"],
            ["root_of_tail", "right_hip", "right_knee", "right_back_paw"],
        ],
    ),
    mirror_pairs=_left_right_pairs(_APT36K17, "left_", "right_"),
    root=(_APT36K17.index("neck"), _APT36K17.index("root_of_tail")),
    description="APT-36K / AP-10K 17 animal keypoints (horses)",
)

SKELETONS: dict[str, Skeleton] = {s.name: s for s in (COCO17, COCO17_BALL, NBA16, APT36K17)}


def get_skeleton(name: str) -> Skeleton:
    try:
        return SKELETONS[name]
    except KeyError:
        raise KeyError(f"unknown skeleton {name!r}; known skeletons: {', '.join(sorted(SKELETONS))}") from None


def mirror(motion: np.ndarray, skeleton: Skeleton, center_x: float = 0.0) -> np.ndarray:
    """Mirror a motion ``[..., J, C]`` (C >= 2; x first): flip x about ``center_x`` and swap left/right joints.

    Extra channels (y, z, confidence) are carried along unchanged. Mirroring twice gives the input back exactly.
    """
    motion = np.asarray(motion)
    if motion.ndim < 2 or motion.shape[-2] != skeleton.num_joints or motion.shape[-1] < 2:
        raise ValueError(
            f"mirror: expected a motion [..., {skeleton.num_joints}, C>=2] for skeleton {skeleton.name}, "
            f"got shape {motion.shape}"
        )
    out = motion[..., skeleton.mirror_permutation, :].copy()
    out[..., 0] = 2.0 * center_x - out[..., 0]
    return out
