"""The denoiser through OpenVINO: same outputs as PyTorch's in each precision, any batch and length, cached
atomically by content, chosen by MAS_DENOISER_RUNTIME, and named in the precision reason."""

import pytest
import torch

import models.openvino_denoiser as ovd
from models.checkpoint import TrainedModel
from models.denoiser import DenoiserConfig, MotionDenoiser
from models.diffusion import Diffusion
from models.hardware import cpu_int8_dot_product, cpu_native_bf16
from models.mas import MASConfig, mas_sample
from models.precision import Bf16Denoiser, cache_params, checked_precision, with_precision

pytestmark = pytest.mark.skipif(not ovd.openvino_installed("int8"), reason="openvino and nncf are not installed")
NATIVE_BF16 = cpu_native_bf16()  # OpenVINO computes bf16 only there (elsewhere it would silently compute fp32)
needs_native_bf16 = pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bf16")


def _error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value - reference).norm() / reference.norm())


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = MotionDenoiser(DenoiserConfig(num_joints=17, latent_dim=64, ff_size=128, num_layers=2, max_len=64)).eval()
    return TrainedModel(model, Diffusion.cosine(20), torch.zeros(17, 2), torch.full((17, 2), 0.3), "coco17", 0.5,
                        30.0, 0)  # fmt: skip


BF16 = pytest.param("bf16", 0.03, marks=needs_native_bf16)


@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-5), BF16, ("int8", 0.05)])
def test_openvino_denoiser_matches_pytorch_at_any_batch_and_length(trained, precision, tolerance):
    fast = ovd.openvino_denoiser(trained.model, precision)
    assert isinstance(fast, ovd.OpenVinoDenoiser) and fast.precision == precision
    for batch, length in [(3, 40), (7, 64), (1, 5)]:  # one conversion: any batch and length (int8: nothing calibrated)
        x, t = torch.randn(batch, length, 17, 2), torch.randint(0, 20, (batch,))
        with torch.no_grad():
            reference = trained.model(x, t)
        out = fast(x, t)
        assert out.dtype == torch.float32 and out.shape == reference.shape
        assert _error(out, reference) < tolerance, (precision, batch, length)
    if precision != "fp32":  # really the lower precision, not fp32 under another name
        assert _error(fast(x, t), reference) > 1e-5


def test_openvino_denoiser_refuses_padding_and_wrong_shapes(trained):
    fast = ovd.openvino_denoiser(trained.model, "bf16")
    x, t = torch.randn(2, 10, 17, 2), torch.tensor([0, 5])
    fast(x, t, torch.ones(2, 10, dtype=torch.bool))  # all frames valid: fine
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, 7:] = False
    with pytest.raises(ovd.DenoiserRuntimeError, match="full-length motions only.*MAS_DENOISER_RUNTIME=torch"):
        fast(x, t, valid)
    with pytest.raises(ValueError, match=r"built for \[\*, \*, 17, 2\] motions, got \(2, 10, 16, 2\)"):
        fast(torch.randn(2, 10, 16, 2), t)
    with pytest.raises(ValueError, match="65 frames exceeds the model's max_len 64"):
        fast(torch.randn(2, 65, 17, 2), t)


def test_conversion_is_cached_by_content_and_written_atomically(trained, tmp_path, monkeypatch):
    monkeypatch.setattr(ovd, "cache_dir", lambda: tmp_path)
    x, t = torch.randn(2, 12, 17, 2), torch.tensor([3, 17])
    first = ovd.openvino_denoiser(trained.model, "int8")(x, t)
    entries = list((tmp_path / "denoisers").iterdir())
    assert [p.name for p in entries] == [ovd.cache_key(trained.model, "int8")]
    assert sorted(p.name for p in entries[0].iterdir()) == ["denoiser.bin", "denoiser.xml"]

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again although the cache holds this model")

    monkeypatch.setattr(ovd, "convert", no_conversion)
    _, found = ovd.load_or_convert(trained.model, "int8")
    assert found
    assert torch.equal(ovd.openvino_denoiser(trained.model, "int8")(x, t), first)
    # other weights or another precision are another entry: converting them is attempted (and fails here, saying
    # how to sample without OpenVINO)
    other = MotionDenoiser(trained.model.config).eval()
    with pytest.raises(ovd.DenoiserRuntimeError, match="could not convert the denoiser to int8 .*converted again.*"
                                                       "MAS_DENOISER_RUNTIME=torch"):  # fmt: skip
        ovd.openvino_denoiser(other, "int8")
    with pytest.raises(ovd.DenoiserRuntimeError, match="to bf16 .*converted again"):
        ovd.openvino_denoiser(trained.model, "bf16")
    monkeypatch.undo()
    monkeypatch.setattr(ovd, "cache_dir", lambda: tmp_path)

    import openvino as ov

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(ov, "save_model", disk_full)
    with pytest.warns(UserWarning, match="could not be kept in .*No space left.*converted again next time"):
        bf16 = ovd.openvino_denoiser(trained.model, "bf16")  # a full cache costs a conversion, not the run
    assert bf16(x, t).shape == x.shape
    assert [p.name for p in (tmp_path / "denoisers").iterdir()] == [entries[0].name]  # nothing half-written kept
    # an entry missing its weights (copied by hand, half deleted) is replaced, not trusted
    monkeypatch.undo()
    monkeypatch.setattr(ovd, "cache_dir", lambda: tmp_path)
    (entries[0] / "denoiser.bin").unlink()
    _, found = ovd.load_or_convert(trained.model, "int8")
    assert not found and sorted(p.name for p in entries[0].iterdir()) == ["denoiser.bin", "denoiser.xml"]
    assert oct(entries[0].stat().st_mode & 0o777) == "0o755"  # readable by all: the cache may be shared


