"""Stage 6: sample 3D motions (MAS or the SDS baseline) and write them with pictures and BVH files.

``samples/<name>/``: ``motions.npz`` (``motions [S, L, J, 3]`` plus the parameters as JSON), ``sample_XX.bvh`` for
human skeletons, ``sample_XX.mp4`` (orbiting camera) and ``sample_XX_views.png`` (the MAS views side by side) for
the first ``render`` samples. The denoiser runs in the requested precision (``auto``: int8 on CPU, fp32 on GPU; see
``models/precision.py``), which is recorded with the parameters.
"""

from __future__ import annotations

import io
import json
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from models.checkpoint import CHECKPOINT_NAME, load_trained_model
from models.mas import MASConfig, SamplingError, mas_sample
from models.precision import resolve_precision, with_precision
from models.sds import SDSConfig, sds_sample
from models.trainer import resolve_device
from pipeline.cameras import project, view_azimuths, view_rotations
from pipeline.skeletons import get_skeleton
from pipeline.visualize import azimuth_label, render_motion_3d, views_strip
from storage import Catalog, Workspace, file_sha256, stage_key
from storage.bvh import to_bvh
from storage.locks import ArtifactLock

HUMAN_SKELETONS = ("coco17", "coco17_ball", "nba16")


@dataclass
class SampleResult:
    name: str
    motions: np.ndarray
    paths: list[str]
    seconds: float
    skipped: bool = False
    precision: str = "fp32"


def run_sampling(
    ws: Workspace,
    run: str,
    name: str,
    *,
    method: str = "mas",
    num_samples: int = 8,
    length: int | None = None,
    mas: MASConfig | None = None,
    sds: SDSConfig | None = None,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    render: int = 2,
    expected_skeleton: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> SampleResult:
    if method not in ("mas", "sds"):
        raise SamplingError(f"unknown sampling method {method!r}; use 'mas' or 'sds'")
    mas, sds = mas or MASConfig(), sds or SDSConfig()
    ckpt = f"{ws.checkpoint_dir(run)}/{CHECKPOINT_NAME}"
    catalog = Catalog(ws)
    folder = ws.samples_dir(name)
    npz_path = f"{folder}/motions.npz"
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)  # auto: int8 linear layers on CPU, fp32 on GPU
    params = {"run": run, "method": method, "num_samples": num_samples, "length": length, "seed": seed,
              "precision": precision, "config": (mas if method == "mas" else sds).to_dict()}  # fmt: skip
    key = stage_key("sample", [file_sha256(ckpt, ws.fs)] if ws.exists(ckpt) else [], params)
    if not force and catalog.is_done("sample", name, key):
        with ws.local_copy(npz_path) as local:
            motions = np.load(local)["motions"]
        record = catalog.get("sample", name)
        return SampleResult(name, motions, [ws.absolute(p) for p in record.outputs], 0.0, True, precision)

    trained = load_trained_model(ws, run, dev)
    if expected_skeleton is not None and trained.skeleton != expected_skeleton:
        raise SamplingError(
            f"checkpoint {run!r} was trained on skeleton {trained.skeleton!r}, not {expected_skeleton!r}; "
            "pick a run trained on the right dataset"
        )
    skeleton = get_skeleton(trained.skeleton)
    length = length or min(trained.model.config.max_len, 120)
    with ArtifactLock(ws, "sample", name):  # one writer per sample set
        catalog.mark_running("sample", name, key=key, run=run, method=method)
        try:
            start = time.perf_counter()
            trained = with_precision(trained, precision)
            if method == "mas":
                motions = mas_sample(trained, num_samples, length, mas, seed=seed, progress=progress)
            else:
                motions = sds_sample(trained, num_samples, length, sds, seed=seed, progress=progress)
            seconds = time.perf_counter() - start
            motions_np = motions.float().cpu().numpy()
            paths = _write_outputs(ws, folder, motions_np, skeleton, trained.fps, params, render, mas,
                                   mas.camera_distance(trained.mean))  # fmt: skip
        except BaseException as exc:
            catalog.mark_failed("sample", name, exc, key=key)
            raise
        meta = {"run": run, "method": method, "seconds": round(seconds, 3), "samples": num_samples,
                "precision": precision}  # fmt: skip
        catalog.mark_done("sample", name, key=key, outputs=paths, params=params, meta=meta)
    return SampleResult(name, motions_np, paths, seconds, precision=precision)


