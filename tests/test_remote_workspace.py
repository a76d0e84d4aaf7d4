"""Workspaces on an S3-compatible store: moto's S3 server on 127.0.0.1, reached through s3fs, driven by the real CLI."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import free_port

pytest.importorskip("s3fs")
pytest.importorskip("moto")

MAS = str(Path(sys.executable).with_name("mas"))


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}  # fmt: skip
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        server.kill()
        pytest.fail("moto S3 server did not start")
    saved = {k: os.environ.get(k) for k in env if k.startswith("AWS_")}
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir("mas-bucket")
    yield env
    server.kill()
    server.wait()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_cli_workspace_on_s3_with_two_workers_sharing_it(s3_env, tmp_path):
    url = "s3://mas-bucket/shared-ws"
    workers = [subprocess.Popen([MAS, "synthetic", "--name", f"part{i}", "-w", url, "--num-motions", "12",
                                 "--length", "16", "--seed", str(i)], cwd=tmp_path, env=s3_env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(2)]  # fmt: skip
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    assert not any(tmp_path.iterdir())  # nothing written to a local folder such as ./s3:/mas-bucket
    status = subprocess.run([MAS, "status", "-w", url], cwd=tmp_path, env=s3_env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert "part0" in status.stdout and "part1" in status.stdout

    from storage import Workspace
    from storage.motion_dataset import open_motion_dataset, read_truth_3d

    ws = Workspace(url)
    assert not ws.is_local
    first, second = (open_motion_dataset(ws, f"part{i}") for i in range(2))
    assert first.clips.shape[1:] == (17, 3) and not np.array_equal(first.clips[:16], second.clips[:16])
    assert read_truth_3d(ws, first) is not None  # published with its dataset, on S3 too


def _count_s3_calls(fs) -> dict[str, int]:
    """Count the S3 API calls the s3fs client makes, by operation, through botocore's event hooks."""
    fs.connect()
    calls: dict[str, int] = {}

    def count(model, **_):
        calls[model.name] = calls.get(model.name, 0) + 1

    fs.s3.meta.events.register("before-call.s3", count)
    return calls


def test_records_on_s3_are_read_once_then_come_from_the_snapshot(s3_env):
    """`mas status` on S3 was one GET per record (62-67 s for 10,300 records on moto; benchmarks/bench_catalog.py
    --s3): a listing and the snapshot now stand for the records whose files did not change."""
    import json
    from dataclasses import asdict

    from storage import Catalog, Workspace
    from storage.catalog import Record

    ws = Workspace("s3://mas-bucket/snapshot-ws")
    folder = ws.path("catalog", "video")
    written = [Record(kind="video", id=f"v{i:03d}", status="done", meta={"n": i}) for i in range(60)]
    ws.fs.pipe({f"{folder}/{r.id}.json": json.dumps(asdict(r)).encode() for r in written})
    calls = _count_s3_calls(ws.fs)

    def truth() -> list[Record]:  # every record file read on its own, as the catalog did before
        return [Catalog(ws).get("video", p.rsplit("/", 1)[-1][:-5]) for p in sorted(ws.fs.find(folder))]

    catalog = Catalog(ws)
    assert catalog.records("video") == written
    assert calls.get("GetObject", 0) == 60, calls  # each file once (then the snapshot is written)
    assert catalog.records("video") == truth() and len(truth()) == 60
    calls.clear()
    assert [r.meta["n"] for r in catalog.records("video")] == list(range(60))
    assert calls.get("GetObject", 0) == 1 and calls.get("ListObjectsV2", 0) == 1, calls  # the snapshot, one listing

    catalog.mark_failed("video", "v007", "HTTP 404")  # changed by another worker
    ws.fs.rm(f"{folder}/v008.json")  # removed
    catalog.put(Record(kind="video", id="w000", status="done"))  # new
    rewritten = Record(kind="video", id="v009", status="done", meta={"n": -9})
    ws.fs.pipe(f"{folder}/v009.json", json.dumps(asdict(rewritten)).encode())  # about the same size, a new ETag
    ws.fs.pipe(f"{folder}/v010.json", b'{"kind": "video", "id": "v010", "sta')  # trashed
    calls.clear()
    problems: list[str] = []
    records = catalog.records("video", problems)
    assert calls.get("GetObject", 0) == 1 + 4, calls  # the snapshot and the 4 files that changed
    assert records == [r for r in truth() if r is not None]
    by_id = {r.id: r for r in records}
    assert by_id["v007"].status == "failed" and "v008" not in by_id and "w000" in by_id
    assert by_id["v009"].meta == {"n": -9} and "v010" not in by_id
    assert len(problems) == 1 and "v010.json" in problems[0] and "unreadable" in problems[0]
    calls.clear()
    problems.clear()
    assert catalog.records("video", problems) == records and len(problems) == 1  # the trashed one: reported again
    assert calls.get("GetObject", 0) == 1 + 1, calls

    ws.fs.pipe(ws.path("catalog", "snapshots", "video.json"), b"not json")  # a broken snapshot: files are read
    assert catalog.records("video") == records
    status = subprocess.run([MAS, "status", "-w", ws.url, "--kind", "video"], env=s3_env, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert status.returncode == 0 and "HTTP 404" in status.stdout and "w000" in status.stdout, status.stdout
