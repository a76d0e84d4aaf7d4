"""Closed-form, batched triangulation of one 3D motion from V 2D views.

Replaces the official code's 1000 Adam iterations per diffusion step:
- orthographic: weighted linear least squares per joint-frame (3x3 normal equations);
- perspective: DLT on ``(d r_k - x_k r_z) · X = d x_k`` followed by a few Gauss-Newton steps on the true
  reprojection error.
Views may be weighted per joint (e.g. by confidence). All work stays on the input's device.
"""

from __future__ import annotations

import torch

from pipeline.cameras import project

_RIDGE = 1e-9


def _solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(3, dtype=a.dtype, device=a.device)
    return torch.linalg.solve(a + _RIDGE * eye, b.unsqueeze(-1)).squeeze(-1)


def _weights(points: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return torch.ones(points.shape[:-1], dtype=points.dtype, device=points.device)
    if weights.shape != points.shape[:-1]:
        raise ValueError(f"weights {tuple(weights.shape)} must match points {tuple(points.shape[:-1])}")
    return weights.to(points.dtype)


def _check(points: torch.Tensor, rotations: torch.Tensor) -> None:
    if points.dim() < 4 or points.shape[-1] != 2 or points.shape[-4] != rotations.shape[0]:
        raise ValueError(
            f"triangulate expects points [..., V, L, J, 2] with V = {rotations.shape[0]}, got {tuple(points.shape)}"
        )
    if rotations.shape[0] < 2:
        raise ValueError("triangulation needs at least 2 views")


def triangulate_orthographic(
    points: torch.Tensor, rotations: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """``points [..., V, L, J, 2]``, ``rotations [V, 3, 3]`` → ``[..., L, J, 3]`` minimising Σ w ‖R_xy X − x‖²."""
    _check(points, rotations)
    w = _weights(points, weights)
    proj = rotations[:, :2, :].to(points)  # [V, 2, 3]
    ptp = proj.transpose(1, 2) @ proj  # [V, 3, 3]
    a = torch.einsum("...vlj,vab->...ljab", w, ptp)
    b = torch.einsum("...vlj,vka,...vljk->...lja", w, proj, points)
    return _solve(a, b)


def triangulate_perspective(
    points: torch.Tensor,
    rotations: torch.Tensor,
    distance: float,
    weights: torch.Tensor | None = None,
    refine_iters: int = 2,
) -> torch.Tensor:
    """Perspective triangulation: DLT, then ``refine_iters`` Gauss-Newton steps on the reprojection error."""
    _check(points, rotations)
    w = _weights(points, weights)
    rot = rotations.to(points)
    r_xy, r_z = rot[:, :2, :], rot[:, 2, :]  # [V, 2, 3], [V, 3]
    # rows (d r_k - x_k r_z) [..., V, L, J, 2, 3], right-hand side d x_k
    rows = distance * r_xy[:, None, None] - points.unsqueeze(-1) * r_z[:, None, None, None, :]
    rhs = distance * points
    a = torch.einsum("...vlj,...vljka,...vljkb->...ljab", w, rows, rows)
    b = torch.einsum("...vlj,...vljka,...vljk->...lja", w, rows, rhs)
    x = _solve(a, b)
    for _ in range(refine_iters):
        cam = torch.einsum("vab,...ljb->...vlja", rot, x)  # [..., V, L, J, 3]
        depth = (distance + cam[..., 2:3]).clamp_min(1e-6)
        proj = distance * cam[..., :2] / depth
        residual = proj - points
        # d proj / d X = d/depth * R_xy - d * cam_xy / depth^2 ⊗ R_z
        jac = (distance / depth).unsqueeze(-1) * r_xy[:, None, None] - (distance * cam[..., :2] / depth**2).unsqueeze(
            -1
        ) * r_z[:, None, None, None, :]
        jtj = torch.einsum("...vlj,...vljka,...vljkb->...ljab", w, jac, jac)
        jtr = torch.einsum("...vlj,...vljka,...vljk->...lja", w, jac, residual)
        x = x - _solve(jtj, jtr)
    return x


def triangulate(
    points: torch.Tensor,
    rotations: torch.Tensor,
    distance: float | None,
    mode: str = "perspective",
    weights: torch.Tensor | None = None,
    refine_iters: int = 2,
) -> torch.Tensor:
    if mode == "orthographic":
        return triangulate_orthographic(points, rotations, weights)
    if mode == "perspective":
        if distance is None or distance <= 0:
            raise ValueError(f"perspective triangulation needs a positive distance, got {distance}")
        return triangulate_perspective(points, rotations, distance, weights, refine_iters)
    raise ValueError(f"unknown projection mode {mode!r}; use 'perspective' or 'orthographic'")


def reprojection_error(motion: torch.Tensor, points: torch.Tensor, rotations: torch.Tensor, distance, mode) -> float:
    """Mean Euclidean distance between the projections of ``motion`` and the observed ``points``."""
    return float((project(motion, rotations, distance, mode) - points).norm(dim=-1).mean())
