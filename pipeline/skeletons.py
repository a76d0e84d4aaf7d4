"""Skeleton registry: joint names, bones, left/right pairs and root joints of every body model we use.

Bones are pairs of joint indices; ``mirror_pairs`` lists the joints swapped by a left/right mirror; ``root`` names the
joint(s) whose mean is the body's centre. Look skeletons up with :func:`get_skeleton`.

A dataset config may define its own skeleton (:class:`pipeline.config.SkeletonSpec`); every artifact made with a
skeleton stores its definition (:meth:`Skeleton.to_dict`: pose files, datasets, checkpoints, sample sets), and
:func:`resolve_skeleton` reads it back, so no stage depends on a registry entry for a user's skeleton and a stored
definition that disagrees with the built-in skeleton of the same name fails clearly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

# A derived joint: alternatives tried in order, each an affine combination of source joints ((joint, weight), ...)
Terms = tuple[tuple[str, float], ...]
Formula = tuple[Terms, ...]


class SkeletonError(ValueError):
    """A skeleton that is unknown, badly defined, or does not match the data or model it is used with."""


@dataclass(frozen=True)
class Skeleton:
    name: str
    joints: tuple[str, ...]
    bones: tuple[tuple[int, int], ...]
    mirror_pairs: tuple[tuple[int, int], ...]
    root: tuple[int, ...]
    description: str = ""
    extra_joints: tuple[str, ...] = field(default=())  # non-body "joints" such as a ball (no bones, never mirrored)
    # how the pose stage makes this skeleton from a backend's keypoints (user skeletons; built-in maps live in
    # pipeline.keypoint_maps): the source skeleton's name and, per derived joint, its formula (joints not listed are
    # copied from the source joint of the same name)
    keypoints_from: str = ""
    derive: tuple[tuple[str, Formula], ...] = field(default=())

    def __post_init__(self) -> None:
        n = len(self.joints)
        if n == 0:
            raise SkeletonError(f"skeleton {self.name}: no joints")
        if len(set(self.joints)) != n:
            raise SkeletonError(f"skeleton {self.name}: duplicate joint names")
        for a, b in (*self.bones, *self.mirror_pairs):
            if not (0 <= a < n and 0 <= b < n) or a == b:
                raise SkeletonError(f"skeleton {self.name}: bad joint pair ({a}, {b}) for {n} joints")
        flat = [j for pair in self.mirror_pairs for j in pair]
        if len(set(flat)) != len(flat):
            raise SkeletonError(f"skeleton {self.name}: a joint appears in two mirror pairs")
        if not self.root or not all(0 <= r < n for r in self.root):
            raise SkeletonError(f"skeleton {self.name}: bad root {self.root}")
        unknown = [j for j in self.extra_joints if j not in self.joints]
        if unknown:
            raise SkeletonError(f"skeleton {self.name}: extra joints {unknown} are not among its joints")
        extra = {self.joints.index(j) for j in self.extra_joints}
        if any(r in extra for r in self.root) or len(extra) == n:
            raise SkeletonError(f"skeleton {self.name}: the root must be a body joint, not an extra joint")
        touching = [self.joints[j] for pair in (*self.bones, *self.mirror_pairs) for j in pair if j in extra]
        if touching:
            raise SkeletonError(f"skeleton {self.name}: extra joints ({', '.join(sorted(set(touching)))}) take no "
                                "bones and no mirror pairs")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """The definition by joint names (JSON-ready); :meth:`from_dict` reads it back."""
        names = self.joints
        out: dict[str, Any] = {
            "name": self.name,
            "joints": list(names),
            "bones": [[names[a], names[b]] for a, b in self.bones],
            "mirror_pairs": [[names[a], names[b]] for a, b in self.mirror_pairs],
            "root": [names[r] for r in self.root],
            "extra_joints": list(self.extra_joints),
            "description": self.description,
        }
        if self.keypoints_from:
            out["keypoints_from"] = self.keypoints_from
            out["derive"] = {joint: [dict(terms) for terms in formula] for joint, formula in self.derive}
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Skeleton:
        """A skeleton from a definition by joint names (:meth:`to_dict`, or a dataset config's ``skeleton:``)."""
        try:
            joints = tuple(str(j) for j in data["joints"])
            name = str(data["name"])
        except (KeyError, TypeError) as exc:
            raise SkeletonError(f"a skeleton definition needs 'name' and 'joints' ({exc})") from None

        def index(joint: str, what: str) -> int:
            if joint not in joints:
                raise SkeletonError(f"skeleton {name}: {what} names joint {joint!r}, which is not among its joints "
                                    f"({', '.join(joints)})")  # fmt: skip
            return joints.index(joint)

        def pairs(key: str) -> tuple[tuple[int, int], ...]:
            out = []
            for pair in data.get(key) or ():
                if len(pair) != 2:
                    raise SkeletonError(f"skeleton {name}: each of {key} is a pair of joint names, got {pair!r}")
                out.append((index(str(pair[0]), key), index(str(pair[1]), key)))
            return tuple(out)

        root = data.get("root")
        roots = [root] if isinstance(root, str) else list(root or [])
        derive = tuple(
            (str(joint), tuple(tuple((str(k), float(v)) for k, v in terms.items()) for terms in formula))
            for joint, formula in (data.get("derive") or {}).items()
        )
        return cls(name=name, joints=joints, bones=pairs("bones"), mirror_pairs=pairs("mirror_pairs"),
                   root=tuple(index(str(r), "root") for r in roots), description=str(data.get("description", "")),
                   extra_joints=tuple(str(j) for j in data.get("extra_joints") or ()),
                   keypoints_from=str(data.get("keypoints_from") or ""), derive=derive)  # fmt: skip

    def same_body(self, other: Skeleton) -> bool:
        """Same joints, bones, mirror pairs, root and extra joints (descriptions and pose-stage maps aside)."""
        fields = ("joints", "bones", "mirror_pairs", "root", "extra_joints")
        return all(getattr(self, f) == getattr(other, f) for f in fields)

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

# ------------------------------------------------------------------------------------- Halpe-26 (AlphaPose)
# A source of keypoints only (no backend of ours predicts it yet; poses in it are mapped to nba16 exactly)
_HALPE26 = (
    *_COCO17, "head", "neck", "hip",
    "left_big_toe", "right_big_toe", "left_small_toe", "right_small_toe", "left_heel", "right_heel",
)  # fmt: skip
HALPE26 = Skeleton(
    name="halpe26",
    joints=_HALPE26,
    bones=_chains(
        _HALPE26,
        [
            ["left_ear", "left_eye", "nose", "right_eye", "right_ear"],
            ["head", "neck", "hip"],
            ["nose", "neck"],
            ["left_wrist", "left_elbow", "left_shoulder", "neck", "right_shoulder", "right_elbow", "right_wrist"],
            ["hip", "left_hip", "left_knee", "left_ankle", "left_heel"],
            ["hip", "right_hip", "right_knee", "right_ankle", "right_heel"],
            ["left_ankle", "left_big_toe"],
            ["left_ankle", "left_small_toe"],
            ["right_ankle", "right_big_toe"],
            ["right_ankle", "right_small_toe"],
        ],
    ),
    mirror_pairs=_left_right_pairs(_HALPE26, "left_", "right_"),
    root=(_HALPE26.index("hip"),),
    description="Halpe-26 body keypoints (AlphaPose): COCO-17 plus head top, neck, hip and six foot points",
)

SKELETONS: dict[str, Skeleton] = {s.name: s for s in (COCO17, COCO17_BALL, NBA16, APT36K17, HALPE26)}


def get_skeleton(name: str) -> Skeleton:
    try:
        return SKELETONS[name]
    except KeyError:
        raise KeyError(f"unknown skeleton {name!r}; known skeletons: {', '.join(sorted(SKELETONS))}") from None


def resolve_skeleton(name: str, definition: dict[str, Any] | str | None = None, where: str = "") -> Skeleton:
    """The skeleton an artifact was made with: its stored ``definition`` (a dict or JSON text) when there is one,
    else the built-in skeleton ``name``. Fails with :class:`SkeletonError` naming ``where`` (the artifact) and the fix
    when neither is usable, or when a stored definition disagrees with the built-in skeleton of the same name."""
    where = f"{where}: " if where else ""
    if definition:
        try:
            data = json.loads(definition) if isinstance(definition, str) else definition
            skeleton = Skeleton.from_dict(data)
        except (SkeletonError, ValueError, TypeError) as exc:
            raise SkeletonError(f"{where}its stored skeleton definition is unreadable ({exc}); rebuild it") from None
        if skeleton.name != name:
            raise SkeletonError(f"{where}skeleton name {name!r} but its stored definition is of {skeleton.name!r}")
        builtin = SKELETONS.get(name)
        if builtin is not None and not builtin.same_body(skeleton):
            raise SkeletonError(f"{where}its stored skeleton {name!r} differs from the built-in skeleton of that name "
                                "(joints, bones, mirror pairs or root); rebuild it with this version")  # fmt: skip
        return skeleton
    if name in SKELETONS:
        return SKELETONS[name]
    raise SkeletonError(
        f"{where}skeleton {name!r} is not built in (built-in: {', '.join(sorted(SKELETONS))}) and its definition is "
        "not stored with it (made before skeleton definitions were stored?); define the skeleton in the dataset "
        "config (`skeleton:` as a mapping) and rebuild the dataset (`mas process --force`)"
    )


def skeleton_meta(skeleton: Skeleton) -> dict[str, Any]:
    """What an artifact stores about its skeleton: the name, plus the definition when it is not a built-in one."""
    if SKELETONS.get(skeleton.name) == skeleton:
        return {"skeleton": skeleton.name}
    return {"skeleton": skeleton.name, "skeleton_definition": skeleton.to_dict()}


def check_joint_count(skeleton: Skeleton, joints: int, where: str) -> None:
    if joints != skeleton.num_joints:
        raise SkeletonError(f"{where}: holds {joints} joints per frame but its skeleton {skeleton.name!r} has "
                            f"{skeleton.num_joints} ({', '.join(skeleton.joints)}); rebuild it")  # fmt: skip


def dataset_skeleton(dataset: Any, name: str) -> Skeleton:
    """The skeleton of an opened motion dataset (``storage.motion_dataset.MotionDataset``), checked against its
    clips: every stage reading a dataset calls this before any work."""
    where = f"dataset {name!r}"
    skeleton = resolve_skeleton(str(dataset.meta.get("skeleton")), dataset.meta.get("skeleton_definition"), where)
    check_joint_count(skeleton, dataset.num_joints, where)
    return skeleton


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