def _write_outputs(ws, folder, motions, skeleton, fps, params, render, mas: MASConfig, distance) -> list[str]:
    paths = []
    buffer = io.BytesIO()
    np.savez_compressed(buffer, motions=motions, params=np.array(json.dumps(params)), skeleton=np.array(skeleton.name))
    paths.append(ws.write_bytes(f"{folder}/motions.npz", buffer.getvalue()))
    if skeleton.name in HUMAN_SKELETONS:
        for i, motion in enumerate(motions):
            body = motion[:, skeleton.body_joints]
            text = to_bvh(body, tuple(skeleton.joints[j] for j in skeleton.body_joints), skeleton.bones, skeleton.root,
                          fps)  # fmt: skip
            paths.append(ws.write_text(f"{folder}/sample_{i:02d}.bvh", text))
    rotations = view_rotations(mas.num_views, mas.elevation)
    titles = [azimuth_label(a) for a in view_azimuths(mas.num_views)]
    for i, motion in enumerate(motions[:render]):
        with ws.atomic_path(f"{folder}/sample_{i:02d}.mp4") as tmp:
            render_motion_3d(motion, skeleton, tmp, fps=fps, title=f"sample {i}")
        paths.append(f"{folder}/sample_{i:02d}.mp4")
        centred = motion - motion[:, list(skeleton.root)].mean(axis=(0, 1))
        centred_t = torch.as_tensor(centred, dtype=torch.float64)
        try:
            views = project(centred_t, rotations, distance, mas.projection).numpy()
        except ValueError:  # a motion reaching past the camera (a diverged sample): show it orthographically
            views = project(centred_t, rotations, None, "orthographic").numpy()
        with ws.atomic_path(f"{folder}/sample_{i:02d}_views.png") as tmp:
            views_strip(views, skeleton, tmp, titles=titles)
        paths.append(f"{folder}/sample_{i:02d}_views.png")
    return paths


ABLATIONS: dict[str, dict] = {
    "views2": {"num_views": 2},
    "views3": {"num_views": 3},
    "views5": {},
    "views9": {"num_views": 9},
    "views21": {"num_views": 21},
    # the paper's camera distances, in metres (a 1.8 m subject: distance_m / 1.8 mean-pose heights)
    "dist2m": {"distance_m": 2.0},
    "dist3m": {"distance_m": 3.0},
    "dist5m": {"distance_m": 5.0},
    "dist7m": {"distance_m": 7.0},
    "dist11m": {"distance_m": 11.0},
    "dist30m": {"distance_m": 30.0},
    # diffusion steps: one model (T = 100) sampled with respaced steps, not models trained with that T
    "steps20": {"steps": 20},
    "steps50": {"steps": 50},
    "no3dnoise": {"noise_3d": False},
}


def ablation_sample_sets(ws: Workspace, run: str, num_samples: int = 64, length: int | None = None,
                         device: str = "auto", seed: int = 0, precision: str = "auto") -> list[str]:  # fmt: skip
    """Sample the Table 3 ablations (views, camera distance, diffusion steps, no 3D noise) plus SDS; returns names."""
    names = []
    for label, change in ABLATIONS.items():
        name = f"{run}-mas-{label}"
        try:
            run_sampling(ws, run, name, num_samples=num_samples, length=length, mas=MASConfig(**change), seed=seed,
                         device=device, precision=precision, render=0, progress=False)  # fmt: skip
        except (ValueError, SamplingError) as exc:  # e.g. a camera too close for motions that keep their trajectory
            warnings.warn(f"ablation {label} skipped: {exc}", stacklevel=2)
            continue
        names.append(name)
    for label, annealed in (("sds", False), ("sds-annealed", True)):
        name = f"{run}-{label}"
        run_sampling(ws, run, name, method="sds", num_samples=num_samples, length=length,
                     sds=SDSConfig(annealed=annealed), seed=seed, device=device, precision=precision, render=0,
                     progress=False)  # fmt: skip
        names.append(name)
    return names
