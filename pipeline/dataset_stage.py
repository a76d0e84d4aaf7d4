"""Stage 4 runner: read every video's poses, process them, write the dataset, its card and its catalog record."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.config import DatasetConfig  # noqa: E402
from pipeline.process import ProcessedClips, finalize, process_tracks, tracks_from_poses  # noqa: E402
from pipeline.skeletons import Skeleton, SkeletonError, resolve_skeleton, skeleton_meta  # noqa: E402
from pipeline.visualize import plot_pose_2d  # noqa: E402
from storage import Catalog, Workspace, params_hash, stage_key  # noqa: E402
from storage.locks import ArtifactLock  # noqa: E402
from storage.motion_dataset import write_motion_dataset  # noqa: E402
from storage.tables import read_poses  # noqa: E402

log = logging.getLogger(__name__)


@dataclass
class DatasetResult:
    name: str
    num_clips: int
    dropped: dict[str, int]
    paths: list[str]
    skipped: bool = False


def build_dataset(
    ws: Workspace, config: DatasetConfig, video_ids: list[str] | None = None, force: bool = False
) -> DatasetResult:
    """Build (or find up to date) dataset ``config.name``; one run at a time per dataset (a second one fails at once,
    naming the first, instead of mixing two configs' files and records). The temporary files a killed run left in the
    dataset's folder are removed first."""
    with ArtifactLock(ws, "dataset", config.name) as lock:
        lock.remove_leftovers(ws.dataset_dir(config.name))  # what a killed run of this dataset left (.tmp-*)
        return _build_dataset(ws, config, video_ids, force)


def _build_dataset(ws: Workspace, config: DatasetConfig, video_ids: list[str] | None, force: bool) -> DatasetResult:
    catalog = Catalog(ws)
    skeleton = config.body_model
    stored = skeleton_meta(skeleton)
    records = {r.id: r for r in catalog.records("poses") if r.status == "done"}
    ids = sorted(records) if video_ids is None else video_ids
    missing = [v for v in ids if v not in records]
    if missing:
        raise ValueError(f"no finished poses for video(s) {missing}; run `mas pose` for them first")
    if not ids:
        raise ValueError("no videos with finished poses in the workspace; run download, track and pose first")
    damaged = {v: problem for v in ids if (problem := catalog.output_problem(records[v])) is not None}
    if damaged:  # checked before any work: a truncated poses file is not read as if it were whole
        raise ValueError(f"the poses of {len(damaged)} video(s) are damaged: " + "; ".join(damaged.values())
                         + "; rerun `mas pose` (it recomputes damaged files), then this stage")  # fmt: skip
    key = stage_key("process", [records[v].key or v for v in ids],
                    {"process": config.process, "fps": config.fps, **stored})  # fmt: skip
    if not force and catalog.is_done("dataset", config.name, key):
        record = catalog.get("dataset", config.name)
        return DatasetResult(config.name, record.meta.get("num_clips", 0), record.meta.get("dropped", {}),
                             [ws.absolute(p) for p in record.outputs], skipped=True)  # fmt: skip
    catalog.mark_running("dataset", config.name, key=key)
    try:
        merged = ProcessedClips([], pd.DataFrame(), Counter(), {"outliers_rejected": 0, "tracks_in": 0})
        failed: dict[str, str] = {}
        for video_id in ids:
            frame, meta = read_poses(ws, video_id)
            if not _same_skeleton(meta, skeleton, video_id):
                merged.dropped["skeleton_mismatch_videos"] += 1
                continue
            try:
                part = process_tracks(tracks_from_poses(frame, skeleton), skeleton, config.process,
                                      src_fps=float(meta["fps"]), dst_fps=config.fps)  # fmt: skip
            except Exception as exc:  # one bad video never kills the dataset: name it, skip it, go on
                merged.dropped["failed_videos"] += 1
                failed[video_id] = f"{type(exc).__name__}: {exc}"
                log.warning("process: video %s skipped: %s", video_id, failed[video_id])
                continue
            merged.clips.extend(part.clips)
            merged.index = pd.concat([merged.index, part.index], ignore_index=True)
            merged.dropped.update(part.dropped)
            for k in ("outliers_rejected", "tracks_in"):
                merged.stats[k] += part.stats[k]
        if not merged.clips:
            raise ValueError(
                f"no clip survived processing ({dict(merged.dropped)}); loosen the process thresholds in the config"
                + (f"; failed videos: {failed}" if failed else "")
            )
        clips, index = finalize(merged, skeleton, config.process)
        meta = {**stored, "fps": config.fps, "videos": ids, "params_hash": params_hash(config.process),
                "dropped": dict(merged.dropped), "failed_videos": failed, **merged.stats}  # fmt: skip
        paths = write_motion_dataset(ws, config.name, clips, index, meta, config.process.conf_threshold)
        paths += write_card(ws, config.name, clips, index, skeleton, config.process.conf_threshold, meta)
    except BaseException as exc:
        catalog.mark_failed("dataset", config.name, exc, key=key)
        raise
    counts = index["split"].value_counts()
    summary = {"num_clips": len(clips), "dropped": dict(merged.dropped), "failed_videos": failed,
               "train": int(counts.get("train", 0)), "test": int(counts.get("test", 0))}  # fmt: skip
    catalog.mark_done("dataset", config.name, key=key, outputs=paths, params=config.process.model_dump(), meta=summary)
    return DatasetResult(config.name, len(clips), dict(merged.dropped), paths)


def _same_skeleton(pose_meta: dict, skeleton: Skeleton, video_id: str) -> bool:
    """Whether a video's poses are in the dataset's skeleton (same name and, for a stored definition, same body)."""
    if pose_meta.get("skeleton") != skeleton.name:
        return False
    try:
        posed = resolve_skeleton(skeleton.name, pose_meta.get("skeleton_definition"), f"poses of {video_id}")
    except SkeletonError as exc:
        log.warning("process: %s", exc)
        return False
    return posed.same_body(skeleton)


def card_summary(clips: list[np.ndarray], index: pd.DataFrame, skeleton: Skeleton, threshold: float) -> dict:
    lengths = index["length"] if "length" in index else pd.Series([len(c) for c in clips])
    frames = np.concatenate(clips, 0)
    missing = (frames[..., 2] < threshold).mean(0)
    return {
        "clips": len(clips),
        "videos": int(index["video_id"].nunique()),
        "by_split": index["split"].value_counts().to_dict(),
        "mirrored": int(index["mirrored"].sum()),
        "frames": int(len(frames)),
        "length": {"min": int(lengths.min()), "median": float(lengths.median()), "max": int(lengths.max())},
        "missing_rate_per_joint": {j: round(float(m), 4) for j, m in zip(skeleton.joints, missing, strict=True)},
    }


def write_card(ws, name, clips, index, skeleton, threshold, meta) -> list[str]:
    """``card.json``, ``card.md``, ``confidence.png`` (histogram + per-joint missing rate), ``preview.png``."""
    folder = ws.dataset_dir(name)
    summary = {
        **card_summary(clips, index, skeleton, threshold),
        "dropped": meta.get("dropped", {}),
        "outliers_rejected": meta.get("outliers_rejected", 0),
        "failed_videos": meta.get("failed_videos", {}),
        "skeleton": skeleton.name,
        "fps": meta["fps"],
    }
    paths = [ws.write_json(f"{folder}/card.json", summary)]
    frames = np.concatenate(clips, 0)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.2))
    ax1.hist(frames[..., 2].ravel(), bins=40, color="#4c72b0")
    ax1.axvline(threshold, color="red", ls="--", label=f"mask threshold {threshold}")
    ax1.set(title="keypoint confidence", xlabel="confidence", ylabel="count")
    ax1.legend(fontsize=7)
    rates = list(summary["missing_rate_per_joint"].values())
    ax2.bar(range(len(rates)), rates, color="#dd8452")
    ax2.set_xticks(range(len(rates)), skeleton.joints, rotation=90, fontsize=6)
    ax2.set(title="masked (low-confidence) rate per joint", ylim=(0, 1))
    fig.tight_layout()
    with ws.atomic_path(f"{folder}/confidence.png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    paths.append(f"{folder}/confidence.png")
    picks = np.linspace(0, len(clips) - 1, min(4, len(clips))).astype(int)
    fig, axes = plt.subplots(len(picks), 5, figsize=(8, 1.8 * len(picks)), squeeze=False)
    for r, i in enumerate(picks):
        clip = clips[i]
        for c, f in enumerate(np.linspace(0, len(clip) - 1, 5).astype(int)):
            ax = axes[r, c]
            plot_pose_2d(ax, clip[f, :, :2], skeleton, clip[f, :, 2], threshold)
            ax.set_aspect("equal")
            ax.set_xlim(-1, 1)
            ax.set_ylim(-1, 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(str(index["clip_id"].iat[i])[:18], fontsize=6)
    fig.tight_layout()
    with ws.atomic_path(f"{folder}/preview.png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    paths.append(f"{folder}/preview.png")
    lines = [f"# Dataset `{name}`", "", f"Skeleton `{skeleton.name}`, {meta['fps']} fps.", "",
             "| what | value |", "| --- | --- |"]  # fmt: skip
    for key in ("clips", "videos", "frames", "mirrored", "outliers_rejected"):
        lines.append(f"| {key} | {summary[key]} |")
    lines.append(f"| split | {json.dumps(summary['by_split'])} |")
    lines.append(f"| length (min / median / max) | {summary['length']['min']} / {summary['length']['median']} / "
                 f"{summary['length']['max']} |")  # fmt: skip
    lines.append(f"| dropped | {json.dumps(summary['dropped'])} |")
    for video_id, error in summary["failed_videos"].items():
        lines.append(f"| failed video `{video_id}` (skipped) | {error} |")
    lines += ["", "![confidence](confidence.png)", "", "![preview](preview.png)", ""]
    paths.append(ws.write_text(f"{folder}/card.md", "\n".join(lines)))
    return paths
