"""Stage 1: bring videos into the workspace — URLs and playlists through yt-dlp, URL files, local files/folders.

Each video is hashed (sha256), deduplicated by content, probed (fps, frames, size, duration), optionally trimmed, and
recorded in the catalog. A failure (network, corrupt or empty file) is recorded with its error and never stops the
other videos; nothing already in the workspace is touched by a failing download.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import DownloadConfig, Source
from pipeline.nba_source import NbaApiSource
from pipeline.video import VideoError, is_video_file, probe_video, write_trimmed
from storage import Catalog, Workspace, file_sha256, slugify
from storage.locks import ArtifactLock

IMPORT_WAIT_S = 600.0  # how long an import waits for another run importing the same file


@dataclass
class IngestResult:
    video_id: str
    status: str  # "done", "duplicate", "failed"
    source: str
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def expand_sources(sources: Iterable[Source], ws: Workspace | None = None) -> list[tuple[Source, str]]:
    """Flatten sources into ``(source, item)`` pairs: one URL or one local file each. ``nba_api`` sources list play
    videos through stats.nba.com (:mod:`pipeline.nba_source`), recording each play in ``ws``'s catalog."""
    items: list[tuple[Source, str]] = []
    for source in sources:
        if source.kind == "url":
            items.append((source, source.value))
        elif source.kind == "url_file":
            path = Path(source.value)
            if not path.is_file():
                raise FileNotFoundError(f"URL file {path} not found (source kind url_file)")
            for line in path.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    items.append((source, line))
        elif source.kind == "local":
            path = Path(source.value)
            if path.is_dir():
                items.extend((source, str(p)) for p in sorted(path.rglob("*")) if is_video_file(p))
            elif path.exists():
                items.append((source, str(path)))
            else:
                raise FileNotFoundError(f"local source {path} does not exist")
        elif source.kind == "nba_api":
            items.extend((source, url) for url in NbaApiSource(source.value, ws).urls())
    return items


def _find_by_hash(catalog: Catalog, sha: str) -> str | None:
    """The id of the finished video with content hash ``sha``: one index lookup, never a scan of the catalog."""
    record = catalog.find("video", "sha256", sha)
    return record.id if record is not None else None


def ingest_file(ws: Workspace, path: Path, source: Source, origin: str) -> IngestResult:
    """Hash, probe, trim and copy one local video into the workspace (atomically), recording it in the catalog.

    Holds the video's lock (``storage.locks``) while it copies: a second import of the same file waits for the first
    (up to :data:`IMPORT_WAIT_S`) and then finds it a duplicate; the temporary files a killed import of the video left
    in its folder are removed first."""
    catalog = Catalog(ws)
    sha = file_sha256(path)
    video_id = f"{slugify(path.stem, 40)}-{sha[:10]}"
    duplicate = _find_by_hash(catalog, sha)
    if duplicate is not None:
        return IngestResult(duplicate, "duplicate", origin)
    with ArtifactLock(ws, "video", video_id, wait=IMPORT_WAIT_S) as lock:
        duplicate = _find_by_hash(catalog, sha)  # imported by the run this one waited for
        if duplicate is not None:
            return IngestResult(duplicate, "duplicate", origin)
        lock.remove_leftovers(ws.video_dir(video_id))
        return _ingest(ws, catalog, path, source, origin, sha, video_id)


def _ingest(ws: Workspace, catalog: Catalog, path: Path, source: Source, origin: str, sha: str,
            video_id: str) -> IngestResult:  # fmt: skip
    try:
        info = probe_video(path)
        with tempfile.TemporaryDirectory(prefix="mas-trim-") as tmp:
            stored = path
            if source.start is not None or source.end is not None:
                stored = Path(tmp) / "trimmed.mp4"
                info = write_trimmed(path, stored, source.start, source.end)
            target = f"{ws.video_dir(video_id)}/video{path.suffix.lower() if stored == path else '.mp4'}"
            ws.copy_in(stored, target)
    except VideoError as exc:
        catalog.mark_failed("video", video_id, exc, source=origin, sha256=sha)
        return IngestResult(video_id, "failed", origin, error=str(exc))
    meta = {"source": origin, "sha256": sha, "size": path.stat().st_size, **info.to_dict(),
            "trim": [source.start, source.end]}  # fmt: skip
    catalog.mark_done("video", video_id, key=sha, outputs=[target], meta=meta)
    return IngestResult(video_id, "done", origin, meta=meta)


