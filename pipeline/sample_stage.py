"""Stage 6: sample 3D motions (MAS or the SDS baseline) and write them with pictures and BVH files.

``samples/<name>/``: ``motions.npz`` (``motions [S, L, J, 3]`` as sampled, plus the parameters as JSON), the
animation-ready export (:mod:`pipeline.rigid_export`: ``sample_XX.bvh`` with fixed bone lengths, root position and
joint rotations, feet on the floor y = 0, and ``rigid.npz`` for retargeting), ``sample_XX.mp4`` (orbiting camera),
``sample_XX_views.png`` (the MAS views side by side), ``sample_XX_rigid.mp4`` and ``sample_XX_rigid.png`` (the
exported motion, and it beside the sampled one) for the first ``render`` samples. The export is derived from
``motions.npz``: asking for other export settings on a finished sample set rewrites the export without sampling
again. ``ExportConfig(rigid=False)`` writes the old free-point BVH (position channels on every joint) instead.
The denoiser runs in the requested precision (``auto``: the fastest for this call's denoiser passes that passes the
check against fp32; see ``models/precision.py``), which is recorded with the parameters.
"""

from __future__ import annotations

import io
import json
import logging
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from models.checkpoint import checkpoint_hashes, load_trained_model
from models.mas import MASConfig, SamplingError, mas_sample, pass_tokens
from models.precision import cache_params, checked_precision, resolve_precision
from models.sds import SDSConfig, sds_sample
from models.trainer import resolve_device
from pipeline.cameras import project, view_azimuths, view_rotations
from pipeline.rigid import build_rig
from pipeline.rigid_export import ExportConfig, write_rigid_outputs
from pipeline.skeletons import Skeleton, resolve_skeleton
from pipeline.visualize import azimuth_label, render_motion_3d, views_strip
from storage import Catalog, Workspace, stage_key
from storage.bvh import to_bvh
from storage.locks import ArtifactLock

log = logging.getLogger(__name__)


