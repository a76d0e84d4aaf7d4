"""One Prefect flow per pipeline stage, the parent ``build_dataset`` flow and ``end_to_end``.

Flows are thin: they call the same functions as the CLI, map tasks per video (never per frame), record artifacts and
log through the run logger. Finished work is skipped through the storage content hashes; ``force`` recomputes. A
task that fails for one video is recorded (catalog + task state) and leaves the other videos and the flow run intact.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture, wait
from prefect.states import Completed, State
from prefect.tasks import exponential_backoff

from flows import artifacts
from flows.common import gpu_slot, key, open_inputs, workspace_root
from pipeline.config import Source
from storage import Catalog


class VideoStageError(RuntimeError):
    """One video failed in a stage (already recorded in the catalog)."""


class BadVideoError(VideoStageError):
    """A video that cannot succeed as it is (corrupt or empty file): its task fails at once, without retries."""


class UnknownVideoError(ValueError):
    """Video ids asked for that have no finished input record; the message lists the known ids."""


def _retry_unless_bad_video(task, task_run, state) -> bool:
    """Prefect's documented pattern: the failed state's ``result()`` raises the task's exception (``state.data`` may
    hold a result record instead of it: a bad video was once retried in a CI run)."""
    try:
        state.result()
    except BadVideoError:
        return False
    except Exception:  # noqa: BLE001 - any other failure may pass on a retry
        return True
    return True


# ------------------------------------------------------------------------------------------------------------ tasks
@task(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2), task_run_name="download {item}",
      retry_condition_fn=_retry_unless_bad_video)  # fmt: skip
def download_item(workspace: str, source: dict[str, Any], item: str, config: str,
                  overrides: list[str] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    from pipeline.download import fetch_item

    ws, cfg = open_inputs(workspace, config, overrides)
    src = Source(**source)
    # Prefect retries the task with backoff, so yt-dlp itself does not retry here
    results = fetch_item(ws, src, item, cfg.download.model_copy(update={"retries": 0}))
    rows = [{"video_id": r.video_id, "status": r.status, "source": r.source, "error": r.error} for r in results]
    failures = [r for r in results if r.status == "failed"]
    if failures and src.kind != "local":  # let Prefect retry with backoff; the catalog keeps the error meanwhile
        raise VideoStageError(f"download of {item} failed: {failures[0].error}")
    if failures:  # a corrupt or empty file: a red task run with the error, no retries
        raise BadVideoError(f"video {failures[0].video_id} ({item}) cannot be used: {failures[0].error}")
    return rows


@task(task_run_name="track {video_id}")
def track_task(workspace: str, config: str, video_id: str, force: bool,
               overrides: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    from pipeline.detect_track import track_video

    ws, cfg = open_inputs(workspace, config, overrides)
    with gpu_slot():
        result = track_video(ws, video_id, cfg.detector, force=force, progress=False)
    get_run_logger().info("track %s: %s, %d tracks", video_id, result.status, result.tracks)
    if result.note:
        get_run_logger().warning("track %s: %s", video_id, result.note)
    if result.status == "failed":
        raise VideoStageError(f"tracking {video_id} failed: {result.error}")
    row = {"video_id": video_id, "status": result.status, "tracks": result.tracks, "boxes": result.detections}
    return {**row, "note": result.note} if result.note else row


@task(task_run_name="pose {video_id}")
def pose_task(workspace: str, config: str, video_id: str, force: bool, overrides: list[str] | None = None,
              overlay: bool = True) -> dict[str, Any]:  # fmt: skip
    from pipeline.overlay import write_overlay
    from pipeline.pose import pose_video

    ws, cfg = open_inputs(workspace, config, overrides)
    with gpu_slot():
        result = pose_video(ws, video_id, cfg.pose, cfg.body_model, force=force, progress=False)
    if result.status == "failed":
        raise VideoStageError(f"pose of {video_id} failed: {result.error}")
    row = {"video_id": video_id, "status": result.status, "poses": result.rows}
    if overlay:
        row["overlay"] = write_overlay(ws, video_id)[0]
    return row


def _gather(futures: list[tuple[str, PrefectFuture]], stage: str, total_key: str) -> list[dict[str, Any]]:
    """Wait for per-video futures, updating a progress artifact; failed ones become rows with their error."""
    progress = create_progress_artifact(progress=0.0, key=key(total_key), description=f"{stage}: videos finished")
    rows: list[dict[str, Any]] = []
    done = 0
    for label, future in futures:
        wait([future])
        state = future.state
        if state.is_completed():
            value = future.result()
            rows.extend(value if isinstance(value, list) else [value])
        else:
            rows.append({"video_id": label, "status": "failed", "error": str(state.message)[:500]})
        done += 1
        update_progress_artifact(progress, 100.0 * done / max(len(futures), 1))
    return rows


def _done_ids(workspace: str, kind: str, wanted: list[str] | None, stage: str) -> list[str]:
    """The ids to run ``stage`` on: ``wanted`` (each must have a finished ``kind`` record) or every finished one."""
    ws, _ = open_inputs(workspace)
    done = [r.id for r in Catalog(ws).records(kind) if r.status == "done"]
    unknown = [v for v in wanted or [] if v not in done]
    if unknown:
        known = ", ".join(done) if done else "none"
        raise UnknownVideoError(f"{stage}: no finished {kind} record for {', '.join(unknown)} in {workspace}; "
                                f"known ids: {known} (`mas status -w {workspace}` shows failed ones too)")  # fmt: skip
    return list(wanted) if wanted else done


def finish(rows: list[dict[str, Any]], stage: str) -> State:
    """The flow run's final state: Completed, named "Completed with failures" (message naming the videos) when some
    per-video tasks failed, so the other videos' results stay usable and the partial failure stays visible."""
    failed = [str(r.get("video_id")) for r in rows if r.get("status") == "failed"]
    if not failed:
        return Completed(data=rows)
    message = f"{stage}: {len(failed)} of {len(rows)} videos failed ({', '.join(failed)}); see the failed task runs"
    get_run_logger().warning(message)
    return Completed(name="Completed with failures", message=message, data=rows)


