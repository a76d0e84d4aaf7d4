"""Gaussian diffusion with a cosine-family schedule, x0-prediction and the DDPM posterior (as in MDM and the MAS code).

Schedules (``noise_schedule``): ``cosine`` is Nichol & Dhariwal's ᾱ(u) = cos²((u + s) / (1 + s) · π/2);
``cosine_tau_<k>`` raises that cosine to the power 2k (the official MAS code's ``get_named_beta_schedule``);
the official default, and ours, is ``cosine_tau_2``: ᾱ is the plain cosine's ᾱ squared (ᾱ at t = 50 of 100:
0.229 instead of 0.478), so more of the steps are spent at high noise.

Timesteps are indexed ``0 .. T-1`` (index 0 is the least noisy). ``respaced(k)`` keeps ``k`` evenly spaced timesteps and
recomputes the betas so that fewer sampling steps walk the same noise levels (the "diffusion steps" ablation); the
model is always called with the original timestep index (``timestep_map``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

NOISE_SCHEDULES = ("cosine", "cosine_tau_2")
DEFAULT_NOISE_SCHEDULE = "cosine_tau_2"  # the official code's default (utils/parser_utils.py)


def cosine_alphas_cumprod(num_steps: int, s: float = 0.008, max_beta: float = 0.999, tau: float = 1.0) -> np.ndarray:
    """ᾱ_t of the cosine schedule (Nichol & Dhariwal 2021) raised to ``tau`` (``cosine_tau_<tau>``: cos^(2 tau)),
    betas clipped at ``max_beta`` as in the official ``betas_for_alpha_bar``."""

    def alpha_bar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** (2 * tau)

    betas = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)]
    return np.cumprod(1.0 - np.array(betas, dtype=np.float64))


class Diffusion:
    """Noise schedule and the formulas that use it; tensors are float64 numpy, gathered into torch per call."""

    def __init__(self, alphas_cumprod: np.ndarray, timestep_map: np.ndarray | None = None):
        ac = np.asarray(alphas_cumprod, dtype=np.float64)
        if ac.ndim != 1 or not ((ac > 0) & (ac < 1)).all() or not (np.diff(ac) < 0).all():
            raise ValueError("alphas_cumprod must be a decreasing sequence inside (0, 1)")
        self.num_steps = len(ac)
        self.alphas_cumprod = ac
        self.alphas_cumprod_prev = np.append(1.0, ac[:-1])
        self.betas = 1.0 - ac / self.alphas_cumprod_prev
        self.alphas = 1.0 - self.betas
        self.timestep_map = np.arange(self.num_steps) if timestep_map is None else np.asarray(timestep_map)
        # DDPM posterior q(x_{t-1} | x_t, x0) = N(coef_x0 * x0 + coef_xt * x_t, variance)
        self.posterior_coef_x0 = np.sqrt(self.alphas_cumprod_prev) * self.betas / (1.0 - ac)
        self.posterior_coef_xt = np.sqrt(self.alphas) * (1.0 - self.alphas_cumprod_prev) / (1.0 - ac)
        self.posterior_variance = self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - ac)

    @classmethod
    def cosine(cls, num_steps: int = 100) -> Diffusion:
        """The plain cosine schedule (what checkpoints trained before ``noise_schedule`` existed used)."""
        return cls.named("cosine", num_steps)

    @classmethod
    def named(cls, schedule: str, num_steps: int = 100) -> Diffusion:
        """The schedule ``cosine`` or ``cosine_tau_<k>`` (k > 0) over ``num_steps`` steps."""
        if num_steps < 1:
            raise ValueError(f"diffusion needs at least one step, got {num_steps}")
        if schedule == "cosine":
            return cls(cosine_alphas_cumprod(num_steps))
        if schedule.startswith("cosine_tau_"):
            try:
                tau = float(schedule.removeprefix("cosine_tau_"))
            except ValueError:
                tau = -1.0
            if tau > 0:
                return cls(cosine_alphas_cumprod(num_steps, tau=tau))
        raise ValueError(f"unknown noise schedule {schedule!r}; use 'cosine' or 'cosine_tau_<k>' (k > 0), "
                         f"e.g. {DEFAULT_NOISE_SCHEDULE!r} (the official default)")  # fmt: skip

    def respaced(self, num_steps: int) -> Diffusion:
        """A schedule over ``num_steps`` evenly spaced timesteps of this one (same noise levels, bigger jumps)."""
        if not 1 <= num_steps <= self.num_steps:
            raise ValueError(f"respaced steps must be in 1..{self.num_steps}, got {num_steps}")
        keep = np.unique(np.round(np.linspace(0, self.num_steps - 1, num_steps)).astype(int))
        return Diffusion(self.alphas_cumprod[keep], timestep_map=self.timestep_map[keep])

    @staticmethod
    def _gather(values: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        out = torch.as_tensor(values, dtype=torch.float64, device=t.device)[t].to(like.dtype)
        return out.reshape(-1, *([1] * (like.dim() - 1)))

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Original timestep indices to feed the model for indices ``t`` of this (possibly respaced) schedule."""
        return torch.as_tensor(self.timestep_map, device=t.device)[t]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward diffusion: ``sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε``."""
        a = self._gather(np.sqrt(self.alphas_cumprod), t, x0)
        b = self._gather(np.sqrt(1.0 - self.alphas_cumprod), t, x0)
        return a * x0 + b * noise

    def posterior_mean(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self._gather(self.posterior_coef_x0, t, xt) * x0 + self._gather(self.posterior_coef_xt, t, xt) * xt

    def posterior_std(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self._gather(np.sqrt(self.posterior_variance), t, like)

    def step(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One ancestral step ``x_{t-1} = μ̃(x_t, x0) + σ_t ε`` (σ_0 = 0, so the last step adds no noise)."""
        return self.posterior_mean(x0, xt, t) + self.posterior_std(t, xt) * noise
