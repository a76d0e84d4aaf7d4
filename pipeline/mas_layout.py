"""The official MAS code's dataset layout, both ways: ``motions/<name>.npy`` (``[L, J, 3]``: x, y, confidence) with
``Mean.npy`` / ``Std.npy`` (``[J, 2]``), as its ``data_loaders/base_dataset.py`` reads them.

What differs between the two conventions, and how each is converted:

- **fps**: the official NBA files are 60 fps and its loader keeps every second frame (``motion[::60 // 30]``).
  :func:`export_mas_layout` writes ``fps`` frames per second (a whole multiple of the dataset's, the frames between
  linearly interpolated, confidences the lower of the two neighbours), so that the official loader's subsampling gives
  back exactly our frames; :func:`import_mas_layout` keeps every ``file_fps / fps``-th frame as that loader does.
- **units**: ours are per-clip body-size units (:func:`pipeline.cameras.normalize_2d`); the official NBA data is about
  3.9 times larger (its mean pose is 3.30 units tall). ``scale`` multiplies our coordinates on export (``"official"``:
  the factor that makes our mean pose as tall as the official NBA mean pose); on import, files we exported are
  divided by their recorded scale, foreign files are normalised clip by clip with ``normalize_2d``.
- **root centring**: the official NBA clips have the hip at (0, 0) in every frame (no trajectory); ours are centred on
  the clip's mean root and keep the trajectory. ``root_centring="frame"`` centres every frame on export; on import a
  foreign layout is recorded as centred per frame (``root_centring`` in the dataset meta), as the process stage's
  option of the same name does.

Export writes ``mas_layout.json`` beside the motions (fps, scale, root centring, skeleton) so that importing our
own export is the exact inverse.
"""

from __future__ import annotations

import json
import os
from typing import Literal

import numpy as np
import pandas as pd

from pipeline.cameras import OFFICIAL_NBA_MEAN_POSE_HEIGHT, normalize_2d, pose_height
from pipeline.process import centre_root_per_frame
from pipeline.skeletons import dataset_skeleton, get_skeleton
from storage import Workspace
from storage.motion_dataset import DatasetFormatError, MotionDataset, normalisation_stats, write_motion_dataset

OFFICIAL_NBA_FPS = 60
LAYOUT_FILE = "mas_layout.json"


def _upsample(clip: np.ndarray, factor: int) -> np.ndarray:
    """``[L, J, 3]`` → ``[(L - 1) * factor + 1, J, 3]``: every ``factor``-th frame is an original one."""
    if factor == 1 or len(clip) < 2:
        return clip
    src = np.arange(len(clip)) * factor
    dst = np.arange((len(clip) - 1) * factor + 1)
    flat = clip.reshape(len(clip), -1)
    xy = np.stack([np.interp(dst, src, flat[:, k]) for k in range(flat.shape[1])], -1)
    xy = xy.reshape(len(dst), *clip.shape[1:])
    lower = np.minimum(clip[:-1, :, 2], clip[1:, :, 2])  # invented frames are as confident as the weaker neighbour
    conf = np.repeat(lower, factor, axis=0)
    xy[: len(conf), :, 2] = conf
    xy[src, :, 2] = clip[:, :, 2]
    return xy.astype(np.float32)


def _export_factor(dataset_fps: float, fps: float) -> int:
    factor = fps / dataset_fps
    if factor < 1 or abs(factor - round(factor)) > 1e-6:
        raise ValueError(
            f"export fps {fps} must be a whole multiple of the dataset's {dataset_fps} fps "
            f"(the official NBA loader reads {OFFICIAL_NBA_FPS} fps files and keeps every second frame)"
        )
    return int(round(factor))


def export_mas_layout(
    dataset: MotionDataset,
    out_dir: str,
    fps: float | None = None,
    scale: float | Literal["official"] = 1.0,
    root_centring: Literal["clip", "frame"] = "clip",
) -> str:
    """Write ``dataset`` in the official layout (see the module docstring); returns ``out_dir``.

    ``Mean.npy``/``Std.npy`` are the train split's statistics of the written (converted) frames."""
    dataset_fps = float(dataset.meta["fps"])
    factor = _export_factor(dataset_fps, fps or dataset_fps)
    factor_scale = OFFICIAL_NBA_MEAN_POSE_HEIGHT / pose_height(dataset.mean) if scale == "official" else scale
    if not np.isfinite(factor_scale) or factor_scale <= 0:
        raise ValueError(f"export scale must be a positive number or 'official', got {scale!r}")
    if root_centring not in ("clip", "frame"):
        raise ValueError(f"root_centring must be 'clip' or 'frame', got {root_centring!r}")
    root = dataset_skeleton(dataset, dataset.meta.get("name", dataset.folder)).root
    motions = os.path.join(out_dir, "motions")
    os.makedirs(motions, exist_ok=True)
    train_clips = []
    for row in range(len(dataset.index)):
        clip = np.array(dataset.clip(row), dtype=np.float32)
        if root_centring == "frame":
            clip[..., :2] = centre_root_per_frame(clip[..., :2], root)
        clip[..., :2] *= factor_scale
        clip = _upsample(clip, factor)
        np.save(os.path.join(motions, f"{dataset.index['clip_id'].iat[row]}.npy"), clip)
        if dataset.index["split"].iat[row] == "train":
            train_clips.append(clip)
    mean, std = normalisation_stats(train_clips or [clip], dataset.conf_threshold)
    np.save(os.path.join(out_dir, "Mean.npy"), mean)
    np.save(os.path.join(out_dir, "Std.npy"), std)
    layout = {"fps": float(fps or dataset_fps), "dataset_fps": dataset_fps, "scale": float(factor_scale),
              "root_centring": root_centring, "skeleton": dataset.skeleton, "meta": dataset.meta}  # fmt: skip
    with open(os.path.join(out_dir, LAYOUT_FILE), "w") as handle:
        json.dump(layout, handle, indent=2)
    return out_dir


