"""Multi-view Ancestral Sampling (Algorithm 1 of the MAS supplementary, with the seed's errata fixed).

S samples x V views go through the denoiser as one batch per step. Each step: predict x̂0 for every view, triangulate
one 3D motion per sample (closed form), re-project it (x̃0), and take the DDPM posterior step
``x_{t-1} = μ̃(x_t, x̃0) + σ_t P_orth(ε_3D)`` with one 3D noise tensor shared by all views and projected
orthographically (Theorem 1: an orthographic projection of N(0, I3) is N(0, I2)).

The diffusion runs in the model's z-scored space; projection and triangulation run in data units.
``rigid_bones`` (off by default, beyond the paper) moves every triangulated motion onto one set of bone lengths per
sample (:func:`pipeline.rigid.project_to_rigid`) before it is re-projected to the views, and the final motion too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from models.allocator import keep_freed_memory
from models.checkpoint import TrainedModel
from models.triangulation import triangulate
from pipeline.cameras import (
    DEFAULT_DISTANCE,
    DEFAULT_ELEVATION,
    DEFAULT_SUBJECT_HEIGHT_M,
    camera_distance,
    project,
    project_each,
    rotation_matrix,
    view_azimuths,
)
from pipeline.rigid import project_to_rigid


class SamplingError(RuntimeError):
    """Sampling produced unusable values or was asked for something impossible."""


@dataclass(frozen=True)
class MASConfig:
    num_views: int = 5
    elevation: float = DEFAULT_ELEVATION
    distance: float = DEFAULT_DISTANCE  # data units; see distance_m
    projection: str = "perspective"  # camera model of the motions; noise is always projected orthographically
    steps: int | None = None  # respaced diffusion steps (None: all of the model's)
    noise_3d: bool = True  # False: the "no 3D noise" ablation, independent noise per view
    dynamic_views: bool = False  # seed appendix C: new random view offsets every step, history replayed
    refine_iters: int = 2
    distance_m: float | None = None  # metres (replaces distance): distance_m / subject_height_m mean-pose heights
    subject_height_m: float = DEFAULT_SUBJECT_HEIGHT_M
    rigid_bones: bool = False  # beyond the paper: each triangulated motion onto one set of bone lengths per sample

    def __post_init__(self) -> None:
        if self.num_views < 2:
            raise SamplingError(f"MAS needs at least 2 views to triangulate, got num_views={self.num_views}")
        if self.projection not in ("perspective", "orthographic"):
            raise SamplingError(f"unknown projection {self.projection!r}; use 'perspective' or 'orthographic'")
        if self.dynamic_views and not self.noise_3d:
            raise SamplingError(
                "dynamic_views replays the shared 3D noise, so it cannot be combined with noise_3d=False"
            )
        if self.projection == "perspective" and self.distance <= 0:
            raise SamplingError(f"camera distance must be positive, got {self.distance}")
        if (self.distance_m is not None and self.distance_m <= 0) or self.subject_height_m <= 0:
            raise SamplingError(f"camera distance ({self.distance_m} m) and subject height ({self.subject_height_m} m) "
                                "must be positive")  # fmt: skip

    def to_dict(self) -> dict:
        out = asdict(self)
        if not self.rigid_bones:  # off: the parameters (and cached sample sets' keys) read as before the option
            del out["rigid_bones"]
        return out

    def camera_distance(self, mean_pose) -> float | None:
        """Perspective distance in data units for a model with this mean pose (None: orthographic)."""
        return config_camera_distance(self, mean_pose)


def config_camera_distance(cfg, mean_pose) -> float | None:
    """The camera distance of a MAS or SDS config (``projection``, ``distance``, ``distance_m``,
    ``subject_height_m``) in data units for a model with this mean pose; conversion errors as :class:`SamplingError`."""
    try:
        return camera_distance(cfg.projection, cfg.distance, cfg.distance_m, cfg.subject_height_m, mean_pose)
    except ValueError as exc:
        raise SamplingError(str(exc)) from None


def _rotations(azimuths: torch.Tensor, elevation: float) -> torch.Tensor:
    """``[..., V, 3, 3]`` rotations for azimuths ``[..., V]`` (float64 math, returned as float32 on their device)."""
    rot = rotation_matrix(azimuths.detach().cpu().numpy(), elevation)
    return torch.as_tensor(rot, dtype=torch.float32, device=azimuths.device)


def _check_finite(name: str, value: torch.Tensor, step: int) -> None:
    if not torch.isfinite(value).all():
        raise SamplingError(
            f"{name} holds NaN or inf at diffusion step {step}: the checkpoint is broken or does not fit this data"
        )


# Activation elements (motions x tokens x model width) per denoiser pass on a CPU. A bigger pass is memory-bound
# there: 320 motions of 60 frames (61 tokens) of the 128-d benchmark model, 64 MAS samples, run 2.1x faster per
# sample than 1000 samples at once (benchmarks/results/evaluation_speed.md); the same number of elements for the
# 512-d default model, 40 motions of 120 frames, take 11.6 ms per motion in int8 against 15.9 ms in passes of 320
# (bf16, its faster precision there; precision_passes.md). Chunks draw from one random stream in order, so the first
# chunk of a seed is the same whatever the total.
CPU_PASS_ELEMENTS = 320 * 61 * 128


def sample_chunk(trained: TrainedModel, chunk: int | None, views: int, length: int) -> int | None:
    """Samples per pass: ``chunk`` if given; on a CPU as many samples of ``views`` motions of ``length`` frames as
    :data:`CPU_PASS_ELEMENTS` holds at the model's width (at least 1); elsewhere None (all at once: a GPU is not
    memory-bound the same way, and chunking has not been measured there)."""
    if chunk is None:
        if trained.device.type != "cpu":
            return None
        return max(1, CPU_PASS_ELEMENTS // (views * (length + 1) * trained.model.config.latent_dim))
    if chunk < 1:
        raise SamplingError(f"the sample chunk must be at least 1, got {chunk}")
    return chunk


def pass_tokens(trained: TrainedModel, num_samples: int, length: int, views: int, chunk: int | None = None) -> int:
    """Tokens (frames and the timestep token of every motion) in one denoiser pass when ``num_samples`` samples of
    ``views`` motions each are drawn in passes of :func:`sample_chunk` samples: what the precision policy weighs."""
    per_pass = sample_chunk(trained, chunk, views, length) or num_samples
    return min(num_samples, per_pass) * views * (length + 1)


def chunk_sizes(num_samples: int, chunk: int | None) -> list[int]:
    """Sizes of the consecutive chunks of ``num_samples`` (one chunk when ``chunk`` is None)."""
    chunk = chunk or num_samples
    return [min(chunk, num_samples - start) for start in range(0, num_samples, chunk)]


def sample_in_chunks(sizes: list[int], steps: int, desc: str, progress: bool, run_chunk) -> torch.Tensor:
    """``run_chunk(size, bar)`` for each chunk size in order, concatenated; one progress bar of ``steps`` per chunk."""
    keep_freed_memory()  # every pass reuses freed activations instead of faulting them in (models/allocator.py)
    bar = tqdm(total=steps * len(sizes), disable=not progress, desc=desc, unit="step")
    try:
        return torch.cat([run_chunk(size, bar) for size in sizes])
    finally:
        bar.close()


@torch.no_grad()
def mas_sample(
    trained: TrainedModel,
    num_samples: int,
    length: int,
    config: MASConfig | None = None,
    seed: int = 0,
    progress: bool = False,
    chunk: int | None = None,
) -> torch.Tensor:
    """Sample ``num_samples`` 3D motions ``[S, L, J, 3]`` (data units, y up) with MAS, ``chunk`` samples at a time
    (:func:`sample_chunk`)."""
    cfg = config or MASConfig()
    if num_samples < 1 or length < 1:
        raise SamplingError(f"need num_samples >= 1 and length >= 1, got {num_samples} and {length}")
    if length > trained.model.config.max_len:
        raise SamplingError(f"length {length} exceeds the model's max_len {trained.model.config.max_len}")
    sizes = chunk_sizes(num_samples, sample_chunk(trained, chunk, cfg.num_views, length))
    diffusion = trained.diffusion if cfg.steps is None else trained.diffusion.respaced(cfg.steps)
    generator = torch.Generator(device=trained.device).manual_seed(seed)
    return sample_in_chunks(
        sizes,
        diffusion.num_steps,
        "MAS",
        progress,
        lambda size, bar: _mas_chunk(trained, size, length, cfg, diffusion, generator, bar),
    )


def _mas_chunk(trained, num_samples, length, cfg, diffusion, generator, bar) -> torch.Tensor:
    """Algorithm 1 for one chunk of samples (all views of a sample go through the denoiser together)."""
    device = trained.device
    joints = trained.model.config.num_joints
    views = cfg.num_views
    distance = cfg.camera_distance(trained.mean)

    base = torch.as_tensor(view_azimuths(views), dtype=torch.float32, device=device)
    rot = _rotations(base, cfg.elevation)  # [V, 3, 3] shared by all samples; [S, V, 3, 3] once views are dynamic

    def per_sample_project(points: torch.Tensor, rotations: torch.Tensor, mode: str, dist) -> torch.Tensor:
        """Project ``[S, L, J, 3]`` into ``[S, V, L, J, 2]``; rotations ``[V,3,3]`` or per sample ``[S,V,3,3]``."""
        if rotations.dim() == 3:
            return project(points, rotations, dist, mode)
        return project_each(points, rotations, dist, mode)

    def per_sample_triangulate(points: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
        if rotations.dim() == 3:
            return triangulate(points, rotations, distance, cfg.projection, refine_iters=cfg.refine_iters)
        return torch.stack(
            [
                triangulate(points[s], rotations[s], distance, cfg.projection, refine_iters=cfg.refine_iters)
                for s in range(points.shape[0])
            ]
        )

    def draw_noise(rotations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        eps3d = torch.randn(num_samples, length, joints, 3, device=device, generator=generator)
        if cfg.noise_3d:
            return eps3d, per_sample_project(eps3d, rotations, "orthographic", None)
        return eps3d, torch.randn(num_samples, views, length, joints, 2, device=device, generator=generator)

    eps3d, x = draw_noise(rot)  # x_T: projected 3D noise, [S, V, L, J, 2] in z-space
    # dynamic views replay every step's 3D estimate and 3D noise; without them nothing is kept
    history: list[tuple[int, torch.Tensor, torch.Tensor]] = [(-1, torch.empty(0), eps3d)] if cfg.dynamic_views else []
    for i in reversed(range(diffusion.num_steps)):
        t = torch.full((num_samples * views,), i, device=device, dtype=torch.long)
        z0_hat = trained.model(x.reshape(-1, length, joints, 2), diffusion.model_timesteps(t))
        _check_finite("the model's x0 prediction", z0_hat, i)
        x0_hat = trained.denormalise(z0_hat.reshape(num_samples, views, length, joints, 2))
        motion = per_sample_triangulate(x0_hat, rot)
        _check_finite("the triangulated motion", motion, i)
        if cfg.rigid_bones:
            motion = project_to_rigid(motion, trained.skeleton_model)
        z0_tilde = trained.normalise(per_sample_project(motion, rot, cfg.projection, distance))
        eps3d, noise = draw_noise(rot)
        x = diffusion.step(z0_tilde, x, _timestep(i, num_samples, device), noise)
        if cfg.dynamic_views:
            history.append((i, motion, eps3d))
            if i > 0:
                offset = torch.rand(num_samples, 1, device=device, generator=generator) * (2 * math.pi / views)
                rot = _rotations(base + offset, cfg.elevation)
                x = _replay(diffusion, trained, history, rot, per_sample_project, cfg, distance)
        bar.update()
    final = per_sample_triangulate(trained.denormalise(x), rot)
    _check_finite("the final motion", final, 0)
    if cfg.rigid_bones:
        final = project_to_rigid(final, trained.skeleton_model)
    return final


def _timestep(i: int, num_samples: int, device) -> torch.Tensor:
    """Timestep index ``i`` for each sample (``Diffusion.step`` broadcasts it over views, frames and joints)."""
    return torch.full((num_samples,), i, device=device, dtype=torch.long)


def _replay(diffusion, trained, history, rot, per_sample_project, cfg, distance) -> torch.Tensor:
    """x_t for new views, replayed from the saved 3D estimates and 3D noises (seed appendix C; no model calls)."""
    x = per_sample_project(history[0][2], rot, "orthographic", None)
    for i, motion, eps3d in history[1:]:
        z0 = trained.normalise(per_sample_project(motion, rot, cfg.projection, distance))
        noise = per_sample_project(eps3d, rot, "orthographic", None)
        x = diffusion.step(z0, x, _timestep(i, len(motion), motion.device), noise)
    return x
