"""Dataset configuration: one YAML file per dataset, validated by pydantic.

A bad file fails with :class:`ConfigError`, whose message names the file and each wrong field with the reason, e.g.
``configs/nba.yaml: fps: Input should be greater than 0``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.skeletons import SKELETONS, Skeleton, SkeletonError
from storage.ids import check_id

DETECTOR_CLASSES = ("person", "horse", "sports ball")


class ConfigError(ValueError):
    """A dataset configuration that cannot be used; the message names the field and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # `fps: .inf` is an error

    @model_validator(mode="before")
    @classmethod
    def _no_trust_weights(cls, data):
        if isinstance(data, dict) and "trust_weights" in data:
            raise ValueError("trust_weights was removed: weights are always read as tensors into networks the "
                             "project builds, so no file needs trusting; delete the key")  # fmt: skip
        return data


class Source(_Strict):
    """Where videos come from. ``kind``: url (a video or playlist URL), url_file (a text file of URLs, one a line),
    local (a file or a directory of videos), nba_api (play videos listed through the ``nba_api`` package)."""

    kind: Literal["url", "url_file", "local", "nba_api"]
    value: str = Field(min_length=1, description="the URL, the file or directory path, or the nba_api query")
    start: float | None = Field(default=None, ge=0, description="clip start in seconds")
    end: float | None = Field(default=None, gt=0, description="clip end in seconds")

    @model_validator(mode="after")
    def _start_before_end(self) -> Source:
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be after start ({self.start})")
        return self


class DownloadConfig(_Strict):
    max_height: int | None = Field(default=720, gt=0, description="download at most this resolution")
    retries: int = Field(default=3, ge=0)
    backoff_s: float = Field(default=2.0, ge=0)


class TrackCleanupConfig(_Strict):
    """Post-tracking cleanup (``pipeline.track_cleanup``): duplicates, tracklet stitching, still tracks.

    Defaults were set on real footage (``benchmarks/bench_tracking.py``); a None or 0 turns a pass off. A person who
    stands still for a whole track is dropped like a still object: such a track has no motion to learn from."""

    duplicate_iou: float | None = Field(default=0.55, gt=0, le=1, description="boxes this overlapped are one subject")
    duplicate_containment: float = Field(
        default=0.9, gt=0, le=1, description="... or when this share of the smaller box lies inside the other"
    )
    duplicate_contained_min_iou: float = Field(
        default=0.3,
        ge=0,
        le=1,
        description="... and their IoU is at least this (a far person inside a near one's box is no duplicate)",
    )
    duplicate_min_fraction: float = Field(
        default=0.5, gt=0, le=1, description="share of the shorter track's frames that must be duplicate boxes"
    )
    split_max_missing: int = Field(
        default=3, ge=0, description="with stitching on, tracks are first cut where more frames than this are missing"
    )
    stitch_max_gap: int = Field(default=30, ge=0, description="longest gap (frames) a stitch may bridge; 0: off")
    stitch_max_overlap: int = Field(
        default=3, ge=0, description="a tracklet may start this many frames before the other ends (same place, size)"
    )
    stitch_max_distance: float = Field(
        default=0.75, gt=0, description="largest miss of the extrapolated motion, in box heights"
    )
    stitch_max_size_ratio: float = Field(default=1.5, gt=1, description="largest box height ratio across a stitch")
    stitch_max_appearance: float | None = Field(
        default=0.5, gt=0, le=1, description="largest colour-histogram (Bhattacharyya) distance; None: no colour cue"
    )
    stitch_window: int = Field(default=10, ge=2, description="frames at each tracklet end used for motion and colour")
    static_max_motion: float | None = Field(
        default=0.05, gt=0, description="tracks whose box centre moves less (5-95% span, in box heights) are static"
    )
    weak_max_motion: float | None = Field(
        default=0.1, gt=0, description="... and tracks moving less than this with a mean score below weak_max_score"
    )
    weak_max_score: float = Field(default=0.45, gt=0, le=1)
    static_min_seconds: float = Field(default=0.5, gt=0, description="tracks living shorter are not judged still")


