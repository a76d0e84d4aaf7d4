"""Refuse model weights that would run code when loaded.

Ultralytics loads ``.pt`` files with ``torch.load(weights_only=False)``: a crafted pickle named in a config
(``detector.weights``, ``pose.weights``) runs whatever it likes. Before such a file reaches Ultralytics it is loaded
once with torch's restricted ``weights_only`` unpickler, which only rebuilds tensors, plain containers and the
network classes allow-listed here (every ``nn.Module`` class of ``torch.nn.modules``, ``ultralytics.nn.modules`` and
``ultralytics.nn.tasks``): nothing is called that could run foreign code. A file that needs anything else is refused
with the name of the offending global, unless the config says the file is trusted (``trust_weights: true``).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from functools import cache
from pathlib import Path

# Packages whose nn.Module classes a YOLO checkpoint is made of; walked without importing anything else (some other
# ultralytics modules check or install requirements when imported).
ALLOWED_PACKAGES = ("torch.nn.modules", "ultralytics.nn.modules")
ALLOWED_MODULES = ("ultralytics.nn.tasks",)


class UnsafeWeightsError(RuntimeError):
    """A weights file that cannot be loaded without running code it brings."""


def _modules(package: str) -> list:
    pkg = importlib.import_module(package)
    found = [pkg]
    for info in pkgutil.iter_modules(pkg.__path__, package + "."):
        found.append(importlib.import_module(info.name))
    return found


@cache
def allowed_classes() -> tuple[type, ...]:
    from torch import nn

    modules = [m for p in ALLOWED_PACKAGES for m in _modules(p)] + [importlib.import_module(n) for n in ALLOWED_MODULES]
    classes = {
        obj
        for module in modules
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, nn.Module) and obj.__module__.startswith(("torch.", "ultralytics."))
    }
    return tuple(sorted(classes, key=lambda c: f"{c.__module__}.{c.__qualname__}"))


def check_weights_file(path: str | Path, what: str = "detector") -> None:
    """Raise :class:`UnsafeWeightsError` unless ``path`` loads with the restricted unpickler."""
    import torch

    try:
        with torch.serialization.safe_globals(list(allowed_classes())):
            torch.load(str(path), weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises UnpicklingError (and others) naming the unsupported global
        found = re.search(r"(?:[Uu]nsupported global:?|unsupported GLOBAL) (?:GLOBAL )?([\w.]+)", str(exc))
        reason = f"it asks for {found.group(1)}" if found else f"{type(exc).__name__}: {str(exc)[:200]}"
        raise UnsafeWeightsError(
            f"{what} weights {path} need more than tensors and network classes to load ({reason}); loading "
            f"them could run code they bring. Use weights from a source you trust, or, if you trust this file, set "
            f"{'detector' if what == 'detector' else 'pose'}.trust_weights: true in the config"
        ) from None
