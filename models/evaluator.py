"""The motion evaluator behind the 2D metrics: an ACTOR-style transformer VAE trained on the 2D training split.

The encoder reads a z-scored 2D motion ``[L, J, 2]`` with two learnable tokens (μ, log σ²); its μ (``latent_dim``,
256 in the MAS code) is the embedding in which FID, diversity and precision/recall are measured. The decoder
reconstructs the motion from z with positional queries; loss: confidence-masked L2 + a small KL term.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from models.denoiser import sinusoidal_embedding
from models.trainer import BatchSampler, masked_l2
from storage.motion_dataset import MotionDataset


@dataclass(frozen=True)
class EvaluatorConfig:
    num_joints: int
    latent_dim: int = 256
    ff_size: int = 512
    num_layers: int = 2
    num_heads: int = 4
    max_len: int = 60
    kl_weight: float = 1e-4


class MotionEvaluator(nn.Module):
    def __init__(self, config: EvaluatorConfig):
        super().__init__()
        self.config = config
        d = config.latent_dim
        self.input_proj = nn.Linear(config.num_joints * 2, d)
        self.dist_tokens = nn.Parameter(torch.randn(2, d) * 0.02)
        self.register_buffer("positions", sinusoidal_embedding(torch.arange(config.max_len + 2), d), persistent=False)
        enc = nn.TransformerEncoderLayer(d, config.num_heads, config.ff_size, 0.1, "gelu", batch_first=True)
        dec = nn.TransformerDecoderLayer(d, config.num_heads, config.ff_size, 0.1, "gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(enc, config.num_layers, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(dec, config.num_layers)
        self.output_proj = nn.Linear(d, config.num_joints * 2)

    def encode(self, z: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``z [B, L, J, 2]`` → (μ, log σ²) ``[B, latent_dim]``."""
        batch, length = z.shape[:2]
        tokens = torch.cat([self.dist_tokens.expand(batch, 2, -1), self.input_proj(z.flatten(2))], 1)
        tokens = tokens + self.positions[: length + 2]
        padding = None
        if valid is not None:
            padding = torch.cat([torch.zeros(batch, 2, dtype=torch.bool, device=z.device), ~valid], 1)
        hidden = self.encoder(tokens, src_key_padding_mask=padding)
        return hidden[:, 0], hidden[:, 1]

    def decode(self, latent: torch.Tensor, length: int) -> torch.Tensor:
        queries = self.positions[2 : length + 2].expand(latent.shape[0], -1, -1)
        out = self.decoder(queries, latent[:, None])
        return self.output_proj(out).reshape(latent.shape[0], length, self.config.num_joints, 2)

    def forward(self, z: torch.Tensor, valid: torch.Tensor | None = None):
        mu, logvar = self.encode(z, valid)
        latent = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(latent, z.shape[1]), mu, logvar


def train_evaluator(
    dataset: MotionDataset, config: EvaluatorConfig, steps: int = 2000, batch_size: int = 64, lr: float = 2e-4,
    seed: int = 0, device: str = "cpu", progress: bool = True,
) -> MotionEvaluator:  # fmt: skip
    torch.manual_seed(seed)
    model = MotionEvaluator(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    sampler = BatchSampler(dataset, config.max_len, np.random.default_rng(seed))
    model.train()
    for _ in tqdm(range(steps), desc="train evaluator", disable=not progress):
        z, mask, valid = (torch.from_numpy(a).to(device) for a in sampler.draw(batch_size))
        recon, mu, logvar = model(z, valid)
        kl = -0.5 * torch.mean(1 + logvar - mu**2 - logvar.exp())
        loss = masked_l2(recon, z, mask) + config.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return model.eval()


@torch.no_grad()
def embed(model: MotionEvaluator, z: np.ndarray | torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Embeddings μ ``[N, latent_dim]`` of z-scored motions ``[N, L, J, 2]`` (L ≤ max_len)."""
    device = next(model.parameters()).device
    z = torch.as_tensor(np.asarray(z), dtype=torch.float32)
    if z.shape[1] > model.config.max_len:
        raise ValueError(f"motions of {z.shape[1]} frames exceed the evaluator's max_len {model.config.max_len}")
    out = [model.encode(z[s : s + batch_size].to(device))[0].cpu() for s in range(0, len(z), batch_size)]
    return torch.cat(out).numpy()


def save_evaluator(model: MotionEvaluator, path: str) -> None:
    torch.save({"config": asdict(model.config), "state": model.state_dict()}, path)


def load_evaluator(path: str, device: str = "cpu") -> MotionEvaluator:
    payload = torch.load(path, map_location=device, weights_only=True)
    model = MotionEvaluator(EvaluatorConfig(**payload["config"])).to(device)
    model.load_state_dict(payload["state"])
    return model.eval()
