import functools
import http.server
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config import DownloadConfig, Source
from pipeline.download import download_all, download_url, expand_sources, ingest_file
from pipeline.video import VideoError, iter_frames, probe_video
from storage import Catalog, Workspace


def make_video(path, frames=45, fps=15.0, size=(160, 120), seed=0):
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    colour = rng.integers(0, 255, 3).tolist()
    for f in range(frames):
        image = np.full((size[1], size[0], 3), 30, np.uint8)
        cv2.rectangle(image, (5 + 2 * f, 20), (35 + 2 * f, 90), colour, -1)
        writer.write(image)
    writer.release()
    return path


@pytest.fixture()
def media(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    make_video(folder / "clip_a.mp4", seed=1)
    make_video(folder / "clip_b.mp4", frames=30, seed=2)
    (folder / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20)
    (folder / "empty.mp4").write_bytes(b"")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_probe_and_stream(media):
    folder, _ = media
    info = probe_video(folder / "clip_a.mp4")
    assert (info.frames, info.width, info.height) == (45, 160, 120) and info.fps == pytest.approx(15.0)
    assert info.duration == pytest.approx(3.0)
    frames = list(iter_frames(folder / "clip_a.mp4", 10, 20))
    assert [i for i, _ in frames] == list(range(10, 20)) and frames[0][1].shape == (120, 160, 3)
    with pytest.raises(VideoError, match="empty"):
        probe_video(folder / "empty.mp4")
    with pytest.raises(VideoError, match="corrupt|no decodable"):
        probe_video(folder / "corrupt.mp4")


def test_yt_dlp_downloads_from_a_local_http_server(media, tmp_path):
    folder, base = media
    ws = Workspace(tmp_path / "ws")
    source = Source(kind="url", value=f"{base}/clip_a.mp4")
    results = download_url(ws, source.value, source, DownloadConfig(retries=0))
    assert [r.status for r in results] == ["done"]
    record = Catalog(ws).get("video", results[0].video_id)
    assert record.meta["frames"] == 45 and record.meta["source"] == source.value
    assert record.meta["sha256"] == results[0].meta["sha256"]
    # the same content again, from disk: deduplicated by hash
    again = ingest_file(ws, folder / "clip_a.mp4", Source(kind="local", value="x"), "local")
    assert again.status == "duplicate" and again.video_id == results[0].video_id


def test_failures_are_recorded_and_do_not_stop_others(media, tmp_path):
    folder, base = media
    ws = Workspace(tmp_path / "ws")
    urls = tmp_path / "urls.txt"
    urls.write_text(f"# my list\n{base}/missing.mp4\n{base}/clip_b.mp4\n\n")
    sleeps = []
    cfg = DownloadConfig(retries=2, backoff_s=0.5)
    sources = [Source(kind="url_file", value=str(urls)), Source(kind="local", value=str(folder))]
    results = []
    for source, item in expand_sources(sources):
        if source.kind == "local":
            results.append(ingest_file(ws, Path(item), source, item))
        else:
            results.extend(download_url(ws, item, source, cfg, sleep=sleeps.append))
    status = [(r.source.rsplit("/", 1)[-1], r.status) for r in results]
    assert status == [("missing.mp4", "failed"), ("clip_b.mp4", "done"), ("clip_a.mp4", "done"),
                      ("clip_b.mp4", "duplicate"), ("corrupt.mp4", "failed"), ("empty.mp4", "failed")]  # fmt: skip
    assert sleeps == [0.5, 1.0]  # exponential backoff between retries
    table = Catalog(ws).table("video").set_index("source")
    assert "404" in table.loc[f"{base}/missing.mp4", "error"]
    assert "empty" in table.loc[str(folder / "empty.mp4"), "error"]
    done = table[table["status"] == "done"]
    assert len(done) == 2 and set(done["frames"]) == {45, 30}


def test_trimmed_local_ingest(media, tmp_path):
    folder, _ = media
    ws = Workspace(tmp_path / "ws")
    result = ingest_file(ws, folder / "clip_a.mp4", Source(kind="local", value="x", start=1.0, end=2.0), "local")
    assert result.status == "done" and result.meta["frames"] == 15


def test_download_all_and_bad_sources(media, tmp_path):
    folder, _ = media
    ws = Workspace(tmp_path / "ws")
    results = download_all(ws, [Source(kind="local", value=str(folder / "clip_b.mp4"))], DownloadConfig(),
                           progress=False)  # fmt: skip
    assert [r.status for r in results] == ["done"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        expand_sources([Source(kind="local", value=str(tmp_path / "nothing"))])
    with pytest.raises(RuntimeError, match="nba_api source: bad query item 'seasn=2023-24'"):
        expand_sources([Source(kind="nba_api", value="seasn=2023-24")])  # the client: tests/test_nba_source.py


def test_a_truncated_video_counts_the_frames_that_decode(tmp_path, demo_clip):
    """The header of a cut-off download still says 230 frames; only the frames that decode count (issue 18)."""
    data = Path(demo_clip).read_bytes()
    for fraction, expected in ((0.3, 60), (0.6, 131), (1.0, 230)):
        clip = tmp_path / f"cut_{fraction}.mp4"
        clip.write_bytes(data[: int(len(data) * fraction)])
        decoded = sum(1 for _ in iter_frames(clip))
        assert probe_video(clip).frames == decoded == expected, fraction
    ws = Workspace(tmp_path / "ws")
    result = ingest_file(ws, tmp_path / "cut_0.3.mp4", Source(kind="local", value=str(tmp_path)), "cut")
    assert Catalog(ws).get("video", result.video_id).meta["frames"] == 60


def test_mas_download_exits_non_zero_naming_the_videos_that_failed(media, tmp_path):
    """`mas download` exited 0 with 3 of 6 videos failed: only all failing made it exit 1."""
    import os
    import subprocess
    import sys

    import yaml

    folder, _ = media
    env = {**os.environ, "COLUMNS": "300"}

    def download(value: str, ws: str) -> subprocess.CompletedProcess:
        config = tmp_path / "dl.yaml"
        config.write_text(yaml.safe_dump({"name": "dl", "skeleton": "coco17", "fps": 15,
                                          "sources": [{"kind": "local", "value": value}]}))  # fmt: skip
        return subprocess.run([sys.executable, "-m", "pipeline.cli", "download", "-c", str(config), "-w", ws],
                              capture_output=True, text=True, timeout=300, env=env)  # fmt: skip

    partly = download(str(folder), str(tmp_path / "ws"))
    assert partly.returncode == 1, (partly.stdout[-2000:], partly.stderr[-2000:])
    message = partly.stderr.replace("\n", "")
    assert "error: 2 of 4 videos failed to download:" in message, message
    assert f"({folder / 'corrupt.mp4'})" in message and f"({folder / 'empty.mp4'})" in message
    assert "clip_a" not in message and "clip_b" not in message
    statuses = sorted(r.status for r in Catalog(Workspace(tmp_path / "ws")).records("video"))
    assert statuses == ["done", "done", "failed", "failed"]
    fine = download(str(folder / "clip_a.mp4"), str(tmp_path / "ws2"))
    assert fine.returncode == 0 and "failed" not in fine.stderr, fine.stderr[-2000:]
