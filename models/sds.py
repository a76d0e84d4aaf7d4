"""The Score Distillation (SDS / DreamFusion) baseline and its annealed variant.

A 3D motion X is optimised directly: every iteration projects it to one random view per sample (azimuth uniform over
the full circle — the official code drew it from [0, 1) radians by mistake), noises the projection to a random t,
asks the denoiser for x̂0 and pulls the projection towards it: ∇ = (P(X) − x̂0) ∂P/∂X (seed appendix F, eq. 7 up to the
weighting). The annealed variant draws t from a window that slides from T down to 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from models.checkpoint import TrainedModel
from models.mas import SamplingError, _rotations
from pipeline.cameras import DEFAULT_DISTANCE, DEFAULT_ELEVATION, project_each


@dataclass(frozen=True)
class SDSConfig:
    iterations: int = 1000
    lr: float = 0.02
    elevation: float = DEFAULT_ELEVATION
    distance: float = DEFAULT_DISTANCE
    projection: str = "perspective"
    annealed: bool = False
    t_min: float = 0.02  # fraction of T
    t_max: float = 0.98

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise SamplingError(f"SDS needs at least one iteration, got {self.iterations}")
        if not 0 <= self.t_min < self.t_max <= 1:
            raise SamplingError(f"need 0 <= t_min < t_max <= 1, got {self.t_min}, {self.t_max}")

    def to_dict(self) -> dict:
        return asdict(self)


def sds_sample(
    trained: TrainedModel,
    num_samples: int,
    length: int,
    config: SDSConfig | None = None,
    seed: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """Optimise ``num_samples`` 3D motions ``[S, L, J, 3]`` by score distillation."""
    cfg = config or SDSConfig()
    device = trained.device
    generator = torch.Generator(device=device).manual_seed(seed)
    joints = trained.model.config.num_joints
    diffusion = trained.diffusion
    steps = diffusion.num_steps
    distance = cfg.distance if cfg.projection == "perspective" else None
    motion = (0.1 * torch.randn(num_samples, length, joints, 3, device=device, generator=generator)).requires_grad_()
    optimizer = torch.optim.Adam([motion], lr=cfg.lr)
    trained.model.requires_grad_(False)
    for it in tqdm(range(cfg.iterations), disable=not progress, desc="SDS"):
        azimuth = (torch.rand(num_samples, 1, device=device, generator=generator) * 2 - 1) * torch.pi
        rot = _rotations(azimuth, cfg.elevation)  # [S, 1, 3, 3]
        views = project_each(motion, rot, distance, cfg.projection)[:, 0]  # [S, L, J, 2]
        z = trained.normalise(views)
        if cfg.annealed:
            frac = cfg.t_max - (cfg.t_max - cfg.t_min) * it / max(cfg.iterations - 1, 1)
            t = torch.full((num_samples,), round(frac * (steps - 1)), device=device, dtype=torch.long)
        else:
            low, high = round(cfg.t_min * (steps - 1)), round(cfg.t_max * (steps - 1))
            t = torch.randint(low, high + 1, (num_samples,), device=device, generator=generator)
        noise = torch.randn(z.shape, device=device, generator=generator)
        with torch.no_grad():
            z0_hat = trained.model(diffusion.q_sample(z.detach(), t, noise), t)
        if not torch.isfinite(z0_hat).all():
            raise SamplingError(f"the model's x0 prediction holds NaN or inf at SDS iteration {it}")
        loss = 0.5 * ((z - z0_hat) ** 2).sum() / num_samples
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return motion.detach()
