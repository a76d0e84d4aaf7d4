"""Trained motion evaluators, cached by content hash.

``evaluators/<key>/``: ``evaluator.pt`` (weights + config), ``loss.csv`` (training and held-out loss per evaluation),
``loss.png`` (both curves, best step marked). ``key`` hashes the dataset's content (``clips.npy``, ``index.parquet``,
``mean.npy``, ``std.npy``), the evaluator configuration and the training parameters, so the same data and settings
reuse one evaluator across evaluations, and any change trains a new one. The catalog (kind ``evaluator``, id = key)
records done / failed.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from typing import Any

from models.evaluator import EvaluatorConfig, MotionEvaluator, load_evaluator, save_evaluator, train_evaluator
from storage import Catalog, Workspace, stage_key
from storage.motion_dataset import dataset_file_hashes, open_motion_dataset

DATA_FILES = ("clips.npy", "index.parquet", "mean.npy", "std.npy")
VAL_FRACTION = 0.1  # share of the train split's videos held out for early stopping
MIN_DELTA = 0.005  # relative improvement of the held-out loss that resets the patience counter
HISTORY_FIELDS = ("step", "train_loss", "val_loss")


@dataclass
class EvaluatorHandle:
    model: MotionEvaluator
    key: str
    folder: str
    history: list[dict[str, float]] = field(default_factory=list)
    trained: bool = False  # False when loaded from the cache


def dataset_hashes(ws: Workspace, dataset_name: str) -> list[str]:
    """sha256 of the dataset files the evaluator learns from, in :data:`DATA_FILES` order."""
    hashes = dataset_file_hashes(ws, dataset_name)
    return [hashes[f] for f in DATA_FILES]


def evaluator_params(config: EvaluatorConfig, **training: Any) -> dict[str, Any]:
    return {"config": asdict(config), "training": {"val_fraction": VAL_FRACTION, "min_delta": MIN_DELTA, **training}}


def load_or_train_evaluator(
    ws: Workspace,
    dataset_name: str,
    config: EvaluatorConfig,
    *,
    max_steps: int = 20000,
    batch_size: int = 64,
    lr: float = 2e-4,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    patience: int = 5,
    eval_every: int = 100,
) -> EvaluatorHandle:
    """The evaluator of ``dataset_name`` with ``config``: loaded from ``evaluators/<key>/`` when the catalog has it
    done, otherwise trained (early stopping on held-out train videos), written and catalogued."""
    params = evaluator_params(config, max_steps=max_steps, batch_size=batch_size, lr=lr, seed=seed,
                              patience=patience, eval_every=eval_every)  # fmt: skip
    key = stage_key("evaluator", dataset_hashes(ws, dataset_name), params)[:16]
    folder = ws.evaluator_dir(key)
    paths = {name: f"{folder}/{name}" for name in ("evaluator.pt", "loss.csv", "loss.png")}
    catalog = Catalog(ws)
    if catalog.is_done("evaluator", key, key=key) and ws.exists(paths["evaluator.pt"]):
        with ws.local_copy(paths["evaluator.pt"]) as local:
            model = load_evaluator(local, device)
        history = read_history(ws, paths["loss.csv"]) if ws.exists(paths["loss.csv"]) else []
        return EvaluatorHandle(model, key, folder, history, trained=False)

    catalog.mark_running("evaluator", key, key=key, dataset=dataset_name)
    try:
        dataset = open_motion_dataset(ws, dataset_name)
        model, history = train_evaluator(
            dataset, config, max_steps=max_steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
            progress=progress, val_fraction=VAL_FRACTION, eval_every=eval_every, patience=patience,
            min_delta=MIN_DELTA,
        )  # fmt: skip
        with ws.atomic_path(paths["evaluator.pt"]) as tmp:
            save_evaluator(model, tmp)
        write_history(ws, paths["loss.csv"], history)
        plot_history(ws, paths["loss.png"], history)
    except BaseException as exc:
        catalog.mark_failed("evaluator", key, exc, key=key, dataset=dataset_name)
        raise
    best = min(history, key=lambda h: h["val_loss"])
    catalog.mark_done("evaluator", key, key=key, outputs=list(paths.values()), params=params,
                      meta={"dataset": dataset_name, "steps": history[-1]["step"], "best_step": best["step"],
                            "best_val_loss": best["val_loss"]})  # fmt: skip
    return EvaluatorHandle(model, key, folder, history, trained=True)


def write_history(ws: Workspace, path: str, history: list[dict[str, float]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(HISTORY_FIELDS), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    return ws.write_text(path, buffer.getvalue())


def read_history(ws: Workspace, path: str) -> list[dict[str, float]]:
    rows = csv.DictReader(io.StringIO(ws.read_text(path)))
    return [{"step": int(row["step"]), "train_loss": float(row["train_loss"]), "val_loss": float(row["val_loss"])}
            for row in rows]  # fmt: skip


def plot_history(ws: Workspace, path: str, history: list[dict[str, float]]) -> str:
    """Training and held-out loss against step, the best (restored) step marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    best = min(history, key=lambda h: h["val_loss"])
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, [h["train_loss"] for h in history], lw=1.2, marker=".", label="train (mean since last eval)")
    ax.plot(steps, [h["val_loss"] for h in history], lw=1.2, marker=".", label="held-out (posterior mean)")
    ax.axvline(best["step"], color="0.5", ls="--", lw=1)
    ax.scatter([best["step"]], [best["val_loss"]], color="red", zorder=3,
               label=f"best: step {best['step']}, {best['val_loss']:.4g}")  # fmt: skip
    ax.set(xlabel="step", ylabel="masked L2 (train: + KL term)", yscale="log", title="motion evaluator")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with ws.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
