"""Sampling precisions: int8 CPU inference and bf16 autocast stay close to fp32; ``auto`` picks int8 on CPU."""

from pathlib import Path

import numpy as np
import pytest
import torch

from models import openvino_denoiser
from models.checkpoint import TrainedModel
from models.denoiser import DenoiserConfig, MotionDenoiser
from models.diffusion import Diffusion
from models.hardware import cpu_int8_dot_product, cpu_native_bf16
from models.int8 import QuantisationError, quantize_denoiser
from models.mas import MASConfig, mas_sample
from models.precision import (
    PrecisionError,
    checked_precision,
    explain_precision,
    precision_error,
    resolve_precision,
    with_precision,
)
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


@pytest.mark.parametrize("runtime", ["torch", "openvino"])
@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_mas_samples_in_lower_precision_stay_close_to_fp32_ones(default_model, precision, runtime, monkeypatch):
    if runtime == "openvino" and precision == "bf16" and not cpu_native_bf16():
        pytest.skip("OpenVINO computes bf16 only on a CPU with native bf16")
    monkeypatch.setenv("MAS_DENOISER_RUNTIME", runtime)
    trained = TrainedModel(default_model, Diffusion.cosine(20), torch.zeros(17, 2), torch.full((17, 2), 0.3),
                           "coco17", 0.5, 30.0, 0)  # fmt: skip
    config = MASConfig(num_views=3)
    reference = mas_sample(trained, 2, 24, config, seed=3)
    lowered = with_precision(trained, precision)
    assert getattr(lowered.model, "runtime", "torch") == runtime
    fast = mas_sample(lowered, 2, 24, config, seed=3)
    spread = (reference - reference.mean(dim=(1, 2), keepdim=True)).norm(dim=-1).mean()
    assert fast.dtype == torch.float32 and torch.isfinite(fast).all()
    assert 0 < (fast - reference).norm(dim=-1).mean() / spread < 0.1


def test_precision_resolution_and_errors(default_model, monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("MAS_DENOISER_RUNTIME", raising=False)
    assert resolve_precision("auto", cpu) == "int8"  # through OpenVINO (installed), with or without native bf16
    monkeypatch.setenv("MAS_DENOISER_RUNTIME", "torch")
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_native_bf16() else "int8")
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
    auto = "int8"  # passes of 2 x 5 motions x 17 tokens through a 32-wide model: int8 with or without native bf16
    assert record.params["precision"] == auto and record.meta["precision"] == auto
    assert record.meta["precision_reason"].startswith(f"auto → {auto}") and "of fp32" in record.meta["precision_reason"]
    fp32 = run_sampling(synthetic_ws, "int8-run", "p", num_samples=2, length=16, render=0, progress=False,
                        device="cpu", precision="fp32")  # fmt: skip
    assert not fp32.skipped and Catalog(synthetic_ws).get("sample", "p").params["precision"] == "fp32"
    assert np.abs(fp32.motions - first.motions).max() > 0  # really recomputed, with other arithmetic
    np.testing.assert_allclose(fp32.motions, first.motions, atol=0.2 * np.abs(first.motions).max())


