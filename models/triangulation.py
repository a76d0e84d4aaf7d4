"""Closed-form, batched triangulation of one 3D motion from V 2D views.

Replaces the official code's 1000 Adam iterations per diffusion step:
- orthographic: weighted linear least squares per joint-frame (3x3 normal equations);
- perspective: DLT on ``(d r_k - x_k r_z) · X = d x_k`` followed by a few Gauss-Newton steps on the true
  reprojection error.
Views may be weighted per joint (e.g. by confidence). All work stays on the input's device.

Every system here has rows ``d r_k - q_k r_z`` (k = image x, y; r = the view's camera axes), so its normal equations
are a per-point linear combination of a few constant per-view terms (:func:`_system_basis`): they are built with one
matrix product (:func:`_normal_equations`) instead of per-point outer products. The work runs on planes
``[V, 2, N]`` (one contiguous row of the N = motions x frames x joints points per view and coordinate) and each
symmetric 3x3 system is solved in closed form (:func:`_solve_planes`): a MAS step of 64 samples x 5 views x 60 frames
triangulates 2.9x faster (12.6 vs 37 ms on 2 cores) than with the points' own layout and batched LU, with the same
float32 accuracy.
"""

from __future__ import annotations

import torch

from pipeline.cameras import project

_RIDGE = 1e-9
_MIN_DEPTH = 0.05  # of the camera distance: nearer (or behind), a view gives a Gauss-Newton step no weight
# the 6 distinct entries of a symmetric 3x3 matrix in row-major order of its flattened 9
_SYMMETRIC = (0, 1, 2, 4, 5, 8)


def _solve_planes(system: torch.Tensor) -> torch.Tensor:
    """Solve the symmetric systems ``[9, N]`` (A's entries 00 01 02 11 12 22, then b) by the adjugate: ``[3, N]``.

    A system that is singular in floating point (a joint no view constrains in some direction: zero determinant, or
    a non-finite result) gives 0 instead of stopping the whole batch (seen at close cameras: a float32 LU failure at
    batch element 81600 of a MAS step)."""
    a00, a01, a02, a11, a12, a22, b0, b1, b2 = system
    a00, a11, a22 = a00 + _RIDGE, a11 + _RIDGE, a22 + _RIDGE
    c00, c01, c02 = a11 * a22 - a12 * a12, a02 * a12 - a01 * a22, a01 * a12 - a02 * a11
    c11, c12, c22 = a00 * a22 - a02 * a02, a01 * a02 - a00 * a12, a00 * a11 - a01 * a01
    det = a00 * c00 + a01 * c01 + a02 * c02
    x = torch.stack([c00 * b0 + c01 * b1 + c02 * b2, c01 * b0 + c11 * b1 + c12 * b2, c02 * b0 + c12 * b1 + c22 * b2])
    x = x / det
    bad = (det == 0) | ~torch.isfinite(x).all(0)
    return torch.where(bad, torch.zeros_like(x), x)


