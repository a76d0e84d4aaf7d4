"""Distribution metrics on motion embeddings (the paper's FID, diversity, precision/recall) and 3D motion metrics.

All metrics are vectorised (torch.cdist / batched einsum), never O(N^2) Python loops.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import linalg

from pipeline.cameras import BODY_SIZE_TO_UNIT
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
# Headline 3D metrics: lower is better for each, and each ranks the real-data floor above every trivial baseline
# (frozen pose, flat lift, random-depth lift, time-shuffled motion) on the procedural benchmark (test_evaluate.py).
# The MPJPE headline is the root-relative one: on clip-centred motions the root trajectory's error swamps the pose's
# (issue 32), so `mpjpe` is reported beside it with its pose and trajectory parts, not ranked.
HEADLINE_3D = ("mpjpe_rootrel", "speed_w1", "accel_w1", "fid_3d")


def _centre(motions: torch.Tensor, root: tuple[int, ...]) -> torch.Tensor:
    return motions - motions[:, :, list(root)].mean(dim=(1, 2), keepdim=True)


def root_relative(motions: np.ndarray, root: tuple[int, ...]) -> np.ndarray:
    """Each frame of ``[N, L, J, 3]`` centred on its own root (the mean of the root joints): the pose without its
    trajectory."""
    m = np.asarray(motions, np.float64)
    return m - m[:, :, list(root)].mean(2, keepdims=True)


def root_travel_climb(motions: np.ndarray, root: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per motion ``[N]`` each: ``travel``, the length of the root's horizontal (x, z) path over the clip, and
    ``climb``, the absolute vertical root displacement from the first frame to the last (in the motions' units)."""
    path = np.asarray(motions, np.float64)[:, :, list(root)].mean(2)  # [N, L, 3]
    travel = np.linalg.norm(np.diff(path[..., [0, 2]], axis=1), axis=-1).sum(1)
    return travel, np.abs(path[:, -1, 1] - path[:, 0, 1])


