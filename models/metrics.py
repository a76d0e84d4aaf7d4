"""Distribution metrics on motion embeddings (the paper's FID, diversity, precision/recall) and 3D motion metrics.

All metrics are vectorised (torch.cdist / batched einsum), never O(N^2) Python loops.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import linalg

from pipeline.skeletons import Skeleton


def fid(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two embedding sets ``[N, D]``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    # tr(sqrt(A B)) = sum of sqrt(eigenvalues of sqrt(A) B sqrt(A)), a symmetric PSD matrix: stable, no complex parts
    root_a = linalg.sqrtm(cov_a + 1e-10 * np.eye(len(cov_a))).real
    eig = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_covmean)


def diversity(x: np.ndarray, pairs: int = 200, seed: int = 0) -> float:
    """Mean distance between ``pairs`` random pairs of embeddings (the paper's diversity)."""
    x = np.asarray(x, np.float64)
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(x), pairs), rng.integers(0, len(x), pairs)
    return float(np.linalg.norm(x[i] - x[j], axis=1).mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with a k-NN manifold estimate."""
    if min(len(real), len(fake)) <= k:
        raise ValueError(
            f"precision/recall with k={k} needs more than {k} samples per set, got {len(real)}, {len(fake)}"
        )
    real_t = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    fake_t = torch.as_tensor(np.asarray(fake), dtype=torch.float64)

    def radii(x: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(x, x)
        return d.kthvalue(k + 1, dim=1).values  # k-th neighbour, skipping itself

    r_real, r_fake = radii(real_t), radii(fake_t)
    d = torch.cdist(fake_t, real_t)  # [F, R]
    precision = (d <= r_real[None, :]).any(1).double().mean().item()
    recall = (d.T <= r_fake[None, :]).any(1).double().mean().item()
    return precision, recall


def mean_ci(values: list[float] | np.ndarray) -> tuple[float, float]:
    """Mean and 95% confidence half-width (normal approximation) of repeated measurements."""
    values = np.asarray(values, dtype=np.float64)
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return float(values.mean()), float(half)


# ------------------------------------------------------------------------------------------------------ 3D metrics
def _centre(motions: torch.Tensor, root: tuple[int, ...]) -> torch.Tensor:
    return motions - motions[:, :, list(root)].mean(dim=(1, 2), keepdim=True)


def aligned_mpjpe_matrix(gen: np.ndarray, ref: np.ndarray, root: tuple[int, ...], chunk: int = 64) -> np.ndarray:
    """``[G, R]`` mean per-joint error after centring, the best rotation about the vertical axis and the best scale.

    MAS motions have no canonical heading or scale (the 2D data were normalised per clip), so both are aligned in
    closed form for every pair (2D Procrustes on the ground plane, then least-squares scale).
    """
    g = _centre(torch.as_tensor(gen, dtype=torch.float64), root)
    r = _centre(torch.as_tensor(ref, dtype=torch.float64), root)
    if g.shape[1:] != r.shape[1:]:
        raise ValueError(f"motions differ in shape: {tuple(g.shape[1:])} vs {tuple(r.shape[1:])}")
    out = torch.empty(len(g), len(r), dtype=torch.float64)
    for s in range(0, len(g), chunk):
        a = g[s : s + chunk]  # [A, L, J, 3]
        # yaw: maximise sum(b . R a) over rotations about y
        sxx = torch.einsum("aljx,bljx->ab", a[..., [0, 2]], r[..., [0, 2]])  # a_x b_x + a_z b_z
        sxz = torch.einsum("alj,blj->ab", a[..., 2], r[..., 0]) - torch.einsum("alj,blj->ab", a[..., 0], r[..., 2])
        theta = torch.atan2(sxz, sxx)  # rotation taking a onto b
        cos, sin = torch.cos(theta)[..., None, None], torch.sin(theta)[..., None, None]
        ax, ay, az = a[:, None, ..., 0], a[:, None, ..., 1], a[:, None, ..., 2]  # [A, 1, L, J]
        rot_x, rot_z = cos * ax + sin * az, -sin * ax + cos * az  # [A, B, L, J]
        rx, ry, rz = r[None, ..., 0], r[None, ..., 1], r[None, ..., 2]
        dot = (rot_x * rx + ay * ry + rot_z * rz).sum(dim=(2, 3))
        norm_a = (a**2).sum(dim=(1, 2, 3))[:, None]
        k = (dot / norm_a.clamp_min(1e-12)).clamp_min(0)[..., None, None]  # least-squares scale
        err = torch.sqrt((k * rot_x - rx) ** 2 + (k * ay - ry) ** 2 + (k * rot_z - rz) ** 2)
        out[s : s + chunk] = err.mean(dim=(2, 3))
    return out.numpy()


def bone_length_variation(motions: np.ndarray, skeleton: Skeleton) -> float:
    """Mean over motions and bones of std/mean of the bone length over time (0 for rigid bones)."""
    m = np.asarray(motions, np.float64)
    a, b = np.array(skeleton.bones).T
    lengths = np.linalg.norm(m[:, :, a] - m[:, :, b], axis=-1)  # [N, L, B]
    return float((lengths.std(1) / np.maximum(lengths.mean(1), 1e-9)).mean())


def foot_metrics(motions: np.ndarray, skeleton: Skeleton, contact: float = 0.05) -> dict[str, float]:
    """Ground plausibility: foot skating (horizontal speed of the lower foot while in contact, body heights per
    frame) and floating (fraction of frames where the lower foot is above ``contact`` body heights)."""
    names = [n for n in ("left_ankle", "right_ankle", "LAnkle", "RAnkle") if n in skeleton.joints]
    if len(names) < 2:
        return {"foot_skate": math.nan, "floating": math.nan}
    feet = [skeleton.index(n) for n in names[:2]]
    m = np.asarray(motions, np.float64)
    height = np.maximum(m[..., 1].max(-1) - m[..., 1].min(-1), 1e-9).mean(1)  # [N] body height
    y = m[:, :, feet, 1]  # [N, L, 2]
    ground = y.min(axis=(1, 2))[:, None]
    lower = y.argmin(-1)  # [N, L]
    lower_y = np.take_along_axis(y, lower[..., None], -1)[..., 0] - ground
    in_contact = lower_y < contact * height[:, None]
    xz = m[:, :, feet][..., [0, 2]]  # [N, L, 2, 2]
    speed = np.linalg.norm(np.diff(xz, axis=1), axis=-1)  # [N, L-1, 2]
    lower_speed = np.take_along_axis(speed, lower[:, 1:, None], -1)[..., 0] / height[:, None]
    skate = lower_speed[in_contact[:, 1:]].mean() if in_contact[:, 1:].any() else math.nan
    return {"foot_skate": float(skate), "floating": float(1 - in_contact.mean())}


def motion_features_3d(motions: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    """Rotation- and translation-invariant features ``[N, D]``: scale-normalised pairwise joint distances (mean and
    std over time), joint speeds (mean, std) and vertical extent statistics."""
    m = np.asarray(motions, np.float64)
    m = m - m[:, :, list(skeleton.root)].mean(2, keepdims=True)
    height = np.maximum(m[..., 1].max(-1) - m[..., 1].min(-1), 1e-9).mean(1)[:, None, None, None]
    m = m / height
    iu = np.triu_indices(m.shape[2], 1)
    dist = np.linalg.norm(m[:, :, :, None] - m[:, :, None, :], axis=-1)[:, :, iu[0], iu[1]]  # [N, L, P]
    vel = np.linalg.norm(np.diff(m, axis=1), axis=-1)  # [N, L-1, J]
    return np.concatenate([dist.mean(1), dist.std(1), vel.mean(1), vel.std(1), m[..., 1].mean(1), m[..., 1].std(1)],
                          axis=1)  # fmt: skip


def evaluate_3d(gen: np.ndarray, ref: np.ndarray, skeleton: Skeleton) -> dict[str, float]:
    """Our 3D benchmark of generated motions against held-out ground-truth 3D motions of the same length."""
    errors = aligned_mpjpe_matrix(gen, ref, skeleton.root)
    feats_gen, feats_ref = motion_features_3d(gen, skeleton), motion_features_3d(ref, skeleton)
    mean, std = feats_ref.mean(0), np.maximum(feats_ref.std(0), 0.01)  # floor: rigid bones have zero spread
    return {
        "mpjpe_precision": float(errors.min(1).mean()),  # each generated motion vs its nearest real one
        "mpjpe_coverage": float(errors.min(0).mean()),  # each real motion vs its nearest generated one
        "bone_cv": bone_length_variation(gen, skeleton),
        **foot_metrics(gen, skeleton),
        "fid_3d": fid((feats_gen - mean) / std, (feats_ref - mean) / std),
    }
