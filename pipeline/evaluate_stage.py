"""Stage 7: the paper's 2D metrics (FID, diversity, precision, recall on evaluator embeddings, "all" and "side"
views, mean ± 95% CI over repeated draws) and our 3D benchmark against ground-truth 3D where the dataset has it.

``evaluations/<name>/``: ``evaluator.pt``, ``metrics.csv``, ``metrics.md``, ``metrics.png``.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from models.checkpoint import load_trained_model  # noqa: E402
from models.evaluator import EvaluatorConfig, embed, load_evaluator, save_evaluator, train_evaluator  # noqa: E402
from models.metrics import diversity, evaluate_3d, fid, mean_ci, precision_recall  # noqa: E402
from models.sampling import sample_2d  # noqa: E402
from models.trainer import resolve_device  # noqa: E402
from pipeline.cameras import DEFAULT_DISTANCE, DEFAULT_ELEVATION, normalize_2d, project, rotation_matrix  # noqa: E402
from pipeline.skeletons import get_skeleton  # noqa: E402
from storage import Catalog, Workspace  # noqa: E402
from storage.motion_dataset import MotionDataset, open_motion_dataset  # noqa: E402

SIDE_AZIMUTH = math.pi / 2


@dataclass
class EvaluationResult:
    table: pd.DataFrame
    paths: list[str]


def dataset_z(dataset: MotionDataset, split: str, length: int) -> np.ndarray:
    """First ``length`` frames of every clip of a split, z-scored, low-confidence joints at 0 (the mean)."""
    rows = dataset.split(split)
    out = []
    for offset, clip_len in zip(rows["offset"], rows["length"], strict=True):
        if clip_len < length:
            continue
        clip = np.asarray(dataset.clips[offset : offset + length])
        ok = clip[..., 2] >= dataset.conf_threshold
        out.append(np.where(ok[..., None], (clip[..., :2] - dataset.mean) / dataset.std, 0.0))
    if not out:
        raise ValueError(f"no {split} clip has {length} frames; evaluate with a shorter length")
    return np.stack(out).astype(np.float32)


def project_for_eval(motions: np.ndarray, azimuths: np.ndarray, root, body, mean, std) -> np.ndarray:
    """Project 3D motions ``[N, L, J, 3]`` (one azimuth each), normalise like the data and z-score: ``[N, L, J, 2]``."""
    out = []
    for motion, azimuth in zip(motions, azimuths, strict=True):
        centred = motion - motion[:, list(root)].mean(axis=(0, 1))
        xy = project(centred.astype(np.float64), rotation_matrix([azimuth], DEFAULT_ELEVATION), DEFAULT_DISTANCE)[0]
        norm, _, _ = normalize_2d(xy, None, root, body, y_down=False)
        out.append((norm - mean) / std)
    return np.stack(out).astype(np.float32)


def metric_row(label: str, view: str, real: np.ndarray, fake: np.ndarray, repeats: int, subset: int) -> dict:
    """FID, diversity, precision and recall of ``fake`` against ``real`` embeddings, mean ± 95% CI over ``repeats``
    draws of ``subset`` motions from each set."""
    n = min(subset, len(real), len(fake))
    if n < 8:
        raise ValueError(f"{label}: {n} motions are too few for distribution metrics; sample at least 8")
    draws: dict[str, list[float]] = {"fid": [], "diversity": [], "precision": [], "recall": []}
    for r in range(repeats):
        rng = np.random.default_rng([0, r])
        real_part = real[rng.choice(len(real), n, replace=False)]
        fake_part = fake[rng.choice(len(fake), n, replace=False)]
        precision, recall = precision_recall(real_part, fake_part)
        draws["fid"].append(fid(real_part, fake_part))
        draws["diversity"].append(diversity(fake_part, pairs=200, seed=r))
        draws["precision"].append(precision)
        draws["recall"].append(recall)
    row: dict = {"method": label, "view": view, "n": n}
    for key, values in draws.items():
        row[key], row[f"{key}_ci95"] = mean_ci(values)
    return row


def run_evaluation(
    ws: Workspace,
    run: str,
    name: str,
    sample_sets: list[str],
    *,
    length: int | None = None,
    model_samples: int = 128,
    repeats: int = 10,
    subset: int = 256,
    evaluator_steps: int = 1500,
    evaluator_dim: int = 256,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> EvaluationResult:
    dev = resolve_device(device)
    trained = load_trained_model(ws, run, dev)
    dataset = open_motion_dataset(ws, trained.dataset)
    skeleton = get_skeleton(dataset.skeleton)
    folder = ws.evaluation_dir(name)
    train_lengths = dataset.split("train")["length"]
    length = length or int(min(60, train_lengths.median()))
    catalog = Catalog(ws)
    catalog.mark_running("evaluation", name, run=run)
    try:
        evaluator_path = f"{folder}/evaluator.pt"
        if ws.exists(evaluator_path):
            with ws.local_copy(evaluator_path) as local:
                evaluator = load_evaluator(local, str(dev))
        else:
            config = EvaluatorConfig(num_joints=dataset.num_joints, latent_dim=evaluator_dim, max_len=length)
            evaluator = train_evaluator(dataset, config, steps=evaluator_steps, device=str(dev), seed=seed,
                                        progress=progress)  # fmt: skip
            with ws.atomic_path(evaluator_path) as tmp:
                save_evaluator(evaluator, tmp)
        real = embed(evaluator, dataset_z(dataset, "train", length))
        rows = []
        try:
            rows.append(metric_row("data (test split)", "-", real, embed(evaluator, dataset_z(dataset, "test", length)),
                                   repeats, subset))  # fmt: skip
        except ValueError:
            pass  # no test split
        plain = sample_2d(trained, model_samples, length, seed=seed).cpu().numpy()
        rows.append(metric_row("2D model (plain sampling)", "-", real,
                               embed(evaluator, (plain - dataset.mean) / dataset.std), repeats, subset))  # fmt: skip
        truth_path = f"{dataset.folder}/ground_truth_3d.npy"
        truth = None
        if ws.exists(truth_path):
            with ws.local_copy(truth_path) as local:
                truth = np.load(local)
        rng = np.random.default_rng(seed)
        for sample_name in sample_sets:
            with ws.local_copy(f"{ws.samples_dir(sample_name)}/motions.npz") as local:
                motions = np.load(local)["motions"][:, :length]
            if motions.shape[1] < length:
                raise ValueError(f"sample set {sample_name} has {motions.shape[1]} frames; evaluation needs {length}")
            views = {"all": rng.uniform(-math.pi, math.pi, len(motions)), "side": np.full(len(motions), SIDE_AZIMUTH)}
            for view, azimuths in views.items():
                z = project_for_eval(motions, azimuths, skeleton.root, skeleton.body_joints, dataset.mean, dataset.std)
                row = metric_row(sample_name, view, real, embed(evaluator, z), repeats, subset)
                if truth is not None and view == "all":
                    row.update(evaluate_3d(motions, truth[:, :length], skeleton))
                rows.append(row)
        table = pd.DataFrame(rows)
        paths = _write_tables(ws, folder, table, name)
    except BaseException as exc:
        catalog.mark_failed("evaluation", name, exc)
        raise
    catalog.mark_done("evaluation", name, key=None, outputs=[evaluator_path, *paths],
                      meta={"run": run, "sample_sets": sample_sets, "length": length})  # fmt: skip
    return EvaluationResult(table, [evaluator_path, *paths])


def markdown_table(table: pd.DataFrame) -> str:
    """Metrics as a Markdown table, ``mean ± ci`` where a CI column exists."""
    columns = [c for c in table.columns if not c.endswith("_ci95")]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for _, row in table.iterrows():
        cells = []
        for c in columns:
            value = row[c]
            if isinstance(value, float) and not np.isfinite(value):
                cells.append("–")
            elif isinstance(value, float):
                ci = row.get(f"{c}_ci95")
                cells.append(f"{value:.3f} ± {ci:.3f}" if ci is not None and np.isfinite(ci) else f"{value:.4g}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_tables(ws: Workspace, folder: str, table: pd.DataFrame, name: str) -> list[str]:
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    paths = [ws.write_text(f"{folder}/metrics.csv", buffer.getvalue())]
    paths.append(ws.write_text(f"{folder}/metrics.md", f"# Evaluation `{name}`\n\n{markdown_table(table)}"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    labels = [f"{m}\n{v}" if v != "-" else m for m, v in zip(table["method"], table["view"], strict=True)]
    for ax, key in zip(axes, ("fid", "precision"), strict=True):
        ax.bar(range(len(table)), table[key], yerr=table[f"{key}_ci95"], color="#4c72b0", capsize=3)
        ax.set_xticks(range(len(table)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{key} (mean ± 95% CI)")
    fig.tight_layout()
    with ws.atomic_path(f"{folder}/metrics.png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    paths.append(f"{folder}/metrics.png")
    return paths