# ------------------------------------------------------------------------------------------------------------ flows
@flow(name="download", log_prints=True)
def download_flow(config: str, workspace: str | None = None,
                  overrides: list[str] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Stage 1: every source item is a task with retries and exponential backoff."""
    workspace = workspace_root(workspace)
    from pipeline.download import expand_sources

    ws, cfg = open_inputs(workspace, config, overrides)
    items = expand_sources(cfg.sources, ws)
    futures = [(item, download_item.submit(workspace, s.model_dump(), item, config, overrides)) for s, item in items]
    rows = _gather(futures, "download", f"download-progress-{cfg.name}")
    artifacts.catalog_table(ws, "video", key(f"videos-{cfg.name}"))
    return finish(rows, "download")


def _per_video(stage_task, stage: str, input_kind: str, config: str, workspace: str, videos: list[str] | None,
               force: bool, overrides: list[str] | None) -> State:  # fmt: skip
    """Map ``stage_task`` over the videos whose ``input_kind`` record is done; table + progress artifacts."""
    _, cfg = open_inputs(workspace, config, overrides)
    ids = _done_ids(workspace, input_kind, videos, stage)
    rows = _gather([(v, stage_task.submit(workspace, config, v, force, overrides)) for v in ids], stage,
                   f"{stage}-progress-{cfg.name}")  # fmt: skip
    artifacts.table(key(f"{stage}s-{cfg.name}"), rows, f"{stage} per video")
    return finish(rows, stage)


@flow(name="track", log_prints=True)
def track_flow(config: str, workspace: str | None = None, videos: list[str] | None = None, force: bool = False,
               overrides: list[str] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Stage 2 for one video, a list, or all videos of the workspace."""
    workspace = workspace_root(workspace)
    return _per_video(track_task, "track", "video", config, workspace, videos, force, overrides)


@flow(name="pose", log_prints=True)
def pose_flow(config: str, workspace: str | None = None, videos: list[str] | None = None, force: bool = False,
              overrides: list[str] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Stage 3 for one video, a list, or all tracked videos."""
    workspace = workspace_root(workspace)
    return _per_video(pose_task, "pose", "tracks", config, workspace, videos, force, overrides)


@flow(name="process", log_prints=True)
def process_flow(config: str, workspace: str | None = None, force: bool = False,
                 overrides: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Stage 4: build the dataset and show its card."""
    workspace = workspace_root(workspace)
    from pipeline.dataset_stage import build_dataset

    ws, cfg = open_inputs(workspace, config, overrides)
    result = build_dataset(ws, cfg, force=force)
    folder = ws.dataset_dir(cfg.name)
    card = artifacts.inline_images(ws.read_text(f"{folder}/card.md"), lambda path: ws.read_bytes(f"{folder}/{path}"))
    artifacts.markdown(key(f"dataset-card-{cfg.name}"), card, f"dataset card of {cfg.name}")
    return {"dataset": result.name, "clips": result.num_clips, "dropped": result.dropped, "skipped": result.skipped}


@flow(name="train", log_prints=True)
def train_flow(dataset: str, workspace: str | None = None, run: str | None = None, steps: int = 100_000,
               batch_size: int = 32, lr: float = 1e-5, num_layers: int = 8, latent_dim: int = 512, max_len: int = 120,
               device: str = "auto") -> dict[str, Any]:  # fmt: skip
    """Stage 5 (resumes from the run's checkpoint); holds the GPU slot while training."""
    workspace = workspace_root(workspace)
    from models.trainer import TrainConfig
    from pipeline.train_stage import run_training

    ws, _ = open_inputs(workspace)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, num_layers=num_layers, latent_dim=latent_dim,
                      ff_size=2 * latent_dim, max_len=max_len, device=device)  # fmt: skip
    with gpu_slot():
        result = run_training(ws, dataset, run or dataset, cfg, progress=False)
    artifacts.table(key(f"training-{result.run}"), result.history[-50:], f"training metrics of {result.run}")
    return {"run": result.run, "step": result.step, "final_loss": result.final_loss, "checkpoint": result.checkpoint}


@flow(name="sample", log_prints=True)
def sample_flow(run: str, workspace: str | None = None, name: str | None = None, method: str = "mas",
                num_samples: int = 8, length: int | None = None, views: int = 5, seed: int = 0,
                device: str = "auto", precision: str = "auto") -> dict[str, Any]:  # fmt: skip
    """Stage 6: MAS (or SDS) samples with BVH, videos and view pictures (precision auto: models/precision.py)."""
    workspace = workspace_root(workspace)
    from models.mas import MASConfig
    from pipeline.sample_stage import run_sampling

    ws, _ = open_inputs(workspace)
    with gpu_slot():
        result = run_sampling(ws, run, name or f"{run}-{method}", method=method, num_samples=num_samples,
                              length=length, mas=MASConfig(num_views=views), seed=seed, device=device,
                              precision=precision, progress=False)  # fmt: skip
    links = "\n".join(f"- `{p}`" for p in result.paths)
    views = "\n\n".join(f"![{p.rsplit('/', 1)[-1]}]({p})" for p in result.paths if p.endswith("_views.png"))
    text = artifacts.inline_images(f"# Samples `{result.name}`\n\n{views}\n\n{links}\n", ws.read_bytes)
    artifacts.markdown(key(f"samples-{result.name}"), text, "sample outputs")
    return {"name": result.name, "shape": list(result.motions.shape), "seconds": result.seconds}


@flow(name="evaluate", log_prints=True)
def evaluate_flow(run: str, sample_sets: list[str], workspace: str | None = None, name: str | None = None,
                  length: int | None = None, n: int = 1000, repeats: int = 5, evaluator_layers: int = 6,
                  evaluator_dim: int = 256, evaluator_ff: int = 1024, evaluator_steps: int = 20000,
                  sds_baseline: bool = True, device: str = "auto") -> dict[str, Any]:  # fmt: skip
    """Stage 7: the metrics table (floor, trivial baselines, reference methods, evaluated sets) as artifacts."""
    workspace = workspace_root(workspace)
    from models.evaluator import EvaluatorConfig
    from pipeline.evaluate_stage import markdown_report, run_evaluation

    ws, _ = open_inputs(workspace)
    evaluator = EvaluatorConfig(num_joints=1, num_layers=evaluator_layers, latent_dim=evaluator_dim,
                                ff_size=evaluator_ff)  # fmt: skip
    result = run_evaluation(ws, run, name or f"{run}-eval", sample_sets, length=length, n=n, repeats=repeats,
                            evaluator=evaluator, evaluator_max_steps=evaluator_steps, sds_baseline=sds_baseline,
                            device=device, progress=False)  # fmt: skip
    pictures = "".join(f"\n![headline metrics]({p})\n" for p in result.paths if p.endswith("metrics.png"))
    report = markdown_report(result.table, result.warnings, max_metrics=2) + pictures
    artifacts.markdown(key(f"evaluation-{name or run}"), artifacts.inline_images(report, ws.read_bytes),
                       "evaluation: floor, trivial baselines and methods")  # fmt: skip
    artifacts.table(key(f"evaluation-table-{name or run}"), result.table, "evaluation metrics (raw)")
    return {"rows": len(result.table), "paths": result.paths, "warnings": result.warnings}


@flow(name="build-dataset", log_prints=True)
def build_dataset(config: str, workspace: str | None = None, force: bool = False, dask_address: str | None = None,
                  videos: list[str] | None = None, overrides: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """download → track → pose → process, each stage skipping finished videos (``force`` + ``videos``: redo those).

    ``dask_address`` (``tcp://scheduler:8786``) runs the per-video tasks on an existing Dask cluster.
    """
    workspace = workspace_root(workspace)
    logger = get_run_logger()
    stages = [download_flow, track_flow, pose_flow]
    if dask_address:
        from flows.runners import dask_runner

        stages = [s.with_options(task_runner=dask_runner(dask_address)) for s in stages]
    download, track, pose = stages
    problems: list[str] = []
    downloads = _child(download, problems, config, workspace, overrides=overrides)
    logger.info("downloaded: %s", ", ".join(f"{r.get('video_id')} {r.get('status')}" for r in downloads))
    _child(track, problems, config, workspace, videos=videos, force=force, overrides=overrides)
    _child(pose, problems, config, workspace, videos=videos, force=force, overrides=overrides)
    return parent_state(_child(process_flow, problems, config, workspace, force=force, overrides=overrides), problems,
                        "build-dataset")  # fmt: skip


def _child(flow_fn, problems: list[str], *args: Any, **kwargs: Any) -> Any:
    """Run a child flow and return its result; a child that ended "Completed with failures" adds its message (the
    stage and the videos that failed) to ``problems``, a failed one raises its error as a plain call would."""
    state = flow_fn(*args, return_state=True, **kwargs)
    result = state.result()  # raises the child's exception when it failed
    if state.name == "Completed with failures" or not state.is_completed():
        problems.append(state.message or f"{flow_fn.name}: {state.name}")
    return result


def parent_state(result: Any, problems: list[str], name: str) -> State:
    """A parent flow's final state: Completed, or "Completed with failures" naming each child's failed videos and
    stage, so the parent run does not read plain Completed when a child did not."""
    if not problems:
        return Completed(data=result)
    message = f"{name}: " + "; ".join(problems)
    get_run_logger().warning(message)
    return Completed(name="Completed with failures", message=message, data=result)


@flow(name="end-to-end", log_prints=True)
def end_to_end(config: str, workspace: str | None = None, steps: int = 100_000, num_samples: int = 8,
               device: str = "auto", overrides: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """build_dataset → train → sample (MAS) → evaluate."""
    workspace = workspace_root(workspace)
    ws, cfg = open_inputs(workspace, config, overrides)
    problems: list[str] = []
    dataset = _child(build_dataset, problems, config, workspace, overrides=overrides)
    trained = train_flow(cfg.name, workspace, steps=steps, device=device)
    samples = sample_flow(trained["run"], workspace, num_samples=max(num_samples, 8), device=device)
    # one draw of all the samples (n = num_samples); use the evaluate flow with n x repeats samples for CIs
    evaluation = evaluate_flow(trained["run"], [samples["name"]], workspace, n=max(num_samples, 8), repeats=1,
                               device=device)  # fmt: skip
    return parent_state({"dataset": dataset, "train": trained, "samples": samples, "evaluation": evaluation},
                        problems, "end-to-end")  # fmt: skip
