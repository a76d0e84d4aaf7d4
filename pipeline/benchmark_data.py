"""Benchmark datasets from known 3D motions: whole clips split into train/test first, then windows projected to 2D.

One builder serves procedural motions (:mod:`pipeline.synthetic`) and a user's own 3D motions (read with
:func:`load_motions_npz`).
The order of the steps is what keeps the held-out 3D held out:

1. validate the clips (``[L, J, 3]`` with the skeleton's J, finite);
2. split WHOLE clips into train and test (seeded; at least one clip in each);
3. resample every clip to the dataset's fps (linear interpolation in time);
4. cut windows of ``length`` frames (non-overlapping unless a smaller ``stride`` is given);
5. project every window from one random camera (azimuth uniform in [-pi, pi), elevation uniform in
   ``elevation_range``, perspective at ``distance``, after centring the window on its mean root position) and
   normalise it like video data (:func:`pipeline.cameras.normalize_2d`, confidence 1).

Train windows become the ``train`` split (the only one training reads), test windows the ``test`` split (the 2D
reference of the paper's metrics). The 3D windows are saved with :func:`storage.motion_dataset.truth_3d_bytes`, in the
input's world units (resampled, not centred, not projected). Every window of a source clip shares its ``video_id``
(the source clip's id), so no clip contributes to both splits.

World convention of the 3D input: y up, any length unit (each window is scaled to body units before projection, so the
camera ``distance`` is in body units: about body heights).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.cameras import BODY_SIZE_TO_UNIT, body_size, normalize_2d, project, rotation_matrix
from pipeline.skeletons import Skeleton
from storage import Catalog, Workspace
from storage.motion_dataset import TRUTH_3D, Truth3D, truth_3d_bytes, write_motion_dataset

DEFAULT_FPS = 30.0
CONF_THRESHOLD = 0.5


# ----------------------------------------------------------------------------------------------------------- loading
def _natural_key(text: str) -> list[object]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def _fps_values(path: str, value: np.ndarray, count: int) -> list[float]:
    """``fps`` of an npz file: a scalar for every clip or one value per clip, all finite and positive."""
    fps = np.asarray(value)
    if fps.dtype.kind not in "iuf":
        raise ValueError(f"{path}: key 'fps' must be numeric (a scalar or one value per clip), got dtype {fps.dtype}")
    if fps.ndim == 0 or fps.size == 1:
        values = [float(fps.reshape(-1)[0])] * count
    elif fps.shape == (count,):
        values = [float(v) for v in fps]
    else:
        raise ValueError(f"{path}: key 'fps' must be a scalar or have shape [{count}] (one per clip), got {fps.shape}")
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise ValueError(f"{path}: key 'fps' must be finite and positive, got {bad[0]}")
    return values


def load_motions_npz(path: str | os.PathLike) -> tuple[list[np.ndarray], list[float]]:
    """Read 3D motions from an ``.npz`` file: ``(clips [L_i, J, 3] float32, fps per clip)``.

    Two layouts are accepted:

    (a) ``motions`` ``[N, L, J, 3]`` with an optional ``fps`` (a scalar or ``[N]``);
    (b) any number of arrays, each one clip ``[L_i, J, 3]`` (taken in natural key order: ``clip2`` before ``clip10``),
        with an optional ``fps`` (a scalar or one value per clip, in that order).

    Without an ``fps`` key every clip is taken to be at 30 fps. Errors name the file, the key and the expected shape;
    a clip holding NaN or inf is named.
    """
    path = os.fspath(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except ValueError as exc:
        raise ValueError(f"{path}: cannot read as .npz of numeric arrays ({exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{path}: expected an .npz archive (np.savez) with 'motions' [N, L, J, 3] or one [L, J, 3] array per "
            f"clip, got a single array of shape {np.shape(archive)}"
        )
    with archive:
        keys = list(archive.files)
        if "motions" in keys:
            extra = [k for k in keys if k not in ("motions", "fps")]
            if extra:
                raise ValueError(
                    f"{path}: has 'motions' and also {extra}; use either 'motions' [N, L, J, 3] (+ 'fps') or one "
                    f"[L, J, 3] array per clip (+ 'fps'), not both"
                )
            motions = archive["motions"]
            if motions.ndim != 4 or motions.shape[-1] != 3 or motions.shape[0] == 0 or motions.shape[1] == 0:
                raise ValueError(f"{path}: key 'motions' must have shape [N, L, J, 3] (N, L >= 1), got {motions.shape}")
            if motions.dtype.kind not in "iuf":
                raise ValueError(f"{path}: key 'motions' must be numeric, got dtype {motions.dtype}")
            names = [f"motions[{i}]" for i in range(len(motions))]
            clips = [np.asarray(m, np.float32) for m in motions]
        else:
            names = sorted((k for k in keys if k != "fps"), key=_natural_key)
            if not names:
                raise ValueError(
                    f"{path}: holds no motions; expected 'motions' [N, L, J, 3] or one [L, J, 3] array per clip"
                )
            clips = []
            for key in names:
                clip = archive[key]
                if clip.ndim != 3 or clip.shape[-1] != 3 or clip.shape[0] == 0:
                    raise ValueError(
                        f"{path}: key {key!r} must be one clip of shape [L, J, 3] (L >= 1), got {clip.shape}"
                    )
                if clip.dtype.kind not in "iuf":
                    raise ValueError(f"{path}: key {key!r} must be numeric, got dtype {clip.dtype}")
                clips.append(np.asarray(clip, np.float32))
            joints = {c.shape[1] for c in clips}
            if len(joints) != 1:
                first = {c.shape[1]: k for k, c in zip(names, clips, strict=True)}
                raise ValueError(
                    f"{path}: all clips must have the same number of joints J in [L, J, 3]; found "
                    + ", ".join(f"J={j} (e.g. key {k!r})" for j, k in sorted(first.items()))
                )
        for key, clip in zip(names, clips, strict=True):
            if not np.isfinite(clip).all():
                frame = int(np.flatnonzero(~np.isfinite(clip).reshape(len(clip), -1).all(1))[0])
                raise ValueError(f"{path}: clip {key!r} holds NaN or inf values (first at frame {frame})")
        fps = _fps_values(path, archive["fps"], len(clips)) if "fps" in keys else [DEFAULT_FPS] * len(clips)
    return clips, fps


# ----------------------------------------------------------------------------------------------------------- building
@dataclass
class BenchmarkData:
    """What :func:`build_benchmark_dataset` wrote. Iterating over it yields the written paths."""

    name: str
    fps: float
    length: int
    train_clips: list[str]  # source clip ids with windows in the train split
    test_clips: list[str]  # source clip ids with windows in the test split (held out: never seen by training)
    short_clips: list[str]  # source clips shorter than ``length`` after resampling (no window; not in any split)
    num_train_windows: int
    num_test_windows: int
    dataset_paths: list[str]
    truth_path: str
    skeleton: str = ""

    @property
    def num_clips(self) -> int:
        return len(self.train_clips) + len(self.test_clips)

    @property
    def num_windows(self) -> int:
        return self.num_train_windows + self.num_test_windows

    @property
    def paths(self) -> list[str]:
        return [*self.dataset_paths, self.truth_path]

    def __iter__(self):  # callers that used the old list of paths keep working
        return iter(self.paths)


def resample_clip(clip: np.ndarray, clip_fps: float, fps: float) -> np.ndarray:
    """Resample ``clip [L, ...]`` from ``clip_fps`` to ``fps`` by linear interpolation in time.

    Output frame ``k`` is at time ``k / fps`` and the output covers the clip's duration ``(L - 1) / clip_fps``:
    ``floor((L - 1) * fps / clip_fps) + 1`` frames (60 frames at 60 fps give 30 at 30 fps). Same fps: unchanged.
    """
    clip = np.asarray(clip)
    if not (math.isfinite(clip_fps) and clip_fps > 0 and math.isfinite(fps) and fps > 0):
        raise ValueError(f"frame rates must be finite and positive, got clip fps {clip_fps} and target fps {fps}")
    if clip_fps == fps or len(clip) < 2:
        return clip.copy()
    count = int(math.floor((len(clip) - 1) * fps / clip_fps + 1e-9)) + 1
    source = np.minimum(np.arange(count) * (clip_fps / fps), len(clip) - 1)
    lo = np.minimum(np.floor(source).astype(int), len(clip) - 1)
    hi = np.minimum(lo + 1, len(clip) - 1)
    frac = (source - lo).reshape(-1, *([1] * (clip.ndim - 1)))
    out = clip[lo].astype(np.float64) * (1.0 - frac) + clip[hi].astype(np.float64) * frac
    return out.astype(clip.dtype if clip.dtype.kind == "f" else np.float64)


def split_clips(num_clips: int, test_fraction: float, seed: int) -> np.ndarray:
    """Seeded whole-clip split: a bool array, True for test clips; at least one clip in each split."""
    if num_clips < 2:
        raise ValueError(
            f"a benchmark needs at least 2 source clips (one for train, one for test), got {num_clips}; "
            f"add clips or split a long motion into several"
        )
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    num_test = min(max(int(round(test_fraction * num_clips)), 1), num_clips - 1)
    rng = np.random.default_rng(seed)
    test = np.zeros(num_clips, bool)
    test[rng.permutation(num_clips)[:num_test]] = True
    return test


def _window_starts(num_frames: int, length: int, stride: int) -> list[int]:
    return list(range(0, num_frames - length + 1, stride)) if num_frames >= length else []


def project_window(
    window: np.ndarray, skeleton: Skeleton, azimuth: float, elevation: float, distance: float
) -> np.ndarray:
    """One 3D window ``[L, J, 3]`` as normalised 2D data ``[L, J, 3]`` (x, y, confidence 1) from one camera.

    The window is first brought to body units (the 2D data's rule applied in 3D: median RMS spread of the body joints
    over :data:`~pipeline.cameras.BODY_SIZE_TO_UNIT`), so ``distance`` means the same whatever the input's units
    (metres, millimetres, ...)."""
    centred = window.astype(np.float64) - window[:, list(skeleton.root)].astype(np.float64).mean(axis=(0, 1))
    body = np.asarray(skeleton.body_joints)
    centred = centred / (body_size(centred[:, body], np.ones(centred[:, body].shape[:2], bool)) / BODY_SIZE_TO_UNIT)
    xy = project(centred, rotation_matrix([azimuth], elevation), distance=distance)[0]
    norm, _, _ = normalize_2d(xy, None, skeleton.root, skeleton.body_joints, y_down=False)
    return np.concatenate([norm, np.ones(norm.shape[:-1] + (1,), np.float32)], -1)


def build_benchmark_dataset(
    ws: Workspace,
    name: str,
    clips: Sequence[np.ndarray],
    clip_fps: Sequence[float] | float,
    skeleton: Skeleton,
    *,
    fps: float = DEFAULT_FPS,
    length: int = 60,
    stride: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    distance: float = 7.0,
    elevation_range: tuple[float, float] = (0.0, 0.4),
    source: str = "user 3D motions",
    clip_names: Sequence[str] | None = None,
    clip_columns: dict[str, Sequence[object]] | None = None,
) -> BenchmarkData:
    """Build 2D dataset ``name`` from 3D ``clips [L_i, J, 3]`` with its held-out 3D truth (see the module docstring).

    ``clip_fps`` is one frame rate for all clips or one per clip; ``clip_names`` are the source clip ids (default
    ``clip-00000``, ...); ``clip_columns`` adds index columns with one value per source clip (copied to its windows).
    Windows are ``<clip id>-w<k>``; index columns beyond the dataset format: ``azimuth``, ``elevation`` (radians),
    ``source_clip``; ``video_id`` is the source clip id and ``start_frame`` the window's first frame at ``fps``.
    """
    # 1. validate
    num = len(clips)
    names = [f"clip-{i:05d}" for i in range(num)] if clip_names is None else [str(n) for n in clip_names]
    if len(names) != num:
        raise ValueError(f"{len(names)} clip names for {num} clips")
    if len(set(names)) != num:
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"clip names must be unique; repeated: {dup[:5]}")
    rates = [float(clip_fps)] * num if np.ndim(clip_fps) == 0 else [float(f) for f in clip_fps]  # type: ignore[union-attr]
    if len(rates) != num:
        raise ValueError(f"{len(rates)} frame rates for {num} clips; give one fps or one per clip")
    for clip_name, rate in zip(names, rates, strict=True):
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"clip {clip_name!r}: fps must be finite and positive, got {rate}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be finite and positive, got {fps}")
    if length < 2:
        raise ValueError(f"length must be at least 2 frames, got {length}")
    stride = length if stride is None else int(stride)
    if stride < 1:
        raise ValueError(f"stride must be at least 1 frame, got {stride}")
    low, high = (float(v) for v in elevation_range)
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ValueError(f"elevation_range must be (low, high) with low <= high, got {elevation_range}")
    joints = len(skeleton.joints)
    arrays = []
    for clip_name, clip in zip(names, clips, strict=True):
        clip = np.asarray(clip)
        if clip.ndim != 3 or clip.shape[1] != joints or clip.shape[2] != 3 or clip.shape[0] == 0:
            raise ValueError(
                f"clip {clip_name!r}: expected shape [L, {joints}, 3] (skeleton {skeleton.name} has {joints} joints), "
                f"got {clip.shape}"
            )
        if clip.dtype.kind not in "iuf" or not np.isfinite(clip).all():
            raise ValueError(f"clip {clip_name!r} holds NaN or inf values (or is not numeric)")
        arrays.append(clip.astype(np.float64))
    columns = {key: list(values) for key, values in (clip_columns or {}).items()}
    for key, values in columns.items():
        if len(values) != num:
            raise ValueError(f"clip column {key!r}: {len(values)} values for {num} clips")

    # 2. split whole clips, before anything is projected
    is_test = split_clips(num, test_fraction, seed)

    # 3. resample, 4. cut windows
    windows: dict[str, list[tuple[int, int, np.ndarray]]] = {"train": [], "test": []}
    short = []
    for i, (clip, rate) in enumerate(zip(arrays, rates, strict=True)):
        resampled = resample_clip(clip, rate, fps)
        starts = _window_starts(len(resampled), length, stride)
        if not starts:
            short.append(names[i])
        for start in starts:
            windows["test" if is_test[i] else "train"].append((i, start, resampled[start : start + length]))
    for part in ("train", "test"):
        if not windows[part]:
            clips_in = [n for n, t in zip(names, is_test, strict=True) if t == (part == "test")]
            raise ValueError(
                f"the {part} split has no window of {length} frames at {fps:g} fps: its {len(clips_in)} source clip(s) "
                f"({', '.join(clips_in[:5])}{', ...' if len(clips_in) > 5 else ''}) are all shorter than that after "
                f"resampling; use a smaller length, longer clips, or another seed/test_fraction"
            )

    # 5. project every window from one random camera
    rng = np.random.default_rng([seed, 1])
    rows, data, truth = [], [], {"train": [], "test": []}
    for part in ("train", "test"):
        for i, start, window in windows[part]:
            azimuth, elevation = float(rng.uniform(-math.pi, math.pi)), float(rng.uniform(low, high))
            try:
                data.append(project_window(window, skeleton, azimuth, elevation, distance))
            except ValueError as exc:
                raise ValueError(
                    f"clip {names[i]!r}, window at frame {start}: cannot project ({exc}); the input is expected in "
                    f"world units of about one per body height, y up (scale it, or raise distance={distance})"
                ) from None
            truth[part].append(window)
            rows.append(
                {
                    "clip_id": f"{names[i]}-w{start // stride:03d}",
                    "video_id": names[i],
                    "track_id": 0,
                    "start_frame": start,
                    "mean_conf": 1.0,
                    "split": part,
                    "mirrored": False,
                    "azimuth": azimuth,
                    "elevation": elevation,
                    "source_clip": names[i],
                    **{key: values[i] for key, values in columns.items()},
                }
            )
    index = pd.DataFrame(rows)
    meta = {
        "skeleton": skeleton.name,
        "fps": float(fps),
        "source": source,
        "test_fraction": float(test_fraction),
        "length": int(length),
        "stride": int(stride),
        "seed": int(seed),
        "distance": float(distance),
        "elevation_range": [low, high],
        "num_source_clips": num,
        "num_train_clips": int((~is_test).sum()),
        "num_test_clips": int(is_test.sum()),
        "short_clips": len(short),
        "truth_3d": "truth_3d.npz",
    }
    ids = {part: index.loc[index["split"] == part, "clip_id"].to_numpy(str) for part in ("train", "test")}
    truth_npz = truth_3d_bytes(
        Truth3D(np.stack(truth["train"]), np.stack(truth["test"]), ids["train"], ids["test"], float(fps))
    )
    dataset_paths = write_motion_dataset(ws, name, data, index, meta, conf_threshold=CONF_THRESHOLD,
                                         extras={TRUTH_3D: truth_npz})  # fmt: skip
    truth_path = next(p for p in dataset_paths if p.endswith(f"/{TRUTH_3D}"))
    dataset_paths.remove(truth_path)
    summary = {k: meta[k] for k in ("num_train_clips", "num_test_clips", "source")}
    Catalog(ws).mark_done("dataset", name, key=None, outputs=[*dataset_paths, truth_path], params={},
                          meta={**summary, "clips": len(data), "truth_3d": True})  # fmt: skip
    return BenchmarkData(
        name=name,
        fps=float(fps),
        length=int(length),
        train_clips=list(dict.fromkeys(names[i] for i, _, _ in windows["train"])),
        test_clips=list(dict.fromkeys(names[i] for i, _, _ in windows["test"])),
        short_clips=short,
        num_train_windows=len(windows["train"]),
        num_test_windows=len(windows["test"]),
        dataset_paths=dataset_paths,
        truth_path=truth_path,
        skeleton=skeleton.name,
    )
