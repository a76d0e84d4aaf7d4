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
