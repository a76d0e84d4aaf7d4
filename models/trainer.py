"""Training of the 2D motion diffusion model.

x0-prediction, confidence- and length-masked L2, AdamW, EMA weights, gradient clipping, bf16 autocast where the
device computes bf16 natively (GPUs; CPUs with AVX512-BF16/AMX; ``TrainConfig.precision``), optional
``torch.compile``, DDP under ``torchrun`` (NCCL on GPU, gloo on CPU). Batches are drawn from the memory-mapped dataset.
Checkpoints are atomic and hold everything needed to resume bit-for-bit on the same device (model, EMA, optimiser,
RNG states, step); a NaN/inf loss stops the run with the step named and the last good checkpoint untouched.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from models.allocator import keep_freed_memory
from models.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    load_checkpoint,
    numpy_state,
    restore_numpy_state,
    save_checkpoint,
)
from models.denoiser import PREDICTIONS, DenoiserConfig, MotionDenoiser
from models.diffusion import DEFAULT_NOISE_SCHEDULE, Diffusion
from models.hardware import native_bf16
from pipeline.skeletons import dataset_skeleton, resolve_skeleton
from storage import Workspace
from storage.motion_dataset import MotionDataset, model_input, open_motion_dataset


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


LR_SCHEDULES = ("cosine", "constant")
HELDOUT_TIMESTEPS = (0, 2, 5, 10, 20, 40, 70, 99)  # where the held-out loss is measured (clipped to the schedule)
TRAIN_PRECISIONS = ("auto", "fp32", "bf16")


def training_autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 when asked, or for ``auto`` where ``device`` computes it natively; None: fp32."""
    if precision == "bf16" or (precision == "auto" and native_bf16(device)):
        return torch.bfloat16
    return None


