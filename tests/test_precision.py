"""Sampling precisions: int8 CPU inference and bf16 autocast stay close to fp32; ``auto`` picks int8 on CPU."""

import numpy as np
import pytest
import torch

from models.checkpoint import TrainedModel
from models.denoiser import DenoiserConfig, MotionDenoiser
from models.diffusion import Diffusion
from models.int8 import QuantisationError, quantize_denoiser
from models.mas import MASConfig, mas_sample
from models.precision import PrecisionError, resolve_precision, with_precision
from models.trainer import TrainConfig
from pipeline.sample_stage import run_sampling
from pipeline.train_stage import run_training
from storage import Catalog


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value - reference).norm() / reference.norm())


@pytest.fixture(scope="module")
def default_model():
    torch.manual_seed(0)
    return MotionDenoiser(DenoiserConfig(num_joints=17, max_len=64)).eval()  # the default 8 x 512 architecture


def test_int8_denoiser_matches_fp32_with_and_without_padding(default_model):
    fast = quantize_denoiser(default_model)
    x, t = torch.randn(3, 40, 17, 2), torch.tensor([0, 50, 99])
    valid = torch.ones(3, 40, dtype=torch.bool)
    valid[1, 25:] = False
    with torch.no_grad():
        reference, masked_reference = default_model(x, t), default_model(x, t, valid)
        out, masked = fast(x, t), fast(x, t, valid)
    assert out.shape == reference.shape
    assert _relative_error(out, reference) < 0.03
    assert _relative_error(masked[1, :25], masked_reference[1, :25]) < 0.03
    # padding changes what real frames see, in both precisions alike
    assert _relative_error(masked[1, :25], out[1, :25]) > 0.05
    assert isinstance(default_model.encoder, torch.nn.TransformerEncoder)  # the original is left as it was
    for name in ("qkv", "out", "linear1", "linear2"):
        assert isinstance(getattr(fast.encoder.layers[0], name), torch.ao.nn.quantized.dynamic.Linear)


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_mas_samples_in_lower_precision_stay_close_to_fp32_ones(default_model, precision):
    trained = TrainedModel(default_model, Diffusion.cosine(20), torch.zeros(17, 2), torch.full((17, 2), 0.3),
                           "coco17", 0.5, 30.0, 0)  # fmt: skip
    config = MASConfig(num_views=3)
    reference = mas_sample(trained, 2, 24, config, seed=3)
    fast = mas_sample(with_precision(trained, precision), 2, 24, config, seed=3)
    spread = (reference - reference.mean(dim=(1, 2), keepdim=True)).norm(dim=-1).mean()
    assert fast.dtype == torch.float32 and torch.isfinite(fast).all()
    assert 0 < (fast - reference).norm(dim=-1).mean() / spread < 0.1


def test_precision_resolution_and_errors(default_model):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu) == "int8" and resolve_precision("auto", cuda) == "fp32"
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("bf16", cuda) == "bf16"
    with pytest.raises(PrecisionError, match="unknown precision 'fp16'; use one of auto, fp32, int8, bf16"):
        resolve_precision("fp16", cpu)
    with pytest.raises(PrecisionError, match="CPU only.*--precision fp32 or bf16"):
        resolve_precision("int8", cuda)
    with pytest.raises(QuantisationError, match="CPU only"):
        quantize_denoiser(MotionDenoiser(DenoiserConfig(num_joints=2, max_len=4)).to("meta"))
    trained = TrainedModel(default_model, Diffusion.cosine(10), torch.zeros(17, 2), torch.ones(17, 2), "coco17",
                           0.5, 30.0, 0)  # fmt: skip
    assert with_precision(trained, "fp32") is trained
    assert with_precision(trained, "auto").model is not default_model


def test_sampling_records_precision_and_resamples_when_it_changes(synthetic_ws):
    tiny = TrainConfig(steps=5, batch_size=8, latent_dim=32, ff_size=64, num_layers=2, num_heads=4, max_len=32,
                       device="cpu")  # fmt: skip
    run_training(synthetic_ws, "synth", "int8-run", tiny, progress=False)
    first = run_sampling(synthetic_ws, "int8-run", "p", num_samples=2, length=16, render=0, progress=False,
                         device="cpu")  # fmt: skip
    record = Catalog(synthetic_ws).get("sample", "p")
    assert record.params["precision"] == "int8" and record.meta["precision"] == "int8"  # auto on CPU
    fp32 = run_sampling(synthetic_ws, "int8-run", "p", num_samples=2, length=16, render=0, progress=False,
                        device="cpu", precision="fp32")  # fmt: skip
    assert not fp32.skipped and Catalog(synthetic_ws).get("sample", "p").params["precision"] == "fp32"
    assert np.abs(fp32.motions - first.motions).max() > 0  # really recomputed, with other arithmetic
    np.testing.assert_allclose(fp32.motions, first.motions, atol=0.2 * np.abs(first.motions).max())
