"""Rigid skeletons for generated 3D motions: fixed bone lengths, joint rotations and a root path (animation-ready).

MAS triangulates free points, so its bones stretch. :func:`fit_rigid` turns motions ``[N, L, J, 3]`` into a rig:

* one length per bone and motion: the median over frames of the triangulated length, averaged with the mirrored bone
  (the skeleton's left/right pairs), so the two sides match;
* positions: down the tree from the root, each joint is put on the sphere of its bone's length around its (already
  fitted) parent, at the point nearest to the triangulated joint (the exact least-squares position given the parent;
  errors do not pile up along a chain, see :func:`rigid_positions`);
* rotations: the root gets a heading (a rotation about y that turns the first left/right pair near the root onto +x);
  every bone gets the shortest rotation, in its parent's frame, from its rest direction (the first frame's) to its
  direction in each frame. A joint with several children (a pelvis holding two hips and a spine) cannot turn all
  their bones with one rotation unless they move as one rigid body, which generated motions do not; such a joint gets
  one zero-length helper joint per child (``<joint>_<child>``), so positions stay exact.

The hierarchy (:class:`Rig`) is a spanning tree of the skeleton's bones grown from the root, as in
:func:`storage.bvh.bvh_tree`; a skeleton with cycles (COCO-17: shoulders joined across and to the hips, the face ring)
keeps the bones that close a cycle out of the tree (:attr:`Rig.loose_bones`). Those are held by alternating
projections (``loop_iters`` rounds: pull the two ends of each loose bone to its length, fit the tree again), which
closes short loops exactly and long ones partly: on 40 procedural COCO-17 motions with 10% (5%) per-frame bone
noise, 10 rounds take the shoulder width's variation (std/mean over time) from 5.1% (2.5%) to 0 and the nose-right
eye bone's from 44% (32%) to 8% (0.2%), for 0.0015 (0.0007) body heights more mean joint displacement. Only tree
bones are constant by construction.
Everything is batched torch (CPU or GPU); units are the motion's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from pipeline.skeletons import Skeleton
from storage.bvh import bvh_tree, to_rotation_bvh

_EPS = 1e-9


@dataclass(frozen=True)
class Rig:
    """BVH hierarchy of a skeleton's body joints. Node 0 is the root (the root joint, or a virtual ``Root`` at the mean
    of several root joints); every body joint has one node; helper nodes sit at their parent's position."""

    skeleton: str
    joints: tuple[str, ...]  # body joint names (the order of the fitted positions)
    root: tuple[int, ...]  # root joints (indices into ``joints``)
    names: tuple[str, ...]  # node names
    parents: tuple[int, ...]  # parent node of each node (-1 for node 0); parents come before children
    node_joint: tuple[int, ...]  # body joint at each node, -1 for the virtual root and helper nodes
    bone_parent: tuple[int, ...]  # per bone: the parent joint (-1: the virtual root)
    bone_child: tuple[int, ...]  # per bone: the child joint
    bone_node: tuple[int, ...]  # per bone: the node whose rotation turns it
    child_node: tuple[int, ...]  # per bone: the node of its child joint (its OFFSET is the rest bone)
    bone_mirror: tuple[int, ...]  # per bone: its left/right twin (itself if none)
    heading_pair: tuple[int, int] | None  # (left, right) joints that define the root's heading
    loose_bones: tuple[tuple[str, str], ...]  # skeleton bones outside the tree (held only approximately)
    loose_pairs: tuple[tuple[int, int], ...]  # the same as joint indices

    @property
    def is_tree(self) -> bool:
        return not self.loose_bones

    @property
    def num_nodes(self) -> int:
        return len(self.names)


