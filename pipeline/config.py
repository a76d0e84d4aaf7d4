"""Dataset configuration: one YAML file per dataset, validated by pydantic.

A bad file fails with :class:`ConfigError`, whose message names the file and each wrong field with the reason, e.g.
``configs/nba.yaml: fps: Input should be greater than 0``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.skeletons import SKELETONS
from storage.ids import check_id

DETECTOR_CLASSES = ("person", "horse", "sports ball")


class ConfigError(ValueError):
    """A dataset configuration that cannot be used; the message names the field and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    max_jump: float = Field(default=0.5, gt=0, description="split where the root moves more per frame (data units)")
    max_gap_frames: int = Field(default=5, ge=0, description="longest low-confidence gap filled by interpolation")
    smoothing: Literal["none", "savgol", "butterworth", "one_euro"] = "savgol"
    smoothing_window: int = Field(default=7, ge=3)
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


class DatasetConfig(_Strict):
    name: str
    skeleton: str
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
    def _known_skeleton(cls, value: str) -> str:
        if value not in SKELETONS:
            raise ValueError(f"unknown skeleton {value!r}; known skeletons: {', '.join(sorted(SKELETONS))}")
        return value

    @model_validator(mode="after")
    def _ball_needs_ball_skeleton(self) -> DatasetConfig:
        if "sports ball" in self.detector.classes and self.skeleton != "coco17_ball":
            raise ValueError("detector.classes has 'sports ball' but the skeleton is not coco17_ball")
        return self


def format_validation_error(error: ValidationError, origin: str) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{origin}: {field}: {message}")
    return "\n".join(lines)


def load_config(path: str | Path) -> DatasetConfig:
    """Read and validate a dataset YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got {type(data).__name__}")
    try:
        return DatasetConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None
