"""Video decoding: probing and streaming frames with OpenCV (never a whole video in memory)."""

from __future__ import annotations

import math
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


def _decodable_frames(path: Path, capture: cv2.VideoCapture, header_frames: int) -> int:
    """How many frames decode, at most ``header_frames``. The last one is tried by seeking (one seek: a whole file);
    when it does not decode, the frames are counted by decoding from the start. That is a truncated file, or a
    variable-frame-rate one, where OpenCV seeks by frame number through the average rate and misses (a binary
    search by seeking counted 40 of the 50 frames of a 30-then-10 fps clip)."""
    capture.set(cv2.CAP_PROP_POS_FRAMES, header_frames - 1)
    ok, frame = capture.read()
    if header_frames <= 1 or (ok and frame is not None):
        return header_frames
    counter = cv2.VideoCapture(str(path))
    try:
        frames = 0
        while frames < header_frames and counter.grab():
            frames += 1
        return max(frames, 1)  # frame 0 is known to decode
    finally:
        counter.release()


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
            frames = _decodable_frames(path, capture, frames)
        if not 0 < fps < 1000:
            raise VideoError(f"{path}: implausible frame rate {fps}")
        return VideoInfo(fps=fps, frames=frames, width=frame.shape[1], height=frame.shape[0])
    finally:
        capture.release()


def check_written(path: str | Path, frames: int) -> VideoInfo:
    """Read a video just written back through :func:`probe_video` and check that its ``frames`` frames decode.

    OpenCV's writer reports no error: on a full disk it leaves a file without its index (no ``moov`` atom) or with
    fewer frames, which must not be renamed into place. Raises :class:`VideoError` naming the file."""
    info = probe_video(path)  # a file without its index does not open: VideoError
    if info.frames != frames:
        raise VideoError(f"{path}: {info.frames} of the {frames} frames written decode back (a torn write)")
    return info


def iter_frames(path: str | Path, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(frame_index, RGB frame)`` from ``start`` to ``stop`` (exclusive), decoding as it goes."""
    for index, _, frame in iter_timed_frames(path, start, stop):
        yield index, frame


def iter_timed_frames(
    path: str | Path, start: int = 0, stop: int | None = None
) -> Iterator[tuple[int, float, np.ndarray]]:
    """Yield ``(frame_index, time_s, RGB frame)``: ``time_s`` is the decoder's presentation time of the frame
    (``CAP_PROP_POS_MSEC``), so a variable-frame-rate video keeps its real timing. Where a container gives no usable
    times (not increasing), the frame index over the stream's frame rate stands in."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise VideoError(f"{path}: OpenCV cannot open it as a video")
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    step = 1.0 / fps if 0 < fps < 1000 else 1.0 / 30.0
    try:
        if start:
            capture.set(cv2.CAP_PROP_POS_FRAMES, start)
        index, previous = start, None
        while stop is None or index < stop:
            ok, frame = capture.read()
            if not ok:
                break
            time_s = float(capture.get(cv2.CAP_PROP_POS_MSEC)) / 1000.0
            if previous is not None and not time_s > previous:
                time_s = previous + step
            elif previous is None and (not np.isfinite(time_s) or time_s < 0):
                time_s = index * step
            previous = time_s
            yield index, time_s, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        capture.release()


VFR_TOLERANCE = 0.1  # frame intervals further than this fraction from their median make a video variable-rate


def is_variable_rate(times: np.ndarray) -> bool:
    """Do the frame ``times`` (seconds, increasing) have intervals that differ by more than timestamp rounding?"""
    intervals = np.diff(np.asarray(times, np.float64))
    if len(intervals) < 2:
        return False
    median = float(np.median(intervals))
    return bool(np.abs(intervals - median).max() > max(VFR_TOLERANCE * median, 0.002))


def write_trimmed(src: str | Path, dst: str | Path, start_s: float | None, end_s: float | None) -> VideoInfo:
    """Re-encode the ``[start_s, end_s)`` part of ``src`` into ``dst`` (mp4v, constant frame rate), choosing frames
    by the decoder's timestamps: output frame k shows the last source frame at or before ``start_s + k / fps``.

    A constant-rate source gives the same frames as cutting by frame number; a variable-rate one becomes
    constant-rate at the stream's (average) rate with its timing kept (a frame repeats where the source slowed
    down). Frames are decoded from the start: OpenCV's seeking (by frame number or by time) goes through the
    average rate and lands on the wrong frames of a variable-rate video."""
    info = probe_video(src)
    start = start_s or 0.0
    end = math.inf if end_s is None else end_s
    if end <= start or start >= info.duration + 1.0 / info.fps:
        raise VideoError(f"{src}: trim window [{start_s}, {end_s}) s holds no frame of a {info.duration:.1f} s video")
    step = 1.0 / info.fps
    tolerance = 0.25 * step  # timestamps are rounded (to ms in many containers)
    writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"mp4v"), info.fps, (info.width, info.height))
    written, held, held_t = 0, None, 0.0
    try:
        for _, time_s, frame in iter_timed_frames(src):
            while held is not None and start + written * step < end and start + written * step + tolerance < time_s:
                writer.write(held)
                written += 1
            if start + written * step >= end:
                break
            held, held_t = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), time_s
        while held is not None and start + written * step < end and start + written * step <= held_t + tolerance:
            writer.write(held)
            written += 1
    finally:
        writer.release()
    if written == 0:
        raise VideoError(f"{src}: trim window [{start_s}, {end_s}) s holds no frame of a {info.duration:.1f} s video")
    return check_written(dst, written)


def is_video_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS
