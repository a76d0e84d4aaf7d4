"""The one reader of model files: nothing in a file we are handed runs, whatever its name or content.

Every model file a user or a download hands the project (detector and pose weights, ViTPose folders, training
checkpoints, evaluators) is read here, and only here, as tensors and plain containers:

* ``.safetensors``: read by the ``safetensors`` library (a header and raw tensors; no code can be expressed).
* ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` (torch's zip pickles): read with torch's restricted ``weights_only``
  unpickler, which rebuilds only tensors and plain containers. A checkpoint that pickles whole networks
  (Ultralytics saves ``nn.Module`` objects) asks for their classes; :func:`read_module_file` hands the unpickler an
  inert *record* for each such class instead of the class itself. A record calls nothing: it keeps the arguments
  and the state the pickle gives it, so a pickle that tries to *call* a network class (the attack that ran code
  through Ultralytics' config parsing) builds only a record, and the file is refused for holding no weights. The
  tensors are then collected from the records' ``_parameters`` and ``_buffers`` into a state dict, which the caller
  loads into a network it builds itself from a configuration the project chooses.
* Suffixes are compared case-insensitively (``.PT`` is ``.pt``); anything else (model YAMLs, exported ONNX /
  TorchScript / TensorRT files, plain pickles) is refused with what to give instead.

The names a pickle asks for are read first (statically, nothing is built) and a name outside
:data:`RECORD_PREFIXES` is refused naming it; torch itself refuses ``os``, ``sys``, ``posix`` and ``nt`` always.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
TENSOR_SUFFIXES = (*TORCH_SUFFIXES, ".safetensors")
# Modules whose classes may appear in a pickled network checkpoint; each is replaced by an inert record.
RECORD_PREFIXES = ("ultralytics.", "torch.nn.modules.", "pathlib.", "numpy.", "collections.", "types.",
                   "argparse.", "datetime.")  # fmt: skip
REFUSED_SUFFIXES = {
    ".yaml": "a model YAML describes an architecture, not weights (Ultralytics evaluates strings in it); give the "
    "trained .pt file",
    ".yml": "a model YAML describes an architecture, not weights (Ultralytics evaluates strings in it); give the "
    "trained .pt file",
    ".onnx": "exported models are not taken as weights; give the .pt file (the detector runtime exports it itself)",
    ".engine": "exported models are not taken as weights; give the .pt file",
    ".torchscript": "a TorchScript file is a program, not weights; give the .pt file",
    ".pkl": "a plain pickle can run code when loaded; give a .pt or .safetensors file",
    ".pickle": "a plain pickle can run code when loaded; give a .pt or .safetensors file",
}
_LOAD_LOCK = threading.Lock()  # torch's allow-list is process-wide: one restricted load at a time


class UnsafeWeightsError(RuntimeError):
    """A model file that cannot be read as tensors and plain containers only."""


def weights_suffix(path: str | Path) -> str:
    """The file's suffix, lower-cased."""
    return Path(path).suffix.lower()


def check_weights_path(path: str | Path, what: str, suffixes: tuple[str, ...] = TENSOR_SUFFIXES) -> Path:
    """``path`` as a Path if it names an existing file of one of ``suffixes`` (any case); else a clear error."""
    path = Path(path)
    suffix = weights_suffix(path)
    if suffix in REFUSED_SUFFIXES:
        raise UnsafeWeightsError(f"{what} weights {path}: {REFUSED_SUFFIXES[suffix]}")
    if suffix not in suffixes:
        raise UnsafeWeightsError(f"{what} weights {path}: unrecognised file type {suffix or '(no suffix)'!r}; "
                                 f"give one of {', '.join(suffixes)}")  # fmt: skip
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights {path}: no such file")
    return path


def _refusal(path: Path, what: str, exc: Exception) -> UnsafeWeightsError:
    import re

    found = re.search(r"(?:[Uu]nsupported global:?|unsupported GLOBAL) (?:GLOBAL )?([\w.]+)", str(exc))
    reason = f"it asks for {found.group(1)}" if found else f"{type(exc).__name__}: {str(exc)[:200]}"
    return UnsafeWeightsError(
        f"{what} weights {path} hold more than tensors and plain containers ({reason}); loading them could run code "
        "they bring, so they are refused. Use weights from a source you trust, saved as a state dict or safetensors"
    )