def test_auto_precision_policy_per_hardware(default_model, monkeypatch):
    """auto through PyTorch: bf16 where the CPU computes it natively (int8 for small passes), int8 on other CPUs;
    through OpenVINO: int8 first everywhere; fp32 when the check against fp32 fails."""
    import models.precision as precision

    cpu = torch.device("cpu")
    monkeypatch.delenv("MAS_DENOISER_RUNTIME", raising=False)
    flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").exists() else ""
    assert cpu_native_bf16() == (" avx512_bf16" in flags or " amx_bf16" in flags or " bf16" in flags)
    dot = (" avx512_vnni", " avx_vnni", " amx_int8", " asimddp")  # int8 dot products: where OpenVINO computes int8
    assert cpu_int8_dot_product() == any(f"{flag} " in flags or f"{flag}\n" in flags for flag in dot)
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: True)
    monkeypatch.setattr(openvino_denoiser, "cpu_int8_dot_product", lambda: True)  # as every native-bf16 CPU has
    # OpenVINO (the default runtime where installed): int8 at every pass size, bf16 next
    assert resolve_precision("auto", cpu, 5 * 121, 512) == resolve_precision("auto", cpu, 320 * 61, 128) == "int8"
    assert [c for c, _ in precision._candidates(cpu, 320 * 61, 128)] == ["int8", "bf16"]
    assert "through OpenVINO" in explain_precision("auto", cpu, 320 * 61, 128)
    monkeypatch.setenv("MAS_DENOISER_RUNTIME", "torch")
    assert resolve_precision("auto", cpu) == "bf16" and "natively" in explain_precision("auto", cpu)
    # native bf16, but int8 for passes under 20 tokens per unit of width (the default model's 512: 10 240 tokens)
    assert resolve_precision("auto", cpu, 5 * 121, 512) == "int8"  # one MAS sample, 120 frames
    assert "int8 is faster for passes of 605 tokens" in explain_precision("auto", cpu, 5 * 121, 512)
    assert resolve_precision("auto", cpu, 80 * 121, 512) == "int8"
    assert resolve_precision("auto", cpu, 160 * 121, 512) == resolve_precision("auto", cpu, 320 * 61, 128) == "bf16"
    assert resolve_precision("fp32", cpu, 5, 512) == "fp32"  # asked for: no policy
    # a small pass whose int8 fails the check falls to native bf16, not to fp32 (the benchmark model: int8 8.9% off)
    trained = TrainedModel(default_model, Diffusion.cosine(10), torch.zeros(17, 2), torch.ones(17, 2), "coco17",
                           0.5, 30.0, 0)  # fmt: skip
    errors = {p: precision_error(trained, with_precision(trained, p)) for p in ("int8", "bf16")}
    assert errors["bf16"] < errors["int8"]
    monkeypatch.setattr(precision, "AUTO_TOLERANCE", (errors["bf16"] + errors["int8"]) / 2)
    fast, used, reason = checked_precision(trained, "auto", 5 * 121)
    assert used == "bf16" and isinstance(fast.model, precision.Bf16Denoiser)
    assert reason.startswith("auto → bf16: this CPU") and "; int8 changed this model's denoiser output" in reason
    assert "run by PyTorch (MAS_DENOISER_RUNTIME=torch)" in reason
    monkeypatch.undo()
    monkeypatch.setenv("MAS_DENOISER_RUNTIME", "torch")
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == "int8" and "no native bf16" in explain_precision("auto", cpu)
    trained = TrainedModel(default_model, Diffusion.cosine(10), torch.zeros(17, 2), torch.ones(17, 2), "coco17",
                           0.5, 30.0, 0)  # fmt: skip
    fast, used, reason = checked_precision(trained, "auto")
    assert used == "int8" and fast.model is not default_model and "of fp32" in reason
    assert checked_precision(trained, "fp32") == (trained, "fp32", "fp32: asked for")
    monkeypatch.setattr(precision, "AUTO_TOLERANCE", 1e-6)  # a check no lower precision passes: fp32, said why
    fast, used, reason = checked_precision(trained, "auto")
    assert fast is trained and used == "fp32" and reason.startswith("auto → fp32: int8 changed this model's")
    _, used, _ = checked_precision(trained, "int8")  # asked for explicitly: no fallback
    assert used == "int8"


def test_int8_through_openvino_needs_no_torch_quantised_kernels(default_model, monkeypatch):
    """A PyTorch build without quantised kernels still samples in int8 where OpenVINO computes it; with neither, int8
    is refused naming both ways out, and auto falls back instead of picking it."""
    import models.precision as precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "int8_available", lambda: False)
    monkeypatch.setattr(openvino_denoiser, "int8_available", lambda: False)  # the runtime choice asks it too
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: False)
    monkeypatch.delenv("MAS_DENOISER_RUNTIME", raising=False)
    assert resolve_precision("int8", cpu) == resolve_precision("auto", cpu) == "int8"
    trained = TrainedModel(default_model, Diffusion.cosine(10), torch.zeros(17, 2), torch.ones(17, 2), "coco17",
                           0.5, 30.0, 0)  # fmt: skip
    fast, used, reason = checked_precision(trained, "int8")
    assert used == "int8" and fast.model.runtime == "openvino" and "run by OpenVINO" in reason
    monkeypatch.setenv("MAS_DENOISER_RUNTIME", "torch")
    with pytest.raises(PrecisionError, match="int8 cannot run here.*MAS_DENOISER_RUNTIME=torch.*--precision fp32"):
        resolve_precision("int8", cpu)
    assert resolve_precision("auto", cpu) == "fp32"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_precision_on_cpu(synthetic_ws, precision):
    from pipeline.train_stage import run_training

    tiny = TrainConfig(steps=4, batch_size=8, latent_dim=32, ff_size=64, num_layers=1, num_heads=4, max_len=16,
                       device="cpu", precision=precision)  # fmt: skip
    result = run_training(synthetic_ws, "synth", f"train-{precision}", tiny, progress=False)
    assert result.precision == precision and np.isfinite(result.final_loss)
    assert Catalog(synthetic_ws).get("checkpoint", f"train-{precision}").meta["precision"] == precision
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, got 'int8'"):
        TrainConfig(precision="int8")
