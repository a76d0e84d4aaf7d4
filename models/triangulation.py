"""Closed-form, batched triangulation of one 3D motion from V 2D views.

Replaces the official code's 1000 Adam iterations per diffusion step:
- orthographic: weighted linear least squares per joint-frame (3x3 normal equations);
- perspective: DLT on ``(d r_k - x_k r_z) · X = d x_k`` followed by a few Gauss-Newton steps on the true
  reprojection error.
Views may be weighted per joint (e.g. by confidence). All work stays on the input's device.

Every system here has rows ``d r_k - q_k r_z`` (k = image x, y; r = the view's camera axes), so its normal equations
are a per-point linear combination of a few constant per-view matrices (:func:`_system_basis`): they are built with
one matrix product (:func:`_normal_equations`) instead of per-point outer products, which keeps a MAS step cheap.
"""

from __future__ import annotations

import torch

from pipeline.cameras import project, to_camera

_RIDGE = 1e-9


_MIN_DEPTH = 0.05  # of the camera distance: nearer (or behind), a view gives a Gauss-Newton step no weight


def _solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched 3x3 solves; a system that is singular in floating point (a joint no view constrains in some
    direction) gives 0 instead of stopping the whole batch (seen at close cameras: a float32 LU failure at
    batch element 81600 of a MAS step)."""
    eye = torch.eye(3, dtype=a.dtype, device=a.device)
    x, info = torch.linalg.solve_ex(a + _RIDGE * eye, b.unsqueeze(-1))
    x = x.squeeze(-1)
    bad = (info != 0).unsqueeze(-1) | ~torch.isfinite(x)
    return torch.where(bad.any(-1, keepdim=True), torch.zeros_like(x), x)


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


def _system_basis(rot: torch.Tensor, distance: float) -> torch.Tensor:
    """The constant per-view terms ``[V, 7, 12]`` of :func:`_normal_equations` (9 entries of A, then 3 of b).

    Rows ``d r_k - q_k r_z`` (k = image x, y) give ``Σ_k row_k row_kᵀ = d² (r₀r₀ᵀ + r₁r₁ᵀ) - d Σ_k q_k (r_k r_zᵀ +
    r_z r_kᵀ) + |q|² r_z r_zᵀ`` and ``Σ_k row_k y_k = d Σ_k y_k r_k - (q·y) r_z``.
    """
    r0, r1, rz = rot[:, 0], rot[:, 1], rot[:, 2]  # [V, 3]

    def outer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a[:, :, None] * b[:, None, :]).flatten(1)  # [V, 9]

    matrix_terms = [
        distance**2 * (outer(r0, r0) + outer(r1, r1)),
        -distance * (outer(r0, rz) + outer(rz, r0)),
        -distance * (outer(r1, rz) + outer(rz, r1)),
        outer(rz, rz),
    ]
    vector_terms = [distance * r0, distance * r1, -rz]
    basis = torch.zeros(rot.shape[0], 7, 12, dtype=rot.dtype, device=rot.device)
    basis[:, :4, :9] = torch.stack(matrix_terms, 1)
    basis[:, 4:, 9:] = torch.stack(vector_terms, 1)
    return basis


def _normal_equations(
    basis: torch.Tensor, q: torch.Tensor, u: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ u row rowᵀ`` and ``Σ u row y`` over views and image axes for rows ``d r_k - q_k r_z``, as seven per-point
    coefficients times the constant per-view terms of :func:`_system_basis`, summed by one matrix product.

    ``q``, ``y [..., V, L, J, 2]``; ``u [..., V, L, J]`` → ``[..., L, J, 3, 3]``, ``[..., L, J, 3]``.
    """
    q0, q1 = q.unbind(-1)
    y0, y1 = y.unbind(-1)
    coeffs = torch.stack([u, u * q0, u * q1, u * (q0 * q0 + q1 * q1), u * y0, u * y1, u * (q0 * y0 + q1 * y1)], -1)
    views, frames, joints = coeffs.shape[-4:-1]
    flat = coeffs.movedim(-4, -2).reshape(*coeffs.shape[:-4], frames, joints, views * 7)
    both = flat @ basis.reshape(views * 7, 12)
    return both[..., :9].unflatten(-1, (3, 3)), both[..., 9:]


def triangulate_orthographic(
    points: torch.Tensor, rotations: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """``points [..., V, L, J, 2]``, ``rotations [V, 3, 3]`` → ``[..., L, J, 3]`` minimising Σ w ‖R_xy X − x‖²."""
    _check(points, rotations)
    w = _weights(points, weights)
    basis = _system_basis(rotations.to(points), 1.0)
    return _solve(*_normal_equations(basis, torch.zeros_like(points), w, points))


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
    basis = _system_basis(rot, distance)
    # DLT rows (d r_k - x_k r_z) · X = d x_k
    x = _solve(*_normal_equations(basis, points, w, distance * points))
    for _ in range(refine_iters):
        cam = to_camera(x, rot)  # [..., V, L, J, 3]
        in_front = distance + cam[..., 2] > _MIN_DEPTH * distance  # a point at or behind a camera: no weight there
        depth = (distance + cam[..., 2]).clamp_min(_MIN_DEPTH * distance)
        proj = distance * cam[..., :2] / depth.unsqueeze(-1)
        # the Jacobian of proj is (d r_k - proj_k r_z) / depth: Gauss-Newton's JᵀJ and Jᵀr are the same kind of
        # system with weights w / depth² and right-hand side depth * residual
        residual = (proj - points) * depth.unsqueeze(-1)
        x = x - _solve(*_normal_equations(basis, proj, w * in_front / depth**2, residual))
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
