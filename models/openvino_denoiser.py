"""The denoiser through OpenVINO on a CPU: the same trained weights in bf16 or int8, converted once and cached.

PyTorch runs a denoiser pass as separate operators; OpenVINO compiles the whole pass (fused attention, layer norm and
GELU, oneDNN matrix products). On this project's 2-core AVX512-BF16 CPU a pass takes 0.6-0.9x PyTorch's time in
the same precision (``benchmarks/results/denoiser_runtime.md``). What the denoiser computes is unchanged up to its
precision:

- ``bf16``: the converted model compiled with OpenVINO's bf16 inference precision (as PyTorch's bf16 autocast).
- ``int8``: the same kind of int8 as PyTorch's (``models/int8.py``): weights int8 per output channel (symmetric, by
  NNCF, OpenVINO's compressor), activations quantised when each pass runs (groups of
  :data:`ACTIVATION_GROUP_SIZE` values), so nothing is calibrated and any batch or length is fine; the rest runs in
  bf16 where the CPU computes it natively.
- ``fp32``: the converted model in fp32, to check the conversion (sampling in fp32 stays with PyTorch).

The converted model is kept in the cache (``MAS_CACHE``/denoisers, keyed by the weights, the precision and the library
versions), written to a temporary folder and renamed, so a later process loads it in well under a second and a crash
never leaves half a model that a later run trusts. ``MAS_DENOISER_RUNTIME`` picks the runtime of CPU sampling:
``auto`` (default: OpenVINO where it is installed, except int8 on a CPU without int8 dot products,
:func:`denoiser_runtime`), ``openvino`` or ``torch``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models import denoiser as denoiser_module
from models.denoiser import MotionDenoiser
from models.hardware import cpu_int8_dot_product, cpu_native_bf16
from models.int8 import int8_available
from pipeline.assets import cache_dir, cache_entry

RUNTIMES = ("auto", "torch", "openvino")
RUNTIME_ENV = "MAS_DENOISER_RUNTIME"
INT8_RECIPE = "nncf INT8_SYM weights (per output channel), activations dynamic"
ACTIVATION_GROUP_SIZE = 128  # 64-512 measured on the default model: 512 4% faster than 128, 128 a little closer to fp32


class DenoiserRuntimeError(RuntimeError):
    """A denoiser runtime that does not exist, is not installed, or cannot run what it is asked to."""


def openvino_installed(precision: str = "bf16") -> bool:
    """Whether OpenVINO (and, for int8, NNCF) can be imported here."""
    needs = ("openvino", "nncf") if precision == "int8" else ("openvino",)
    return all(importlib.util.find_spec(name) is not None for name in needs)


def denoiser_runtime(device: torch.device, precision: str) -> tuple[str, str]:
    """``(runtime, why)`` for sampling on ``device`` in ``precision`` (int8 / bf16 / fp32), from
    ``MAS_DENOISER_RUNTIME``: OpenVINO for int8, and for bf16 where the CPU computes it natively, on a CPU where it is
    installed (unless ``torch`` is asked for); PyTorch otherwise, and for fp32. Under ``auto``, int8 goes through
    PyTorch's int8 kernels on a CPU without int8 dot products (no VNNI/AMX): there OpenVINO's int8 layers run fp32
    kernels on decompressed weights (``brgemm_avx2_f32`` on an AVX2 CPU), no faster than fp32, while PyTorch's took
    0.62-0.77x their time for the 256-512 d models and tied them at 128 d (OpenVINO 0.92-1.19x as fast over four
    runs, both within the host's noise of fp32 there; ``benchmarks/results/denoiser_runtime_no_int8_dot.md``)."""
    if precision == "fp32":
        return "torch", "PyTorch (fp32 samples through PyTorch)"
    requested = os.environ.get(RUNTIME_ENV, "auto") or "auto"
    if requested not in RUNTIMES:
        raise DenoiserRuntimeError(f"{RUNTIME_ENV}={requested!r} is not a denoiser runtime; use one of "
                                   f"{', '.join(RUNTIMES)}")  # fmt: skip
    if requested == "torch":
        return "torch", f"PyTorch ({RUNTIME_ENV}=torch)"
    if device.type != "cpu":
        if requested == "openvino":
            raise DenoiserRuntimeError(f"{RUNTIME_ENV}=openvino runs the denoiser on the CPU only, not on {device}; "
                                       f"use --device cpu or {RUNTIME_ENV}=auto")  # fmt: skip
        return "torch", f"PyTorch on {device}"
    if not openvino_installed(precision):
        package = "openvino and nncf" if precision == "int8" else "openvino"
        if requested == "openvino":
            raise DenoiserRuntimeError(f"{RUNTIME_ENV}=openvino needs {package}: `pip install -e .` installs them "
                                       f"(or set {RUNTIME_ENV}=torch)")  # fmt: skip
        return "torch", f"PyTorch ({package} not installed)"
    if precision == "bf16" and not cpu_native_bf16():  # OpenVINO would silently compute it in fp32 here
        if requested == "openvino":
            raise DenoiserRuntimeError(f"{RUNTIME_ENV}=openvino computes bf16 only on a CPU with native bf16 "
                                       f"(AVX512-BF16/AMX); use --precision int8 or {RUNTIME_ENV}=torch")  # fmt: skip
        return "torch", "PyTorch (OpenVINO computes bf16 only where the CPU does natively)"
    if precision == "int8" and requested == "auto" and not cpu_int8_dot_product() and int8_available():
        return "torch", ("PyTorch (this CPU has no int8 dot products, VNNI/AMX, so OpenVINO would compute the int8 "
                         "layers in fp32; PyTorch's int8 kernels are faster here)")
    return "openvino", f"OpenVINO {importlib.metadata.version('openvino')} ({RUNTIME_ENV}={requested})"


class OpenVinoDenoiser(nn.Module):
    """A compiled OpenVINO denoiser behind the denoiser's call: ``x [B, L, J, 2]`` (any B, L up to max_len) and
    ``t [B]`` in, float32 x0 out. Full-length motions only: sampling never pads (``valid`` must be all true)."""

    runtime = "openvino"

    def __init__(self, compiled, config, precision: str):
        super().__init__()
        self.config = config
        self.precision = precision
        self._compiled = compiled
        self._request = compiled.create_infer_request()

    def forward(self, x: torch.Tensor, t: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        if valid is not None and not bool(valid.all()):
            raise DenoiserRuntimeError("the OpenVINO denoiser runs full-length motions only; padded batches (valid "
                                       f"not all true) need {RUNTIME_ENV}=torch")  # fmt: skip
        if x.device.type != "cpu":
            raise DenoiserRuntimeError(f"the OpenVINO denoiser runs on the CPU; got a tensor on {x.device}")
        self.config.check_motions(x.shape)
        inputs = [np.ascontiguousarray(x.detach().float().numpy()), t.detach().long().numpy()]
        out = self._request.infer(inputs)[self._compiled.output(0)]
        return torch.from_numpy(np.array(out, dtype=np.float32))


def cache_key(model: MotionDenoiser, precision: str) -> str:
    """The converted model's identity: weights, configuration, precision (its recipe), the denoiser's and the
    conversion's code, and library versions."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    versions = {name: _version(name) for name in ("openvino", "nncf", "torch")}
    meta = {"config": model.config.to_dict(), "precision": precision, "versions": versions, "code": _code_hash()}
    if precision == "int8":
        meta["int8"] = INT8_RECIPE
    digest.update(json.dumps(meta, sort_keys=True).encode())
    return digest.hexdigest()


def _code_hash() -> str:
    """The code that defines what is traced (the denoiser's forward pass and position table) and how it is converted
    (this module): a change to either makes every cached conversion stale."""
    digest = hashlib.sha256()
    for path in (denoiser_module.__file__, __file__):
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def convert(model: MotionDenoiser, precision: str):
    """The OpenVINO model of ``model`` with dynamic batch and length; for int8, with int8 weights."""
    import openvino as ov

    cfg = model.config
    model = model.eval()
    example = (torch.zeros(2, min(8, cfg.max_len), cfg.num_joints, cfg.num_feats), torch.zeros(2, dtype=torch.long))
    shapes = [ov.PartialShape([-1, -1, cfg.num_joints, cfg.num_feats]), ov.PartialShape([-1])]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about the shape checks, which tracing fixes to this model
        converted = ov.convert_model(model, example_input=example, input=shapes)
    if precision != "int8":
        return converted
    import nncf

    logging.getLogger("nncf").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):  # its progress bar, over in a second
        return nncf.compress_weights(converted, mode=nncf.CompressWeightsMode.INT8_SYM)


def _complete(folder: Path) -> bool:
    return (folder / "denoiser.xml").is_file() and (folder / "denoiser.bin").is_file()


def load_or_convert(model: MotionDenoiser, precision: str) -> tuple[object, bool]:
    """``(OpenVINO model, found in the cache)``; a new conversion is written atomically to the cache (a cache that
    cannot be written costs a conversion next time, with a warning, not the run)."""
    import openvino as ov

    folder = cache_dir() / "denoisers" / cache_key(model, precision)
    if _complete(folder):
        return ov.Core().read_model(str(folder / "denoiser.xml")), True
    try:
        converted = convert(model, precision)
    except Exception as exc:  # a conversion failure is OpenVINO's or NNCF's, whatever its type: name the way out
        raise DenoiserRuntimeError(f"OpenVINO could not convert the denoiser to {precision} ({type(exc).__name__}: "
                                   f"{exc}); set {RUNTIME_ENV}=torch to sample through PyTorch") from exc  # fmt: skip
    try:
        with cache_entry(folder, _complete) as staging:
            ov.save_model(converted, str(staging / "denoiser.xml"), compress_to_fp16=False)
    except OSError as exc:
        warnings.warn(f"the converted denoiser could not be kept in {folder.parent} ({exc}); it is converted again "
                      "next time", stacklevel=2)  # fmt: skip
    return converted, False


def openvino_denoiser(model: MotionDenoiser, precision: str) -> OpenVinoDenoiser:
    """``model`` (on the CPU) compiled by OpenVINO in ``precision`` (fp32, bf16 or int8), with as many threads as
    torch uses (the thread policy, ``models/hardware.py``)."""
    import openvino as ov

    if precision not in ("fp32", "bf16", "int8"):
        raise DenoiserRuntimeError(f"no OpenVINO denoiser for precision {precision!r}")
    if next(model.parameters()).device.type != "cpu":
        raise DenoiserRuntimeError("the OpenVINO denoiser is built from a model on the CPU")
    converted, _ = load_or_convert(model, precision)
    hint = {"fp32": "f32", "bf16": "bf16", "int8": "bf16" if cpu_native_bf16() else "f32"}[precision]
    settings = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": torch.get_num_threads()}
    if precision == "int8":
        settings["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = ACTIVATION_GROUP_SIZE
    compiled = ov.Core().compile_model(converted, "CPU", settings)
    return OpenVinoDenoiser(compiled, model.config, precision)
