"""CUDA paths (bf16 autocast training, MAS on the device); skipped without a GPU, exercised with the device tool."""

import pytest
import torch

from models.checkpoint import load_trained_model
from models.mas import MASConfig, mas_sample
from models.trainer import TrainConfig, train

pytestmark = pytest.mark.gpu


def test_bf16_training_and_mas_on_cuda(synthetic_ws):
    cfg = TrainConfig(steps=20, batch_size=16, lr=1e-3, latent_dim=64, ff_size=128, num_layers=2, max_len=32,
                      device="cuda")  # fmt: skip
    result = train(synthetic_ws, "synth", "gpu", cfg, progress=False)
    assert result.final_loss < result.first_loss
    trained = load_trained_model(synthetic_ws, "gpu", "cuda")
    motions = mas_sample(trained, 64, 32, MASConfig(steps=20))
    assert motions.is_cuda and motions.shape == (64, 32, 17, 3) and torch.isfinite(motions).all()
