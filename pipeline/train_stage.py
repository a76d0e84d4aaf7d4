"""Stage 5: train the 2D motion diffusion model on a dataset of the workspace, recording the run in the catalog."""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict

from models.trainer import TrainConfig, TrainResult, train
from storage import Catalog, Workspace
from storage.locks import ArtifactLock


def run_training(
    ws: Workspace, dataset: str, run: str, config: TrainConfig, *, resume: bool = True, progress: bool = True
) -> TrainResult:
    """Train (resuming when a checkpoint exists) and record the checkpoint as done or failed in the catalog. One
    run at a time writes a checkpoint: a second one fails at once naming the first (rank 0 holds the lock under
    torchrun)."""
    catalog = Catalog(ws)
    lead = int(os.environ.get("RANK", "0")) == 0
    lock = ArtifactLock(ws, "checkpoint", run) if lead else contextlib.nullcontext()
    with lock as held:
        if held is not None:  # rank 0, the only writer of the run's folder: what a killed run left there goes
            held.remove_leftovers(ws.checkpoint_dir(run))
        catalog.mark_running("checkpoint", run, dataset=dataset)
        try:
            result = train(ws, dataset, run, config, resume=resume, progress=progress)
        except BaseException as exc:
            catalog.mark_failed("checkpoint", run, exc, dataset=dataset)
            raise
    outputs = [result.checkpoint, result.metrics_csv] + ([result.loss_plot] if result.loss_plot else [])
    catalog.mark_done(
        "checkpoint",
        run,
        key=None,
        outputs=outputs,
        params=asdict(config),
        meta={"dataset": dataset, "step": result.step, "final_loss": result.final_loss,
              "samples_per_s": round(result.samples_per_s, 1), "precision": result.precision},
    )  # fmt: skip
    return result
