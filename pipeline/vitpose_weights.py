"""ViTPose networks built by us from a checkpoint folder's JSON config, filled by the one weights reader.

``from_pretrained`` would unpickle a ``pytorch_model.bin`` with its own loader and honour whatever the folder's
config asks for. Here the folder's ``config.json`` is read as JSON and accepted only as a ViTPose config (no
``auto_map``, so no code from the folder); the network is built from it, and its tensors come from
:func:`models.weights_file.read_tensors` (safetensors, sharded or not, or a torch state dict). A Hub name is first
downloaded (JSON and tensor files only) where the Hub is reachable.
"""

from __future__ import annotations

import json
from pathlib import Path

from models.weights_file import UnsafeWeightsError, read_tensors

TENSOR_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def vitpose_folder(weights: str) -> Path:
    """The local folder of ``weights`` (a folder, or a Hub name downloaded into the Hub cache)."""
    if Path(weights).is_dir():
        return Path(weights)
    if Path(weights).exists() or weights.startswith((".", "/", "~")) or weights.count("/") > 1:
        raise FileNotFoundError(f"pose weights {weights}: not a checkpoint folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(weights, allow_patterns=["*.json", "*.safetensors", "*.bin"]))
    except Exception as exc:  # offline, unknown repo, bad name: the caller names the fix
        raise OSError(f"{type(exc).__name__}: {exc}") from None


def folder_tensors(folder: Path) -> dict:
    """Every tensor of the checkpoint in ``folder`` (one file or the shards an index names)."""
    for name in INDEX_FILES:
        if (folder / name).is_file():
            shards = sorted(set(json.loads((folder / name).read_text())["weight_map"].values()))
            tensors = {}
            for shard in shards:
                if Path(shard).name != shard:
                    raise UnsafeWeightsError(f"pose weights {folder / name} name a shard outside the folder: {shard}")
                tensors.update(read_tensors(folder / shard, "pose"))
            return tensors
    for name in TENSOR_FILES:
        if (folder / name).is_file():
            return read_tensors(folder / name, "pose")
    raise FileNotFoundError(f"pose weights {folder}: no {' or '.join(TENSOR_FILES)} in the folder")


def load_vitpose(weights: str):
    """``(model, processor)`` of a ViTPose checkpoint (folder or Hub name), built without running anything of it."""
    from transformers import VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessor

    folder = vitpose_folder(weights)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"pose weights {folder}: no config.json in the folder")
    config = json.loads(config_file.read_text())
    if config.get("model_type") != "vitpose" or "auto_map" in config:
        code = ", auto_map names code" if "auto_map" in config else ""
        raise UnsafeWeightsError(f"pose weights {folder}: config.json is not a plain ViTPose config (model_type "
                                 f"{config.get('model_type')!r}{code})")  # fmt: skip
    model = VitPoseForPoseEstimation(VitPoseConfig.from_dict(config))
    missing, unexpected = model.load_state_dict(folder_tensors(folder), strict=False)
    if missing or unexpected:
        raise UnsafeWeightsError(f"pose weights {folder} do not fit the ViTPose network their config describes "
                                 f"(missing {missing[:3]}, unexpected {unexpected[:3]})")  # fmt: skip
    return model.eval(), VitPoseImageProcessor.from_pretrained(str(folder))
