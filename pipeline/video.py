"""Video decoding: probing and streaming frames with OpenCV (never a whole video in memory)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg")


class VideoError(ValueError):
    """A file that is not a decodable video with frames."""


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    frames: int
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.frames / self.fps if self.fps > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "duration": round(self.duration, 3)}


def _decodable_frames(capture: cv2.VideoCapture, header_frames: int) -> int:
    """How many frames decode, at most ``header_frames``: the last one is tried, then a binary search by seeking
    (about log2(n) seeks, so a long video is not decoded whole; frame 0 is known to decode)."""

    def decodes(index: int) -> bool:
        capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = capture.read()
        return bool(ok) and frame is not None

    if header_frames <= 1 or decodes(header_frames - 1):
        return header_frames
    good, bad = 0, header_frames - 1
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if decodes(middle) else (good, middle)
    return good + 1


def probe_video(path: str | Path) -> VideoInfo:
    """Read a video's properties and check that its first frame decodes; clear errors for empty or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: the file is empty (0 bytes); download it again")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise VideoError(f"{path}: OpenCV cannot open it as a video (corrupt or unsupported format)")
        ok, frame = capture.read()
        if not ok or frame is None:
            raise VideoError(f"{path}: no decodable frame (zero frames or a corrupt stream)")
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if frames <= 0:  # some containers do not store a count: decode to count
            frames = 1
            while capture.grab():
                frames += 1
        else:  # a truncated file keeps the header's count: find the last frame that really decodes
            frames = _decodable_frames(capture, frames)
        if not 0 < fps < 1000:
            raise VideoError(f"{path}: implausible frame rate {fps}")
        return VideoInfo(fps=fps, frames=frames, width=frame.shape[1], height=frame.shape[0])
    finally:
        capture.release()


def iter_frames(path: str | Path, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(frame_index, RGB frame)`` from ``start`` to ``stop`` (exclusive), decoding as it goes."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise VideoError(f"{path}: OpenCV cannot open it as a video")
    try:
        if start:
            capture.set(cv2.CAP_PROP_POS_FRAMES, start)
        index = start
        while stop is None or index < stop:
            ok, frame = capture.read()
            if not ok:
                break
            yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        capture.release()


def write_trimmed(src: str | Path, dst: str | Path, start_s: float | None, end_s: float | None) -> VideoInfo:
    """Re-encode the ``[start_s, end_s)`` part of ``src`` into ``dst`` (mp4v)."""
    info = probe_video(src)
    first = int(round((start_s or 0.0) * info.fps))
    last = info.frames if end_s is None else min(info.frames, int(round(end_s * info.fps)))
    if last <= first:
        raise VideoError(f"{src}: trim window [{start_s}, {end_s}) s holds no frame of a {info.duration:.1f} s video")
    writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"mp4v"), info.fps, (info.width, info.height))
    try:
        for _, frame in iter_frames(src, first, last):
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return probe_video(dst)


def is_video_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS
