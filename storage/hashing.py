"""Content hashes of stage inputs and parameters.

A stage output is keyed by ``stage_key(stage, inputs, params)``: the same input files (by content) and the same
parameters give the same key, so a rerun can tell finished work from stale work without trusting timestamps.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def file_sha256(path: str | Path, fs: Any = None) -> str:
    """Streaming sha256 of a file (local path, or a path on an fsspec filesystem ``fs``)."""
    digest = hashlib.sha256()
    opener = fs.open if fs is not None else open
    with opener(str(path), "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _canonical(value: Any) -> Any:
    """Make ``value`` JSON-serialisable in one canonical form (sorted keys, tuples as lists, paths as strings)."""
    if hasattr(value, "model_dump"):  # pydantic models
        return _canonical(value.model_dump(mode="json"))
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return repr(value)
        return value
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _canonical(value.tolist())
    if value is None or isinstance(value, (str, int, bool)):
        return value
    raise TypeError(f"cannot hash parameter of type {type(value).__name__}: {value!r}")


def params_hash(params: Any) -> str:
    """sha256 of the canonical JSON form of ``params``."""
    text = json.dumps(_canonical(params), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def stage_key(stage: str, input_hashes: Iterable[str] = (), params: Any = None, version: str = "1") -> str:
    """Key of a stage output: hash of the stage name and code version, its inputs' content hashes, its parameters."""
    payload = {"stage": stage, "version": version, "inputs": list(input_hashes), "params": _canonical(params)}
    return params_hash(payload)[:32]
