"""Catalog at scale: `mas status` over 10,000 records, and importing 9 videos into a workspace that holds them.

python -m benchmarks.bench_catalog [--records 10000] [--label after]
python -m benchmarks.bench_catalog --s3 [--records 10000] [--label after]

Builds a local workspace with ``--records`` catalog records (videos, tracks and poses, some failed, a few running),
then times (best of ``--repeat``): ``mas status`` in a fresh process (start-up included) and in this process, one
``Catalog.get``, and ``ingest_file`` of 9 new small videos (the content-hash duplicate lookup runs once per file).
Results go to ``benchmarks/results/catalog.md``; ``--label`` names the row (e.g. before / after a change), and rows
of other labels already in the file are kept.

``--s3`` times ``mas status`` in a fresh process on the same records in a local workspace and on S3 (moto's server on
127.0.0.1, reached through s3fs, as in tests/test_remote_workspace.py), twice on S3: the first run after the records
were written and a second one; results go to ``benchmarks/results/catalog_s3.md``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks.common import RESULTS, write_result
from pipeline.config import Source
from storage import Catalog, Workspace


def populate(ws: Workspace, count: int) -> None:
    """``count`` records spread over video, tracks and poses, as the stages write them."""
    catalog = Catalog(ws)
    kinds = ("video", "tracks", "poses")
    for i in range(count):
        kind = kinds[i % 3]
        vid = f"clip-{i // 3:05d}-{i:010x}"
        if i % 50 == 0:
            catalog.mark_failed(kind, vid, ValueError("corrupt video"), source=f"https://example.org/{i}.mp4")
            continue
        out = ws.write_bytes(ws.path("videos", vid, "video.mp4") if kind == "video" else
                             (ws.tracks_path(vid) if kind == "tracks" else ws.poses_path(vid)), b"x" * 64)  # fmt: skip
        catalog.mark_done(kind, vid, key=f"{i:032x}", outputs=[out],
                          meta={"sha256": f"{i:064x}", "fps": 30.0, "frames": 300, "source": f"v{i}.mp4"})  # fmt: skip


def make_video(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 15.0, (64, 48))
    for f in range(8):
        image = np.full((48, 64, 3), 30, np.uint8)
        cv2.rectangle(image, (2 + f, 5), (20 + f, 40), rng.integers(0, 255, 3).tolist(), -1)
        writer.write(image)
    writer.release()
    return path


def populate_records(ws: Workspace, count: int) -> None:
    """``count`` catalog records only (video, tracks and poses, 1 in 50 failed), without output files: all that
    ``mas status`` reads."""
    from dataclasses import asdict

    from storage.catalog import Record

    kinds = ("video", "tracks", "poses")
    for i in range(count):
        kind, vid = kinds[i % 3], f"clip-{i // 3:05d}-{i:010x}"
        failed = i % 50 == 0
        output = f"{kind}/{vid}.parquet"
        record = Record(kind=kind, id=vid, status="failed" if failed else "done", key=f"{i:032x}",
                        outputs=[] if failed else [output], error="ValueError: corrupt video" if failed else None,
                        meta={"sha256": f"{i:064x}", "fps": 30.0, "frames": 300, "source": f"v{i}.mp4"},
                        sizes={} if failed else {output: 64})  # fmt: skip
        ws.write_json(ws.path("catalog", kind, vid + ".json"), asdict(record))


def s3_main(args) -> None:
    import shutil
    import socket

    from tests.conftest import free_port

    with tempfile.TemporaryDirectory(prefix="bench-catalog-s3-") as tmp:
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}  # fmt: skip
            os.environ.update(aws)
            deadline = time.time() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.time() > deadline:
                        raise RuntimeError("moto S3 server did not start in 30 s") from None
                    time.sleep(0.2)
            import s3fs

            fs = s3fs.S3FileSystem()
            fs.mkdir("bench-bucket")
            local = Workspace(Path(tmp) / "ws")
            start = time.perf_counter()
            populate_records(local, args.records)
            fs.put(f"{local.root}/catalog", "bench-bucket/ws/", recursive=True)
            build_s = time.perf_counter() - start
            assert len(fs.find("bench-bucket/ws/catalog")) == args.records
            mas = str(Path(sys.executable).with_name("mas"))
            env = {**os.environ, "COLUMNS": "200"}

            def status(url: str) -> float:
                start = time.perf_counter()
                done = subprocess.run([mas, "status", "-w", url], capture_output=True, text=True, env=env)
                seconds = time.perf_counter() - start
                assert done.returncode == 0 and f"{args.records} records" in done.stdout, done.stderr[-2000:]
                return seconds

            local_s = min(status(local.url) for _ in range(args.repeat))
            first_s = status("s3://bench-bucket/ws")
            again_s = min(status("s3://bench-bucket/ws") for _ in range(args.repeat))
            shutil.rmtree(local.root)
        finally:
            server.kill()
            server.wait()
    row = (f"| {args.label} | {args.records} | {local_s:.2f} | {first_s:.2f} | {again_s:.2f} | "
           f"{again_s / local_s:.1f}x |")  # fmt: skip
    header = ("| code | records | local (s) | S3, first run (s) | S3, later runs (s) | S3 later / local |\n"
              "| --- | --- | --- | --- | --- | --- |")  # fmt: skip
    rows = earlier_rows("catalog_s3", args.label)
    body = (
        f"`mas status` in a fresh process (start-up included) over {args.records} catalog records (1 in 50 failed), "
        f"in a local workspace and on S3 (moto's server on 127.0.0.1 through s3fs); local and later S3 runs: best of "
        f"{args.repeat}. Writing the records took {build_s:.1f} s.\n\n{header}\n" + "\n".join([*rows, row])
    )
    write_result("catalog_s3", "Catalog at scale on S3: `mas status`", body)


def earlier_rows(result: str, label: str) -> list[str]:
    """The table rows of ``benchmarks/results/<result>.md`` other than ``label``'s (kept when a row is rewritten)."""
    previous = RESULTS / f"{result}.md"
    if not previous.exists():
        return []
    return [line for line in previous.read_text().splitlines()
            if line.startswith("| ") and not line.startswith(("| code", "| ---", f"| {label} |"))]  # fmt: skip


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--label", default="current")
    parser.add_argument("--s3", action="store_true", help="time `mas status` on S3 (moto) against local")
    args = parser.parse_args()
    if args.s3:
        s3_main(args)
        return
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.download import ingest_file

    with tempfile.TemporaryDirectory(prefix="bench-catalog-") as tmp:
        ws = Workspace(Path(tmp) / "ws")
        start = time.perf_counter()
        populate(ws, args.records)
        build_s = time.perf_counter() - start
        mas = str(Path(sys.executable).with_name("mas"))
        env = {**os.environ, "COLUMNS": "200"}

        def status_subprocess() -> None:
            done = subprocess.run([mas, "status", "-w", ws.url], capture_output=True, text=True, env=env)
            assert done.returncode == 0 and "clip-" in done.stdout, done.stderr[-2000:]

        def status_in_process() -> None:
            result = CliRunner().invoke(app, ["status", "-w", ws.url])
            assert result.exit_code == 0, result.output[-2000:]

        catalog = Catalog(ws)
        status_cli = best_of(args.repeat, status_subprocess)
        status_fn = best_of(args.repeat, status_in_process)
        get_s = best_of(args.repeat, lambda: catalog.get("tracks", "clip-01000-0000000bb9"))
        videos = [make_video(Path(tmp) / f"new_{k}.mp4", k) for k in range(9)]
        start = time.perf_counter()
        results = [ingest_file(ws, v, Source(kind="local", value=str(v)), str(v)) for v in videos]
        ingest_s = time.perf_counter() - start
        assert all(r.status == "done" for r in results), results
        start = time.perf_counter()
        again = [ingest_file(ws, v, Source(kind="local", value=str(v)), str(v)) for v in videos]
        duplicate_s = time.perf_counter() - start
        assert all(r.status == "duplicate" for r in again), again

    row = (f"| {args.label} | {args.records} | {status_cli:.2f} | {status_fn:.2f} | {get_s * 1e3:.2f} | "
           f"{ingest_s:.2f} | {duplicate_s:.2f} |")  # fmt: skip
    header = (
        "| code | records | `mas status` (process, s) | status in-process (s) | `Catalog.get` (ms) | "
        "ingest 9 new videos (s) | ingest 9 duplicates (s) |\n| --- | --- | --- | --- | --- | --- | --- |"
    )
    rows = earlier_rows("catalog", args.label)
    body = (
        f"Local workspace on this machine's disk, {args.records} records (1 in 50 failed), best of "
        f"{args.repeat}; building the records took {build_s:.1f} s. `mas status` in a fresh process includes "
        f"Python start-up and imports.\n\n{header}\n" + "\n".join([*rows, row])
    )
    write_result("catalog", "Catalog at scale: status and lookups", body)


if __name__ == "__main__":
    main()