@lru_cache(maxsize=32)
def build_rig(skeleton: Skeleton) -> Rig:
    """The rig of ``skeleton``'s body joints (extra joints such as a ball are left out)."""
    body = [int(j) for j in skeleton.body_joints]
    index = {j: i for i, j in enumerate(body)}
    joints = tuple(skeleton.joints[j] for j in body)
    bones = tuple((index[a], index[b]) for a, b in skeleton.bones if a in index and b in index)
    root = tuple(index[r] for r in skeleton.root)
    parent = bvh_tree(len(joints), bones, root)  # -1: under the virtual root (root joints, unreachable joints)
    virtual = len(root) > 1
    if not virtual:  # the single root joint is node 0 itself; joints nothing reaches hang from it
        parent = [-1 if j == root[0] else (root[0] if p == -1 else p) for j, p in enumerate(parent)]
    tree = {frozenset((p, j)) for j, p in enumerate(parent) if p >= 0}
    if virtual:  # the root joints hang from their mean point: opposite directions, so the bones between them hold
        tree |= {frozenset(pair) for pair in zip(root, root[1:], strict=False)} if len(root) == 2 else set()
    loose_pairs = tuple((a, b) for a, b in bones if frozenset((a, b)) not in tree)
    loose = tuple((joints[a], joints[b]) for a, b in loose_pairs)
    children: dict[int, list[int]] = {}
    for j, p in enumerate(parent):
        if virtual or j != root[0]:
            children.setdefault(p, []).append(j)
    root_key = -1 if virtual else root[0]

    names, parents, node_joint = ["Root" if virtual else joints[root[0]]], [-1], [-1 if virtual else root[0]]
    joint_node = {root_key: 0}
    bone_parent, bone_child, bone_node, child_node = [], [], [], []
    queue = [root_key]
    while queue:
        p = queue.pop(0)
        kids = children.get(p, [])
        for c in kids:
            if p == root_key or len(kids) > 1:  # a helper node per child
                names.append(f"{names[joint_node[p]]}_{joints[c]}")
                parents.append(joint_node[p])
                node_joint.append(-1)
                turner = len(names) - 1
            else:
                turner = joint_node[p]
            names.append(joints[c])
            parents.append(turner)
            node_joint.append(c)
            joint_node[c] = len(names) - 1
            bone_parent.append(p)
            bone_child.append(c)
            bone_node.append(turner)
            child_node.append(joint_node[c])
            queue.append(c)
    perm = {index[j]: index[int(m)] for j, m in zip(body, skeleton.mirror_permutation[body], strict=True)}
    bone_of = {(p, c): b for b, (p, c) in enumerate(zip(bone_parent, bone_child, strict=True))}
    mirror = tuple(bone_of.get((perm.get(p, p), perm[c]), b) for b, (p, c) in enumerate(zip(bone_parent, bone_child,
                                                                                             strict=True)))  # fmt: skip
    return Rig(
        skeleton=skeleton.name, joints=joints, root=root, names=tuple(names), parents=tuple(parents),
        node_joint=tuple(node_joint), bone_parent=tuple(bone_parent), bone_child=tuple(bone_child),
        bone_node=tuple(bone_node), child_node=tuple(child_node), bone_mirror=mirror,
        heading_pair=_heading_pair(skeleton, index, parent, root), loose_bones=loose,
        loose_pairs=loose_pairs,
    )  # fmt: skip


def _heading_pair(skeleton: Skeleton, index: dict[int, int], parent: list[int], root: tuple[int, ...]):
    """The left/right pair nearest the root in the tree (hips, else shoulders...): its left-to-right axis turns with
    the body. Left is the first joint of the skeleton's mirror pairs (``left_*`` / ``L*``)."""

    def depth(j: int) -> int:
        d = 0
        while j not in root and parent[j] >= 0:
            j, d = parent[j], d + 1
        return d

    pairs = [(index[a], index[b]) for a, b in skeleton.mirror_pairs if a in index and b in index]
    if not pairs:
        return None
    left, right = min(pairs, key=lambda pair: (max(depth(pair[0]), depth(pair[1])), pair))
    if skeleton.joints[skeleton.body_joints[left]].lower().startswith("r"):
        left, right = right, left
    return left, right


