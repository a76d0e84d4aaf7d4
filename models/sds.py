"""The Score Distillation (SDS / DreamFusion) baseline and its annealed variant.

A 3D motion X is optimised directly: every iteration projects it to one random view per sample (azimuth uniform over
the full circle — the official code drew it from [0, 1) radians by mistake), noises the projection to a random t,
asks the denoiser for x̂0 and pulls the projection towards it: ∇ = (P(X) − x̂0) ∂P/∂X (seed appendix F, eq. 7 up to the
weighting). As in the official ``sample/dreamfusion.py``: Adam with lr 0.01, t uniform over 1 .. T-1; the annealed
variant draws t uniformly from a window whose upper end stays at T-1 while its lower end slides from T-1 down to 1
over the iterations (the official lower end ``T-1 - i T/N`` is clipped at 1 here: it would reach -1, which Python
reads as the last step).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from models.checkpoint import TrainedModel
from models.mas import (
    SamplingError,
    _rotations,
    chunk_sizes,
    config_camera_distance,
    sample_chunk,
    sample_in_chunks,
)
from pipeline.cameras import (
    DEFAULT_DISTANCE,
    DEFAULT_ELEVATION,
    DEFAULT_SUBJECT_HEIGHT_M,
    project_each,
)


@dataclass(frozen=True)
class SDSConfig:
    iterations: int = 1000
    lr: float = 0.01  # the official value
    elevation: float = DEFAULT_ELEVATION
    distance: float = DEFAULT_DISTANCE
    projection: str = "perspective"
    annealed: bool = False
    distance_m: float | None = None  # metres, as in MASConfig
    subject_height_m: float = DEFAULT_SUBJECT_HEIGHT_M

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise SamplingError(f"SDS needs at least one iteration, got {self.iterations}")
        if self.lr <= 0:
            raise SamplingError(f"SDS needs a positive learning rate, got {self.lr}")

    def to_dict(self) -> dict:
        return asdict(self)


def sds_lowest_timestep(iteration: int, iterations: int, steps: int, annealed: bool) -> int:
    """The lowest timestep SDS draws at ``iteration``: t is uniform over ``lowest .. steps - 1``."""
    if not annealed:
        return min(1, steps - 1)
    return min(max(int(steps - 1 - iteration * steps / iterations), 1), steps - 1)


def sds_sample(
    trained: TrainedModel,
    num_samples: int,
    length: int,
    config: SDSConfig | None = None,
    seed: int = 0,
    progress: bool = False,
    chunk: int | None = None,
) -> torch.Tensor:
    """Optimise ``num_samples`` 3D motions ``[S, L, J, 3]`` by score distillation, ``chunk`` samples at a time
    (:func:`models.mas.sample_chunk`; each motion's optimisation is independent of the others')."""
    cfg = config or SDSConfig()
    generator = torch.Generator(device=trained.device).manual_seed(seed)
    sizes = chunk_sizes(num_samples, sample_chunk(trained, chunk, 1, length))
    trained.model.requires_grad_(False)
    return sample_in_chunks(
        sizes,
        cfg.iterations,
        "SDS",
        progress,
        lambda size, bar: _sds_chunk(trained, size, num_samples, length, cfg, generator, bar),
    )


def _sds_chunk(trained, size, num_samples, length, cfg, generator, bar) -> torch.Tensor:
    """SDS for ``size`` motions; the loss is scaled by the whole set's ``num_samples`` as one pass over all would."""
    device = trained.device
    joints = trained.model.config.num_joints
    diffusion = trained.diffusion
    steps = diffusion.num_steps
    distance = config_camera_distance(cfg, trained.mean)
    motion = (0.1 * torch.randn(size, length, joints, 3, device=device, generator=generator)).requires_grad_()
    optimizer = torch.optim.Adam([motion], lr=cfg.lr)
    for it in range(cfg.iterations):
        azimuth = (torch.rand(size, 1, device=device, generator=generator) * 2 - 1) * torch.pi
        rot = _rotations(azimuth, cfg.elevation)  # [S, 1, 3, 3]
        views = project_each(motion, rot, distance, cfg.projection)[:, 0]  # [S, L, J, 2]
        z = trained.normalise(views)
        low = sds_lowest_timestep(it, cfg.iterations, steps, cfg.annealed)
        t = torch.randint(low, max(steps, low + 1), (size,), device=device, generator=generator)
        noise = torch.randn(z.shape, device=device, generator=generator)
        with torch.no_grad():
            z0_hat = trained.model(diffusion.q_sample(z.detach(), t, noise), t)
        if not torch.isfinite(z0_hat).all():
            raise SamplingError(f"the model's x0 prediction holds NaN or inf at SDS iteration {it}")
        loss = 0.5 * ((z - z0_hat) ** 2).sum() / num_samples
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.update()
    return motion.detach()
