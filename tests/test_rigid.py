"""Rigid fitting, the rotation BVH (our reader and Blender's importer), floor and foot locking."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from models.metrics import bone_length_variation
from pipeline.ground import foot_contacts, foot_joints, lock_feet, put_on_floor
from pipeline.rigid import (
    _targets,
    bone_variation,
    build_rig,
    fit_rigid,
    rigid_bvh,
    rigid_positions,
    swing,
)
from pipeline.skeletons import SKELETONS, get_skeleton
from pipeline.synthetic import generate_motion, generate_motions
from storage.bvh import _axis_rotation, matrix_to_euler_zxy, read_bvh_positions

COCO = get_skeleton("coco17")


def _stretch(motions: torch.Tensor, rig, sigma: float, seed: int = 0) -> torch.Tensor:
    """Every tree bone scaled by ``1 + sigma * N(0, 1)`` per frame (MAS-like bone-length noise), down the tree."""
    g = torch.Generator().manual_seed(seed)
    root, points = _targets(motions, rig)
    out = [None] * len(rig.joints)
    for p, c in zip(rig.bone_parent, rig.bone_child, strict=True):
        vec = points[:, :, c] - points[:, :, p]
        factor = 1 + sigma * torch.randn(vec.shape[:2], generator=g, dtype=vec.dtype)[..., None]
        out[c] = (root if p == -1 else out[p]) + vec * factor
    return torch.stack(out, 2)


def _cv(motions: torch.Tensor, a: int, b: int) -> float:
    """Mean over motions of std/mean over time of the distance between joints a and b."""
    length = (motions[:, :, a] - motions[:, :, b]).norm(dim=-1)
    return float((length.std(1) / length.mean(1)).mean())


def _heights(motions: torch.Tensor) -> torch.Tensor:
    y = motions[..., 1]
    return (y.amax(-1) - y.amin(-1)).median(1).values[:, None, None]


def test_rig_of_every_skeleton():
    for skeleton in SKELETONS.values():
        rig = build_rig(skeleton)
        assert rig.parents[0] == -1 and all(0 <= p < k for k, p in enumerate(rig.parents[1:], start=1))
        assert sorted(j for j in rig.node_joint if j >= 0) == list(range(len(rig.joints)))
    assert build_rig(get_skeleton("nba16")).is_tree
    coco = build_rig(COCO)  # COCO-17 has cycles: the bones closing them are named
    assert set(coco.loose_bones) == {("left_shoulder", "right_shoulder"), ("nose", "right_eye")}
    assert coco.heading_pair == (COCO.index("left_hip"), COCO.index("right_hip"))


def test_rigid_fit_tolerance_on_stretched_procedural_motions():
    """MAS-like bone noise (CV ~6% and ~11%): lengths become exactly constant and joints move about 1-2% of a body
    height on average (tolerance stated in pipeline/rigid.py's users: mean < 0.015 / 0.03, max < 0.1 / 0.2)."""
    rig = build_rig(COCO)
    truth = torch.as_tensor(generate_motions(40, 40, seed=0), dtype=torch.float64)
    exact = fit_rigid(truth, COCO)  # rigid truth comes back (float32 data)
    assert (exact.positions - truth).abs().max() < 1e-5
    for sigma, mean_tol, max_tol in ((0.05, 0.015, 0.1), (0.1, 0.03, 0.2)):
        noisy = _stretch(truth, rig, sigma)
        fitted = fit_rigid(noisy, COCO)
        error = (fitted.positions - noisy).norm(dim=-1) / _heights(noisy)
        assert error.mean() < mean_tol and error.max() < max_tol, (sigma, error.mean(), error.max())
        assert bone_variation(fitted.positions, rig).max() < 1e-9  # every tree bone: constant to float precision
        assert bone_length_variation(fitted.positions.numpy(), COCO) < 0.4 * bone_length_variation(noisy.numpy(), COCO)
        closer = (fitted.positions - truth).norm(dim=-1).mean() < (noisy - truth).norm(dim=-1).mean()
        assert closer  # fixed lengths take out part of the noise
        lengths = fitted.lengths
        assert torch.equal(lengths, lengths[:, list(rig.bone_mirror)])  # left and right match
        direct = rigid_positions(noisy, rig, lengths)  # FK of the rotations gives the same joints
        assert (direct - fitted.positions).abs().max() < 1e-9
        loose = {pair: _cv(fitted.positions, *pair) for pair in rig.loose_pairs}  # the loops, closed by projection
        shoulders = (COCO.index("left_shoulder"), COCO.index("right_shoulder"))
        assert loose[shoulders] < 1e-6 and _cv(noisy, *shoulders) > 0.02
        face = (COCO.index("nose"), COCO.index("right_eye"))
        assert loose[face] < 0.15 < _cv(noisy, *face)
        open_loops = rigid_positions(noisy, rig, lengths, loop_iters=0)
        assert _cv(open_loops, *face) > 2 * loose[face]


def test_rigid_fit_single_root_and_animal_skeletons():
    rng = np.random.default_rng(0)
    for name in ("nba16", "apt36k17"):
        skeleton = get_skeleton(name)
        motions = torch.as_tensor(rng.normal(0, 0.3, (3, 12, skeleton.num_joints, 3)))
        fitted = fit_rigid(motions, skeleton)
        assert bone_variation(fitted.positions, fitted.rig).max() < 1e-9
        names, world = read_bvh_positions(rigid_bvh(fitted, 1, fps=30.0))
        index = [names.index(j) for j in fitted.rig.joints]
        assert np.abs(world[:, index] / 100 - fitted.positions[1].numpy()).max() < 1e-6


def test_fit_rigid_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[N, L, 17, 3\]"):
        fit_rigid(torch.zeros(2, 5, 16, 3), COCO)
    bad = torch.zeros(1, 5, 17, 3)
    bad[0, 2, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fit_rigid(bad, COCO)


def test_swing_and_euler_round_trip():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(500, 3, generator=g, dtype=torch.float64), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(500, 3, generator=g, dtype=torch.float64), dim=-1)
    b[:50] = -a[:50] + 1e-5 * b[:50]  # (nearly) opposite vectors
    b[:50] = torch.nn.functional.normalize(b[:50], dim=-1)
    rot = swing(a, b)
    assert ((rot @ a[..., None])[..., 0] - b).abs().max() < 1e-12
    assert (rot @ rot.transpose(-1, -2) - torch.eye(3, dtype=torch.float64)).abs().max() < 1e-12
    angles = matrix_to_euler_zxy(rot.numpy())  # Rz @ Rx @ Ry, as BVH readers apply Z X Y channels

    def zxy(angles: np.ndarray) -> np.ndarray:
        z, x, y = angles[..., 0], angles[..., 1], angles[..., 2]
        return _axis_rotation("Z", z) @ _axis_rotation("X", x) @ _axis_rotation("Y", y)

    assert np.abs(zxy(angles) - rot.numpy()).max() < 1e-9
    gimbal = _axis_rotation("X", np.array(90.0)) @ _axis_rotation("Y", np.array(30.0))
    assert np.abs(zxy(matrix_to_euler_zxy(gimbal)) - gimbal).max() < 1e-9


def test_rotation_bvh_has_constant_offsets_and_reads_back():
    fitted = fit_rigid(torch.as_tensor(generate_motions(2, 30, seed=1), dtype=torch.float64), COCO)
    text = rigid_bvh(fitted, 0, fps=30.0)
    header = text.split("MOTION")[0]
    assert header.count("Xposition") == 1 and header.count("CHANNELS 3 Zrotation Xrotation Yrotation") == 27
    names, world = read_bvh_positions(text)
    index = [names.index(j) for j in fitted.rig.joints]
    error = np.abs(world[:, index] / 100 - fitted.positions[0].numpy()).max()
    assert error < 1e-6  # 6 decimals in centimetres and degrees


BLENDER_SCRIPT = Path(__file__).with_name("blender_bvh_positions.py")


@pytest.mark.skipif(shutil.which("blender") is None, reason="Blender is not installed (apt-get install blender; "
                                                            "`make system-deps` does it as root)")  # fmt: skip
def test_blender_opens_the_rotation_bvh(tmp_path):
    """Blender's own BVH importer, headless: world joint positions per frame match ours within 1e-3 body heights."""
    for name, motions in (("coco17", generate_motions(1, 12, seed=2)),
                          ("nba16", np.random.default_rng(0).normal(0, 0.3, (1, 12, 16, 3)))):  # fmt: skip
        fitted = fit_rigid(torch.as_tensor(motions, dtype=torch.float64), get_skeleton(name))
        bvh, out = tmp_path / f"{name}.bvh", tmp_path / f"{name}.json"
        bvh.write_text(rigid_bvh(fitted, 0, fps=30.0))
        run = subprocess.run(["blender", "-b", "--factory-startup", "--python-exit-code", "1", "--python",
                              str(BLENDER_SCRIPT), "--", str(bvh), str(out)],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        read = json.loads(out.read_text())
        world = np.array(read["positions"]) / 100
        ours = fitted.positions[0].numpy()
        assert world.shape[0] == len(ours)
        height = float(_heights(fitted.positions)[0])
        error = np.abs(world[:, [read["names"].index(j) for j in fitted.rig.joints]] - ours).max() / height
        assert error < 1e-3, (name, error)


# ------------------------------------------------------------------------------------------------ floor, contacts
def test_floor_goes_to_zero():
    rig = build_rig(COCO)
    motions = generate_motions(5, 40, seed=3).astype(np.float64)
    lifted = motions.copy()
    lifted[..., 1] += np.arange(5)[:, None, None] * 0.3 - 0.4
    grounded, shift = put_on_floor(lifted, rig)
    feet = foot_joints(rig)
    assert [rig.joints[j] for j in feet] == ["left_ankle", "right_ankle"]
    lowest = grounded[:, :, feet, 1].min(-1)
    assert np.abs(np.percentile(lowest, 5, axis=1)).max() < 1e-9
    np.testing.assert_allclose(grounded[..., [0, 2]], lifted[..., [0, 2]])
    np.testing.assert_allclose(shift - np.percentile(motions[:, :, feet, 1].min(-1), 5, axis=1),
                               np.arange(5) * 0.3 - 0.4)  # fmt: skip


def test_foot_locking_holds_feet_and_keeps_bones():
    rig = build_rig(COCO)
    rng = np.random.default_rng(1)
    truth = np.stack([generate_motion(rng, 60, kind="arm_swing") for _ in range(4)]).astype(np.float64)
    noisy = truth.copy()
    feet = foot_joints(rig)
    noisy[:, :, feet] += rng.normal(0, 0.004, noisy[:, :, feet].shape)  # sliding, jittering feet
    fitted = fit_rigid(torch.as_tensor(noisy), COCO)
    grounded, _ = put_on_floor(fitted.positions.numpy(), rig)
    contacts = foot_contacts(grounded, rig, fps=30.0)
    assert 0.1 < contacts.mean() < 0.9  # standing feet are found, swinging ones are not
    locked = lock_feet(grounded, rig, contacts, blend=3)
    still = 0
    for n, f in np.ndindex(contacts.shape[0], contacts.shape[2]):
        flags = np.concatenate([[False], contacts[n, :, f], [False]]).astype(int)
        starts, ends = np.flatnonzero(np.diff(flags))[::2], np.flatnonzero(np.diff(flags))[1::2]
        for s, e in zip(starts, ends, strict=True):
            held = locked[n, s:e, feet[f]]
            assert np.abs(held - held[0]).max() < 1e-3 and held[:, 1].min() > -1e-9  # still (up to the leg's reach)
            still += np.abs(held - held[0]).max() < 1e-9
        far = np.ones(contacts.shape[1], bool)
        for s, e in zip(starts, ends, strict=True):
            far[max(s - 3, 0) : e + 3] = False
        np.testing.assert_allclose(locked[n, far, feet[f]], grounded[n, far, feet[f]], atol=1e-12)
    assert still >= 10
    refit = fit_rigid(torch.as_tensor(locked), COCO, lengths=fitted.lengths, loop_iters=0)  # IK kept the lengths
    assert (refit.positions - torch.as_tensor(locked)).abs().max() < 1e-9
    skate = lambda m: np.linalg.norm(np.diff(m[:, :, feet][..., [0, 2]], axis=1), axis=-1)[contacts[:, 1:]].mean()  # noqa: E731
    assert skate(locked) < 0.5 * skate(grounded)
