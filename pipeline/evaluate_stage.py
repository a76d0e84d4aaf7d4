"""Stage 7: evaluation you can trust — the paper's 2D protocol, held-out 3D truth, floors and trivial baselines.

Protocol (the official code's ``eval/evaluate.py``, with its defaults where they fit a CPU):

- The reference is the TEST split: its 2D clips for the 2D metrics and, where a benchmark knows them, its held-out
  3D motions (``truth_3d.npz``) for the 3D metrics. Training never saw either.
- Every row is scored on ``n`` motions against ``n`` reference motions (the official code asserts equal sizes;
  ``n`` is capped by the test split). Each of the ``repeats`` draws takes NEW generated motions (disjoint chunks of
  the sample set: sample ``n x repeats``) and a new draw of the reference; the table gives mean ± 95% CI over draws.
- 2D metrics (FID, diversity, precision/recall with k = 3) on the embeddings of a motion evaluator (ACTOR-style VAE at
  the official size, trained on the train split until its held-out reconstruction loss stops improving; cached by
  content hash under ``evaluators/``), for projections from random azimuths (``all``) and from the side.
- 3D metrics (:func:`models.metrics.evaluate_3d`) against the held-out 3D: nearest-neighbour MPJPE (root-relative,
  and clip-centred with its pose and trajectory parts; precision and coverage, heading aligned, no scale fitting),
  speed/acceleration distributions, 3D feature FID, and plausibility (bones, feet, root travel and climb).
- Reference rows, computed by exactly the same code: the **floor** (real train data scored against the test
  reference at the same ``n``), the **trivial** baselines of :mod:`pipeline.baselines` (frozen mean pose, flat lift,
  random-depth lift, time-shuffled real motion), and the **reference** methods (plain 2D sampling of the model, plain
  SDS). A metric that does not rank the floor above every trivial row is flagged under the table.

``evaluations/<name>/``: ``metrics.csv``, ``metrics.md``, ``metrics.png``.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field, replace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from models.allocator import keep_freed_memory  # noqa: E402
from models.checkpoint import checkpoint_hashes, load_trained_model  # noqa: E402
from models.evaluator import EvaluatorConfig, embed  # noqa: E402
from models.mas import pass_tokens  # noqa: E402
from models.metrics import HEADLINE_3D, diversity, evaluate_3d, fid, mean_ci, normalize_3d, precision_recall  # noqa: E402
from models.precision import cache_params, checked_precision  # noqa: E402
from models.sampling import sample_2d  # noqa: E402
from models.sds import SDSConfig  # noqa: E402
from models.trainer import resolve_device  # noqa: E402
from pipeline import baselines  # noqa: E402
from pipeline.cameras import (  # noqa: E402
    BODY_SIZE_TO_UNIT,
    DEFAULT_DISTANCE,
    DEFAULT_ELEVATION,
    project_each,
    rotation_matrix,
)
from pipeline.evaluator_store import load_or_train_evaluator  # noqa: E402
from pipeline.skeletons import SkeletonError, dataset_skeleton  # noqa: E402
from storage import Catalog, Workspace, stage_key  # noqa: E402
from storage.motion_dataset import MotionDataset, model_input, open_motion_dataset, read_truth_3d  # noqa: E402

SIDE_AZIMUTH = math.pi / 2
METRICS_2D = ("fid", "diversity", "precision", "recall")
# Headline 2D metrics: lower FID and higher recall are better; each ranks the floor above every trivial baseline.
HEADLINE_2D = ("fid", "recall")
# Recall is a headline only where depth shows: from random views a lift of real 2D clips with a wrong depth still
# projects to real-looking 2D, so recall ("all") cannot reject it (procedural benchmark, n = 1000: floor 0.964 ± 0.012,
# random-depth lift 0.963 ± 0.026); from the side it can (0.43) and FID can from every view.
HEADLINE_VIEWS = {"recall": ("side", "-")}
HIGHER_IS_BETTER = ("recall", "precision")
KIND_ORDER = ("floor", "trivial", "reference", "evaluated")
PLAIN_2D_BATCH = 256  # motions per denoiser pass of the plain 2D row's sampling (and what its precision weighs)


@dataclass
class EvaluationResult:
    table: pd.DataFrame
    paths: list[str]
    n: int = 0
    evaluator_folder: str = ""
    warnings: list[str] = field(default_factory=list)


@dataclass
class MotionSet:
    """Motions to score: a ``pool`` of motions, 3D ``[P, L, J, 3]`` (body units) or 2D ``[P, L, J, 2]`` (data units),
    and ``draws``, one index array of ``n`` pool motions per draw. Each pool motion is projected and embedded once,
    however many draws hold it (real data is drawn as random subsets of a pool smaller than ``n x repeats``)."""

    label: str
    kind: str
    pool: np.ndarray
    draws: list[np.ndarray]

    @property
    def is_3d(self) -> bool:
        return self.pool.shape[-1] == 3


def dataset_xy(dataset: MotionDataset, split: str, length: int, real_only: bool = False) -> np.ndarray:
    """First ``length`` frames of every clip of a split in data units ``[N, L, J, 2]``, as the models see them
    (:func:`~storage.motion_dataset.model_input`: stored values, the dataset mean where there is none).
    ``real_only`` leaves out mirrored copies."""
    rows = dataset.split(split)
    if real_only and "mirrored" in rows:
        rows = rows[~rows["mirrored"].astype(bool)]
    out = []
    for offset, clip_len in zip(rows["offset"], rows["length"], strict=True):
        if clip_len < length:
            continue
        clip = np.asarray(dataset.clips[offset : offset + length])
        z, _ = model_input(clip, dataset.mean, dataset.std, dataset.conf_threshold)
        out.append(z * dataset.std + dataset.mean)
    if not out:
        raise ValueError(f"no {split} clip has {length} frames; evaluate with a shorter --length")
    return np.stack(out).astype(np.float32)


@dataclass(frozen=True)
class EvalCamera:
    """Where evaluation projects 3D motions from, as the official code does per dataset (``sample_elevation_angle``,
    ``distance`` of its dataset configs): the elevation is drawn uniformly from ``elevation_range`` for each motion.
    A benchmark dataset records the cameras its 2D data was made with (``elevation_range``, ``distance`` in its
    meta), so generated and real motions are seen the same way; video datasets use the MAS cameras (the NBA
    config's fixed pi/16 at distance 7)."""

    elevation_range: tuple[float, float] = (DEFAULT_ELEVATION, DEFAULT_ELEVATION)
    distance: float = DEFAULT_DISTANCE

    @classmethod
    def of(cls, dataset: MotionDataset) -> EvalCamera:
        low, high = dataset.meta.get("elevation_range", (DEFAULT_ELEVATION, DEFAULT_ELEVATION))
        return cls((float(low), float(high)), float(dataset.meta.get("distance", DEFAULT_DISTANCE)))

    def elevations(self, rng: np.random.Generator, count: int) -> np.ndarray:
        return rng.uniform(*self.elevation_range, count)


def project_for_eval(
    motions: np.ndarray,
    azimuths: np.ndarray,
    root,
    body,
    mean,
    std,
    elevations: np.ndarray | None = None,
    distance: float = DEFAULT_DISTANCE,
) -> np.ndarray:
    """Project 3D motions ``[N, L, J, 3]`` (one azimuth and elevation each), normalise like the data
    (:func:`~pipeline.cameras.normalize_2d`, all joints valid) and z-score: ``[N, L, J, 2]``. One batched projection
    for all motions (a loop over motions took 9 of 60 s of a 1000 x 2 evaluation)."""
    if not np.isfinite(motions).all():
        raise ValueError("motions to evaluate hold NaN or inf")
    elevations = np.full(len(motions), DEFAULT_ELEVATION) if elevations is None else elevations
    motions = np.asarray(motions, dtype=np.float64)
    root, body = list(root), np.asarray(body)
    centred = motions - motions[:, :, root].mean(axis=(1, 2), keepdims=True)
    rotations = rotation_matrix(np.asarray(azimuths), np.asarray(elevations))[:, None]  # [N, 1, 3, 3]
    xy = project_each(centred, rotations, distance)[:, 0]  # [N, L, J, 2]
    points = xy[:, :, body]
    spread = np.sqrt(((points - points.mean(2, keepdims=True)) ** 2).sum(-1).mean(-1))  # [N, L], as frame_spread
    scale = np.median(spread, axis=1) / BODY_SIZE_TO_UNIT
    if not (np.isfinite(scale) & (scale > 0)).all():
        raise ValueError("degenerate body size in a projected motion: all its body joints coincide")
    centre = xy[:, :, root].mean(axis=(1, 2), keepdims=True)
    norm = (xy - centre) / scale[:, None, None, None]
    return ((norm.astype(np.float32) - mean) / std).astype(np.float32)


def draw_indices(count: int, n: int, repeats: int, rng: np.random.Generator, label: str,
                 generated: bool) -> list[np.ndarray]:  # fmt: skip
    """``repeats`` index sets of ``n`` of ``count`` motions. Disjoint while the set is large enough; a generated set
    with fewer than ``n x repeats`` motions gives fewer draws (never a motion twice), real data gives random subsets."""
    if count < n:
        fix = "sample more (`mas sample --num-samples`)" if generated else "lower --n"
        raise ValueError(f"{label}: {count} motions, but each draw needs n = {n}; {fix}")
    order = rng.permutation(count)
    if count >= n * repeats or generated:
        return [order[i * n : (i + 1) * n] for i in range(min(repeats, count // n))]
    return [rng.choice(count, n, replace=False) for _ in range(repeats)]


def motion_set(label: str, kind: str, motions: np.ndarray, n: int, repeats: int, rng: np.random.Generator,
               generated: bool = False, where: str | None = None) -> MotionSet:  # fmt: skip
    """A set with its draws; ``where`` names it in errors (default: ``label``)."""
    return MotionSet(label, kind, motions, draw_indices(len(motions), n, repeats, rng, where or label, generated))


def _sample_method(ws: Workspace, name: str) -> str | None:
    record = Catalog(ws).get("sample", name)
    return None if record is None else (record.meta or {}).get("method")


def reference_sets(dataset: MotionDataset, truth, skeleton, length: int, n: int, repeats: int,
                   rng: np.random.Generator) -> list[MotionSet]:  # fmt: skip
    """The floor and the trivial baselines, from the train split (2D) and the train 3D where known."""
    train_xy = dataset_xy(dataset, "train", length, real_only=True)
    sets = [motion_set("real train clips (2D)", "floor", train_xy, n, repeats, rng)]
    if truth is not None:
        real = normalize_3d(truth.train[:, :length], skeleton)
        sets.append(motion_set("real train motions (3D)", "floor", real, n, repeats, rng))
    else:
        real = None
    flat = normalize_3d(baselines.flat_lift(train_xy), skeleton)
    frozen = baselines.frozen_mean_pose(real if real is not None else flat, skeleton, n)
    sets.append(MotionSet("frozen mean pose", "trivial", frozen, [np.arange(n)] * len(sets[0].draws)))
    sets.append(motion_set("flat lift (depth 0)", "trivial", flat, n, repeats, rng))
    random_depth = normalize_3d(baselines.random_depth_lift(train_xy, rng), skeleton)
    sets.append(motion_set("random-depth lift", "trivial", random_depth, n, repeats, rng))
    shuffled = baselines.time_shuffled(real if real is not None else train_xy, rng)
    sets.append(motion_set("time-shuffled real", "trivial", shuffled, n, repeats, rng))
    return sets


def embed_once(evaluator, pool_z, draws: list[np.ndarray]) -> list[np.ndarray]:
    """Embeddings of every draw, each pool motion embedded once (``pool_z(indices)`` gives their z-scored 2D)."""
    used = np.unique(np.concatenate(draws))
    position = np.full(int(used.max()) + 1, -1)
    position[used] = np.arange(len(used))
    embeddings = embed(evaluator, pool_z(used))
    return [embeddings[position[draw]] for draw in draws]


def score_draws(motion_set: MotionSet, view: str, draw_refs, evaluator, dataset, skeleton, seed: int) -> dict:
    """2D (and, for 3D sets in the ``all`` view with truth, 3D) metrics of every draw; mean ± 95% CI.

    A 3D pool motion is seen from one camera per view mode (azimuth uniform over the circle for ``all``, the side
    for ``side``; elevation drawn per motion), the same in every draw that holds it."""
    pool = motion_set.pool
    if motion_set.is_3d:
        rng = np.random.default_rng([seed, 7, 0 if view == "all" else 1])
        camera = EvalCamera.of(dataset)
        azimuths = rng.uniform(-math.pi, math.pi, len(pool)) if view == "all" else np.full(len(pool), SIDE_AZIMUTH)
        elevations = camera.elevations(rng, len(pool))

        def pool_z(idx):
            return project_for_eval(pool[idx], azimuths[idx], skeleton.root, skeleton.body_joints, dataset.mean,
                                    dataset.std, elevations[idx], camera.distance)  # fmt: skip
    else:

        def pool_z(idx):
            return (pool[idx] - dataset.mean) / dataset.std

    values: dict[str, list[float]] = {}
    for r, (draw, emb) in enumerate(zip(motion_set.draws, embed_once(evaluator, pool_z, motion_set.draws),
                                        strict=True)):  # fmt: skip
        ref_embedding, ref_3d = draw_refs[r]
        precision, recall = precision_recall(ref_embedding, emb)
        result = {"fid": fid(ref_embedding, emb), "diversity": diversity(emb, pairs=min(200, len(emb) - 1), seed=r),
                  "precision": precision, "recall": recall}  # fmt: skip
        if motion_set.is_3d and view == "all" and ref_3d is not None:
            result.update(evaluate_3d(pool[draw], ref_3d, skeleton))
        for key, value in result.items():
            values.setdefault(key, []).append(value)
    row: dict = {"kind": motion_set.kind, "method": motion_set.label, "view": view,
                 "n": len(motion_set.draws[0]), "draws": len(motion_set.draws)}  # fmt: skip
    for key, vals in values.items():
        row[key], row[f"{key}_ci95"] = mean_ci(vals)
    return row


def run_evaluation(
    ws: Workspace,
    run: str,
    name: str,
    sample_sets: list[str],
    *,
    length: int | None = None,
    n: int = 1000,
    repeats: int = 5,
    evaluator: EvaluatorConfig | None = None,
    evaluator_max_steps: int = 20000,
    evaluator_patience: int = 5,
    model_row: bool = True,
    sds_baseline: bool = True,
    sds_iterations: int = 1000,
    device: str = "auto",
    precision: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> EvaluationResult:
    """Score ``sample_sets`` (names from ``mas sample``) of run ``run`` with the floor and baselines beside them.

    ``evaluator`` sets the evaluator's size (default: the official 6 layers, FF 1024, 256-d); ``sds_baseline`` samples
    plain SDS (``n x repeats`` motions, cached) unless one of ``sample_sets`` already is an SDS set.
    """
    keep_freed_memory()  # every pass reuses freed activations instead of faulting them in (models/allocator.py)
    dev = resolve_device(device)
    trained = load_trained_model(ws, run, dev)
    dataset = open_motion_dataset(ws, trained.dataset)
    skeleton = dataset_skeleton(dataset, trained.dataset)
    if not skeleton.same_body(trained.skeleton_model):
        raise SkeletonError(f"run {run!r} was trained on skeleton {trained.skeleton!r} but its dataset "
                            f"{trained.dataset!r} is now in {skeleton.name!r}; retrain the run")  # fmt: skip
    length = length or int(min(60, dataset.split("train")["length"].median()))
    truth = read_truth_3d(ws, dataset)
    test_xy = dataset_xy(dataset, "test", length)  # the reference: the paper's protocol uses the test split
    n = min(n, len(test_xy), len(truth.test) if truth is not None else len(test_xy))
    if n < 8:
        raise ValueError(f"the test split has only {n} clips of {length} frames; distribution metrics need >= 8")
    for sample_name in sample_sets:  # before any expensive work (the evaluator can train for minutes)
        check_sample_set(ws, sample_name, skeleton, length)
    catalog = Catalog(ws)
    catalog.mark_running("evaluation", name, run=run)
    try:
        config = replace(evaluator or EvaluatorConfig(num_joints=dataset.num_joints),
                         num_joints=dataset.num_joints, max_len=length)  # fmt: skip
        handle = load_or_train_evaluator(ws, trained.dataset, config, max_steps=evaluator_max_steps, seed=seed,
                                         device=str(dev), progress=progress, patience=evaluator_patience)  # fmt: skip
        rng = np.random.default_rng(seed)
        test_z = (test_xy - dataset.mean) / dataset.std
        test_3d = normalize_3d(truth.test[:, :length], skeleton) if truth is not None else None
        picks = [rng.choice(len(test_z), n, replace=False) for _ in range(repeats)]
        picks_3d = [rng.choice(len(test_3d), n, replace=False) if test_3d is not None else None for _ in picks]
        ref_embeddings = embed_once(handle.model, lambda idx: test_z[idx], picks)
        draw_refs = [(emb, test_3d[p] if test_3d is not None else None)
                     for emb, p in zip(ref_embeddings, picks_3d, strict=True)]  # fmt: skip
        sets = reference_sets(dataset, truth, skeleton, length, n, repeats, rng)
        if model_row:
            plain = plain_2d_samples(ws, run, trained, n * repeats, length, seed + 1, precision, progress)
            sets.append(motion_set("2D model (plain sampling)", "reference", plain, n, repeats, rng, True))
        methods = {s: _sample_method(ws, s) for s in sample_sets}
        if sds_baseline and "sds" not in methods.values():
            from pipeline.sample_stage import run_sampling

            sds_name = f"{run}-sds-baseline-n{n * repeats}-l{length}"
            run_sampling(ws, run, sds_name, method="sds", num_samples=n * repeats, length=length,
                         sds=SDSConfig(iterations=sds_iterations), seed=seed + 2, device=device, precision=precision,
                         render=0, progress=progress)  # fmt: skip
            sets.append(_sample_set(ws, sds_name, "SDS (plain)", "reference", skeleton, length, n, repeats, rng))
        for sample_name in sample_sets:
            sets.append(_sample_set(ws, sample_name, sample_name, "evaluated", skeleton, length, n, repeats, rng))
        jobs = [(scored, view) for scored in sets for view in (("all", "side") if scored.is_3d else ("-",))]
        rows = [score_draws(scored, view, draw_refs, handle.model, dataset, skeleton, seed)
                for scored, view in tqdm(jobs, desc="scoring rows", unit="row", disable=not progress)]  # fmt: skip
        table = pd.DataFrame(rows)
        warnings = ranking_failures(table)
        folder = ws.evaluation_dir(name)
        paths = _write_tables(ws, folder, table, name, warnings, handle.folder)
    except BaseException as exc:
        catalog.mark_failed("evaluation", name, exc)
        raise
    catalog.mark_done("evaluation", name, key=None, outputs=paths,
                      meta={"run": run, "sample_sets": sample_sets, "length": length, "n": n, "repeats": repeats,
                            "evaluator": ws.relative(handle.folder), "warnings": warnings})  # fmt: skip
    return EvaluationResult(table, paths, n, handle.folder, warnings)


def plain_2d_samples(ws: Workspace, run: str, trained, count: int, length: int, seed: int, precision: str,
                     progress: bool) -> np.ndarray:  # fmt: skip
    """The plain 2D row's ``count`` samples, in the precision the sample sets beside it were drawn with; kept in
    ``evaluations/plain-2d-samples/`` by the checkpoint's content and the sampling parameters, so evaluating another
    sample set of the same run does not sample them again (10 000 of them take minutes on a CPU)."""
    fast, resolved, _ = checked_precision(trained, precision, pass_tokens(trained, count, length, 1, PLAIN_2D_BATCH))
    key = stage_key(
        "plain-2d",
        checkpoint_hashes(ws, run),
        {"count": count, "length": length, "seed": seed, **cache_params(trained.device, resolved)},
    )
    path = f"{ws.evaluation_dir('plain-2d-samples')}/{run}-{key[:16]}.npz"
    if ws.exists(path):
        with ws.local_copy(path) as local, np.load(local) as npz:
            return npz["motions"]
    motions = sample_2d(fast, count, length, seed=seed, batch_size=PLAIN_2D_BATCH, progress=progress).cpu().numpy()
    buffer = io.BytesIO()
    np.savez(buffer, motions=motions)
    ws.write_bytes(path, buffer.getvalue())  # atomic: a half-written file is never found
    return motions


def check_sample_set(ws: Workspace, sample_name: str, skeleton, length: int) -> np.ndarray:
    """The motions of a sample set, or a clear error naming the set and the fix (missing, too short, wrong skeleton)."""
    path = f"{ws.samples_dir(sample_name)}/motions.npz"
    if not ws.exists(path):
        raise FileNotFoundError(f"sample set {sample_name!r} is not in {ws.url} (no {path}); sample it first with "
                                f"`mas sample --run RUN --name {sample_name}`, or check --samples")  # fmt: skip
    with ws.local_copy(path) as local, np.load(local) as npz:
        motions = npz["motions"]
        stored = str(npz["skeleton"]) if "skeleton" in npz.files else skeleton.name
    if stored != skeleton.name:
        raise ValueError(f"sample set {sample_name} was sampled in skeleton {stored!r}; the dataset's skeleton is "
                         f"{skeleton.name!r}; evaluate it with a run of its own dataset")  # fmt: skip
    if motions.shape[1] < length:
        raise ValueError(f"sample set {sample_name} has {motions.shape[1]} frames; evaluation needs {length}")
    if motions.shape[2] != len(skeleton.joints):
        raise ValueError(f"sample set {sample_name} has {motions.shape[2]} joints; the dataset's skeleton "
                         f"{skeleton.name} has {len(skeleton.joints)}")  # fmt: skip
    return motions


def _sample_set(ws, sample_name, label, kind, skeleton, length, n, repeats, rng) -> MotionSet:
    motions = normalize_3d(check_sample_set(ws, sample_name, skeleton, length)[:, :length], skeleton)
    return motion_set(label, kind, motions, n, repeats, rng, generated=True, where=f"sample set {sample_name}")


def _better(metric: str, a: float, a_ci: float, b: float, b_ci: float) -> bool:
    """Is ``a`` better than ``b`` beyond both confidence intervals?"""
    if metric in HIGHER_IS_BETTER:
        return a - a_ci > b + b_ci
    return a + a_ci < b - b_ci


def ranking_failures(table: pd.DataFrame) -> list[str]:
    """Headline metrics on which the floor does not beat a trivial baseline beyond the CIs (empty: all rank right).

    Each trivial row is compared with the floor of its own view (the real 3D floor) or, without 3D truth, with the
    2D floor (real train clips against the same test reference)."""
    failures = []
    floors = table[table["kind"] == "floor"]
    for _, row in table[table["kind"] == "trivial"].iterrows():
        same_view = floors[floors["view"] == row["view"]]
        floor = same_view.iloc[0] if len(same_view) else floors[floors["view"] == "-"].iloc[0]
        for metric in HEADLINE_2D + HEADLINE_3D:
            if metric not in row or not np.isfinite(row[metric]) or not np.isfinite(floor.get(metric, np.nan)):
                continue
            if row["view"] not in HEADLINE_VIEWS.get(metric, (row["view"],)):
                continue  # reported, not a headline in this view
            if not _better(metric, floor[metric], floor[f"{metric}_ci95"], row[metric], row[f"{metric}_ci95"]):
                failures.append(f"{metric} ({row['view']}): the floor ({floor[metric]:.4g}) does not beat "
                                f"'{row['method']}' ({row[metric]:.4g}) beyond the 95% CIs")  # fmt: skip
    return failures


def _cell(value, ci) -> str:
    if isinstance(value, float) and not np.isfinite(value):
        return "–"
    if isinstance(value, float):
        if ci is not None and np.isfinite(ci) and ci > 0:
            return f"{value:.4g} ± {ci:.2g}"
        return f"{value:.4g}"
    return str(value)


def markdown_table(table: pd.DataFrame, columns: list[str] | None = None) -> str:
    """Metrics as a Markdown table, ``mean ± ci`` where a CI column exists; headline columns are marked ★."""
    columns = columns or [c for c in table.columns if not c.endswith("_ci95")]
    headline = set(HEADLINE_2D + HEADLINE_3D)
    names = [f"{c} ★" if c in headline else c for c in columns]
    lines = ["| " + " | ".join(names) + " |", "|" + " --- |" * len(columns)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_cell(row[c], row.get(f"{c}_ci95")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


LEGEND = """\
How to read: each row is scored on `n` motions against `n` motions of the TEST split (never trained on), `draws`
times with new motions each draw (mean ± 95% CI). **floor** rows are real training data scored by the same code:
the best a method can hope for at this `n`. **trivial** rows are what a metric must reject (a frozen mean pose, 2D
clips with depth 0 or random depth, real motions with shuffled frames); **reference** rows are the 2D model itself
(plain 2D sampling) and plain SDS. A good method sits near the floor and far from every trivial row on the ★
(headline) metrics: FID lower, recall higher (a headline in the side view only: from random views a lift with
wrong depth still looks real in 2D); `mpjpe_rootrel` (nearest-neighbour MPJPE with each frame centred on its own
root: the pose, whatever the root path does; body heights, heading aligned, no scale fitting), `speed_w1`,
`accel_w1` (joint speed / acceleration distributions) and `fid_3d` lower. `mpjpe` (clip-centred: mean of
`mpjpe_precision` and `mpjpe_coverage`) is split on the same pairs into its pose part `mpjpe_pose` and its root
trajectory part `mpjpe_traj`. `bone_cv`, `foot_skate`, `floating`, `travel` (horizontal root path per clip) and
`climb` (vertical root displacement, first to last frame), both medians in body heights, are plausibility measures:
compare them with the floor's own values (real motion), not with zero.
"""


def _tables(table: pd.DataFrame, base: list[str], metrics: list[str], max_metrics: int | None) -> str:
    """One table, or (``max_metrics``) several narrow ones: the first with ``base`` columns and ``max_metrics``
    metrics, the others keyed by method (and view), so every column stays visible where wide tables are cut off (the
    Prefect UI)."""
    if not max_metrics or len(metrics) <= max_metrics:
        return markdown_table(table, base + metrics)
    keys = [c for c in ("method", "view") if c in base]
    wider = max_metrics + 2  # the later tables have fewer key columns: two more metrics fit
    chunks = [metrics[:max_metrics]] + [metrics[i : i + wider] for i in range(max_metrics, len(metrics), wider)]
    return "\n".join(markdown_table(table, (base if i == 0 else keys) + c) for i, c in enumerate(chunks))


def markdown_report(table: pd.DataFrame, warnings: list[str], max_metrics: int | None = None) -> str:
    """The 2D table, the 3D table (rows with 3D metrics) and the ranking check, with the legend; ``max_metrics``
    splits the tables into narrower ones of at most that many metric columns."""
    base = ["kind", "method", "view", "n", "draws"]
    parts = [LEGEND, "\n### 2D metrics (the paper's protocol)\n\n",
             _tables(table, base, list(METRICS_2D), max_metrics)]  # fmt: skip
    if "mpjpe" in table:
        rows = table[np.isfinite(table["mpjpe"].astype(float))]
        cols = ["mpjpe_rootrel", "mpjpe", "mpjpe_pose", "mpjpe_traj", "mpjpe_precision", "mpjpe_coverage",
                "speed_w1", "accel_w1", "fid_3d", "bone_cv", "foot_skate", "floating", "travel", "climb"]  # fmt: skip
        parts += ["\n### 3D metrics against the held-out 3D motions\n\n",
                  _tables(rows, ["kind", "method", "n", "draws"], cols, max_metrics)]  # fmt: skip
    if warnings:
        parts.append("\n**Ranking check failed** — these headline numbers cannot tell real motion from trivial "
                     "output on this data:\n\n" + "\n".join(f"- {w}" for w in warnings) + "\n")  # fmt: skip
    else:
        parts.append("\nRanking check: the floor beats every trivial baseline beyond the 95% CIs on every headline "
                     "metric.\n")  # fmt: skip
    return "".join(parts)


def _write_tables(ws: Workspace, folder: str, table: pd.DataFrame, name: str, warnings: list[str],
                  evaluator_folder: str) -> list[str]:  # fmt: skip
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    paths = [ws.write_text(f"{folder}/metrics.csv", buffer.getvalue())]
    note = f"\nEvaluator (weights and loss curve): `{ws.relative(evaluator_folder)}`\n"
    paths.append(ws.write_text(f"{folder}/metrics.md", f"# Evaluation `{name}`\n\n{markdown_report(table, warnings)}"
                                                        + note))  # fmt: skip
    metrics = [m for m in HEADLINE_2D + HEADLINE_3D if m in table and np.isfinite(table[m].astype(float)).any()]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 4.2), squeeze=False)
    colours = {"floor": "#55a868", "trivial": "#c44e52", "reference": "#8172b2", "evaluated": "#4c72b0"}
    labels = [f"{m} ({v})" if v != "-" else m for m, v in zip(table["method"], table["view"], strict=True)]
    for ax, key in zip(axes[0], metrics, strict=True):  # every panel has every row (no bar: metric not defined there)
        values = table[key].astype(float).to_numpy()
        ax.barh(range(len(table)), values, xerr=np.nan_to_num(table[f"{key}_ci95"].astype(float).to_numpy()),
                capsize=2, color=[colours.get(k, "#999999") for k in table["kind"]])  # fmt: skip
        ax.set_yticks(range(len(table)), labels if ax is axes[0][0] else [""] * len(table), fontsize=7)
        ax.invert_yaxis()
        finite = values[np.isfinite(values)]
        if key not in HIGHER_IS_BETTER and (finite > 0).all() and finite.max() > 30 * finite.min():
            ax.set_xscale("log")
        ax.set_title(f"{key} ({'higher' if key in HIGHER_IS_BETTER else 'lower'} is better)", fontsize=9)
    fig.suptitle("green: floor (real data), red: trivial baselines, purple: reference methods, blue: evaluated",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    with ws.atomic_path(f"{folder}/metrics.png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    paths.append(f"{folder}/metrics.png")
    return paths
