import os

import pandas as pd
import pytest

from storage import Catalog, UnsafeIdError, Workspace, check_id, file_sha256, params_hash, slugify, stage_key


@pytest.fixture()
def ws(tmp_path):
    return Workspace(tmp_path / "ws")


@pytest.mark.parametrize("bad", ["..", "../etc", "a/b", "a\\b", ".hidden", "", "a..b", "x" * 200, "/abs", "a b"])
def test_unsafe_ids_are_refused(ws, bad):
    with pytest.raises(UnsafeIdError):
        check_id(bad)
    with pytest.raises(UnsafeIdError):
        ws.video_dir(bad)
    with pytest.raises(UnsafeIdError):
        ws.dataset_dir(bad)


def test_safe_ids_and_slugify():
    assert check_id("vid_001.part-2") == "vid_001.part-2"
    assert slugify("../../My Video: final!.mp4") == "My-Video-final-.mp4"
    check_id(slugify("../../x"))
    check_id(slugify("///"))


def test_paths_stay_inside_root(ws):
    for path in (ws.tracks_path("v1"), ws.poses_path("v1"), ws.checkpoint_dir("run"), ws.samples_dir("s")):
        assert os.path.commonpath([ws.root, path]) == ws.root
    with pytest.raises(ValueError):
        ws.path("not-an-area", "x")
    assert ws.absolute(ws.relative(ws.tracks_path("v1"))) == ws.tracks_path("v1")


def test_atomic_write_replaces_and_failure_keeps_old(ws):
    target = ws.path("datasets", "d", "data.bin")
    ws.write_bytes(target, b"first")
    with pytest.raises(RuntimeError), ws.atomic_path(target) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(b"half-written")
        raise RuntimeError("killed mid-write")
    assert ws.read_bytes(target) == b"first"
    leftovers = [n for n in os.listdir(os.path.dirname(target)) if n.startswith(".tmp-")]
    assert leftovers == []
    ws.write_json(target, {"b": 1, "a": [1, 2]})
    assert ws.read_json(target) == {"a": [1, 2], "b": 1}


@pytest.mark.parametrize("umask", [0o002, 0o022, 0o077])
def test_workspace_files_follow_the_umask(tmp_path, umask):
    """Files were 0600 whatever the umask (mkstemp), so a second service sharing the volume (docker/compose.yaml)
    could not read them: `mas synthetic` (an .npz, JSON, CSV, a picture and catalog records) under each umask."""
    import stat
    import subprocess
    import sys

    root = tmp_path / "ws"
    command = [sys.executable, "-m", "pipeline.cli", "synthetic", "--name", "shared", "-w", str(root),
               "--num-motions", "4", "--length", "16"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.umask(umask))
    assert done.returncode == 0, done.stderr[-2000:]
    modes = {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()}
    assert "catalog/dataset/shared.json" in modes and len(modes) >= 4, modes
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_fsspec_memory_workspace_roundtrip():
    ws = Workspace("memory://mas-test-ws")
    assert not ws.is_local
    path = ws.poses_path("clip")
    ws.write_text(path, "hello")
    assert ws.read_text(path) == "hello"
    with ws.local_copy(path) as local:
        assert open(local).read() == "hello"
    catalog = Catalog(ws)
    catalog.mark_done("poses", "clip", key="k", outputs=[path])
    assert catalog.is_done("poses", "clip", key="k")


def test_cli_warns_that_a_memory_workspace_lasts_one_process(tmp_path):
    """Data written to `-w memory://ws` vanished before the next command, without a word."""
    import subprocess
    import sys

    def mas(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path, env={**os.environ, "COLUMNS": "300"})  # fmt: skip

    built = mas("synthetic", "--name", "gone", "-w", "memory://ws", "--num-motions", "4", "--length", "16")
    assert built.returncode == 0, built.stderr[-2000:]
    assert "warning: workspace memory://ws is kept in this process's memory" in built.stderr, built.stderr
    assert "gone when it ends" in built.stderr
    status = mas("status", "-w", "memory://ws")  # the next command: the dataset is gone, and it says why
    assert status.returncode == 2 and "kept in this process's memory" in status.stderr, status.stderr
    local = mas("status", "-w", str(tmp_path))
    assert local.returncode == 0 and "warning" not in local.stderr, local.stderr


