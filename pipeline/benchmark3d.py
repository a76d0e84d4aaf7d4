"""The 3D benchmark in one call: known 3D motions (a user's npz or procedural ones) → whole clips held out → the
train part seen from one random camera each → 2D diffusion training (or a given run) → MAS and plain SDS → the full
evaluation table with the floor and the trivial baselines (:mod:`pipeline.evaluate_stage`).

Every step is cached (dataset by input hash and parameters, training resumes, samples and the evaluator by content
hash), so a rerun with the same inputs only rewrites the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from models.checkpoint import load_trained_model
from models.evaluator import EvaluatorConfig
from models.mas import MASConfig
from models.trainer import TrainConfig, resolve_device
from pipeline.benchmark_data import build_benchmark_dataset, load_motions_npz
from pipeline.evaluate_stage import EvaluationResult, markdown_report, run_evaluation
from pipeline.sample_stage import run_sampling
from pipeline.skeletons import get_skeleton
from pipeline.synthetic import generate_motions
from pipeline.train_stage import run_training
from storage import Catalog, Workspace, file_sha256, stage_key


@dataclass
class BenchmarkSpec:
    """What to benchmark. Exactly one of ``motions_npz`` / ``procedural`` (number of procedural motions)."""

    name: str = "bench3d"
    motions_npz: str | None = None
    procedural: int | None = None
    skeleton: str = "coco17"
    fps: float = 30.0
    length: int = 60
    test_fraction: float = 0.2
    seed: int = 0
    run: str | None = None  # a run already trained on this benchmark's dataset
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=4000, batch_size=64, lr=5e-4, num_layers=2, latent_dim=128, ff_size=256, save_every=500
        )
    )
    n: int = 1000
    repeats: int = 5
    sds_iterations: int = 1000
    evaluator: EvaluatorConfig | None = None
    evaluator_max_steps: int = 20000
    device: str = "auto"
    precision: str = "auto"
    rigid_bones: bool = False  # also sample MAS with fixed bone lengths (MASConfig.rigid_bones) and score it too

    def __post_init__(self) -> None:
        if (self.motions_npz is None) == (self.procedural is None):
            raise ValueError("benchmark-3d: give exactly one source of motions: --motions FILE.npz or --procedural N")


@dataclass
class BenchmarkResult:
    evaluation: EvaluationResult
    report: str
    seconds: dict[str, float]


def build_dataset(ws: Workspace, spec: BenchmarkSpec) -> str:
    """Build (or reuse) the benchmark dataset; returns its description."""
    skeleton = get_skeleton(spec.skeleton)
    params = {"fps": spec.fps, "length": spec.length, "test_fraction": spec.test_fraction, "seed": spec.seed,
              "skeleton": spec.skeleton, "procedural": spec.procedural}  # fmt: skip
    inputs = [file_sha256(spec.motions_npz)] if spec.motions_npz else []
    key = stage_key("benchmark-dataset", inputs, params)
    catalog = Catalog(ws)
    if spec.procedural is not None:
        if spec.skeleton != "coco17":
            raise ValueError("procedural motions are made for the coco17 skeleton; use --skeleton coco17")
        clips, clip_fps = list(generate_motions(spec.procedural, spec.length, spec.fps, spec.seed)), spec.fps
        source = f"{spec.procedural} procedural 3D motions (walk, run, jump, turn, arm swing)"
    else:
        clips, clip_fps = load_motions_npz(spec.motions_npz)
        source = f"{len(clips)} clips from {Path(spec.motions_npz).name}"
    if not catalog.is_done("dataset", spec.name, key):
        catalog.mark_running("dataset", spec.name, key=key)
        try:
            data = build_benchmark_dataset(ws, spec.name, clips, clip_fps, skeleton, fps=spec.fps, length=spec.length,
                                           test_fraction=spec.test_fraction, seed=spec.seed, source=source)  # fmt: skip
        except BaseException as exc:
            catalog.mark_failed("dataset", spec.name, exc, key=key)
            raise
        catalog.mark_done("dataset", spec.name, key=key, outputs=list(data.paths), params=params,
                          meta={"source": source})  # fmt: skip
    return source


def run_benchmark_3d(ws: Workspace, spec: BenchmarkSpec, progress: bool = True, log=print) -> BenchmarkResult:
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    source = build_dataset(ws, spec)
    seconds["dataset"] = time.perf_counter() - start
    run = spec.run
    if run is None:
        run = f"{spec.name}-model"
        record = Catalog(ws).get("checkpoint", run)
        if record is None or record.status != "done" or (record.meta or {}).get("step", 0) < spec.train.steps:
            log(f"training {run} on the train split of {spec.name} (2D only)")
            t = time.perf_counter()
            cfg = TrainConfig(**{**spec.train.__dict__, "max_len": spec.length, "device": spec.device})
            run_training(ws, spec.name, run, cfg, progress=progress)
            seconds["train"] = time.perf_counter() - t
    trained = load_trained_model(ws, run, resolve_device(spec.device))
    if trained.dataset != spec.name:
        raise ValueError(
            f"run {run!r} was trained on dataset {trained.dataset!r}, not on the benchmark's "
            f"{spec.name!r}: it may have seen the held-out motions; train on {spec.name!r}"
        )
    total = spec.n * spec.repeats
    log(f"sampling {total} MAS motions ({spec.n} per draw x {spec.repeats} draws)")
    t = time.perf_counter()
    mas_name = f"{spec.name}-mas"
    run_sampling(ws, run, mas_name, num_samples=total, length=spec.length, mas=MASConfig(), seed=spec.seed,
                 device=spec.device, precision=spec.precision, render=1, progress=progress)  # fmt: skip
    seconds["MAS sampling"] = time.perf_counter() - t
    sets, labels = [mas_name], {mas_name: "MAS (5 views)"}
    if spec.rigid_bones:
        t = time.perf_counter()
        rigid_name = f"{spec.name}-mas-rigid"
        log(f"sampling {total} MAS motions with fixed bone lengths (rigid_bones)")
        run_sampling(ws, run, rigid_name, num_samples=total, length=spec.length, mas=MASConfig(rigid_bones=True),
                     seed=spec.seed, device=spec.device, precision=spec.precision, render=1,
                     progress=progress)  # fmt: skip
        sets.append(rigid_name)
        labels[rigid_name] = "MAS + rigid bones"
        seconds["MAS + rigid bones sampling"] = time.perf_counter() - t
    t = time.perf_counter()
    evaluation = run_evaluation(ws, run, f"{spec.name}-eval", sets, length=spec.length, n=spec.n,
                                repeats=spec.repeats, evaluator=spec.evaluator,
                                evaluator_max_steps=spec.evaluator_max_steps, sds_iterations=spec.sds_iterations,
                                device=spec.device, precision=spec.precision, seed=spec.seed,
                                progress=progress)  # fmt: skip
    seconds["evaluation (SDS sampling, evaluator, scoring)"] = time.perf_counter() - t
    table = evaluation.table.replace(labels)
    evaluator_record = Catalog(ws).get("evaluator", evaluation.evaluator_folder.rsplit("/", 1)[-1])
    evaluator_meta = evaluator_record.meta if evaluator_record is not None else {}
    size = (evaluator_record.params or {}).get("config", {}) if evaluator_record is not None else {}
    evaluator_text = (f"{size.get('num_layers', '?')} layers x {size.get('latent_dim', '?')} d, FF "
                      f"{size.get('ff_size', '?')}, {evaluator_meta.get('steps', '?')} steps (best held-out "
                      f"reconstruction loss {evaluator_meta.get('best_val_loss', float('nan')):.4f} at step "
                      f"{evaluator_meta.get('best_step', '?')}; curve in "
                      f"`{ws.relative(evaluation.evaluator_folder)}/loss.png`)")  # fmt: skip
    record = Catalog(ws).get("checkpoint", run)
    meta = record.meta if record is not None else {}
    model = trained.model.config
    model_text = (f"Model run `{run}`: {model.num_layers} layers, {model.latent_dim} d, {meta.get('step', '?')} steps, "
                  f"final loss {meta.get('final_loss', float('nan')):.4f}, {meta.get('samples_per_s', '?')} "
                  "samples/s in training.")  # fmt: skip
    report = (
        f"Motions: {source}; resampled to {spec.fps:g} fps, windows of {spec.length} frames; whole clips held out "
        f"({spec.test_fraction:.0%}) BEFORE projection; each train window seen from one random perspective camera "
        f"(2D only for training); the test windows are the reference (their 2D for the 2D metrics, their 3D for "
        f"the 3D metrics). {model_text} n = {evaluation.n} motions per draw; evaluator: {evaluator_text}.\n\n"
        + markdown_report(table, evaluation.warnings)
        + "\nWall time of this call (s; steps found finished in the workspace are not redone): "
        + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + "\n"
    )  # fmt: skip
    ws.write_text(f"{ws.evaluation_dir(spec.name + '-eval')}/benchmark.md", f"# 3D benchmark `{spec.name}`\n\n{report}")
    return BenchmarkResult(evaluation, report, seconds)