@dataclass
class SampleResult:
    name: str
    motions: np.ndarray
    paths: list[str]
    seconds: float
    skipped: bool = False
    precision: str = "fp32"
    precision_reason: str = ""


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
    export: ExportConfig | None = None,
) -> SampleResult:
    if method not in ("mas", "sds"):
        raise SamplingError(f"unknown sampling method {method!r}; use 'mas' or 'sds'")
    mas, sds, export = mas or MASConfig(), sds or SDSConfig(), export or ExportConfig()
    catalog = Catalog(ws)
    folder = ws.samples_dir(name)
    npz_path = f"{folder}/motions.npz"
    dev = resolve_device(device)
    trained = load_trained_model(ws, run, dev)  # a missing checkpoint is named here (no set is done without one)
    frames = length or min(trained.model.config.max_len, 120)
    # the denoiser's passes, which auto weighs for the fastest native precision (checked against fp32 before sampling)
    tokens = pass_tokens(trained, num_samples, frames, mas.num_views if method == "mas" else 1)
    width = trained.model.config.latent_dim
    requested, precision = precision, resolve_precision(precision, dev, tokens, width)
    params = {"run": run, "method": method, "num_samples": num_samples, "length": length, "seed": seed,
              **cache_params(dev, precision), "config": (mas if method == "mas" else sds).to_dict()}  # fmt: skip
    key = stage_key("sample", checkpoint_hashes(ws, run), params)
    if not force and catalog.is_done("sample", name, key):
        with ws.local_copy(npz_path) as local:
            motions = np.load(local)["motions"]
        record = catalog.get("sample", name)
        paths = [ws.absolute(p) for p in record.outputs]
        if record.meta.get("export", {}).get("settings") != export.to_dict():  # same samples, other export
            with ws.local_copy(npz_path) as local:
                skeleton = stored_skeleton(np.load(local), npz_path)
            written, summary = _write_export(ws, folder, motions, skeleton, trained.fps, export)
            paths = [p for p in paths if not p.endswith((".bvh", "rigid.npz"))] + written
            record = catalog.mark_done("sample", name, key=key, outputs=paths, params=record.params,
                                       meta={"export": summary})  # fmt: skip
        meta = record.meta or {}
        return SampleResult(name, motions, paths, 0.0, True, meta.get("precision", precision),
                            meta.get("precision_reason", ""))  # fmt: skip

    if expected_skeleton is not None and trained.skeleton != expected_skeleton:
        raise SamplingError(
            f"checkpoint {run!r} was trained on skeleton {trained.skeleton!r}, not {expected_skeleton!r}; "
            "pick a run trained on the right dataset"
        )
    skeleton = trained.skeleton_model
    with ArtifactLock(ws, "sample", name) as lock:  # one writer per sample set
        lock.remove_leftovers(ws.samples_dir(name))  # what a killed run of this set left (.tmp-*)
        catalog.mark_running("sample", name, key=key, run=run, method=method)
        try:
            start = time.perf_counter()
            trained, precision, reason = checked_precision(trained, requested, tokens)
            log.info("sampling %s in %s", name, reason)
            if method == "mas":
                motions = mas_sample(trained, num_samples, frames, mas, seed=seed, progress=progress)
            else:
                motions = sds_sample(trained, num_samples, frames, sds, seed=seed, progress=progress)
            seconds = time.perf_counter() - start
            motions_np = motions.float().cpu().numpy()
            paths, summary = _write_outputs(ws, folder, motions_np, skeleton, trained.fps, params, render, mas,
                                            export, mas.camera_distance(trained.mean))  # fmt: skip
        except BaseException as exc:
            catalog.mark_failed("sample", name, exc, key=key)
            raise
        meta = {"run": run, "method": method, "seconds": round(seconds, 3), "samples": num_samples,
                "precision": precision, "precision_reason": reason, "export": summary}  # fmt: skip
        catalog.mark_done("sample", name, key=key, outputs=paths, params=params, meta=meta)
    return SampleResult(name, motions_np, paths, seconds, precision=precision, precision_reason=reason)


def stored_skeleton(npz, where: str) -> Skeleton:
    """The skeleton a ``motions.npz`` was sampled with (its stored definition, else the built-in one by name)."""
    definition = str(npz["skeleton_definition"]) if "skeleton_definition" in npz.files else None
    return resolve_skeleton(str(npz["skeleton"]), definition, where)


def _write_export(ws, folder, motions, skeleton, fps, export: ExportConfig):
    """BVH (+ rigid.npz) files; returns their paths and the export summary (logged, and kept in the catalog). Any
    skeleton gets them; where its bones do not form a tree the summary's note (also logged as a warning) says what
    the BVH holds instead."""
    rig = build_rig(skeleton)
    if export.rigid:
        paths, summary, _ = write_rigid_outputs(ws, folder, motions, skeleton, fps, export)
        log.info("sample export: %s; rigid joints %.4f body heights from the sampled ones on average (max %.4f)",
                 summary["note"], summary["fit_error_mean"], summary["fit_error_max"])  # fmt: skip
    else:
        paths = []
        index = {int(j): i for i, j in enumerate(skeleton.body_joints)}
        bones = tuple((index[a], index[b]) for a, b in skeleton.bones)
        for i, motion in enumerate(motions):
            text = to_bvh(motion[:, skeleton.body_joints], rig.joints, bones, rig.root, fps)
            paths.append(ws.write_text(f"{folder}/sample_{i:02d}.bvh", text))
        note = "free-point BVH (position channels on every joint)"
        if not rig.is_tree:
            note += (
                f"; skeleton {skeleton.name} is not a tree: its hierarchy leaves out the bones "
                f"{', '.join(f'{a}-{b}' for a, b in rig.loose_bones)} (their joints keep their own positions)"
            )
        summary = {"note": note, "settings": export.to_dict()}
    summary["tree"] = rig.is_tree
    if not rig.is_tree:
        log.warning("sample export: %s", summary["note"])
    return paths, summary