class DetectorConfig(_Strict):
    weights: str = Field(default="yolo11n.pt", min_length=1, description="Ultralytics weights name or path")
    classes: list[str] = Field(default_factory=lambda: ["person"], min_length=1)
    tracker: Literal["bytetrack", "botsort"] = "bytetrack"
    conf: float = Field(default=0.25, gt=0, lt=1)
    iou: float = Field(default=0.7, gt=0, lt=1)
    imgsz: int = Field(default=640, gt=0)
    batch: int = Field(default=16, gt=0)
    class_names: dict[str, str] | None = Field(
        default=None, description="map the model's class names onto ours, e.g. {Normal: person, Fall: person}"
    )
    agnostic_nms: bool | None = Field(
        default=None, description="class-agnostic NMS; None: on when several model classes map to one of ours"
    )
    runtime: Literal["auto", "torch", "openvino", "onnx"] = Field(
        default="auto", description="auto: the weights exported to OpenVINO on a CPU (about 2x faster); PyTorch on GPU"
    )
    stride: int = Field(
        default=2, ge=1, le=10,
        description="detect every k-th frame; each track's boxes are interpolated between (balls: detected frames "
        "only). 2: the same tracking and pose quality as 1, measured in benchmarks/results/video.md; 3 loses subjects",
    )  # fmt: skip
    cleanup: TrackCleanupConfig = TrackCleanupConfig()

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, value: list[str]) -> list[str]:
        unknown = [c for c in value if c not in DETECTOR_CLASSES]
        if unknown:
            raise ValueError(f"unknown detector class(es) {unknown}; supported: {', '.join(DETECTOR_CLASSES)}")
        return value


class PoseConfig(_Strict):
    backend: Literal["yolo_pose", "vitpose", "mediapipe"] = "vitpose"
    weights: str | None = Field(default=None, description="model name/path; backend default when empty")
    dataset_index: int | None = Field(default=None, ge=0, le=5, description="ViTPose+ expert (5 = APT-36K animals)")
    batch: int = Field(default=32, gt=0)
    crop_padding: float | None = Field(
        default=None, ge=0, le=2, description="crop margin, fraction of the box (None: mediapipe 0.1, yolo_pose 0.25)"
    )
    flip_test: bool = Field(default=False, description="mediapipe: also pose the mirrored crop and average the two")
    mediapipe_tracking: bool = Field(
        default=True, description="mediapipe: one BlazePose graph per track, fed its crops in order (no detector)"
    )
    mediapipe_model: Literal["lite", "full", "heavy"] = Field(
        default="full", description="mediapipe: BlazePose's landmark model (lite and heavy come from the npm package)"
    )
    workers: int | None = Field(default=None, ge=1, description="mediapipe tracking: lanes that pose tracks, and "
                                "the stretches of one track between detections, side by side (None: one per usable "
                                "CPU core); the poses do not depend on it")  # fmt: skip
    # per-track clean-up (pipeline/pose_refine.py), measured in benchmarks/results/pose2d_multiview.md
    repair_swaps: bool = Field(default=True, description="undo left/right label flips along each track")
    reject_outliers: bool = Field(default=True, description="joints far off their track's neighbours: confidence 0")
    smooth_s: float = Field(default=0.05, ge=0, le=1, description="confidence-weighted smoothing width (s); 0: none")


