"""Serve the flows as deployments: cron-scheduled dataset building per config, plus per-stage reruns on demand.

    mas serve -c configs/nba.yaml -c configs/horses.yaml --cron "0 3 * * *"

Start a server first (``prefect server start``, UI at http://127.0.0.1:4200) and point ``PREFECT_API_URL`` at it.
Deployment names end in ``-served`` (``build-dataset/build-nba-served``, ``train/train-served``) so they live beside
the work-pool deployments of ``prefect.yaml`` (``build-dataset/build-nba``, ``train/train``) instead of being replaced.
Runs of the per-stage deployments take parameters (videos, force, ...) validated by pydantic from the flow
signatures.
"""

from __future__ import annotations

from prefect import serve

from flows.common import ensure_gpu_limit
from flows.stages import (
    build_dataset,
    download_flow,
    end_to_end,
    evaluate_flow,
    pose_flow,
    process_flow,
    sample_flow,
    track_flow,
    train_flow,
)
from pipeline.config import load_config

# Every served deployment's name ends so: prefect.yaml's work-pool deployments of the same flows are named build-nba,
# train, sample, ..., and a deployment name is unique per flow, so `prefect deploy --all` replaced served ones.
SERVED = "-served"


def deployments(configs: list[str], workspace: str, cron: str | None) -> list:
    out = []
    for path in configs:
        cfg = load_config(path)  # fail early, naming the bad field
        parameters = {"config": path, "workspace": workspace}
        out.append(build_dataset.to_deployment(name=f"build-{cfg.name}{SERVED}", cron=cron, parameters=parameters,
                                               tags=["dataset", cfg.name]))  # fmt: skip
        for stage in (download_flow, track_flow, pose_flow, process_flow):
            out.append(stage.to_deployment(name=f"{stage.name}-{cfg.name}{SERVED}", parameters=parameters,
                                           tags=["stage", cfg.name]))  # fmt: skip
        out.append(end_to_end.to_deployment(name=f"end-to-end-{cfg.name}{SERVED}", parameters=parameters,
                                            tags=[cfg.name]))  # fmt: skip
    for stage in (train_flow, sample_flow, evaluate_flow):
        out.append(stage.to_deployment(name=f"{stage.name}{SERVED}", parameters={"workspace": workspace},
                                       tags=["model"]))  # fmt: skip
    return out


def serve_all(configs: list[str], workspace: str, cron: str | None = "0 3 * * *", gpu_limit: int = 1) -> None:
    ensure_gpu_limit(gpu_limit)
    serve(*deployments(configs, workspace, cron))
