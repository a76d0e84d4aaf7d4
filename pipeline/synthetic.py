"""Procedural 3D human motions with known ground truth, and the monocular 2D benchmark datasets made from them.

Walks, runs, jumps, turns and arm swings for the COCO-17 skeleton, with random speed, amplitude, phase, bone lengths
and root paths. :func:`build_synthetic_dataset` hands them to :func:`pipeline.benchmark_data.build_benchmark_dataset`
(the builder for users' own 3D motions too): whole motions are split into train and test, then each is seen from one
random camera as a 2D clip; the held-out 3D test motions let MAS output be measured against real 3D (our benchmark;
the paper had no 3D ground truth).
World units: y up, about one unit per body height.
"""

from __future__ import annotations

import numpy as np

from pipeline.benchmark_data import BenchmarkData, build_benchmark_dataset
from pipeline.skeletons import COCO17
from storage import Workspace

MOTION_KINDS = ("walk", "run", "jump", "turn", "arm_swing")
_J = {name: i for i, name in enumerate(COCO17.joints)}


def _limb(start: np.ndarray, length: float, swing: np.ndarray, yaw: np.ndarray | None = None) -> np.ndarray:
    """End point of a limb hanging down from ``start`` swung forward by ``swing`` radians (in the body's frame)."""
    return start + length * np.stack([np.zeros_like(swing), -np.cos(swing), np.sin(swing)], -1)