class ProcessConfig(_Strict):
    conf_threshold: float = Field(default=0.3, ge=0, le=1, description="joints below it are masked in the loss")
    min_track_frames: int = Field(default=30, gt=0)
    min_mean_conf: float = Field(default=0.4, ge=0, le=1)
    max_overlapping_tracks: int = Field(default=6, gt=0, description="crowd filter")
    min_motion: float = Field(default=0.05, ge=0, description="static-track filter, in data units")
    min_pose_fill: float = Field(default=0.35, ge=0, le=1, description="implausible-pose filter: confident body "
                                 "joints must span this share of their box (median over frames; 0: off)")  # fmt: skip
    max_jump: float = Field(default=0.5, gt=0, description="split where the root moves more per frame (data units)")
    max_gap_frames: int = Field(default=5, ge=0, description="longest low-confidence gap filled by interpolation")
    smoothing: Literal["none", "savgol", "butterworth", "one_euro"] = "savgol"
    smoothing_window: int = Field(default=7, ge=3)
    root_centring: Literal["clip", "frame"] = Field(
        default="clip",
        description="clip: centre each clip on its mean root position (keeps the trajectory); frame: the root at "
        "(0, 0) in every frame, as the official MAS NBA data (drops the trajectory)",
    )
    mirror: bool = True
    clip_min_frames: int = Field(default=40, gt=0)
    clip_max_frames: int = Field(default=120, gt=0)
    test_fraction: float = Field(default=0.1, ge=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _clip_range(self) -> ProcessConfig:
        if self.clip_max_frames < self.clip_min_frames:
            raise ValueError(
                f"clip_max_frames ({self.clip_max_frames}) must be >= clip_min_frames ({self.clip_min_frames})"
            )
        return self


# joints the pose stage fills from the tracks rather than from a pose backend
FILLED_EXTRA_JOINTS = {"ball": "the centre of the nearest 'sports ball' detection (detector.classes needs it)"}


class SkeletonSpec(_Strict):
    """A user-defined skeleton (the dataset config's ``skeleton:`` as a mapping instead of a built-in name).

    Joints are named; bones, mirror pairs and the root refer to them by name. ``keypoints_from`` names the pose
    backend's keypoint set (coco17; apt36k17 with the ViTPose+ APT-36K expert) and ``derive`` gives a formula for each
    joint that is not a keypoint of that set: a source joint name, a ``{joint: weight}`` mapping whose weights sum to
    1, or a list of those tried in order when a source joint is missing (see ``pipeline.keypoint_maps``). Joints not in
    ``derive`` are copied from the source joint of the same name."""

    name: str = Field(min_length=1)
    joints: list[str] = Field(min_length=1)
    bones: list[tuple[str, str]] = Field(default_factory=list)
    mirror_pairs: list[tuple[str, str]] = Field(default_factory=list, description="left/right twins (mirroring)")
    root: list[str] = Field(min_length=1, description="joint(s) whose mean is the body's centre")
    extra_joints: list[str] = Field(default_factory=list, description="non-body joints (only: ball)")
    description: str = ""
    keypoints_from: str | None = Field(default=None, description="the pose backend's keypoints (coco17, apt36k17)")
    derive: dict[str, str | dict[str, float] | list[str | dict[str, float]]] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _new_name(cls, value: str) -> str:
        check_id(value, "skeleton name")
        if value in SKELETONS:
            raise ValueError(f"skeleton name {value!r} is built in; give your skeleton another name, or write "
                             f"`skeleton: {value}` to use the built-in one")  # fmt: skip
        return value

    @model_validator(mode="after")
    def _valid(self) -> SkeletonSpec:
        if self.derive and not self.keypoints_from:
            raise ValueError("derive needs keypoints_from (the keypoint set its formulas read)")
        if self.keypoints_from and self.keypoints_from not in SKELETONS:
            raise ValueError(f"keypoints_from: unknown keypoint set {self.keypoints_from!r}; "
                             f"known: {', '.join(sorted(SKELETONS))}")  # fmt: skip
        unfilled = [j for j in self.extra_joints if j not in FILLED_EXTRA_JOINTS]
        if unfilled:
            raise ValueError(f"extra_joints {unfilled}: the pose stage fills only "
                             f"{', '.join(f'{k} ({v})' for k, v in FILLED_EXTRA_JOINTS.items())}")  # fmt: skip
        try:
            skeleton = self.to_skeleton()
        except SkeletonError as exc:
            raise ValueError(str(exc)) from None
        if self.keypoints_from:
            from pipeline.keypoint_maps import keypoint_map

            try:
                keypoint_map(self.keypoints_from, skeleton)
            except SkeletonError as exc:
                raise ValueError(str(exc)) from None
        return self

    def to_skeleton(self) -> Skeleton:
        derive = {}
        for joint, formula in self.derive.items():
            alternatives = formula if isinstance(formula, list) else [formula]
            derive[joint] = [{f: 1.0} if isinstance(f, str) else f for f in alternatives]
        return Skeleton.from_dict({**self.model_dump(exclude={"derive"}), "derive": derive})


def pose_keypoints(pose: PoseConfig, body: Skeleton) -> str:
    """The keypoint set a pose backend gives: COCO-17, or APT-36K for the ViTPose+ animal expert (dataset_index 5)
    and for ViTPose models asked for apt36k17."""
    if pose.backend == "vitpose" and (pose.dataset_index == 5 or body.name == "apt36k17" or
                                      body.keypoints_from == "apt36k17"):  # fmt: skip
        return "apt36k17"
    return "coco17"


class DatasetConfig(_Strict):
    name: str
    skeleton: str | SkeletonSpec = Field(description="a built-in skeleton's name, or a user skeleton (a mapping)")
    fps: float = Field(gt=0, description="frames per second of the dataset's clips")
    sources: list[Source] = Field(min_length=1)
    download: DownloadConfig = DownloadConfig()
    detector: DetectorConfig = DetectorConfig()
    pose: PoseConfig = PoseConfig()
    process: ProcessConfig = ProcessConfig()

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return check_id(value, "dataset name")

    @field_validator("skeleton")
    @classmethod
    def _known_skeleton(cls, value: str | SkeletonSpec) -> str | SkeletonSpec:
        if isinstance(value, str) and value not in SKELETONS:
            raise ValueError(f"unknown skeleton {value!r}; known skeletons: {', '.join(sorted(SKELETONS))}; or "
                             "define your own: a mapping with name, joints, bones, mirror_pairs, root "
                             "(see configs/custom_skeleton.yaml)")  # fmt: skip
        return value

    @property
    def skeleton_name(self) -> str:
        return self.skeleton if isinstance(self.skeleton, str) else self.skeleton.name

    @property
    def body_model(self) -> Skeleton:
        """The dataset's skeleton: the built-in one, or the config's own definition."""
        return SKELETONS[self.skeleton] if isinstance(self.skeleton, str) else self.skeleton.to_skeleton()

    @model_validator(mode="after")
    def _ball_needs_ball_skeleton(self) -> DatasetConfig:
        if "sports ball" in self.detector.classes and "ball" not in self.body_model.extra_joints:
            raise ValueError("detector.classes has 'sports ball' but the skeleton has no extra joint 'ball' "
                             "(coco17_ball has one)")  # fmt: skip
        return self

    @model_validator(mode="after")
    def _pose_backend_makes_the_skeleton(self) -> DatasetConfig:
        """The pose backend's keypoints must map onto the skeleton's body joints (pipeline.keypoint_maps)."""
        from pipeline.keypoint_maps import keypoint_map

        body = self.body_model
        try:
            keypoint_map(pose_keypoints(self.pose, body), body)
        except SkeletonError as exc:
            raise ValueError(f"pose backend {self.pose.backend}: {exc}") from None
        return self


def format_validation_error(error: ValidationError, origin: str) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{origin}: {field}: {message}")
    return "\n".join(lines)


def _keys(model: type[BaseModel]) -> str:
    return ", ".join(model.model_fields)


def apply_overrides(data: dict, overrides: list[str], origin: str) -> dict:
    """Set ``key=value`` items (dotted keys, e.g. ``detector.conf=0.5``; values read as YAML) in a config mapping.

    Every key is checked against :class:`DatasetConfig`, so a typo fails with the keys that exist at that level.
    """
    data = copy.deepcopy(data)
    for item in overrides:
        dotted, sep, text = item.partition("=")
        if not sep or not dotted.strip():
            raise ConfigError(f"{origin}: override {item!r}: expected key=value, e.g. detector.conf=0.5")
        parts = dotted.strip().split(".")
        model: type[BaseModel] = DatasetConfig
        target = data
        for depth, part in enumerate(parts):
            where = ".".join(parts[:depth]) or "the top level"
            if part not in model.model_fields:
                raise ConfigError(f"{origin}: override {item!r}: unknown config key {dotted!r}; "
                                  f"keys of {where}: {_keys(model)}")  # fmt: skip
            annotation = model.model_fields[part].annotation
            if depth == len(parts) - 1:
                try:
                    target[part] = yaml.safe_load(text) if text.strip() else None
                except yaml.YAMLError as exc:
                    raise ConfigError(f"{origin}: override {item!r}: the value is not valid YAML: {exc}") from None
            elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
                if not isinstance(target.get(part), dict):
                    target[part] = {}
                target, model = target[part], annotation
            else:
                raise ConfigError(f"{origin}: override {item!r}: {'.'.join(parts[: depth + 1])} has no sub-keys; "
                                  f"set it whole, e.g. {part}=<value>")  # fmt: skip
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> DatasetConfig:
    """Read and validate a dataset YAML file, with ``key=value`` overrides (see :func:`apply_overrides`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got {type(data).__name__}")
    if overrides:
        data = apply_overrides(data, overrides, str(path))
    try:
        return DatasetConfig.model_validate(data)
    except ValidationError as exc:
        origin = f"{path} with {' '.join(overrides)}" if overrides else str(path)
        raise ConfigError(format_validation_error(exc, origin)) from None