def read_payload(path: str | Path, what: str = "model", map_location: Any = "cpu") -> Any:
    """A torch file of tensors and plain containers (our checkpoints, evaluators, a ``pytorch_model.bin``)."""
    import torch

    path = check_weights_path(path, what, TORCH_SUFFIXES)
    try:
        with _LOAD_LOCK:
            return torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as exc:
        raise _refusal(path, what, exc) from None


def read_tensors(path: str | Path, what: str = "model") -> dict[str, Any]:
    """A flat ``{name: tensor}`` state dict from ``.safetensors`` or a torch file holding one."""
    import torch

    path = check_weights_path(path, what)
    if weights_suffix(path) == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise UnsafeWeightsError(f"{what} weights {path} are not a readable safetensors file ({exc})") from None
    payload = read_payload(path, what)
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise UnsafeWeightsError(f"{what} weights {path} are not a state dict (name -> tensor)")
    return payload


class _Record:
    """Stands in for a class a pickle names: keeps what the pickle hands it and calls nothing."""

    qualname = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state


@dataclass
class ModuleFile:
    """What a pickled-network checkpoint holds, read without running it."""

    tensors: dict[str, Any]  # the network's state dict
    network: str  # the pickled class of the network, e.g. ultralytics.nn.tasks.DetectionModel
    attributes: dict[str, Any] = field(default_factory=dict)  # the network's plain-data attributes (names, ...)


def _plain(value: Any, depth: int = 0) -> bool:
    if depth > 8:
        return False
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in value.items())
    return False


def _state(record: _Record) -> dict | None:
    state = record.state
    if isinstance(state, tuple) and len(state) == 2:
        state = {**(state[0] or {}), **(state[1] or {})}
    return state if isinstance(state, dict) and "_parameters" in state and "_modules" in state else None


def _collect(record: Any, prefix: str, out: dict, path: Path, what: str) -> None:
    import torch

    state = _state(record) if isinstance(record, _Record) else None
    if state is None:
        name = getattr(record, "qualname", type(record).__name__)
        part = prefix.rstrip(".") or "(top)"
        raise UnsafeWeightsError(f"{what} weights {path}: the network part {part} ({name}) holds no module state "
                                 "(it was pickled as a call, not as weights); refused")  # fmt: skip
    skip = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, tensor in (state.get(group) or {}).items():
            if tensor is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(tensor, torch.Tensor):
                raise UnsafeWeightsError(f"{what} weights {path}: {prefix}{name} is not a tensor")
            out[prefix + name] = tensor
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _collect(child, f"{prefix}{name}.", out, path, what)


def read_module_file(path: str | Path, what: str = "model", keys: tuple[str, ...] = ("ema", "model")) -> ModuleFile:
    """The network of a checkpoint that pickles ``nn.Module`` objects (Ultralytics ``.pt``), as a state dict and
    plain attributes: the first of ``keys`` present in the checkpoint dict that holds a network is taken."""
    import torch

    path = check_weights_path(path, what, TORCH_SUFFIXES)
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:
        raise UnsafeWeightsError(f"{what} weights {path} are not a torch checkpoint ({type(exc).__name__}: "
                                 f"{str(exc)[:200]})") from None  # fmt: skip
    foreign = sorted(n for n in names if not n.startswith(RECORD_PREFIXES))
    if foreign:
        raise UnsafeWeightsError(
            f"{what} weights {path} hold more than tensors and network records (it asks for {foreign[0]}); loading "
            "them could run code they bring, so they are refused. Use weights from a source you trust"
        )
    records = [(type(n.rsplit(".", 1)[-1], (_Record,), {"qualname": n}), n) for n in names]
    try:
        with _LOAD_LOCK, torch.serialization.safe_globals(records):
            payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _refusal(path, what, exc) from None
    top = next((payload[k] for k in keys if isinstance(payload.get(k), _Record)), None) if isinstance(payload, dict) \
        else None  # fmt: skip
    if top is None:
        raise UnsafeWeightsError(f"{what} weights {path} hold no pickled network under {' or '.join(keys)}")
    tensors: dict[str, Any] = {}
    _collect(top, "", tensors, path, what)
    state = _state(top) or {}
    attributes = {k: v for k, v in state.items() if not k.startswith("_") and _plain(v)}
    return ModuleFile(tensors=tensors, network=top.qualname, attributes=attributes)