# ------------------------------------------------------------------------------------------------------- rotations
def _normalise(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    norm = v.norm(dim=-1, keepdim=True)
    return v / norm.clamp_min(_EPS), norm[..., 0]


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched 3x3 products ``a @ b`` (einsum: about twice as fast as bmm for [N, L] batches of tiny matrices)."""
    return torch.einsum("...ij,...jk->...ik", a, b)


def _mv(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Batched ``a @ v`` for 3x3 matrices and 3-vectors."""
    return torch.einsum("...ij,...j->...i", a, v)


def swing(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[..., 3, 3]``: the shortest rotation taking unit vectors ``a`` onto ``b``. Near-opposite vectors get a half
    turn about an axis normal to ``a`` followed by the (then well-conditioned) short rotation from ``-a`` to ``b``."""

    def short(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # c I + [w]x + w w^T / (1 + c), for u.v >= 0
        w = torch.cross(u, v, dim=-1)
        c = (u * v).sum(-1)[..., None, None]
        zero = torch.zeros_like(w[..., 0])
        k = torch.stack([zero, -w[..., 2], w[..., 1], w[..., 2], zero, -w[..., 0], -w[..., 1], w[..., 0], zero], -1)
        eye = torch.eye(3, dtype=u.dtype, device=u.device)
        return c * eye + k.reshape(*w.shape[:-1], 3, 3) + w[..., :, None] * w[..., None, :] / (1 + c).clamp_min(1e-3)

    eye = torch.eye(3, dtype=a.dtype, device=a.device)
    helper = torch.where(a[..., :1].abs() < 0.9, eye[0], eye[1])
    axis, _ = _normalise(torch.cross(a, helper, dim=-1))
    near = short(a, b)
    opposite = ((a * b).sum(-1) < 0)[..., None, None]
    if not bool(opposite.any()):
        return near
    turned = short(-a, b)  # then the half turn H = 2 n n^T - I: (R H) = 2 (R n) n^T - R
    far = 2 * _mv(turned, axis)[..., :, None] * axis[..., None, :] - turned
    return torch.where(opposite, far, near)


def yaw_matrix(angle: torch.Tensor) -> torch.Tensor:
    """``[..., 3, 3]`` rotations by ``angle`` about +y."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack([cos, zero, sin, zero, one, zero, -sin, zero, cos], -1).reshape(*angle.shape, 3, 3)


def matrix_to_quaternion(rot: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` unit quaternions (w, x, y, z), w >= 0, of rotation matrices ``[..., 3, 3]``."""
    m = rot
    w = torch.sqrt((1 + m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]).clamp_min(0)) / 2
    x = torch.sqrt((1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2]).clamp_min(0)) / 2
    y = torch.sqrt((1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2]).clamp_min(0)) / 2
    z = torch.sqrt((1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]).clamp_min(0)) / 2
    x = torch.copysign(x, m[..., 2, 1] - m[..., 1, 2])
    y = torch.copysign(y, m[..., 0, 2] - m[..., 2, 0])
    z = torch.copysign(z, m[..., 1, 0] - m[..., 0, 1])
    q = torch.stack([w, x, y, z], -1)
    return q / q.norm(dim=-1, keepdim=True)


# --------------------------------------------------------------------------------------------------------- fitting
def _targets(motions: torch.Tensor, rig: Rig) -> tuple[torch.Tensor, torch.Tensor]:
    """Root point ``[N, L, 3]`` and joints with the root appended last ``[N, L, J+1, 3]`` (index -1: the root)."""
    root = motions[:, :, list(rig.root)].mean(2)
    return root, torch.cat([motions, root[:, :, None]], 2)


def bone_lengths(motions: torch.Tensor, rig: Rig) -> torch.Tensor:
    """``[N, B]`` robust lengths of the rig's bones: the median over frames, averaged with the mirrored bone."""
    _, points = _targets(motions, rig)
    parent, child = list(rig.bone_parent), list(rig.bone_child)
    raw = (points[:, :, child] - points[:, :, parent]).norm(dim=-1).median(dim=1).values  # [N, B]
    return (raw + raw[:, list(rig.bone_mirror)]) / 2


def rigid_positions(
    motions: torch.Tensor, rig: Rig, lengths: torch.Tensor | None = None, loop_iters: int = 10
) -> torch.Tensor:
    """``[N, L, J, 3]``: ``motions`` (body joints) on the rig's fixed bone ``lengths`` (estimated when None).

    Root point kept; then, parents first, each joint goes where its bone (fixed length, from the fitted parent)
    points at the triangulated joint. Where the triangulated joint sits on the fitted parent, the bone keeps the
    triangulated direction of the bone, else points up. With loose bones (a skeleton with cycles), ``loop_iters``
    rounds of alternating projections pull them towards their lengths (the mirrored bone's where that one is in
    the tree, else their own median) before the last tree pass.
    """
    motions = _check(motions, rig)
    lengths = bone_lengths(motions, rig) if lengths is None else lengths.to(motions)
    fitted = _tree_pass(motions, rig, lengths)
    if not rig.loose_pairs or loop_iters <= 0:
        return fitted
    loose = _loose_lengths(motions, rig, lengths)  # [N, P]
    for _ in range(loop_iters):
        targets = fitted.clone()
        for i, (a, b) in enumerate(rig.loose_pairs):
            vec = targets[:, :, a] - targets[:, :, b]
            norm = vec.norm(dim=-1, keepdim=True).clamp_min(_EPS)
            half = (norm - loose[:, i, None, None]) * vec / norm / 2
            targets[:, :, a] -= half
            targets[:, :, b] += half
        fitted = _tree_pass(targets, rig, lengths)
    return fitted


def _loose_lengths(motions: torch.Tensor, rig: Rig, lengths: torch.Tensor) -> torch.Tensor:
    """``[N, P]`` target lengths of the loose bones: the mirrored tree bone's length, else the median."""
    mirror = {rig.joints[j]: rig.joints[k] for j, k in enumerate(_joint_mirror(rig))}
    tree = {(rig.bone_parent[b], rig.bone_child[b]): b for b in range(len(rig.bone_child))}
    tree.update({(c, p): b for (p, c), b in list(tree.items())})
    out = []
    for a, b in rig.loose_pairs:
        twin = (rig.joints.index(mirror[rig.joints[a]]), rig.joints.index(mirror[rig.joints[b]]))
        if twin in tree:
            out.append(lengths[:, tree[twin]])
        else:
            out.append((motions[:, :, a] - motions[:, :, b]).norm(dim=-1).median(dim=1).values)
    return torch.stack(out, 1)


def _joint_mirror(rig: Rig) -> list[int]:
    """Left/right twin of each joint, from the mirrored bones (itself for centre joints)."""
    twin = list(range(len(rig.joints)))
    for b, m in enumerate(rig.bone_mirror):
        twin[rig.bone_child[b]] = rig.bone_child[m]
    return twin


def _tree_pass(points_in: torch.Tensor, rig: Rig, lengths: torch.Tensor) -> torch.Tensor:
    root, points = _targets(points_in, rig)
    fitted = [None] * len(rig.joints)
    if len(rig.root) == 1:  # the root joint itself is node 0
        fitted[rig.root[0]] = root

    def at(j: int) -> torch.Tensor:
        return root if j == -1 else fitted[j]

    up = torch.tensor([0.0, 1.0, 0.0], dtype=points.dtype, device=points.device)
    for b, (p, c) in enumerate(zip(rig.bone_parent, rig.bone_child, strict=True)):
        direction, norm = _normalise(points[:, :, c] - at(p))
        raw, raw_norm = _normalise(points[:, :, c] - points[:, :, p])
        fallback = torch.where(raw_norm[..., None] > _EPS, raw, up)
        direction = torch.where(norm[..., None] > 1e-7, direction, fallback)
        fitted[c] = at(p) + lengths[:, b, None, None] * direction
    return torch.stack(fitted, 2)


def _check(motions, rig: Rig) -> torch.Tensor:
    m = torch.as_tensor(motions)
    if not m.is_floating_point():
        m = m.double()
    if m.dim() != 4 or m.shape[2] != len(rig.joints) or m.shape[3] != 3:
        raise ValueError(
            f"rigid fitting expects motions [N, L, {len(rig.joints)}, 3] (the body joints of skeleton {rig.skeleton}), "
            f"got {tuple(m.shape)}"
        )
    if not torch.isfinite(m).all():
        raise ValueError("rigid fitting: the motions hold NaN or inf values (a diverged sample?); drop them first")
    return m


@dataclass
class RigidMotions:
    """Fitted rig: ``root [N, L, 3]`` (node 0's position), ``local [N, L, K, 3, 3]`` (each node's rotation in its
    parent's frame), ``offsets [N, K, 3]`` (each node's rest offset from its parent), ``lengths [N, B]`` and the
    joint ``positions [N, L, J, 3]`` that forward kinematics gives (what the BVH and npz files hold)."""

    rig: Rig
    root: torch.Tensor
    local: torch.Tensor
    offsets: torch.Tensor
    lengths: torch.Tensor
    positions: torch.Tensor

    def end_sites(self) -> torch.Tensor:
        """``[N, K, 3]`` End Site offsets for leaf nodes (a quarter of the incoming bone, for a visible tail)."""
        ends = torch.zeros_like(self.offsets)
        leaves = [k for k in range(self.rig.num_nodes) if k not in self.rig.parents[1:]]
        ends[:, leaves] = 0.25 * self.offsets[:, leaves]
        return ends

    def to_npz_dict(self) -> dict[str, np.ndarray]:
        """Arrays for retargeting tools: names, parents, offsets, local quaternions (w, x, y, z), root path."""
        return {
            "node_names": np.array(self.rig.names),
            "node_parents": np.array(self.rig.parents),
            "node_joint": np.array(self.rig.node_joint),
            "joint_names": np.array(self.rig.joints),
            "offsets": self.offsets.cpu().numpy().astype(np.float32),
            "rotations": matrix_to_quaternion(self.local).cpu().numpy().astype(np.float32),
            "root_translation": self.root.cpu().numpy().astype(np.float32),
            "positions": self.positions.cpu().numpy().astype(np.float32),
            "bone_lengths": self.lengths.cpu().numpy().astype(np.float32),
            "bones": np.array(
                [
                    (self.rig.joints[c] if p < 0 else self.rig.joints[p], self.rig.joints[c])
                    for p, c in zip(self.rig.bone_parent, self.rig.bone_child, strict=True)
                ]
            ),  # fmt: skip
        }


def forward_kinematics(root: torch.Tensor, local: torch.Tensor, offsets: torch.Tensor, rig: Rig):
    """Joint positions ``[N, L, J, 3]`` and world rotations ``[N, L, K, 3, 3]`` of a rig's animation."""
    world = [None] * rig.num_nodes
    position = [None] * rig.num_nodes
    world[0], position[0] = local[:, :, 0], root
    for k in range(1, rig.num_nodes):
        p = rig.parents[k]
        position[k] = position[p] + _mv(world[p], offsets[:, None, k])
        world[k] = _mm(world[p], local[:, :, k])
    joints = torch.stack([position[rig.node_joint.index(j)] for j in range(len(rig.joints))], 2)
    return joints, torch.stack(world, 2)


def _heading(positions: torch.Tensor, rig: Rig) -> torch.Tensor:
    """``[N, L, 3, 3]`` rotations about y turning the rig's left/right pair onto +x (identity without a pair)."""
    n, length = positions.shape[:2]
    if rig.heading_pair is None:
        return torch.eye(3, dtype=positions.dtype, device=positions.device).expand(n, length, 3, 3).clone()
    left, right = rig.heading_pair
    axis = positions[:, :, left] - positions[:, :, right]
    return yaw_matrix(torch.atan2(-axis[..., 2], axis[..., 0]))


def fit_rigid(motions, skeleton: Skeleton, lengths: torch.Tensor | None = None, loop_iters: int = 10) -> RigidMotions:
    """Fit rigid bones, rotations and a root path to motions ``[N, L, J, 3]`` (all joints of ``skeleton``; extra
    joints such as a ball are dropped). ``lengths [N, B]`` fixes the bone lengths (estimated when None);
    ``loop_iters``: rounds of loop closure for loose bones (:func:`rigid_positions`; 0 to solve rotations of
    positions that are already rigid, exactly)."""
    rig = build_rig(skeleton)
    m = torch.as_tensor(motions)
    if m.dim() == 4 and m.shape[2] == skeleton.num_joints:
        m = m[:, :, torch.as_tensor(skeleton.body_joints, device=m.device)]
    m = _check(m, rig)
    lengths = bone_lengths(m, rig) if lengths is None else lengths.to(m)
    fitted = rigid_positions(m, rig, lengths, loop_iters)
    root, points = _targets(fitted, rig)
    n, length = m.shape[:2]
    k = rig.num_nodes
    heading = _heading(fitted, rig)
    eye = torch.eye(3, dtype=m.dtype, device=m.device)
    local = eye.expand(n, length, k, 3, 3).clone()
    local[:, :, 0] = heading
    world = [None] * k
    world[0] = heading
    offsets = torch.zeros(n, k, 3, dtype=m.dtype, device=m.device)
    turns = {node: b for b, node in enumerate(rig.bone_node)}
    for node in range(1, k):
        parent_world = world[rig.parents[node]]
        if node in turns:
            b = turns[node]
            direction, _ = _normalise(points[:, :, rig.bone_child[b]] - points[:, :, rig.bone_parent[b]])
            in_parent = _mv(parent_world.transpose(-1, -2), direction)  # [N, L, 3]
            rest = in_parent[:, :1].expand_as(in_parent)  # rest pose: the first frame
            local[:, :, node] = swing(rest, in_parent)
            offsets[:, rig.child_node[b]] = lengths[:, b, None] * in_parent[:, 0]
        world[node] = _mm(parent_world, local[:, :, node])
    positions, _ = forward_kinematics(root, local, offsets, rig)
    return RigidMotions(rig, root, local, offsets, lengths, positions)


def bone_variation(positions, rig: Rig) -> torch.Tensor:
    """``[N]`` largest relative change (max - min over frames, over the mean) of any tree bone's length."""
    p = torch.as_tensor(positions)
    root, points = _targets(p, rig)
    lengths = (points[:, :, list(rig.bone_child)] - points[:, :, list(rig.bone_parent)]).norm(dim=-1)
    spread = lengths.amax(1) - lengths.amin(1)
    return (spread / lengths.mean(1).clamp_min(_EPS)).amax(1)


def rigid_bvh(rigid: RigidMotions, index: int, fps: float, scale: float = 100.0) -> str:
    """BVH text (root position + rotation channels, constant OFFSETs) of motion ``index`` of a fitted rig."""
    return to_rotation_bvh(rigid.rig.names, rigid.rig.parents, rigid.offsets[index].cpu().numpy(),
                           rigid.end_sites()[index].cpu().numpy(), rigid.root[index].cpu().numpy(),
                           rigid.local[index].cpu().numpy(), fps, scale)  # fmt: skip


def project_to_rigid(motions: torch.Tensor, skeleton: Skeleton) -> torch.Tensor:
    """``motions [N, L, J, 3]`` (all joints of ``skeleton``, any float dtype and device) with the body joints moved
    onto one set of bone lengths per motion (:func:`rigid_positions`, in float64); extra joints are left alone."""
    rig = build_rig(skeleton)
    body = torch.as_tensor(skeleton.body_joints, device=motions.device)
    out = motions.clone()
    out[:, :, body] = rigid_positions(motions[:, :, body].double(), rig).to(motions.dtype)
    return out