def _read_motions(mas_dir: str) -> tuple[list[str], list[np.ndarray]]:
    motions = os.path.join(mas_dir, "motions")
    files = sorted(f for f in os.listdir(motions) if f.endswith(".npy")) if os.path.isdir(motions) else []
    if not files:
        raise DatasetFormatError(f"{motions} holds no .npy motions; point at the folder that holds motions/")
    clips = []
    for f in files:
        clip = np.load(os.path.join(motions, f)).astype(np.float32)
        if clip.ndim != 3 or clip.shape[-1] not in (2, 3):
            raise DatasetFormatError(f"{os.path.join(motions, f)}: expected [L, J, 2|3], got {clip.shape}")
        if clip.shape[-1] == 2:
            clip = np.concatenate([clip, np.ones(clip.shape[:-1] + (1,), np.float32)], -1)
        clips.append(clip)
    return files, clips


def import_mas_layout(
    ws: Workspace, name: str, mas_dir: str, skeleton: str, fps: float, conf_threshold: float,
    test_fraction: float = 0.1, seed: int = 0, file_fps: float | None = None,
) -> list[str]:  # fmt: skip
    """Import ``mas_dir/motions/*.npy`` as dataset ``name`` at ``fps`` (split by file with a fixed seed).

    Our own exports (``mas_layout.json``) are converted back exactly. Foreign files are read at ``file_fps``
    (default: ``fps``; the official NBA files: 60) and every ``file_fps / fps``-th frame is kept, then each clip is
    normalised with :func:`~pipeline.cameras.normalize_2d` (y up, as the official data is)."""
    files, clips = _read_motions(mas_dir)
    sk = get_skeleton(skeleton)
    if clips[0].shape[1] != sk.num_joints:
        raise DatasetFormatError(f"{mas_dir}: motions have {clips[0].shape[1]} joints, skeleton {skeleton!r} has "
                                 f"{sk.num_joints}; pass the skeleton the files were made with")  # fmt: skip
    layout_path = os.path.join(mas_dir, LAYOUT_FILE)
    layout = None
    if os.path.exists(layout_path):
        with open(layout_path) as handle:
            layout = json.load(handle)
    step = _export_factor(fps, float(layout["fps"] if layout else file_fps or fps))
    converted = []
    for clip in clips:
        clip = clip[::step].copy()
        if layout:
            clip[..., :2] /= layout["scale"]
        else:
            valid = clip[..., 2] >= conf_threshold
            clip[..., :2], _, _ = normalize_2d(clip[..., :2], np.where(valid, clip[..., 2], 0.0), sk.root,
                                               sk.body_joints, conf_threshold, y_down=False)  # fmt: skip
        converted.append(clip)
    rng = np.random.default_rng(seed)
    test = set(rng.permutation(len(files))[: int(round(test_fraction * len(files)))].tolist())
    ids = [f.removesuffix(".npy") for f in files]
    index = pd.DataFrame({"clip_id": ids, "video_id": ids, "track_id": 0, "start_frame": 0,
                          "mean_conf": [float(c[..., 2].mean()) for c in converted],
                          "split": ["test" if i in test else "train" for i in range(len(files))],
                          "mirrored": False})  # fmt: skip
    if layout:
        centring = layout["root_centring"]
    else:  # the official NBA files put the root at (0, 0) in every frame
        roots = np.concatenate([c[:, list(sk.root), :2].mean(1) for c in converted])
        centring = "frame" if np.abs(roots).max() < 1e-4 else "clip"
    meta = {"skeleton": skeleton, "fps": fps, "root_centring": centring,
            "source": f"imported from MAS layout {mas_dir}"}  # fmt: skip
    return write_motion_dataset(ws, name, converted, index, meta, conf_threshold)
