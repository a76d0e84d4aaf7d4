"""Checkpoints: written atomically, read as tensors and plain containers only (:mod:`models.weights_file`);
corrupt files fail clearly."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.denoiser import DenoiserConfig, MotionDenoiser
from models.diffusion import Diffusion
from models.weights_file import read_payload
from pipeline.skeletons import Skeleton, SkeletonError, check_joint_count, resolve_skeleton
from storage import Workspace, file_sha256

CHECKPOINT_FORMAT = 1
CHECKPOINT_NAME = "last.pt"


def checkpoint_hashes(ws: Workspace, run: str) -> list[str]:
    """The content hash of run ``run``'s checkpoint as stage-key inputs (empty when it does not exist)."""
    path = f"{ws.checkpoint_dir(run)}/{CHECKPOINT_NAME}"
    return [file_sha256(path, ws.fs)] if ws.exists(path) else []


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit what it is used for."""


def save_checkpoint(ws: Workspace, path: str, payload: dict[str, Any]) -> str:
    with ws.atomic_path(path) as tmp, open(tmp, "wb") as handle:  # our handle: closed (its space freed) on error
        torch.save({"format": CHECKPOINT_FORMAT, **payload}, handle)
    return path


def load_checkpoint(ws: Workspace, path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    if not ws.exists(path):
        raise CheckpointError(f"no checkpoint at {path}; train a model first (`mas train`) or pass another run")
    try:
        with ws.local_copy(path) as local:
            payload = read_payload(local, "checkpoint", map_location)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc}); "
            "delete it to start over, or restore it from a backup"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a mas-pipeline checkpoint of format {CHECKPOINT_FORMAT}")
    return payload


@dataclass
class TrainedModel:
    """What sampling and evaluation need from a checkpoint: the EMA denoiser, its schedule and data statistics."""

    model: MotionDenoiser
    diffusion: Diffusion
    mean: torch.Tensor
    std: torch.Tensor
    skeleton: str
    conf_threshold: float
    fps: float
    step: int
    dataset: str = ""
    skeleton_definition: Skeleton | None = None  # read from the checkpoint; None: the built-in skeleton ``skeleton``

    @property
    def skeleton_model(self) -> Skeleton:
        """The skeleton the model was trained on (its stored definition, else the built-in one of that name)."""
        return self.skeleton_definition or resolve_skeleton(self.skeleton, where=f"checkpoint of {self.dataset!r}")

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def normalise(self, xy: torch.Tensor) -> torch.Tensor:
        return (xy - self.mean) / self.std

    def denormalise(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean


def load_trained_model(
    ws: Workspace, run: str, device: str | torch.device = "cpu", use_ema: bool = True
) -> TrainedModel:
    path = f"{ws.checkpoint_dir(run)}/{CHECKPOINT_NAME}"
    payload = load_checkpoint(ws, path, map_location=device)
    model = MotionDenoiser(DenoiserConfig(**payload["model_config"])).to(device)
    model.load_state_dict(payload["ema"] if use_ema else payload["model"])
    model.eval()
    train_cfg = json.loads(payload["train_config"])
    data = payload["dataset"]
    try:  # before any work: an unknown or inconsistent skeleton fails here, naming the checkpoint
        skeleton = resolve_skeleton(str(data["skeleton"]), data.get("skeleton_definition"), path)
        check_joint_count(skeleton, int(payload["model_config"]["num_joints"]), path)
    except SkeletonError as exc:
        raise CheckpointError(str(exc)) from None
    return TrainedModel(
        model=model,
        # checkpoints from before ``noise_schedule`` existed were trained with the plain cosine
        diffusion=Diffusion.named(train_cfg.get("noise_schedule", "cosine"), int(train_cfg["diffusion_steps"])),
        mean=data["mean"].to(device).float(),
        std=data["std"].to(device).float(),
        skeleton=str(data["skeleton"]),
        conf_threshold=float(data["conf_threshold"]),
        fps=float(data["fps"]),
        step=int(payload["step"]),
        dataset=str(data["name"]),
        skeleton_definition=skeleton,
    )


def numpy_state(rng: np.random.Generator) -> str:
    return json.dumps(rng.bit_generator.state)


def restore_numpy_state(rng: np.random.Generator, state: str) -> None:
    rng.bit_generator.state = json.loads(state)