def test_runtime_choice_and_reason(trained, monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv(ovd.RUNTIME_ENV, raising=False)
    monkeypatch.setattr(ovd, "cpu_int8_dot_product", lambda: True)  # OpenVINO computes int8 (VNNI/AMX)
    assert ovd.denoiser_runtime(cpu, "int8")[0] == "openvino"
    assert ovd.denoiser_runtime(cpu, "bf16")[0] == ("openvino" if NATIVE_BF16 else "torch")
    assert ovd.denoiser_runtime(cpu, "fp32")[0] == "torch" and ovd.denoiser_runtime(cuda, "bf16")[0] == "torch"
    assert isinstance(with_precision(trained, "int8").model, ovd.OpenVinoDenoiser)
    _, used, reason = checked_precision(trained, "int8")
    assert used == "int8" and reason.startswith("int8: asked for; run by OpenVINO 20")
    monkeypatch.setenv(ovd.RUNTIME_ENV, "torch")
    assert isinstance(with_precision(trained, "bf16").model, Bf16Denoiser)
    assert checked_precision(trained, "bf16")[2] == "bf16: asked for; run by PyTorch (MAS_DENOISER_RUNTIME=torch)"
    monkeypatch.setenv(ovd.RUNTIME_ENV, "openvino")
    with pytest.raises(ovd.DenoiserRuntimeError, match="CPU only, not on cuda.*--device cpu"):
        ovd.denoiser_runtime(cuda, "bf16")
    assert ovd.denoiser_runtime(cpu, "fp32")[0] == "torch"  # fp32 samples through PyTorch, whatever is asked
    monkeypatch.setattr(ovd, "cpu_native_bf16", lambda: False)  # OpenVINO would compute bf16 as fp32 there
    with pytest.raises(ovd.DenoiserRuntimeError, match="bf16 only on a CPU with native bf16"):
        ovd.denoiser_runtime(cpu, "bf16")
    assert ovd.denoiser_runtime(cpu, "int8")[0] == "openvino"
    monkeypatch.setenv(ovd.RUNTIME_ENV, "auto")
    assert ovd.denoiser_runtime(cpu, "bf16")[0] == "torch"
    monkeypatch.undo()
    monkeypatch.setattr(ovd, "cpu_int8_dot_product", lambda: True)
    monkeypatch.setenv(ovd.RUNTIME_ENV, "onnx")
    with pytest.raises(ovd.DenoiserRuntimeError, match="MAS_DENOISER_RUNTIME='onnx'.*auto, torch, openvino"):
        with_precision(trained, "bf16")
    monkeypatch.setenv(ovd.RUNTIME_ENV, "openvino")
    monkeypatch.setattr(ovd, "openvino_installed", lambda precision="bf16": False)
    with pytest.raises(ovd.DenoiserRuntimeError, match="needs openvino and nncf: `pip install -e .`"):
        ovd.denoiser_runtime(cpu, "int8")
    monkeypatch.setenv(ovd.RUNTIME_ENV, "auto")
    assert ovd.denoiser_runtime(cpu, "int8") == ("torch", "PyTorch (openvino and nncf not installed)")


def test_int8_without_int8_dot_products_runs_through_pytorch(trained, monkeypatch):
    """Without VNNI/AMX, OpenVINO computes int8 layers with fp32 kernels (measured no faster than fp32), so auto's
    int8 goes through PyTorch's int8 kernels; an explicit MAS_DENOISER_RUNTIME=openvino is obeyed; without PyTorch's
    int8 kernels OpenVINO's int8 still runs; and the cache key follows the runtime."""
    cpu = torch.device("cpu")
    monkeypatch.delenv(ovd.RUNTIME_ENV, raising=False)
    monkeypatch.setattr(ovd, "cpu_int8_dot_product", lambda: False)
    runtime, why = ovd.denoiser_runtime(cpu, "int8")
    assert runtime == "torch" and "no int8 dot products" in why
    assert ovd.denoiser_runtime(cpu, "bf16")[0] == ("openvino" if NATIVE_BF16 else "torch")  # bf16 as before
    assert cache_params(cpu, "int8") == {"precision": "int8"}
    fast, used, reason = checked_precision(trained, "int8")
    assert used == "int8" and not isinstance(fast.model, ovd.OpenVinoDenoiser) and "run by PyTorch (this CPU" in reason
    monkeypatch.setenv(ovd.RUNTIME_ENV, "openvino")  # asked for: obeyed
    assert ovd.denoiser_runtime(cpu, "int8")[0] == "openvino"
    assert isinstance(with_precision(trained, "int8").model, ovd.OpenVinoDenoiser)
    monkeypatch.setenv(ovd.RUNTIME_ENV, "auto")
    monkeypatch.setattr(ovd, "int8_available", lambda: False)  # no PyTorch int8 kernels: OpenVINO's int8 still runs
    assert ovd.denoiser_runtime(cpu, "int8")[0] == "openvino"
    monkeypatch.setattr(ovd, "cpu_int8_dot_product", lambda: True)
    monkeypatch.setattr(ovd, "int8_available", lambda: True)
    assert ovd.denoiser_runtime(cpu, "int8")[0] == "openvino"
    assert cache_params(cpu, "int8") == {"precision": "int8", "runtime": "openvino"}


@pytest.mark.skipif(cpu_int8_dot_product(), reason="this CPU has int8 dot products (VNNI/AMX)")
def test_openvino_int8_layers_run_fp32_kernels_without_int8_dot_products(trained):
    """What the rule above rests on, asked of OpenVINO on this machine: without int8 dot products its compiled int8
    matrix products run fp32 kernels (on decompressed int8 weights), so they cannot be faster than fp32."""
    compiled = ovd.openvino_denoiser(trained.model, "int8")._compiled
    kernels = set()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == "FullyConnected":
            kernels.add((info["runtimePrecision"].astype(str), info["primitiveType"].astype(str)))
    assert kernels, "no FullyConnected layer in the compiled int8 denoiser"
    assert {weights for weights, _ in kernels} == {"i8"}, kernels  # the weights are int8 ...
    assert all(kernel.endswith("f32") for _, kernel in kernels), kernels  # ... the arithmetic is not


@pytest.mark.parametrize("precision", ["int8", pytest.param("bf16", marks=needs_native_bf16)])
def test_mas_through_openvino_matches_mas_through_pytorch(trained, precision, monkeypatch):
    config = MASConfig(num_views=3)
    monkeypatch.setenv(ovd.RUNTIME_ENV, "torch")
    reference = mas_sample(with_precision(trained, "fp32"), 2, 24, config, seed=3)
    torch_fast = mas_sample(with_precision(trained, precision), 2, 24, config, seed=3)
    monkeypatch.setenv(ovd.RUNTIME_ENV, "openvino")
    fast = mas_sample(with_precision(trained, precision), 2, 24, config, seed=3)
    spread = (reference - reference.mean(dim=(1, 2), keepdim=True)).norm(dim=-1).mean()
    assert torch.isfinite(fast).all()
    ours = float((fast - reference).norm(dim=-1).mean() / spread)
    theirs = float((torch_fast - reference).norm(dim=-1).mean() / spread)
    assert 0 < theirs < 0.1 and 0 < ours < 0.1


def test_sample_sets_record_the_runtime_and_resample_when_it_changes(synthetic_ws, monkeypatch):
    from models.trainer import TrainConfig
    from pipeline.sample_stage import run_sampling
    from pipeline.train_stage import run_training
    from storage import Catalog

    tiny = TrainConfig(steps=3, batch_size=8, latent_dim=32, ff_size=64, num_layers=1, num_heads=4, max_len=32,
                       device="cpu")  # fmt: skip
    run_training(synthetic_ws, "synth", "runtime-run", tiny, progress=False)
    monkeypatch.setenv(ovd.RUNTIME_ENV, "openvino")  # auto's int8 runtime depends on the CPU (int8 dot products)

    def sample():
        return run_sampling(synthetic_ws, "runtime-run", "rt", num_samples=2, length=16, render=0, progress=False,
                            device="cpu", precision="int8")  # fmt: skip

    through_openvino = sample()
    record = Catalog(synthetic_ws).get("sample", "rt")
    assert record.params["runtime"] == "openvino" and "run by OpenVINO" in record.meta["precision_reason"]
    monkeypatch.setenv(ovd.RUNTIME_ENV, "torch")
    through_torch = sample()
    assert not through_torch.skipped and "runtime" not in Catalog(synthetic_ws).get("sample", "rt").params
    assert (through_openvino.motions != through_torch.motions).any()  # really recomputed
    assert sample().skipped  # same runtime again: kept