def normalize_3d(motions: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    """Each motion ``[N, L, J, 3]`` centred on its mean root position and divided by its body size, the same rule as
    the 2D data (:func:`pipeline.cameras.normalize_2d`: median over frames of the RMS spread of the body joints, over
    :data:`~pipeline.cameras.BODY_SIZE_TO_UNIT`), so one unit is about one body height whatever the source's units.

    The scale is a property of each motion alone, never fitted to the motion it is compared with: a shrunken or
    collapsed motion cannot buy a lower error.
    """
    m = np.asarray(motions, np.float64)
    if m.ndim != 4 or m.shape[-1] != 3:
        raise ValueError(f"3D motions must be [N, L, J, 3], got {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("3D motions hold NaN or inf values (a diverged sample?); drop them before scoring")
    body = list(skeleton.body_joints)
    diff = m[:, :, body] - m[:, :, body].mean(2, keepdims=True)
    spread = np.median(np.sqrt((diff**2).sum(-1).mean(-1)), axis=1)  # [N]
    scale = np.maximum(spread, 1e-9) / BODY_SIZE_TO_UNIT
    centre = m[:, :, list(skeleton.root)].mean(axis=(1, 2), keepdims=True)
    return (m - centre) / scale[:, None, None, None]


def _yaw_terms(g: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every pair: the heading-plane terms ``sxx = a_x b_x + a_z b_z``, ``sxz = a_z b_x - a_x b_z`` and the
    vertical term ``syy = a_y b_y``, summed over frames and joints (matrix products, ``[G, R]`` each)."""
    gf, rf = g.flatten(1, 2), r.flatten(1, 2)  # [N, L*J, 3]
    sxx = gf[..., [0, 2]].flatten(1) @ rf[..., [0, 2]].flatten(1).T
    sxz = gf[..., 2] @ rf[..., 0].T - gf[..., 0] @ rf[..., 2].T
    syy = gf[..., 1] @ rf[..., 1].T
    return sxx, sxz, syy


def aligned_sq_error_matrix(gen: np.ndarray, ref: np.ndarray, root: tuple[int, ...]) -> np.ndarray:
    """``[G, R]`` mean squared joint distance after centring and the best rotation about the vertical axis.

    Motions must already be in body units (:func:`normalize_3d`). MAS motions have no canonical heading, so the
    heading is aligned in closed form for every pair (the rotation maximising the dot product is the least-squares
    one: ``|a|^2 + |b|^2 - 2 (sqrt(sxx^2 + sxz^2) + syy)``); the scale is NOT fitted: a per-pair scale lets a
    shrunken or frozen motion approach anything. Matrix products only, so thousands of motions per set are cheap.
    """
    g = _centre(torch.as_tensor(np.asarray(gen), dtype=torch.float64), root)
    r = _centre(torch.as_tensor(np.asarray(ref), dtype=torch.float64), root)
    if g.shape[1:] != r.shape[1:]:
        raise ValueError(f"motions differ in shape: {tuple(g.shape[1:])} vs {tuple(r.shape[1:])}")
    sxx, sxz, syy = _yaw_terms(g, r)
    norm_g, norm_r = (g**2).sum(dim=(1, 2, 3)), (r**2).sum(dim=(1, 2, 3))
    sq = norm_g[:, None] + norm_r[None, :] - 2 * (torch.sqrt(sxx**2 + sxz**2) + syy)
    return (sq.clamp_min(0) / (g.shape[1] * g.shape[2])).numpy()


def _heading_aligned_pairs(gen: np.ndarray, ref: np.ndarray, root: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """The pairs ``gen[i], ref[i]`` centred on their clip-mean root, each gen motion turned about the vertical axis
    onto its ref (the least-squares heading, as in :func:`aligned_sq_error_matrix`)."""
    g = _centre(torch.as_tensor(np.asarray(gen), dtype=torch.float64), root)
    r = _centre(torch.as_tensor(np.asarray(ref), dtype=torch.float64), root)
    gf, rf = g.flatten(1, 2), r.flatten(1, 2)
    sxx = (gf[..., [0, 2]] * rf[..., [0, 2]]).sum(dim=(1, 2))
    sxz = (gf[..., 2] * rf[..., 0] - gf[..., 0] * rf[..., 2]).sum(1)
    theta = torch.atan2(sxz, sxx)[:, None, None]  # rotation about y taking each gen motion onto its ref
    cos, sin = torch.cos(theta), torch.sin(theta)
    x, z = cos * g[..., 0] + sin * g[..., 2], -sin * g[..., 0] + cos * g[..., 2]
    return torch.stack([x, g[..., 1], z], -1), r


def aligned_mpjpe_pairs(gen: np.ndarray, ref: np.ndarray, root: tuple[int, ...]) -> np.ndarray:
    """``[N]`` mean per-joint position error of the pairs ``gen[i], ref[i]`` after centring and heading alignment."""
    return aligned_pair_errors(gen, ref, root)["mpjpe"]


def aligned_pair_errors(gen: np.ndarray, ref: np.ndarray, root: tuple[int, ...]) -> dict[str, np.ndarray]:
    """``[N]`` errors of the pairs ``gen[i], ref[i]``, all under the one heading alignment of
    :func:`aligned_mpjpe_pairs`: ``mpjpe`` (clip-centred joints), ``pose`` (each frame centred on its own root) and
    ``traj`` (the root path: mean distance between the two roots over the frames). The joint error is the sum of the
    pose and root errors per frame, so ``mpjpe <= pose + traj``."""
    g, r = _heading_aligned_pairs(gen, ref, root)
    g_root, r_root = g[:, :, list(root)].mean(2, keepdim=True), r[:, :, list(root)].mean(2, keepdim=True)
    return {
        "mpjpe": torch.linalg.norm(g - r, dim=-1).mean(dim=(1, 2)).numpy(),
        "pose": torch.linalg.norm((g - g_root) - (r - r_root), dim=-1).mean(dim=(1, 2)).numpy(),
        "traj": torch.linalg.norm(g_root - r_root, dim=-1).mean(dim=(1, 2)).numpy(),
    }


def nearest_neighbour_errors(gen: np.ndarray, ref: np.ndarray, root: tuple[int, ...]) -> dict[str, tuple[float, float]]:
    """(precision, coverage) of each error of :func:`aligned_pair_errors`: precision over each generated motion and
    its nearest real motion, coverage over each real motion and its nearest generated one; neighbours are found once,
    by the aligned squared error of the clip-centred motions."""
    sq = aligned_sq_error_matrix(gen, ref, root)
    gen, ref = np.asarray(gen), np.asarray(ref)
    precision = aligned_pair_errors(gen, ref[sq.argmin(1)], root)
    coverage = aligned_pair_errors(gen[sq.argmin(0)], ref, root)
    return {key: (float(precision[key].mean()), float(coverage[key].mean())) for key in precision}


def nearest_neighbour_mpjpe(gen: np.ndarray, ref: np.ndarray, root: tuple[int, ...]) -> tuple[float, float]:
    """(precision, coverage): the mean MPJPE of each generated motion to its nearest real motion, and of each real
    motion to its nearest generated one; neighbours are found by the aligned squared error."""
    return nearest_neighbour_errors(gen, ref, root)["mpjpe"]


def bone_length_variation(motions: np.ndarray, skeleton: Skeleton) -> float:
    """Mean over motions and bones of std/mean of the bone length over time (0 for rigid bones)."""
    return float(_bone_cv(np.asarray(motions, np.float64), skeleton).mean())


def _bone_cv(m: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    """``[N]`` mean over bones of std/mean of each bone's length over time."""
    a, b = np.array(skeleton.bones).T
    lengths = np.linalg.norm(m[:, :, a] - m[:, :, b], axis=-1)  # [N, L, B]
    return (lengths.std(1) / np.maximum(lengths.mean(1), 1e-9)).mean(1)


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
    """16 heading-invariant features per motion ``[N, 16]`` (motions in body units, :func:`normalize_3d`).

    Few on purpose: an FID over D features needs many more than D motions per set to be estimated (the old ~270-d
    features let 64 flat or frozen motions beat real ones). Per motion: vertical extent (mean, std over time); the
    two horizontal principal spreads of the pose (mean, std of each: a flat body has a zero minor spread); mean joint
    speed (mean, std over time); root horizontal speed; root height std; joint acceleration (mean, std); bone-length
    variation; joint distance from the root (mean, std over time); mean and std over time of the hands' and feet's
    height above the lowest joint.
    """
    m = np.asarray(motions, np.float64)
    root = m[:, :, list(skeleton.root)].mean(2)  # [N, L, 3]
    y = m[..., 1]
    extent = y.max(-1) - y.min(-1)  # [N, L]
    xz = m[..., [0, 2]] - m[..., [0, 2]].mean(2, keepdims=True)
    cov = np.einsum("nlja,nljb->nlab", xz, xz) / m.shape[2]  # [N, L, 2, 2]
    spreads = np.sqrt(np.clip(np.linalg.eigvalsh(cov), 0, None))  # ascending: minor, major
    vel = np.linalg.norm(np.diff(m, axis=1), axis=-1)  # [N, L-1, J]
    acc = np.linalg.norm(np.diff(m, 2, axis=1), axis=-1)  # [N, L-2, J]
    root_speed = np.linalg.norm(np.diff(root[..., [0, 2]], axis=1), axis=-1)  # [N, L-1]
    reach = np.linalg.norm(m - root[:, :, None], axis=-1).mean(-1)  # [N, L]
    lowest = y.min(-1, keepdims=True)
    ends = _end_joints(skeleton)
    end_height = (y[..., ends] - lowest).mean(-1)  # [N, L]
    columns = [
        extent.mean(1), extent.std(1),
        spreads[..., 0].mean(1), spreads[..., 0].std(1), spreads[..., 1].mean(1), spreads[..., 1].std(1),
        vel.mean((1, 2)), vel.mean(2).std(1), root_speed.mean(1), root[..., 1].std(1),
        acc.mean((1, 2)), acc.mean(2).std(1), _bone_cv(m, skeleton),
        reach.mean(1), reach.std(1), end_height.std(1),
    ]  # fmt: skip
    return np.stack(columns, 1)


def _end_joints(skeleton: Skeleton) -> list[int]:
    """Joints at the end of one bone only (hands, feet, head tips): where motion shows most."""
    degree = np.bincount(np.array(skeleton.bones).ravel(), minlength=len(skeleton.joints))
    ends = [j for j in range(len(skeleton.joints)) if degree[j] == 1]
    return ends or list(range(len(skeleton.joints)))


def _quantile_w1(a: np.ndarray, b: np.ndarray, points: int = 200) -> float:
    """Wasserstein-1 distance between two 1-D samples, from ``points`` matched quantiles."""
    q = (np.arange(points) + 0.5) / points
    return float(np.abs(np.quantile(a, q) - np.quantile(b, q)).mean())


def motion_content_distances(gen: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Wasserstein-1 distances between the per-joint distributions of joint speed and of acceleration magnitude
    (body units per frame and per frame², pooled over motions and frames, averaged over joints): a frozen pose
    has no speed, a time-shuffled motion has far too much acceleration."""
    out = {}
    for key, order in (("speed_w1", 1), ("accel_w1", 2)):
        g = np.linalg.norm(np.diff(gen, order, axis=1), axis=-1)  # [N, L-o, J]
        r = np.linalg.norm(np.diff(ref, order, axis=1), axis=-1)
        out[key] = float(np.mean([_quantile_w1(g[..., j].ravel(), r[..., j].ravel()) for j in range(g.shape[-1])]))
    return out


def evaluate_3d(gen: np.ndarray, ref: np.ndarray, skeleton: Skeleton) -> dict[str, float]:
    """3D metrics of generated motions against held-out real 3D motions of the same length (both any units: each
    motion is brought to body units by :func:`normalize_3d`).

    ``mpjpe_rootrel`` (headline): nearest-neighbour MPJPE of the root-relative motions (each frame centred on its own
    root, heading aligned, no scale fitted; mean of precision and coverage): the pose, whatever the root path does.
    ``mpjpe_precision``: each generated motion vs its nearest real one, clip-centred; ``mpjpe_coverage``: each real
    motion vs its nearest generated one; ``mpjpe``: their mean (a collapsed or frozen set fails coverage, a noisy one
    fails precision), split into ``mpjpe_pose`` (the same pairs, each frame centred on its root) and ``mpjpe_traj``
    (the root paths of those pairs), each a mean of precision and coverage. ``speed_w1``/``accel_w1``: motion
    content. ``fid_3d``: FID of :func:`motion_features_3d` (z-scored by the real set). ``bone_cv``, ``foot_skate``,
    ``floating``, ``travel`` and ``climb`` (medians over motions of :func:`root_travel_climb`, body heights):
    plausibility, to read beside the real data's own values (the floor row), not as lower-is-better.
    """
    g, r = normalize_3d(gen, skeleton), normalize_3d(ref, skeleton)
    errors = nearest_neighbour_errors(g, r, skeleton.root)
    precision, coverage = errors["mpjpe"]
    rootrel = nearest_neighbour_mpjpe(root_relative(g, skeleton.root), root_relative(r, skeleton.root), skeleton.root)
    feats_gen, feats_ref = motion_features_3d(g, skeleton), motion_features_3d(r, skeleton)
    mean, std = feats_ref.mean(0), np.maximum(feats_ref.std(0), 1e-3)  # floor: rigid bones have zero spread
    travel, climb = root_travel_climb(g, skeleton.root)
    return {
        "mpjpe_rootrel": sum(rootrel) / 2,
        "mpjpe": (precision + coverage) / 2,
        "mpjpe_pose": sum(errors["pose"]) / 2,
        "mpjpe_traj": sum(errors["traj"]) / 2,
        "mpjpe_precision": precision,
        "mpjpe_coverage": coverage,
        **motion_content_distances(g, r),
        "fid_3d": fid((feats_gen - mean) / std, (feats_ref - mean) / std),
        "bone_cv": bone_length_variation(g, skeleton),
        **foot_metrics(g, skeleton),
        "travel": float(np.median(travel)),
        "climb": float(np.median(climb)),
    }