def generate_motion(
    rng: np.random.Generator, length: int = 60, fps: float = 30.0, kind: str | None = None
) -> np.ndarray:
    """One motion ``[length, 17, 3]`` of the given (or a random) kind."""
    kind = kind or str(rng.choice(MOTION_KINDS))
    if kind not in MOTION_KINDS:
        raise ValueError(f"unknown motion kind {kind!r}; choose from {', '.join(MOTION_KINDS)}")
    t = np.arange(length) / fps
    s = rng.uniform(0.9, 1.1)  # overall body scale
    thigh, shin = 0.25 * s * rng.uniform(0.95, 1.05), 0.25 * s * rng.uniform(0.95, 1.05)
    upper_arm, forearm = 0.17 * s, 0.15 * s
    hip_half, shoulder_half, torso = 0.09 * s, 0.18 * s, 0.30 * s
    freq = {"walk": 1.0, "run": 1.6, "jump": 0.8, "turn": 0.9, "arm_swing": 0.7}[kind] * rng.uniform(0.8, 1.25)
    phase = rng.uniform(0, 2 * np.pi)
    w = 2 * np.pi * freq * t + phase
    amp = {"walk": 0.45, "run": 0.8, "jump": 0.15, "turn": 0.3, "arm_swing": 0.1}[kind] * rng.uniform(0.7, 1.3)

    leg_l, leg_r = amp * np.sin(w), -amp * np.sin(w)
    knee_l = np.maximum(0, np.sin(w + 1.2)) * amp * 1.3
    knee_r = np.maximum(0, np.sin(w + np.pi + 1.2)) * amp * 1.3
    arm_l, arm_r = -0.8 * leg_l, -0.8 * leg_r
    elbow_l = elbow_r = np.full(length, 0.3)
    height = np.zeros(length)
    speed = {"walk": 1.2, "run": 2.8, "jump": 0.2, "turn": 0.6, "arm_swing": 0.0}[kind] * rng.uniform(0.7, 1.3)
    turn_rate = rng.normal(0, 0.3)
    if kind == "jump":
        cycle = np.sin(w)
        crouch = np.maximum(0, -cycle) * 0.9
        knee_l = knee_r = crouch * 1.6
        leg_l = leg_r = crouch * 0.8
        height = np.maximum(0, cycle) ** 2 * 0.25 * rng.uniform(0.6, 1.4) - crouch * 0.1
        arm_l = arm_r = 0.4 + 1.6 * np.maximum(0, cycle)
    elif kind == "turn":
        turn_rate = rng.choice([-1, 1]) * rng.uniform(1.0, 2.5)
    elif kind == "arm_swing":
        arm_amp = rng.uniform(0.8, 2.2)
        arm_l = arm_amp * np.sin(w)
        arm_r = arm_amp * np.sin(w + rng.choice([0.0, np.pi]))
        elbow_l = elbow_r = 0.2 + 0.6 * np.maximum(0, np.sin(w + 0.5))
    heading = rng.uniform(-np.pi, np.pi) + turn_rate * t
    lean = {"run": 0.2, "walk": 0.05}.get(kind, 0.0)

    pose = np.zeros((length, 17, 3))
    pelvis = np.stack([np.zeros(length), thigh + shin + height, np.zeros(length)], -1)
    for side, sign, leg, knee, arm, elbow in (
        ("left", 1, leg_l, knee_l, arm_l, elbow_l),
        ("right", -1, leg_r, knee_r, arm_r, elbow_r),
    ):
        hip = pelvis + np.array([sign * hip_half, 0, 0])
        knee_pos = _limb(hip, thigh, leg)
        ankle = _limb(knee_pos, shin, leg - knee)
        shoulder = pelvis + np.array([sign * shoulder_half, torso, 0]) + np.array([0, 0, lean * torso])
        elbow_pos = _limb(shoulder, upper_arm, arm)
        wrist = _limb(elbow_pos, forearm, arm + elbow)
        for name, value in (("hip", hip), ("knee", knee_pos), ("ankle", ankle), ("shoulder", shoulder),
                            ("elbow", elbow_pos), ("wrist", wrist)):  # fmt: skip
            pose[:, _J[f"{side}_{name}"]] = value
    neck = pelvis + np.array([0, torso + 0.03 * s, lean * torso])
    head = neck + np.array([0, 0.12 * s, 0.05 * s])
    pose[:, _J["nose"]] = head + np.array([0, -0.01, 0.07 * s])
    for side, sign in (("left", 1), ("right", -1)):
        pose[:, _J[f"{side}_eye"]] = head + np.array([sign * 0.03 * s, 0.02, 0.06 * s])
        pose[:, _J[f"{side}_ear"]] = head + np.array([sign * 0.07 * s, 0.0, 0.0])

    cos, sin = np.cos(heading)[:, None], np.sin(heading)[:, None]
    x, z = pose[..., 0].copy(), pose[..., 2].copy()
    pose[..., 0] = cos * x + sin * z
    pose[..., 2] = -sin * x + cos * z
    dx, dz = np.sin(heading) * speed / fps, np.cos(heading) * speed / fps
    root = np.stack([np.cumsum(dx), np.zeros(length), np.cumsum(dz)], -1)
    root -= root.mean(0) * np.array([1, 0, 1])
    return (pose + root[:, None]).astype(np.float32)


def generate_motions(num: int, length: int = 60, fps: float = 30.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([generate_motion(rng, length, fps, MOTION_KINDS[i % len(MOTION_KINDS)]) for i in range(num)])


def build_synthetic_dataset(
    ws: Workspace, name: str, num_motions: int = 500, length: int = 60, fps: float = 30.0, seed: int = 0,
    test_fraction: float = 0.2,
) -> BenchmarkData:  # fmt: skip
    """A 2D benchmark dataset from ``num_motions`` procedural motions, each one source clip of ``length`` frames.

    Whole motions are split into train and test before projection (:func:`build_benchmark_dataset`), so the saved 3D
    truth (``truth_3d.npz``) of the test split is held out from training. Iterating over the result yields the paths.
    """
    motions = generate_motions(num_motions, length, fps, seed)
    return build_benchmark_dataset(
        ws, name, list(motions), fps, COCO17, fps=fps, length=length, test_fraction=test_fraction, seed=seed,
        source="procedural 3D motions, one random perspective view each",
        clip_names=[f"synthetic-{i:05d}" for i in range(num_motions)],
        clip_columns={"kind": [MOTION_KINDS[i % len(MOTION_KINDS)] for i in range(num_motions)]},
    )  # fmt: skip
