"""Plain 2D sampling from a trained model (for inspection and for the evaluator's "model" row)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from models.allocator import keep_freed_memory
from models.checkpoint import TrainedModel


@torch.no_grad()
def sample_2d(
    trained: TrainedModel,
    num_samples: int,
    length: int,
    seed: int = 0,
    steps: int | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> torch.Tensor:
    """Ancestral DDPM sampling of ``[S, L, J, 2]`` motions in data units."""
    if num_samples < 1 or length < 1:
        raise ValueError(f"need num_samples >= 1 and length >= 1, got {num_samples}, {length}")
    keep_freed_memory()  # every pass reuses freed activations instead of faulting them in (models/allocator.py)
    diffusion = trained.diffusion if steps is None else trained.diffusion.respaced(steps)
    device = trained.device
    generator = torch.Generator(device=device).manual_seed(seed)
    joints = trained.model.config.num_joints
    out = []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        x = torch.randn(n, length, joints, 2, device=device, generator=generator)
        for i in tqdm(reversed(range(diffusion.num_steps)), total=diffusion.num_steps, disable=not progress):
            t = torch.full((n,), i, device=device, dtype=torch.long)
            x0 = trained.model(x, diffusion.model_timesteps(t))
            x = diffusion.step(x0, x, t, torch.randn(x.shape, device=device, generator=generator))
        out.append(trained.denormalise(x))
    return torch.cat(out)