def _views(motion, rotations, mas: MASConfig, root: list[int], distance: float | None) -> np.ndarray:
    """``[V, L, J, 2]``: the motion, centred on its mean root point, seen by the MAS cameras (``distance`` in data
    units, from :meth:`MASConfig.camera_distance`)."""
    centred = torch.as_tensor(motion - motion[:, root].mean(axis=(0, 1)), dtype=torch.float64)
    try:
        return project(centred, rotations, distance, mas.projection).numpy()
    except ValueError:  # a motion reaching past the camera (a diverged sample): show it orthographically
        return project(centred, rotations, None, "orthographic").numpy()


def _write_outputs(ws, folder, motions, skeleton, fps, params, render, mas: MASConfig, export: ExportConfig,
                   distance: float | None):  # fmt: skip
    buffer = io.BytesIO()
    np.savez_compressed(buffer, motions=motions, params=np.array(json.dumps(params)), skeleton=np.array(skeleton.name),
                        skeleton_definition=np.array(skeleton.to_json()))  # fmt: skip
    paths = [ws.write_bytes(f"{folder}/motions.npz", buffer.getvalue())]
    exported, summary = _write_export(ws, folder, motions, skeleton, fps, export)
    paths += exported
    rigid = None
    if export.rigid and render:
        with ws.local_copy(f"{folder}/rigid.npz") as local:
            rigid = np.load(local)["positions"][:render]
    rotations = view_rotations(mas.num_views, mas.elevation)
    titles = [azimuth_label(a) for a in view_azimuths(mas.num_views)]
    root = list(skeleton.root)
    for i, motion in enumerate(motions[:render]):
        with ws.atomic_path(f"{folder}/sample_{i:02d}.mp4") as tmp:
            render_motion_3d(motion, skeleton, tmp, fps=fps, title=f"sample {i}")
        paths.append(f"{folder}/sample_{i:02d}.mp4")
        views = _views(motion, rotations, mas, root, distance)
        with ws.atomic_path(f"{folder}/sample_{i:02d}_views.png") as tmp:
            views_strip(views, skeleton, tmp, titles=titles)
        paths.append(f"{folder}/sample_{i:02d}_views.png")
        if rigid is None:
            continue
        with ws.atomic_path(f"{folder}/sample_{i:02d}_rigid.mp4") as tmp:
            render_motion_3d(rigid[i], skeleton, tmp, fps=fps, title=f"sample {i}, rigid")
        paths.append(f"{folder}/sample_{i:02d}_rigid.mp4")
        pair = (motion[:, skeleton.body_joints], rigid[i])
        both = _views(pair[0], rotations[:2], mas, root, distance), _views(pair[1], rotations[:2], mas, root, distance)
        rows = np.stack([both[k][v] for v in range(len(both[0])) for k in range(2)])
        labels = [f"{kind}, {titles[v]}" for v in range(len(both[0])) for kind in ("sampled", "rigid")]
        with ws.atomic_path(f"{folder}/sample_{i:02d}_rigid.png") as tmp:
            views_strip(rows, skeleton, tmp, titles=labels)
        paths.append(f"{folder}/sample_{i:02d}_rigid.png")
    return paths, summary


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
    "rigidbones": {"rigid_bones": True},  # beyond the paper: fixed bone lengths per motion (issue 19)
}
ABLATION_TITLES: dict[str, str] = {
    "views2": "MAS, 2 views (120°)", "views3": "MAS, 3 views", "views5": "MAS, 5 views (default)",
    "views9": "MAS, 9 views", "views21": "MAS, 21 views",
    **{f"dist{m}m": f"MAS, camera {m} m" for m in (2, 3, 5, 7, 11, 30)},
    "steps20": "MAS, 20 respaced steps", "steps50": "MAS, 50 respaced steps", "no3dnoise": "MAS, no 3D noise",
    "rigidbones": "MAS + rigid bones",
}  # fmt: skip


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