class _ErrorLog:
    """yt-dlp logger that keeps error messages (to record them) instead of printing them."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def debug(self, message: str) -> None:
        pass

    def info(self, message: str) -> None:
        pass

    def warning(self, message: str) -> None:
        pass

    def error(self, message: str) -> None:
        self.errors.append(message.removeprefix("ERROR: "))


def _format(max_height: int | None) -> str:
    # single-file formats: no ffmpeg merge needed
    return f"b[height<={max_height}]/b" if max_height else "b"


def download_url(
    ws: Workspace, url: str, source: Source, cfg: DownloadConfig, sleep: Callable[[float], None] = time.sleep
) -> list[IngestResult]:
    """Download a video or a playlist with yt-dlp (retrying with backoff) and ingest every file."""
    import yt_dlp

    url_id = f"url-{hashlib.sha256(url.encode()).hexdigest()[:12]}"
    last_error: Exception | None = None
    with tempfile.TemporaryDirectory(prefix="mas-dl-") as tmp:
        options = {
            "paths": {"home": tmp},
            "outtmpl": {"default": "%(playlist_index|0)s-%(id)s.%(ext)s"},
            "format": _format(cfg.max_height),
            "quiet": True,
            "no_warnings": True,
            "noprogress": True,
            "retries": cfg.retries,
            "ignoreerrors": "only_download",  # one broken playlist entry does not stop the others
        }
        for attempt in range(cfg.retries + 1):
            log = _ErrorLog()
            try:
                with yt_dlp.YoutubeDL({**options, "logger": log}) as ydl:
                    info = ydl.extract_info(url, download=True)
                if info is None:
                    raise RuntimeError(log.errors[-1] if log.errors else "yt-dlp returned nothing for this URL")
                last_error = None
                break
            except Exception as exc:  # yt-dlp raises DownloadError and plain errors
                last_error = exc
                if attempt < cfg.retries:
                    sleep(cfg.backoff_s * 2**attempt)
        if last_error is not None:
            Catalog(ws).mark_failed("video", url_id, f"download failed after {cfg.retries + 1} tries: {last_error}",
                                    source=url)  # fmt: skip
            return [IngestResult(url_id, "failed", url, error=str(last_error))]
        files = sorted(p for p in Path(tmp).iterdir() if p.is_file() and not p.name.endswith((".part", ".ytdl")))
        if not files:
            Catalog(ws).mark_failed("video", url_id, "yt-dlp finished but wrote no video file", source=url)
            return [IngestResult(url_id, "failed", url, error="no file")]
        return [ingest_file(ws, f, source, url) for f in files]


def fetch_item(ws: Workspace, source: Source, item: str, cfg: DownloadConfig) -> list[IngestResult]:
    """One item of :func:`expand_sources`: a local file is ingested, anything else downloaded with yt-dlp."""
    if source.kind == "local":
        return [ingest_file(ws, Path(item), source, item)]
    return download_url(ws, item, source, cfg)


def download_all(ws: Workspace, sources: Iterable[Source], cfg: DownloadConfig, progress: bool = True):
    """Ingest every source item; returns one result per video (failures included)."""
    from tqdm.auto import tqdm

    results: list[IngestResult] = []
    items = expand_sources(sources, ws)
    for source, item in tqdm(items, desc="download", disable=not progress, unit="video"):
        results.extend(fetch_item(ws, source, item, cfg))
    return results