def test_hashes_are_content_based(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"x" * 3_000_000)
    b.write_bytes(b"x" * 3_000_000)
    assert file_sha256(a) == file_sha256(b)
    b.write_bytes(b"y")
    assert file_sha256(a) != file_sha256(b)
    assert params_hash({"a": 1, "b": (2, 3)}) == params_hash({"b": [2, 3], "a": 1})
    assert params_hash({"a": 1.0}) != params_hash({"a": 1.5})
    k1 = stage_key("track", ["h1"], {"conf": 0.3})
    assert k1 == stage_key("track", ["h1"], {"conf": 0.3})
    assert k1 != stage_key("track", ["h2"], {"conf": 0.3})
    assert k1 != stage_key("track", ["h1"], {"conf": 0.4})
    assert k1 != stage_key("pose", ["h1"], {"conf": 0.3})
    with pytest.raises(TypeError):
        params_hash({"f": object()})


def test_catalog_states(ws):
    catalog = Catalog(ws)
    assert catalog.state("tracks", "v1") == "missing"
    out = ws.write_bytes(ws.tracks_path("v1"), b"parquet")
    catalog.mark_running("tracks", "v1", key="k1")
    assert catalog.state("tracks", "v1") == "running"
    catalog.mark_done("tracks", "v1", key="k1", outputs=[out], meta={"frames": 10})
    assert catalog.state("tracks", "v1", key="k1") == "done"
    assert catalog.state("tracks", "v1", key="k2") == "stale"
    catalog.mark_failed("tracks", "v1", ValueError("corrupt video"), key="k2")
    catalog.mark_running("tracks", "v1", key="k2")
    assert catalog.get("tracks", "v1").outputs == ["tracks/v1.parquet"]
    catalog.mark_failed("tracks", "v1", ValueError("corrupt video"), key="k2")
    record = catalog.get("tracks", "v1")
    assert record.status == "failed" and "ValueError: corrupt video" in record.error
    assert record.outputs == ["tracks/v1.parquet"] and ws.exists(out)  # earlier output kept
    assert record.meta["frames"] == 10
    os.remove(out)
    catalog.mark_done("tracks", "v2", key=None, outputs=[ws.write_bytes(ws.tracks_path("v2"), b"x")])
    os.remove(ws.tracks_path("v2"))
    assert catalog.state("tracks", "v2") == "missing"  # record says done but the file is gone
    with pytest.raises(FileNotFoundError):
        catalog.mark_done("tracks", "v3", key=None, outputs=[ws.tracks_path("v3")])
    with pytest.raises(ValueError):
        catalog.get("nonsense", "v1")
    with pytest.raises(UnsafeIdError):
        catalog.get("tracks", "../v1")


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_killed_run_shows_as_interrupted_not_running_forever(tmp_path, how):
    import signal
    import subprocess
    import sys

    ws = Workspace(tmp_path / "ws")
    script = ("import sys, time\nfrom storage import Catalog, Workspace\n"
              "Catalog(Workspace(sys.argv[1])).mark_running('dataset', 'toy')\nprint('started', flush=True)\n"
              "time.sleep(60)\n")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "ws")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    catalog = Catalog(ws)
    assert catalog.state("dataset", "toy") == "running"  # alive: running
    proc.send_signal(getattr(signal, how))
    proc.wait(timeout=30)
    assert catalog.state("dataset", "toy") == "interrupted"
    from typer.testing import CliRunner

    from pipeline.cli import app

    shown = CliRunner().invoke(app, ["status", "-w", str(tmp_path / "ws")])
    assert "interrupted" in shown.output and "rerun the stage" in shown.output
    catalog.mark_done("dataset", "toy", key=None, outputs=[])
    assert "owner" not in catalog.get("dataset", "toy").meta


def test_catalog_table(ws):
    catalog = Catalog(ws)
    assert list(catalog.table("video").columns)[:3] == ["kind", "id", "status"]
    catalog.mark_failed("video", "a", "HTTP 404", source="http://x/a.mp4")
    catalog.mark_done(
        "video",
        "b",
        key="k",
        outputs=[ws.write_bytes(ws.path("videos", "b", "video.mp4"), b"v")],
        meta={"fps": 30.0, "frames": 90},
    )
    table = catalog.table("video").set_index("id")
    assert isinstance(table, pd.DataFrame)
    assert table.loc["a", "status"] == "failed" and table.loc["a", "error"] == "HTTP 404"
    assert table.loc["b", "fps"] == 30.0 and table.loc["b", "status"] == "done"