@dataclass
class TrainConfig:
    steps: int = 100_000
    batch_size: int = 32
    lr: float = 1e-5  # the MAS code's value
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    warmup_steps: int | None = 0  # linear warm-up; None: 5% of the steps
    # after warm-up: constant (the MAS code), or cosine decay to lr * min_lr_ratio at the last step
    lr_schedule: str = "constant"
    min_lr_ratio: float = 0.05
    # what the denoiser's last layer predicts (models/denoiser.py): x0 (the MAS code) or v (EDM-style). v is right at
    # low noise and improved plain 2D sampling, but made MAS's 3D motions jitter (benchmarks/results/
    # mas_3d_benchmark_v_prediction.md), so x0 stays the default until MAS with v is understood
    prediction: str = "x0"
    diffusion_steps: int = 100
    noise_schedule: str = DEFAULT_NOISE_SCHEDULE  # the official default; "cosine" is the plain cosine
    max_len: int = 120  # frames per training window; longer clips are cropped at random
    seed: int = 0
    save_every: int = 1000
    log_every: int = 50
    compile: bool = False
    device: str = "auto"
    latent_dim: int = 512
    ff_size: int = 1024
    num_layers: int = 8
    num_heads: int = 4
    dropout: float = 0.1
    # auto: bf16 autocast where the device computes bf16 natively (a GPU; a CPU with AVX512-BF16/AMX), else fp32
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.precision not in TRAIN_PRECISIONS:
            raise ValueError(f"train config: precision must be one of {', '.join(TRAIN_PRECISIONS)}, got "
                             f"{self.precision!r}")  # fmt: skip
        for name in ("steps", "batch_size", "diffusion_steps", "max_len", "save_every", "log_every", "latent_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"train config: {name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"train config: ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.lr <= 0:
            raise ValueError(f"train config: lr must be > 0, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"train config: lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got "
                             f"{self.lr_schedule!r}")  # fmt: skip
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"train config: prediction must be one of {', '.join(PREDICTIONS)}, got "
                             f"{self.prediction!r}")  # fmt: skip
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"train config: min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        try:
            Diffusion.named(self.noise_schedule, 2)
        except ValueError as err:
            raise ValueError(f"train config: {err}") from None


@dataclass
class TrainResult:
    run: str
    step: int
    checkpoint: str
    metrics_csv: str
    loss_plot: str | None
    final_loss: float
    first_loss: float
    samples_per_s: float
    precision: str = "fp32"  # what the forward passes ran in: "bf16" (autocast) or "fp32"
    heldout_loss: float = math.nan  # the EMA model's x0 error on test-split windows (HELDOUT_TIMESTEPS), at the end
    history: list[dict[str, float]] = field(default_factory=list)
    model: nn.Module | None = field(default=None, repr=False)  # the live (non-EMA) model of this process


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return device


class BatchSampler:
    """Draws training windows from the train split of a memory-mapped dataset."""

    def __init__(
        self, dataset: MotionDataset, max_len: int, rng: np.random.Generator, rows: pd.DataFrame | None = None
    ):
        train = dataset.split("train") if rows is None else rows  # ``rows``: index rows to draw from (default: train)
        self.offsets = train["offset"].to_numpy()
        self.lengths = train["length"].to_numpy()
        self.clips = dataset.clips
        self.max_len = min(max_len, int(self.lengths.max()))
        self.threshold = dataset.conf_threshold
        self.mean, self.std = dataset.mean, dataset.std
        self.rng = rng

    def draw(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``z [B, L, J, 2]`` (z-scored; see :func:`~storage.motion_dataset.model_input`), ``mask [B, L, J]`` (loss
        mask: confident joints), ``valid [B, L]``."""
        picks = self.rng.integers(0, len(self.offsets), size=batch_size)
        joints = self.clips.shape[1]
        z = np.zeros((batch_size, self.max_len, joints, 2), np.float32)
        mask = np.zeros((batch_size, self.max_len, joints), bool)
        valid = np.zeros((batch_size, self.max_len), bool)
        for b, i in enumerate(picks):
            length = int(self.lengths[i])
            take = min(length, self.max_len)
            start = int(self.offsets[i]) + int(self.rng.integers(0, length - take + 1))
            window = np.asarray(self.clips[start : start + take], dtype=np.float32)
            z[b, :take], mask[b, :take] = model_input(window, self.mean, self.std, self.threshold)
            valid[b, :take] = True
        return z, mask, valid


MIN_CONFIDENT_FRACTION = 0.05


def check_trainable(dataset: MotionDataset, name: str) -> None:
    """Refuse a train split with (almost) nothing to learn from: a masked loss over no confident joint is 0 and would
    look like perfect training."""
    rows = dataset.split("train")
    confident = total = 0
    for offset, length in zip(rows["offset"], rows["length"], strict=True):
        conf = np.asarray(dataset.clips[int(offset) : int(offset) + int(length), :, 2])
        confident += int((conf >= dataset.conf_threshold).sum())
        total += conf.size
    if confident < MIN_CONFIDENT_FRACTION * total:
        raise ValueError(
            f"dataset {name!r}: only {confident} of {total} joint positions of the train split are confident "
            f"(>= {dataset.conf_threshold}); the loss would see almost nothing. Check the pose stage's output, or "
            "rebuild with a lower process.conf_threshold"
        )


def masked_l2(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
              sample_weight: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Mean squared error over the joints where ``mask [B, L, J]`` is true (confident joints of real frames), each
    sample's error scaled by ``sample_weight [B]`` when given."""
    weight = mask.unsqueeze(-1).to(pred.dtype)
    error = (pred - target) ** 2 * weight
    if sample_weight is not None:
        error = error * sample_weight.reshape(-1, 1, 1, 1).to(pred.dtype)
    return error.sum() / (weight.sum() * pred.shape[-1]).clamp_min(1.0)


def x0_loss_weights(diffusion: Diffusion, prediction: str, device: torch.device) -> torch.Tensor | None:
    """Per-timestep weight ``[T]`` of the x0 error that makes the loss the network's own: for v,
    |x̂0 − x0|² = (1 − ᾱ) |v̂ − v|², so the x0 error is weighted by 1 / (1 − ᾱ_t) (EDM's λ = 1 / c_out²); for x0,
    none."""
    if prediction == "x0":
        return None
    return torch.as_tensor(1.0 / (1.0 - diffusion.alphas_cumprod), dtype=torch.float32, device=device)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The learning rate of step ``step`` (0-based): linear warm-up, then constant or cosine decay to
    ``lr * min_lr_ratio`` at the last step."""
    warmup = max(1, cfg.steps // 20) if cfg.warmup_steps is None else cfg.warmup_steps
    if warmup and step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - warmup) / max(1, cfg.steps - warmup))
    low = cfg.lr * cfg.min_lr_ratio
    return low + (cfg.lr - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def heldout_x0_errors(model: nn.Module, diffusion: Diffusion, dataset: MotionDataset, timesteps, seed: int = 1,
                      windows: int = 256, max_len: int = 120) -> dict[int, dict[str, float]]:  # fmt: skip
    """On ``windows`` test-split windows (seeded, the same for every model), per timestep t: ``x0_mse`` (masked x0
    error of the model's x̂0) and ``ratio`` = |x̂0 − x0| / |x_t − x0| (below 1: the output is nearer the clean clip
    than the input). Empty when the dataset has no test split."""
    try:
        rows = dataset.split("test")
    except ValueError:
        return {}
    device = next(model.parameters()).device
    sampler = BatchSampler(dataset, max_len, np.random.default_rng(seed), rows)
    z, mask, valid = (torch.from_numpy(a).to(device) for a in sampler.draw(windows))
    generator = torch.Generator(device="cpu").manual_seed(seed)
    was_training = model.training
    model.eval()
    out = {}
    for step in timesteps:
        t = torch.full((windows,), int(step), dtype=torch.long, device=device)
        xt = diffusion.q_sample(z, t, torch.randn(z.shape, generator=generator).to(device))
        x0 = model(xt, t, valid).float()
        err, base = masked_l2(x0, z, mask), masked_l2(xt, z, mask)
        out[int(step)] = {"x0_mse": float(err), "ratio": float((err / base.clamp_min(1e-12)).sqrt())}
    model.train(was_training)
    return out


def _distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def _write_metrics(ws: Workspace, folder: str, history: list[dict[str, float]]) -> tuple[str, str | None]:
    csv_path = f"{folder}/metrics.csv"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["step", "loss", "lr", "samples_per_s", "heldout_loss"])
    writer.writeheader()
    writer.writerows(history)
    ws.write_text(csv_path, buffer.getvalue())
    if not history:
        return csv_path, None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], lw=1.2)
    ax.set(xlabel="step", ylabel="masked L2 loss (of the network's prediction)", yscale="log", title="training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png_path = f"{folder}/loss.png"
    with ws.atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return csv_path, png_path


def _read_metrics(ws: Workspace, folder: str, up_to_step: int) -> list[dict[str, float]]:
    path = f"{folder}/metrics.csv"
    if not ws.exists(path):
        return []
    rows = csv.DictReader(io.StringIO(ws.read_text(path)))
    return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()} for row in rows
            if float(row["step"]) <= up_to_step]  # fmt: skip


START_OVER = "choose another run name, or start this one over with `mas train --fresh` (resume=False from Python)"


def train(
    ws: Workspace,
    dataset_name: str,
    run: str,
    config: TrainConfig | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Train (or resume) run ``run`` on dataset ``dataset_name``; returns where the checkpoint and metrics are.

    ``stop_after`` ends the process-local loop early at that step (as a kill would) after saving, for tests and for
    splitting long runs into jobs.
    """
    cfg = config or TrainConfig()
    keep_freed_memory()  # every pass reuses freed activations instead of faulting them in (models/allocator.py)
    world, rank, local_rank = _distributed()
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
        torch.distributed.init_process_group(backend)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dataset = open_motion_dataset(ws, dataset_name)
    skeleton = dataset_skeleton(dataset, dataset_name)  # an unknown or mismatched skeleton fails before training
    check_trainable(dataset, dataset_name)
    folder = ws.checkpoint_dir(run)
    ckpt_path = f"{folder}/{CHECKPOINT_NAME}"

    torch.manual_seed(cfg.seed)
    model_cfg = DenoiserConfig(
        num_joints=dataset.num_joints,
        latent_dim=cfg.latent_dim,
        ff_size=cfg.ff_size,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        dropout=cfg.dropout,
        max_len=max(cfg.max_len, 16),
        prediction=cfg.prediction,
        noise_schedule=cfg.noise_schedule,
        diffusion_steps=cfg.diffusion_steps,
    )
    model = MotionDenoiser(model_cfg).to(device)
    ema = MotionDenoiser(model_cfg).to(device)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    diffusion = Diffusion.named(cfg.noise_schedule, cfg.diffusion_steps)
    rng = np.random.default_rng([cfg.seed, rank])
    torch.manual_seed(cfg.seed * 1000 + rank)
    step = 0
    history: list[dict[str, float]] = []

    if resume and ws.exists(ckpt_path):
        payload = load_checkpoint(ws, ckpt_path, map_location=device)
        saved_schedule = json.loads(payload["train_config"]).get("noise_schedule", "cosine")
        if saved_schedule != cfg.noise_schedule:
            raise CheckpointError(
                f"{ckpt_path} was trained with noise schedule {saved_schedule!r}, this run asks for "
                f"{cfg.noise_schedule!r}; pass noise_schedule={saved_schedule!r} (`mas train --noise-schedule "
                f"{saved_schedule}`) to resume it, or {START_OVER}"
            )
        saved_prediction = payload["model_config"].get("prediction", "x0")
        if saved_prediction != cfg.prediction:
            raise CheckpointError(
                f"{ckpt_path} was trained with {saved_prediction}-prediction, this run asks for {cfg.prediction}; "
                f"pass `mas train --prediction {saved_prediction}` to resume it, or {START_OVER}"
            )
        if payload["dataset"]["name"] != dataset_name or payload["model_config"] != model_cfg.to_dict():
            raise CheckpointError(
                f"{ckpt_path} was trained on dataset {payload['dataset']['name']!r} with model "
                f"{payload['model_config']}; it cannot resume this run: {START_OVER}"
            )
        saved = resolve_skeleton(str(payload["dataset"]["skeleton"]), payload["dataset"].get("skeleton_definition"),
                                 ckpt_path)  # fmt: skip
        if not saved.same_body(skeleton):
            raise CheckpointError(f"{ckpt_path} was trained on skeleton {saved.name!r}, dataset {dataset_name!r} is in "
                                  f"{skeleton.name!r}; {START_OVER}")  # fmt: skip
        model.load_state_dict(payload["model"])
        ema.load_state_dict(payload["ema"])
        optimizer.load_state_dict(payload["optimizer"])
        step = int(payload["step"])
        if world == 1:
            torch.set_rng_state(payload["rng"]["torch"].cpu())
            if device.type == "cuda" and payload["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(payload["rng"]["cuda"].cpu())
            restore_numpy_state(rng, payload["rng"]["numpy"])
        else:  # each rank has its own streams; continue them from a seed derived from the step
            rng = np.random.default_rng([cfg.seed, rank, step])
            torch.manual_seed(cfg.seed * 1000 + rank + 7919 * step)
        history = _read_metrics(ws, folder, step)

    sampler = BatchSampler(dataset, cfg.max_len, rng)
    train_model: nn.Module = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        train_model = torch.compile(train_model)
    autocast_dtype = training_autocast_dtype(cfg.precision, device)
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
    )  # fmt: skip

    loss_weights = x0_loss_weights(diffusion, cfg.prediction, device)  # per timestep, gathered by t at each step
    heldout_steps = sorted({min(t, diffusion.num_steps - 1) for t in HELDOUT_TIMESTEPS})
    heldout_loss = math.nan

    def measure_heldout() -> None:
        """The EMA model's x0 error on test-split windows, logged with the step (rank 0; none without a test split)."""
        nonlocal heldout_loss
        errors = heldout_x0_errors(ema, diffusion, dataset, heldout_steps, max_len=cfg.max_len)
        if errors and history:
            heldout_loss = float(np.mean([e["x0_mse"] for e in errors.values()]))
            history[-1]["heldout_loss"] = heldout_loss
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}", heldout=f"{heldout_loss:.4f}", refresh=False)

    def save() -> None:
        if rank != 0:
            return
        measure_heldout()
        payload = {
            "step": step,
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "model_config": model_cfg.to_dict(),
            "train_config": json.dumps(asdict(cfg)),
            "dataset": {
                "name": dataset_name,
                "skeleton": skeleton.name,
                "skeleton_definition": skeleton.to_json(),  # load_trained_model needs no registry entry
                "fps": float(dataset.meta.get("fps", 30.0)),
                "conf_threshold": dataset.conf_threshold,
                "mean": torch.as_tensor(dataset.mean),
                "std": torch.as_tensor(dataset.std),
            },
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "numpy": numpy_state(rng),
            },
        }
        save_checkpoint(ws, ckpt_path, payload)
        _write_metrics(ws, folder, history)

    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    first_loss = history[0]["loss"] if history else math.nan
    last_loss = history[-1]["loss"] if history else math.nan
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {run}", disable=not progress or rank != 0, unit="step")
    window_loss, window_count, window_start = 0.0, 0, time.perf_counter()
    samples_per_s = 0.0
    train_model.train()
    while step < end:
        z, mask, valid = (torch.from_numpy(a).to(device, non_blocking=True) for a in sampler.draw(cfg.batch_size))
        t = torch.randint(0, diffusion.num_steps, (cfg.batch_size,), device=device)
        noise = torch.randn_like(z)
        xt = diffusion.q_sample(z, t, noise)
        lr = learning_rate(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast:
            pred = train_model(xt, t, valid)
        loss = masked_l2(pred.float(), z, mask, None if loss_weights is None else loss_weights[t])
        if not torch.isfinite(loss):
            bar.close()
            raise TrainingDivergedError(
                f"loss is {loss.item()} at step {step + 1} of run {run!r}; stopped without saving. The last good "
                f"checkpoint ({ckpt_path if ws.exists(ckpt_path) else 'none yet'}) is kept: lower the learning rate "
                "or check the dataset for extreme values"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
                p_ema.lerp_(p, 1.0 - cfg.ema_decay)
        step += 1
        window_loss += loss.item()
        window_count += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == end:
            elapsed = max(time.perf_counter() - window_start, 1e-9)
            samples_per_s = window_count * cfg.batch_size * world / elapsed
            last_loss = window_loss / window_count
            if math.isnan(first_loss):
                first_loss = last_loss
            history.append({"step": step, "loss": last_loss, "lr": lr, "samples_per_s": samples_per_s})
            bar.set_postfix(loss=f"{last_loss:.4f}", sps=f"{samples_per_s:.0f}")
            window_loss, window_count, window_start = 0.0, 0, time.perf_counter()
        if step % cfg.save_every == 0 or step == end:
            save()
    bar.close()
    if world > 1:
        torch.distributed.barrier()
    csv_path, png_path = f"{folder}/metrics.csv", f"{folder}/loss.png"
    return TrainResult(
        run=run,
        step=step,
        checkpoint=ckpt_path,
        metrics_csv=csv_path,
        loss_plot=png_path if ws.exists(png_path) else None,
        final_loss=last_loss,
        first_loss=first_loss,
        samples_per_s=samples_per_s,
        precision="bf16" if autocast_dtype is not None else "fp32",
        heldout_loss=heldout_loss,
        history=history,
        model=model,
    )
