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
from models.mas import MASConfig, SamplingError
from models.trainer import TrainConfig, resolve_device
from pipeline.benchmark_data import build_benchmark_dataset, load_motions_npz
from pipeline.evaluate_stage import EvaluationResult, markdown_report, run_evaluation
from pipeline.sample_stage import ABLATION_TITLES, ABLATIONS, run_sampling
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
    # Table 3 rows (labels of pipeline.sample_stage.ABLATIONS) instead of the default MAS row, scored in their own
    # evaluation `<name>-ablations-n<n>` with the same floor and trivial rows at this n
    ablations: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.motions_npz is None) == (self.procedural is None):
            raise ValueError("benchmark-3d: give exactly one source of motions: --motions FILE.npz or --procedural N")
        unknown = sorted(set(self.ablations) - set(ABLATIONS))
        if unknown:
            raise ValueError(f"unknown ablations {unknown}; choose from {sorted(ABLATIONS)}")

    @property
    def evaluation_name(self) -> str:
        return f"{self.name}-ablations-n{self.n}" if self.ablations else f"{self.name}-eval"


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


def run_benchmark_3d(ws: Workspace, spec: BenchmarkSpec, progress: bool = True, log=print,
                     sample_only: bool = False) -> BenchmarkResult | None:  # fmt: skip
    """Build, train, sample and evaluate (``sample_only``: stop after sampling, e.g. to sample on a second core while
    another process trains the evaluator; a later full call finds the samples cached)."""
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
    if spec.ablations:
        sets, labels, skipped = _sample_ablations(ws, spec, run, seconds, log, progress)
    else:
        sets, skipped = _sample_mas(ws, spec, run, seconds, log, progress), []
        labels = {sets[0]: "MAS (5 views)"} | ({sets[1]: "MAS + rigid bones"} if spec.rigid_bones else {})
    if sample_only:
        return None
    t = time.perf_counter()
    evaluation = run_evaluation(ws, run, spec.evaluation_name, sets, length=spec.length, n=spec.n,
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
        + "".join(f"Ablation {label} skipped: {why}\n\n" for label, why in skipped)
        + markdown_report(table, evaluation.warnings)
        + "\nWall time of this call (s; steps found finished in the workspace are not redone): "
        + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + "\n"
    )  # fmt: skip
    path = f"{ws.evaluation_dir(spec.evaluation_name)}/benchmark.md"
    ws.write_text(path, f"# 3D benchmark `{spec.name}`\n\n{report}")
    return BenchmarkResult(evaluation, report, seconds)


def _sample_mas(ws: Workspace, spec: BenchmarkSpec, run: str, seconds: dict, log, progress: bool) -> list[str]:
    """The default MAS set (and the fixed-bone-length one when asked); returns their names."""
    total = spec.n * spec.repeats
    configs = [("MAS", f"{spec.name}-mas", MASConfig())]
    if spec.rigid_bones:
        configs.append(("MAS + rigid bones", f"{spec.name}-mas-rigid", MASConfig(rigid_bones=True)))
    for title, name, mas in configs:
        log(f"sampling {total} motions with {title} ({spec.n} per draw x {spec.repeats} draws)")
        t = time.perf_counter()
        run_sampling(ws, run, name, num_samples=total, length=spec.length, mas=mas, seed=spec.seed,
                     device=spec.device, precision=spec.precision, render=1, progress=progress)  # fmt: skip
        seconds[f"{title} sampling"] = time.perf_counter() - t
    return [name for _, name, _ in configs]


def _sample_ablations(ws: Workspace, spec: BenchmarkSpec, run: str, seconds: dict, log,
                      progress: bool) -> tuple[list[str], dict[str, str], list[tuple[str, str]]]:  # fmt: skip
    """Sample each Table 3 row; a row whose geometry cannot hold the motions (a camera inside the motion's reach)
    is skipped and reported, the others go on. Returns the set names, their titles and the skipped rows."""
    total = spec.n * spec.repeats
    sets, labels, skipped = [], {}, []
    for label in spec.ablations:
        name = f"{spec.name}-n{total}-{label}"
        log(f"sampling {total} motions for the ablation {ABLATION_TITLES[label]}")
        t = time.perf_counter()
        try:
            run_sampling(ws, run, name, num_samples=total, length=spec.length, mas=MASConfig(**ABLATIONS[label]),
                         seed=spec.seed, device=spec.device, precision=spec.precision, render=0,
                         progress=progress)  # fmt: skip
        except (ValueError, SamplingError) as exc:
            log(f"ablation {label} skipped: {exc}")
            skipped.append((ABLATION_TITLES[label], str(exc)))
            continue
        seconds[f"{label} sampling"] = time.perf_counter() - t
        sets.append(name)
        labels[name] = ABLATION_TITLES[label]
    if not sets:
        raise ValueError(f"every ablation was skipped: {skipped}")
    return sets, labels, skipped