def _toy_dataset(seed: int, clips: int = 4):
    import numpy as np

    rng = np.random.default_rng(seed)
    data = [np.concatenate([rng.normal(size=(10, 3, 2)), np.full((10, 3, 1), 0.9)], -1).astype("float32")
            for _ in range(clips)]  # fmt: skip
    split = ["train"] * (clips - 1) + ["test"]
    index = pd.DataFrame({"clip_id": [f"c{i}" for i in range(clips)], "video_id": "v", "track_id": 0,
                          "start_frame": 0, "mean_conf": 0.9, "split": split, "mirrored": False})  # fmt: skip
    return data, index


_KILLED_WRITER = """
import os, signal, sys
import numpy as np
import storage.motion_dataset as md
from storage import Workspace
sys.path.insert(0, {tests!r})
from test_storage import _toy_dataset
point = sys.argv[1]
real_save = np.save
def save_then_die(path, array, *a, **k):
    real_save(path, array, *a, **k)
    if point == "after-clips" and array.ndim == 2:  # mean.npy: clips.npy and index.parquet are written
        os.kill(os.getpid(), signal.SIGKILL)
np.save = save_then_die
if point == "before-switch":
    md._publish = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
clips, index = _toy_dataset(1)
md.write_motion_dataset(Workspace({root!r}), "toy", clips, index, {{"skeleton": "coco17", "fps": 30}}, 0.3)
"""


@pytest.mark.parametrize("point", ["after-clips", "before-switch"])
def test_a_killed_dataset_write_leaves_the_old_dataset_whole(tmp_path, point):
    import signal
    import subprocess
    import sys

    import numpy as np

    from storage.motion_dataset import open_motion_dataset, write_motion_dataset

    ws = Workspace(tmp_path / "ws")
    clips, index = _toy_dataset(0)
    write_motion_dataset(ws, "toy", clips, index, {"skeleton": "coco17", "fps": 30}, 0.3)
    before = open_motion_dataset(ws, "toy")
    script = _KILLED_WRITER.format(tests=os.path.dirname(__file__), root=str(tmp_path / "ws"))
    done = subprocess.run([sys.executable, "-c", script, point], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    after = open_motion_dataset(ws, "toy")  # the old version, whole: clips, index, mean and std belong together
    np.testing.assert_array_equal(np.asarray(after.clips), np.asarray(before.clips))
    np.testing.assert_array_equal(after.mean, before.mean)
    assert after.folder == before.folder
    write_motion_dataset(ws, "toy", *_toy_dataset(2), {"skeleton": "coco17", "fps": 30}, 0.3)  # the next write
    assert len(os.listdir(tmp_path / "ws" / "datasets" / "toy" / "versions")) == 1  # cleans the torn version up


def test_a_damaged_dataset_file_is_refused_by_name(tmp_path):
    import numpy as np

    from storage.motion_dataset import DatasetFormatError, open_motion_dataset, write_motion_dataset

    ws = Workspace(tmp_path / "ws")
    paths = write_motion_dataset(ws, "toy", *_toy_dataset(0), {"skeleton": "coco17", "fps": 30}, 0.3)
    clips_path = next(p for p in paths if p.endswith("clips.npy"))
    data = np.load(clips_path)
    data[0, 0, 0] += 1.0  # same size, other content (a half-copied or edited file)
    np.save(clips_path, data)
    with pytest.raises(DatasetFormatError, match=r"clips\.npy does not match its manifest.*mas process --force"):
        open_motion_dataset(ws, "toy")
    with open(clips_path, "ab") as handle:
        handle.write(b"junk")
    with pytest.raises(DatasetFormatError, match=r"clips\.npy is missing or has the wrong size"):
        open_motion_dataset(ws, "toy")
    (tmp_path / "ws" / "datasets" / "toy" / "current.json").write_text("{not json")
    with pytest.raises(DatasetFormatError, match=r"current\.json is unreadable"):
        open_motion_dataset(ws, "toy")


def test_a_dataset_in_the_flat_layout_still_opens(tmp_path):
    import shutil

    import numpy as np

    from storage.motion_dataset import open_motion_dataset, write_motion_dataset

    ws = Workspace(tmp_path / "ws")
    write_motion_dataset(ws, "toy", *_toy_dataset(0), {"skeleton": "coco17", "fps": 30}, 0.3)
    top = tmp_path / "ws" / "datasets" / "toy"
    version = next((top / "versions").iterdir())
    for f in ("clips.npy", "index.parquet", "mean.npy", "std.npy", "meta.json"):
        shutil.copy(version / f, top / f)
    shutil.rmtree(top / "versions")
    (top / "current.json").unlink()
    flat = open_motion_dataset(ws, "toy")
    assert flat.folder == str(top) and np.asarray(flat.clips).shape == (40, 3, 3)
