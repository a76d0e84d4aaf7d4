"""On-disk format of a 2D motion dataset (written by the process stage, read by training and evaluation).

``datasets/<name>/current.json`` names the published version; its files are in ``datasets/<name>/versions/<v>/``
(descriptive files such as the card stay in ``datasets/<name>/``). A dataset is published atomically: a new version
folder is written completely, with ``manifest.json`` (size and sha256 of every file), then ``current.json`` is switched
in one atomic write and older versions are removed. Readers open the version ``current.json`` names and check every
file against the manifest, so a kill at any point leaves either the old dataset or the new one, never a mix; a
dataset written before versions existed (files directly in ``datasets/<name>/``) is still read. A version holds::

    clips.npy      float32 [F, J, 3]: every clip's frames concatenated; channels x, y (data units), confidence
    index.parquet  one row per clip: clip_id, video_id, track_id, start_frame, offset, length, mean_conf, split,
                   mirrored
    mean.npy       float32 [J, 2]: per-joint, per-axis mean over the train split (confident joints only)
    std.npy        float32 [J, 2]: the matching standard deviation
    meta.json      skeleton, fps, conf_threshold, counts, the parameters that made it
    truth_3d.npz   only for datasets made from known 3D motions (benchmarks): ``train`` and ``test`` float32
                   [N, L, J, 3] windows with their ``train_ids`` / ``test_ids`` (clip ids of the index) and ``fps``.
                   Training never reads it; evaluation compares generated motions with ``test`` (held-out truth) and
                   scores ``train`` against ``test`` as the floor.

``clips.npy`` is memory-mapped when read, so training draws batches without per-file reads. The official MAS code's
layout (``motions/*.npy`` + ``Mean.npy``/``Std.npy``) is converted both ways by :mod:`pipeline.mas_layout`.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from storage.hashing import file_sha256
from storage.workspace import Workspace

DATA_FILES = ("clips.npy", "index.parquet", "mean.npy", "std.npy", "meta.json")
CURRENT = "current.json"
MANIFEST = "manifest.json"
INDEX_COLUMNS = ["clip_id", "video_id", "track_id", "start_frame", "offset", "length", "mean_conf", "split", "mirrored"]
MIN_STD = 1e-3


class DatasetFormatError(ValueError):
    """A dataset folder that is missing files or holds inconsistent arrays."""


def normalisation_stats(clips: list[np.ndarray], conf_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-joint, per-axis mean and std of ``[L, J, 3]`` clips over joints whose confidence passes the threshold."""
    if not clips:
        raise ValueError("cannot compute normalisation statistics of an empty set of clips")
    frames = np.concatenate(clips, 0).astype(np.float64)
    weight = (frames[..., 2] >= conf_threshold) & np.isfinite(frames[..., :2]).all(-1)
    w = weight[..., None].astype(np.float64)
    values = np.where(w > 0, frames[..., :2], 0.0)
    count = w.sum(0)
    mean = values.sum(0) / np.maximum(count, 1)
    var = (((values - mean) ** 2) * w).sum(0) / np.maximum(count, 1)
    std = np.sqrt(var)
    std = np.where(count > 1, np.maximum(std, MIN_STD), 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def model_input(
    window: np.ndarray, mean: np.ndarray, std: np.ndarray, conf_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """What the models see of clip frames ``[..., J, 3]``: ``(z [..., J, 2], confident [..., J])``.

    Every joint with finite coordinates keeps its value, confident or not: the process stage's gap filling and
    outlier repair put plausible positions there (the official code feeds the stored values too); only joints with
    no value at all take the dataset mean (z = 0). ``confident`` (conf >= threshold) is the loss mask: the
    low-confidence values are fed, never trained on."""
    xy = window[..., :2]
    finite = np.isfinite(xy).all(-1)
    z = np.where(finite[..., None], (np.where(finite[..., None], xy, 0.0) - mean) / std, 0.0)
    return z.astype(np.float32), (window[..., 2] >= conf_threshold) & finite


def dataset_folder(ws: Workspace, name: str) -> str:
    """The folder holding dataset ``name``'s published files (see the module docstring)."""
    top = ws.dataset_dir(name)
    pointer = f"{top}/{CURRENT}"
    if not ws.exists(pointer):
        return top  # not published yet, or written before versions existed
    try:
        version = str(ws.read_json(pointer)["version"])
    except Exception as exc:  # noqa: BLE001 - any unreadable pointer means the same to the user
        raise DatasetFormatError(f"{pointer} is unreadable ({type(exc).__name__}: {exc}); "
                                 f"rebuild the dataset (`mas process --force`)") from None  # fmt: skip
    if "/" in version or version.startswith("."):
        raise DatasetFormatError(f"{pointer} names an invalid version {version!r}; rebuild the dataset")
    return f"{top}/versions/{version}"


def _publish(ws: Workspace, name: str, folder: str, version: str) -> None:
    """Write the manifest of ``folder``, switch ``current.json`` to it, then remove older versions."""
    top = ws.dataset_dir(name)
    files = sorted(
        p.rsplit("/", 1)[1] for p in ws.fs.ls(folder, detail=False) if not p.rsplit("/", 1)[1].startswith(".")
    )
    manifest = {f: {"bytes": int(ws.fs.size(f"{folder}/{f}")), "sha256": file_sha256(f"{folder}/{f}", ws.fs)}
                for f in files}  # fmt: skip
    ws.write_json(f"{folder}/{MANIFEST}", {"version": version, "files": manifest})
    published = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    ws.write_json(f"{top}/{CURRENT}", {"version": version, "published": published})  # the switch
    for old in ws.fs.ls(f"{top}/versions", detail=False):
        if old.rstrip("/").rsplit("/", 1)[1] != version:
            ws.fs.rm(old, recursive=True)
    for legacy in (*DATA_FILES, "truth_3d.npz"):  # files of the flat layout, superseded by the version
        ws.remove(f"{top}/{legacy}")


def verify_dataset_files(ws: Workspace, name: str, folder: str) -> dict[str, str]:
    """Check every file of a published version against its manifest; returns ``{file: sha256}``."""
    path = f"{folder}/{MANIFEST}"
    if not ws.exists(path):
        raise DatasetFormatError(f"dataset {name!r}: {path} is missing, so its files cannot be trusted; "
                                 "rebuild the dataset (`mas process --force`)")  # fmt: skip
    files = ws.read_json(path)["files"]
    hashes = {}
    rebuild = "rebuild the dataset (`mas process --force`)"
    for file, expected in files.items():
        where = f"{folder}/{file}"
        if not ws.exists(where) or int(ws.fs.size(where)) != expected["bytes"]:
            raise DatasetFormatError(f"dataset {name!r}: {where} is missing or has the wrong size (manifest: "
                                     f"{expected['bytes']} bytes); {rebuild}")  # fmt: skip
        digest = file_sha256(where, ws.fs)
        if digest != expected["sha256"]:
            raise DatasetFormatError(f"dataset {name!r}: {where} does not match its manifest (sha256 "
                                     f"{digest[:12]} vs {expected['sha256'][:12]}); {rebuild}")  # fmt: skip
        hashes[file] = digest
    return hashes


def write_motion_dataset(
    ws: Workspace,
    name: str,
    clips: list[np.ndarray],
    index: pd.DataFrame,
    meta: dict[str, Any],
    conf_threshold: float,
    extras: Mapping[str, bytes] | None = None,
) -> list[str]:
    """Publish clips ``[L, J, 3]`` with their index rows (``offset`` is filled in), train-split statistics and
    ``extras`` (file name → content, e.g. ``truth_3d.npz``) as a new version of dataset ``name``, atomically.

    Returns the written paths. ``index`` needs the columns of :data:`INDEX_COLUMNS` except ``offset`` and ``length``.
    """
    if len(clips) != len(index):
        raise ValueError(f"{len(clips)} clips but {len(index)} index rows")
    if not clips:
        raise ValueError(f"dataset {name!r} would be empty: no clip survived processing")
    joints = {c.shape[1:] for c in clips}
    if len(joints) != 1 or next(iter(joints))[1] != 3:
        raise ValueError(f"clips must all be [L, J, 3] with one J; got trailing shapes {sorted(joints)}")
    for i, clip in enumerate(clips):
        if not np.isfinite(clip).all():
            row = index.iloc[i]
            frame = int(np.argmax(~np.isfinite(clip).all(axis=(1, 2))))
            raise ValueError(
                f"dataset {name!r} not written: clip {i} ({row.get('clip_id', i)!r} of video "
                f"{row.get('video_id', '?')!r}) holds NaN or inf values (first at frame {frame}). Clips must be "
                "finite: fill missing joints (with confidence 0, so the loss masks them) or drop the frames"
            )
    index = index.reset_index(drop=True).copy()
    lengths = np.array([len(c) for c in clips])
    index["length"] = lengths
    index["offset"] = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    missing = [c for c in INDEX_COLUMNS if c not in index.columns]
    if missing:
        raise ValueError(f"index lacks columns {missing}")
    train = [c for c, s in zip(clips, index["split"], strict=True) if s == "train"] or clips
    mean, std = normalisation_stats(train, conf_threshold)
    version = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    folder = f"{ws.dataset_dir(name)}/versions/{version}"
    paths = {k: f"{folder}/{k}" for k in DATA_FILES}
    with ws.atomic_path(paths["clips.npy"]) as tmp:
        np.save(tmp, np.concatenate(clips, 0).astype(np.float32))
    with ws.atomic_path(paths["index.parquet"]) as tmp:
        index[INDEX_COLUMNS + [c for c in index.columns if c not in INDEX_COLUMNS]].to_parquet(tmp, index=False)
    for key, array in (("mean.npy", mean), ("std.npy", std)):
        with ws.atomic_path(paths[key]) as tmp:
            np.save(tmp, array)
    full_meta = {
        **meta,
        "num_joints": int(clips[0].shape[1]),
        "num_clips": len(clips),
        "num_frames": int(lengths.sum()),
        "conf_threshold": conf_threshold,
        "format": 1,
    }
    ws.write_json(paths["meta.json"], full_meta)
    for file, content in (extras or {}).items():
        paths[file] = ws.write_bytes(f"{folder}/{file}", content)
    _publish(ws, name, folder, version)
    return list(paths.values())


@dataclass
class MotionDataset:
    """A dataset opened for reading; ``clips`` is memory-mapped."""

    folder: str
    clips: np.ndarray
    index: pd.DataFrame
    mean: np.ndarray
    std: np.ndarray
    meta: dict[str, Any]

    @property
    def num_joints(self) -> int:
        return int(self.clips.shape[1])

    @property
    def skeleton(self) -> str:
        return self.meta["skeleton"]

    @property
    def conf_threshold(self) -> float:
        return float(self.meta["conf_threshold"])

    def split(self, name: str) -> pd.DataFrame:
        rows = self.index[self.index["split"] == name]
        if rows.empty:
            raise ValueError(f"dataset {self.folder} has no clips in split {name!r}")
        return rows

    def clip(self, row: int) -> np.ndarray:
        offset, length = int(self.index["offset"].iat[row]), int(self.index["length"].iat[row])
        return np.asarray(self.clips[offset : offset + length])

    @cached_property
    def max_length(self) -> int:
        return int(self.index["length"].max())


def _complete_folder(ws: Workspace, name: str) -> str:
    """The folder of dataset ``name`` (:func:`dataset_folder`), or a clear error when a data file is missing."""
    folder = dataset_folder(ws, name)
    missing = [f for f in DATA_FILES if not ws.exists(f"{folder}/{f}")]
    if missing:
        raise DatasetFormatError(
            f"dataset {name!r} in {ws.url} is incomplete (missing {', '.join(missing)}); run `mas process` to build it"
        )
    return folder


def dataset_file_hashes(ws: Workspace, name: str) -> dict[str, str]:
    """sha256 of each data file of dataset ``name``: the manifest's for a published version (files are checked
    against it when the dataset is opened), computed for a dataset in the flat layout."""
    folder = _complete_folder(ws, name)
    if ws.exists(f"{folder}/{MANIFEST}"):
        return {f: entry["sha256"] for f, entry in ws.read_json(f"{folder}/{MANIFEST}")["files"].items()}
    return {f: file_sha256(f"{folder}/{f}", ws.fs) for f in DATA_FILES}


def open_motion_dataset(ws: Workspace, name: str, verify: bool = True) -> MotionDataset:
    """Open the published version of dataset ``name``, its files checked against the manifest (``verify``)."""
    folder = _complete_folder(ws, name)
    if verify and folder != ws.dataset_dir(name):
        verify_dataset_files(ws, name, folder)
    with ws.local_copy(f"{folder}/clips.npy") as local:
        clips = np.load(local, mmap_mode="r") if ws.is_local else np.load(local)
    with ws.local_copy(f"{folder}/index.parquet") as local:
        index = pd.read_parquet(local)
    with ws.local_copy(f"{folder}/mean.npy") as local:
        mean = np.load(local)
    with ws.local_copy(f"{folder}/std.npy") as local:
        std = np.load(local)
    meta = ws.read_json(f"{folder}/meta.json")
    if clips.ndim != 3 or clips.shape[2] != 3 or mean.shape != (clips.shape[1], 2) or std.shape != mean.shape:
        raise DatasetFormatError(f"dataset {name!r}: inconsistent shapes clips {clips.shape}, mean {mean.shape}")
    if int(index["length"].sum()) != clips.shape[0]:
        raise DatasetFormatError(f"dataset {name!r}: index lengths do not add up to the {clips.shape[0]} frames")
    if verify:
        check_values(name, folder, clips, index, mean, std)
    return MotionDataset(folder, clips, index, mean, std, meta)


SCAN_FRAMES = 1 << 16  # frames per chunk when scanning a memory-mapped clips.npy


def check_values(name: str, folder: str, clips: np.ndarray, index: pd.DataFrame, mean: np.ndarray,
                 std: np.ndarray) -> None:  # fmt: skip
    """Refuse a dataset whose arrays hold NaN or inf (or a std that is not positive). The process stage writes
    finite clips (missing joints are filled and masked by confidence), so such values mean a damaged file or one
    made by other code; training on them would learn nothing (all-NaN trains to loss 0) or diverge far from the
    cause. The scan is chunked, so a memory-mapped ``clips.npy`` is never loaded whole."""
    rebuild = "rebuild the dataset (`mas process --force`), or fix the code that wrote it"
    for file, array in (("mean.npy", mean), ("std.npy", std)):
        if not np.isfinite(array).all():
            raise DatasetFormatError(f"dataset {name!r}: {folder}/{file} holds NaN or inf values; {rebuild}")
    if not (std > 0).all():
        raise DatasetFormatError(f"dataset {name!r}: {folder}/std.npy has values <= 0; {rebuild}")
    bad_count, first_bad = 0, None
    for start in range(0, clips.shape[0], SCAN_FRAMES):
        chunk = np.asarray(clips[start : start + SCAN_FRAMES])
        bad = ~np.isfinite(chunk).all(axis=(1, 2))
        if bad.any():
            bad_count += int(bad.sum())
            first_bad = start + int(np.argmax(bad)) if first_bad is None else first_bad
    if first_bad is None:
        return
    ends = (index["offset"] + index["length"]).to_numpy()
    row = index.iloc[min(int(np.searchsorted(ends, first_bad, side="right")), len(index) - 1)]
    what = "every frame has" if bad_count == clips.shape[0] else f"{bad_count} of {clips.shape[0]} frames have"
    raise DatasetFormatError(
        f"dataset {name!r}: {folder}/clips.npy: {what} NaN or inf values (first: frame {first_bad}, clip "
        f"{row['clip_id']!r} of video {row['video_id']!r}). Datasets are written with finite values only, so this "
        f"file is damaged or was made by other code; {rebuild}"
    )


TRUTH_3D = "truth_3d.npz"


@dataclass
class Truth3D:
    """Known 3D motions behind a benchmark dataset, split into whole train and test motions before projection."""

    train: np.ndarray  # [N_train, L, J, 3]
    test: np.ndarray  # [N_test, L, J, 3]
    train_ids: np.ndarray
    test_ids: np.ndarray
    fps: float


def truth_3d_bytes(truth: Truth3D) -> bytes:
    """``truth_3d.npz`` content, checked: pass it to :func:`write_motion_dataset` as ``extras={TRUTH_3D: ...}`` so
    the truth is published with the dataset it belongs to."""
    for part in ("train", "test"):
        array, ids = getattr(truth, part), getattr(truth, f"{part}_ids")
        if array.ndim != 4 or array.shape[-1] != 3 or len(array) != len(ids) or not np.isfinite(array).all():
            raise ValueError(f"truth 3D {part}: need finite [N, L, J, 3] with one id per motion, got {array.shape}")
    overlap = set(map(str, truth.train_ids)) & set(map(str, truth.test_ids))
    if overlap:
        raise ValueError(f"truth 3D: {len(overlap)} motions are in both train and test (e.g. {sorted(overlap)[0]})")
    buffer = io.BytesIO()
    np.savez(buffer, train=truth.train.astype(np.float32), test=truth.test.astype(np.float32),
             train_ids=np.asarray(truth.train_ids, str), test_ids=np.asarray(truth.test_ids, str),
             fps=np.float64(truth.fps))  # fmt: skip
    return buffer.getvalue()


def read_truth_3d(ws: Workspace, dataset: MotionDataset) -> Truth3D | None:
    """The 3D truth of ``dataset``, or None for datasets made from video (no 3D known)."""
    path = f"{dataset.folder}/{TRUTH_3D}"
    if not ws.exists(path):
        return None
    with ws.local_copy(path) as local, np.load(local) as data:
        return Truth3D(data["train"], data["test"], data["train_ids"], data["test_ids"], float(data["fps"]))