def _planes(points: torch.Tensor, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``points [..., V, L, J, 2]`` → ``[V, 2, N]`` (N: every motion's frames x joints) and the weights ``[V, N]``
    (ones when None)."""
    views = points.shape[-4]
    planes = points.reshape(-1, views, points.shape[-3] * points.shape[-2], 2).permute(1, 3, 0, 2).reshape(views, 2, -1)
    if weights is None:
        return planes, torch.ones_like(planes[:, 0])
    if weights.shape != points.shape[:-1]:
        raise ValueError(f"weights {tuple(weights.shape)} must match points {tuple(points.shape[:-1])}")
    flat = weights.to(points.dtype).reshape(-1, views, points.shape[-3] * points.shape[-2])
    return planes, flat.transpose(0, 1).reshape(views, -1)


def _motion(planes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Solutions ``[3, N]`` → motions ``[..., L, J, 3]`` shaped after ``points [..., V, L, J, 2]``."""
    return planes.T.reshape(*points.shape[:-4], *points.shape[-3:-1], 3)


def _check(points: torch.Tensor, rotations: torch.Tensor) -> None:
    if points.dim() < 4 or points.shape[-1] != 2 or points.shape[-4] != rotations.shape[0]:
        raise ValueError(
            f"triangulate expects points [..., V, L, J, 2] with V = {rotations.shape[0]}, got {tuple(points.shape)}"
        )
    if rotations.shape[0] < 2:
        raise ValueError("triangulation needs at least 2 views")


def _system_basis(rot: torch.Tensor, distance: float) -> torch.Tensor:
    """The constant per-view terms ``[9, 7 V]`` of :func:`_normal_equations`: rows are A's distinct entries
    (:data:`_SYMMETRIC`) then b's three; columns are the seven per-point coefficients, each over the V views.

    Rows ``d r_k - q_k r_z`` (k = image x, y) give ``Σ_k row_k row_kᵀ = d² (r₀r₀ᵀ + r₁r₁ᵀ) - d Σ_k q_k (r_k r_zᵀ +
    r_z r_kᵀ) + |q|² r_z r_zᵀ`` and ``Σ_k row_k y_k = d Σ_k y_k r_k - (q·y) r_z``.
    """
    r0, r1, rz = rot[:, 0], rot[:, 1], rot[:, 2]  # [V, 3]

    def outer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a[:, :, None] * b[:, None, :]).flatten(1)[:, list(_SYMMETRIC)]  # [V, 6]

    matrix_terms = [
        distance**2 * (outer(r0, r0) + outer(r1, r1)),
        -distance * (outer(r0, rz) + outer(rz, r0)),
        -distance * (outer(r1, rz) + outer(rz, r1)),
        outer(rz, rz),
    ]
    vector_terms = [distance * r0, distance * r1, -rz]
    basis = torch.zeros(7, rot.shape[0], 9, dtype=rot.dtype, device=rot.device)
    basis[:4, :, :6] = torch.stack(matrix_terms)
    basis[4:, :, 6:] = torch.stack(vector_terms)
    return basis.reshape(-1, 9).T


def _normal_equations(basis: torch.Tensor, q: torch.Tensor, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``Σ u row rowᵀ`` and ``Σ u row y`` over views and image axes for rows ``d r_k - q_k r_z``, as seven per-point
    coefficients times the constant per-view terms of :func:`_system_basis`, summed by one matrix product.

    ``q``, ``y [V, 2, N]``; ``u [V, N]`` → the systems ``[9, N]`` of :func:`_solve_planes`.
    """
    q0, q1 = q.unbind(1)
    y0, y1 = y.unbind(1)
    coeffs = torch.stack([u, u * q0, u * q1, u * (q0 * q0 + q1 * q1), u * y0, u * y1, u * (q0 * y0 + q1 * y1)])
    return basis @ coeffs.flatten(0, 1)


def triangulate_orthographic(
    points: torch.Tensor, rotations: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """``points [..., V, L, J, 2]``, ``rotations [V, 3, 3]`` → ``[..., L, J, 3]`` minimising Σ w ‖R_xy X − x‖²."""
    _check(points, rotations)
    planes, w = _planes(points, weights)
    basis = _system_basis(rotations.to(points), 1.0)
    return _motion(_solve_planes(_normal_equations(basis, torch.zeros_like(planes), w, planes)), points)


def triangulate_perspective(
    points: torch.Tensor,
    rotations: torch.Tensor,
    distance: float,
    weights: torch.Tensor | None = None,
    refine_iters: int = 2,
) -> torch.Tensor:
    """Perspective triangulation: DLT, then ``refine_iters`` Gauss-Newton steps on the reprojection error."""
    _check(points, rotations)
    planes, w = _planes(points, weights)
    rot = rotations.to(points)
    basis = _system_basis(rot, distance)
    # DLT rows (d r_k - x_k r_z) · X = d x_k
    x = _solve_planes(_normal_equations(basis, planes, w, distance * planes))  # [3, N]
    axes = rot.reshape(-1, 3)  # [3 V, 3]: every camera's axes, so one product gives every view's coordinates
    for _ in range(refine_iters):
        cam = (axes @ x).unflatten(0, (rot.shape[0], 3))  # [V, 3, N]
        in_front = distance + cam[:, 2] > _MIN_DEPTH * distance  # a point at or behind a camera: no weight there
        depth = (distance + cam[:, 2]).clamp_min(_MIN_DEPTH * distance)
        proj = distance * cam[:, :2] / depth.unsqueeze(1)
        # the Jacobian of proj is (d r_k - proj_k r_z) / depth: Gauss-Newton's JᵀJ and Jᵀr are the same kind of
        # system with weights w / depth² and right-hand side depth * residual
        residual = (proj - planes) * depth.unsqueeze(1)
        x = x - _solve_planes(_normal_equations(basis, proj, w * in_front / depth**2, residual))
    return _motion(x, points)


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
