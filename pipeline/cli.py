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


def not_ready(stage: str, issue: int) -> None:
    fail(f"the {stage} stage is not available in this version yet (tracked in issue #{issue})", code=3)


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


@app.command()
def download(
    config: ConfigOpt,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    source: Annotated[list[str] | None, typer.Option(help="Extra URL, playlist, URL file or local path.")] = None,
    force: ForceOpt = False,
) -> None:
    """Stage 1: download or import videos into the workspace."""
    read_config(config)
    open_workspace(workspace)
    not_ready("download", 3)


@app.command()
def track(
    config: ConfigOpt,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    video: Annotated[list[str] | None, typer.Option(help="Only these video ids (default: all).")] = None,
    force: ForceOpt = False,
) -> None:
    """Stage 2: detect and track subjects in every video."""
    read_config(config)
    open_workspace(workspace)
    not_ready("track", 3)


@app.command()
def pose(
    config: ConfigOpt,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    video: Annotated[list[str] | None, typer.Option(help="Only these video ids (default: all).")] = None,
    force: ForceOpt = False,
) -> None:
    """Stage 3: top-down 2D pose estimation on the tracked boxes."""
    read_config(config)
    open_workspace(workspace)
    not_ready("pose", 3)


@app.command()
def process(config: ConfigOpt, workspace: WorkspaceOpt = DEFAULT_WORKSPACE, force: ForceOpt = False) -> None:
    """Stage 4: turn tracked poses into a confidence-weighted 2D motion dataset."""
    read_config(config)
    open_workspace(workspace)
    not_ready("process", 4)


@app.command()
def train(
    dataset: Annotated[str, typer.Option(help="Dataset name in the workspace.")],
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    steps: Annotated[int, typer.Option(min=1, help="Training steps.")] = 100_000,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    lr: Annotated[float, typer.Option(min=0.0)] = 1e-5,
) -> None:
    """Stage 5: train the 2D motion diffusion model."""
    open_workspace(workspace)
    not_ready("train", 5)


@app.command()
def sample(
    run: Annotated[str, typer.Option(help="Training run (checkpoint) name.")],
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    num_samples: Annotated[int, typer.Option(min=1)] = 8,
    views: Annotated[int, typer.Option(min=2, help="Number of MAS views (at least 2).")] = 5,
    seed: int = 0,
) -> None:
    """Stage 6: sample 3D motions with Multi-view Ancestral Sampling."""
    open_workspace(workspace)
    not_ready("sample", 6)


@app.command()
def evaluate(
    run: Annotated[str, typer.Option(help="Training run (checkpoint) name.")],
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
) -> None:
    """Stage 7: the paper's 2D metrics and the 3D ground-truth benchmark."""
    open_workspace(workspace)
    not_ready("evaluate", 7)


@app.command()
def demo(workspace: WorkspaceOpt = Path("workspace-demo")) -> None:
    """Run the whole pipeline at small scale on bundled, offline data."""
    open_workspace(workspace)
    not_ready("demo", 9)


if __name__ == "__main__":
    app()
