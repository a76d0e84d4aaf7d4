import numpy as np
import pytest
import torch

from models.denoiser import DenoiserConfig, MotionDenoiser
from models.diffusion import Diffusion
from models.trainer import masked_l2


def test_cosine_schedule_and_posterior():
    d = Diffusion.cosine(100)
    assert d.num_steps == 100
    assert 0.99 < d.alphas_cumprod[0] < 1 and d.alphas_cumprod[-1] < 1e-3
    assert d.posterior_variance[0] == 0.0  # the last sampling step adds no noise
    # the posterior coefficients are the DDPM ones (seed errata fixed): x0 gets sqrt(ab_prev) beta / (1 - ab)
    t = 50
    ab, ab_prev, beta = d.alphas_cumprod[t], d.alphas_cumprod[t - 1], d.betas[t]
    assert d.posterior_coef_x0[t] == pytest.approx(np.sqrt(ab_prev) * beta / (1 - ab))
    assert d.posterior_coef_xt[t] == pytest.approx(np.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab))
    # posterior mean of x_t = q_sample(x0) without noise pulls back towards x0 consistently
    x0 = torch.randn(4, 8, 3, 2, dtype=torch.float64)
    tt = torch.full((4,), t)
    xt = d.q_sample(x0, tt, torch.zeros_like(x0))
    mean = d.posterior_mean(x0, xt, tt)
    np.testing.assert_allclose(mean.numpy(), np.sqrt(ab_prev) * x0.numpy(), rtol=1e-10)


def _official_alphas_cumprod(steps: int, tau: float) -> np.ndarray:
    """The official code's get_named_beta_schedule('cosine_tau_<tau>') / betas_for_alpha_bar, written out."""
    import math

    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** (2 * tau)

    betas = [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)]
    return np.cumprod(1 - np.array(betas))


def test_official_default_schedule_is_cosine_tau_2():
    from models.diffusion import DEFAULT_NOISE_SCHEDULE

    assert DEFAULT_NOISE_SCHEDULE == "cosine_tau_2"
    tau2, plain = Diffusion.named("cosine_tau_2", 100), Diffusion.named("cosine", 100)
    np.testing.assert_allclose(tau2.alphas_cumprod, _official_alphas_cumprod(100, 2.0), rtol=1e-12)
    np.testing.assert_allclose(plain.alphas_cumprod, _official_alphas_cumprod(100, 1.0), rtol=1e-12)
    np.testing.assert_allclose(Diffusion.cosine(100).alphas_cumprod, plain.alphas_cumprod)
    assert plain.alphas_cumprod[50] == pytest.approx(0.478, abs=1e-3)
    assert tau2.alphas_cumprod[50] == pytest.approx(0.229, abs=1e-3)
    for bad in ("linear", "cosine_tau_", "cosine_tau_x", "cosine_tau_0"):
        with pytest.raises(ValueError, match="unknown noise schedule"):
            Diffusion.named(bad, 10)


def test_ancestral_sampling_with_true_x0_reaches_x0():
    d = Diffusion.cosine(100)
    x0 = torch.randn(2, 5, 4, 2, dtype=torch.float64)
    x = torch.randn_like(x0)
    for step in reversed(range(d.num_steps)):
        t = torch.full((2,), step)
        x = d.step(x0, x, t, torch.randn_like(x))
    torch.testing.assert_close(x, x0, rtol=0, atol=1e-6)


def test_respacing_keeps_noise_levels():
    d = Diffusion.cosine(100)
    r = d.respaced(20)
    assert r.num_steps == 20
    np.testing.assert_allclose(r.alphas_cumprod, d.alphas_cumprod[r.timestep_map])
    assert r.timestep_map[0] == 0 and r.timestep_map[-1] == 99
    assert r.model_timesteps(torch.tensor([19])).item() == 99
    with pytest.raises(ValueError):
        d.respaced(0)


def test_denoiser_shapes_and_padding_mask():
    torch.manual_seed(0)
    model = MotionDenoiser(DenoiserConfig(num_joints=5, latent_dim=32, ff_size=64, num_layers=2, num_heads=4))
    model.eval()
    x = torch.randn(3, 10, 5, 2)
    t = torch.tensor([0, 50, 99])
    valid = torch.ones(3, 10, dtype=torch.bool)
    valid[1, 6:] = False
    out = model(x, t, valid)
    assert out.shape == x.shape
    # padded frames do not influence the real ones
    x2 = x.clone()
    x2[1, 6:] = 100.0
    torch.testing.assert_close(model(x2, t, valid)[1, :6], out[1, :6])
    with pytest.raises(ValueError, match="denoiser built for"):
        model(torch.randn(1, 10, 6, 2), t[:1])
    with pytest.raises(ValueError, match="latent_dim"):
        MotionDenoiser(DenoiserConfig(num_joints=5, latent_dim=30, num_heads=4))


def test_masked_joints_do_not_contribute_to_the_loss():
    pred = torch.zeros(2, 4, 3, 2, requires_grad=True)
    target = torch.ones(2, 4, 3, 2)
    mask = torch.ones(2, 4, 3, dtype=torch.bool)
    mask[0, :, 1] = False
    mask[1, 2:] = False
    target_changed = target.clone()
    target_changed[0, :, 1] = 1e6
    target_changed[1, 2:] = -1e6
    assert masked_l2(pred, target, mask).item() == pytest.approx(1.0)
    assert masked_l2(pred, target_changed, mask).item() == pytest.approx(1.0)
    masked_l2(pred, target_changed, mask).backward()
    assert (pred.grad[0, :, 1] == 0).all() and (pred.grad[1, 2:] == 0).all()
    assert (pred.grad[0, :, 0] != 0).all()
