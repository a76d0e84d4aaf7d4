"""The detector's CPU runtime: Ultralytics' own export of the weights to OpenVINO or ONNX Runtime, cached by hash.

PyTorch is the detector's cost on a CPU (``benchmarks/results/video.md``): the same YOLOv8 weights run about 2x
faster through OpenVINO on this machine's 2 cores, so ``detector.runtime: auto`` exports them once (dynamic input
shape, so frames keep the small letterbox PyTorch uses) and tracks with the export. On a GPU ``auto`` stays PyTorch.
The export is keyed by the weights' sha256, the input size and the library versions, written to a temporary folder
and renamed into the cache (``MAS_CACHE``/exports), so a crash never leaves a half export that a later run trusts.
The runtime threads follow the process's torch thread count (the thread policy, ``models/hardware.py``).
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
from pathlib import Path

from pipeline.assets import cache_dir, cache_entry
from storage.hashing import file_sha256

EXPORT_FORMATS = {"openvino": ("openvino", "openvino"), "onnx": ("onnx", "onnxruntime")}  # runtime: (format, module)
RUNTIMES = ("auto", "torch", *EXPORT_FORMATS)


class RuntimeUnavailable(RuntimeError):
    """A requested detector runtime whose package is not installed or whose export failed."""


def runtime_installed(runtime: str) -> bool:
    return runtime == "torch" or importlib.util.find_spec(EXPORT_FORMATS[runtime][1]) is not None


def resolve_runtime(requested: str, cuda: bool | None = None) -> tuple[str, str]:
    """``(runtime, why)`` for ``detector.runtime``: auto is OpenVINO on a CPU where it is installed, else ONNX
    Runtime, else PyTorch; PyTorch on a GPU. An explicit runtime that is not installed is an error naming the fix."""
    if requested not in RUNTIMES:
        raise ValueError(f"unknown detector runtime {requested!r}; choose one of {', '.join(RUNTIMES)}")
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if requested == "auto":
        if cuda:
            return "torch", "auto: a CUDA device runs the PyTorch weights"
        for runtime in EXPORT_FORMATS:
            if runtime_installed(runtime):
                return runtime, f"auto: {runtime} is installed and runs the detector faster than PyTorch on a CPU"
        return "torch", "auto: neither openvino nor onnxruntime is installed"
    if not runtime_installed(requested):
        package = EXPORT_FORMATS[requested][1]
        raise RuntimeUnavailable(
            f"detector.runtime {requested} needs the {package} package: `pip install {package}` (or the [onnx] "
            "extra), or set detector.runtime to auto or torch"
        )
    return requested, f"detector.runtime {requested}"


def export_key(weights: Path, runtime: str, imgsz: int) -> str:
    versions = "-".join(importlib.metadata.version(p) for p in ("ultralytics", EXPORT_FORMATS[runtime][1]))
    return f"{file_sha256(weights)[:16]}-{runtime}-{imgsz}-{versions}"


def _export_dir(weights: Path, runtime: str, imgsz: int) -> Path:
    return cache_dir() / "exports" / export_key(weights, runtime, imgsz)


def _finished(target: Path) -> Path | None:
    """The exported model recorded in the export folder ``target``, or None until the export is complete."""
    done = target / "export.done"
    return Path(done.read_text().strip()) if done.exists() else None


def cached_export(weights: str | Path, runtime: str, imgsz: int) -> Path | None:
    """Path of the finished ``runtime`` export of a local ``.pt`` file, or None where it was never made."""
    return _finished(_export_dir(Path(weights), runtime, imgsz))


def exported_weights(model, runtime: str, imgsz: int) -> Path:
    """Path of the ``runtime`` export of a YOLO built by :func:`pipeline.yolo_weights.load_yolo_file` (made once
    from the network in memory; later calls find it in the cache, keyed by the weights file's bytes)."""
    weights = Path(model.weights_path)
    fmt = EXPORT_FORMATS[runtime][0]
    target = _export_dir(weights, runtime, imgsz)
    if (finished := _finished(target)) is not None:
        return finished
    try:
        with cache_entry(target, lambda folder: _finished(folder) is not None) as work:
            model.model.pt_path = str(work / "model.pt")  # the exporter names its output after this path
            try:
                exported = Path(model.export(format=fmt, imgsz=imgsz, dynamic=True, verbose=False))
            finally:
                model.model.pt_path = str(weights)
            relative = exported.relative_to(work)
            (work / "export.done").write_text(str(target / relative))
    except Exception as exc:
        raise RuntimeUnavailable(f"exporting {weights} to {runtime} failed ({type(exc).__name__}: {exc}); set "
                                 "detector.runtime: torch to track with the PyTorch weights") from exc  # fmt: skip
    return _finished(target)


def detector_names(model) -> dict[int, str]:
    """The detector's class names. An exported model's come from its export's metadata until its first prediction:
    Ultralytics' ``names`` would build, and compile, a throwaway predictor for them (0.3 s per video here)."""
    if model.predictor is None and not str(model.model_name).endswith(".pt"):
        from ultralytics.nn.backends.base import BaseBackend

        names = BaseBackend.read_metadata(model.model_name).get("names")
        if isinstance(names, str):
            names = ast.literal_eval(names)
        if isinstance(names, dict) and names:
            return {int(k): str(v) for k, v in names.items()}
    return model.names


def set_runtime_threads(model, threads: int) -> None:
    """Give an exported model's runtime ``threads`` threads (Ultralytics leaves OpenVINO and ONNX Runtime on their
    defaults: every core, which collapses beside a busy neighbour as torch does). Call after the first prediction,
    once Ultralytics has built its backend; the tracker reuses that backend. OpenVINO's compiled model is kept where
    its default already is ``threads`` (a second compile costs 0.2 s per video)."""
    backend = getattr(getattr(model.predictor, "model", None), "backend", None)
    if hasattr(backend, "ov_compiled_model"):
        if backend.ov_compiled_model.get_property("INFERENCE_NUM_THREADS") == threads:
            return
        from functools import partial

        import openvino as ov

        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
        core = ov.Core()
        backend.compile_model = partial(core.compile_model, device_name="CPU", config=config)
        xml = next(Path(model.model_name).glob("*.xml"))
        backend.ov_compiled_model = backend.compile_model(core.read_model(str(xml)))
    elif hasattr(backend, "session"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        backend.session = ort.InferenceSession(str(model.model_name), options,
                                               providers=["CPUExecutionProvider"])  # fmt: skip
