"""One writer per artifact: exclusive locks, a clear message naming the holder, stale locks taken over."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from storage import Workspace
from storage.locks import ArtifactLock, ArtifactLockedError

MAS = str(Path(sys.executable).with_name("mas"))


def test_only_one_of_many_racing_writers_gets_the_lock(tmp_path):
    ws = Workspace(tmp_path)
    winners, barrier = [], threading.Barrier(8)

    def race():
        lock = ArtifactLock(ws, "dataset", "toy")
        barrier.wait()
        try:
            lock.acquire()
            winners.append(lock)
        except ArtifactLockedError:
            pass

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    winners[0].release()
    with ArtifactLock(ws, "dataset", "toy"):  # free again
        pass


def test_the_second_writer_waits_or_fails_naming_the_holder(tmp_path):
    ws = Workspace(tmp_path)
    first = ArtifactLock(ws, "checkpoint", "run1").acquire()
    with pytest.raises(ArtifactLockedError, match=rf"checkpoint 'run1' is being written by pid {os.getpid()} on"):
        ArtifactLock(ws, "checkpoint", "run1", wait=0.3).acquire()
    threading.Timer(0.5, first.release).start()
    with ArtifactLock(ws, "checkpoint", "run1", wait=10):  # waits for the first to finish
        pass
    with ArtifactLock(ws, "checkpoint", "run2"):  # other artifacts are independent
        pass


def test_a_killed_holder_and_a_silent_holder_are_taken_over(tmp_path):
    ws = Workspace(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = ArtifactLock(ws, "sample", "s")
    lock.owner["pid"] = dead.pid  # a lock left by a process that is gone
    lock.acquire()
    lock._stop.set()
    with pytest.warns(UserWarning, match="taking over the stale lock"):
        ArtifactLock(ws, "sample", "s").acquire().release()
    silent = ArtifactLock(ws, "sample", "t", heartbeat_s=3600).acquire()
    silent.owner["host"] = "another-host"  # alive elsewhere, but its heartbeat stopped long ago
    silent.owner["since"] = silent.owner["heartbeat"] = time.time() - 1000
    ws.write_json(silent.path, silent.owner)
    with pytest.warns(UserWarning, match="another-host"):
        ArtifactLock(ws, "sample", "t", stale_s=300).acquire().release()


def test_locks_on_an_fsspec_store():
    ws = Workspace("memory://lock-test")
    first = ArtifactLock(ws, "dataset", "d").acquire()
    with pytest.raises(ArtifactLockedError, match="is being written by"):
        ArtifactLock(ws, "dataset", "d").acquire()
    first.release()
    ArtifactLock(ws, "dataset", "d").acquire().release()


def test_a_second_mas_train_of_one_run_fails_naming_the_first(synthetic_ws):
    holder = ArtifactLock(synthetic_ws, "checkpoint", "busy").acquire()
    try:
        done = subprocess.run([MAS, "train", "--dataset", "synth", "--run", "busy", "-w", str(synthetic_ws.root),
                               "--steps", "2", "--layers", "1", "--latent-dim", "16", "--device", "cpu"],
                              capture_output=True, text=True, timeout=300)  # fmt: skip
    finally:
        holder.release()
    assert done.returncode == 2
    assert f"is being written by pid {os.getpid()}" in done.stderr.replace("\n", " ")
    assert not synthetic_ws.exists(f"{synthetic_ws.checkpoint_dir('busy')}/last.pt")


_TRACK = """
import sys
from pipeline.config import DetectorConfig
from pipeline.assets import PERSON_DETECTOR_CLASSES
from pipeline.detect_track import track_video
from storage import Workspace
track_video(Workspace(sys.argv[1]), sys.argv[2], DetectorConfig(weights=sys.argv[3], classes=["person"],
            class_names=PERSON_DETECTOR_CLASSES, imgsz=160), progress=False)
"""


def _as_if_on_another_host(ws, kind: str, video_id: str, heartbeat: float) -> None:
    """Rewrite the lock and the running record a killed run left so they name another host (where this host cannot
    see whether the process lives), with its last heartbeat at ``heartbeat``."""
    from storage import Catalog

    lock = ArtifactLock(ws, kind, video_id)
    holder = lock.holder()
    assert holder and holder["pid"] > 0, f"no lock of {kind} {video_id}: the stage did not take one"
    ws.write_json(lock.path, {**holder, "host": "host-b", "pid": 4242, "heartbeat": heartbeat})
    catalog = Catalog(ws)
    record = catalog.get(kind, video_id)
    record.meta["owner"] = {**record.meta["owner"], "host": "host-b", "pid": 4242}
    catalog.put(record)


def test_track_killed_on_another_host_turns_interrupted_and_pose_says_so(tmp_path, person_detector):
    """The track stage holds the lock with heartbeat of process/train: a run killed on another host is judged by its
    heartbeat (no waiting: the heartbeat is set back), `mas pose` names it with the rerun command, and the rerun
    takes the stale lock over; a live run elsewhere makes a second pose run fail at once, naming it."""
    import yaml
    from typer.testing import CliRunner

    from pipeline.assets import PERSON_DETECTOR_CLASSES
    from pipeline.cli import app
    from pipeline.config import DetectorConfig, PoseConfig, Source
    from pipeline.detect_track import track_video
    from pipeline.download import ingest_file
    from pipeline.pose import pose_video
    from storage import Catalog
    from tests.test_download import make_video

    ws = Workspace(tmp_path / "ws")
    video = ingest_file(ws, make_video(tmp_path / "clip.mp4", frames=90), Source(kind="local", value="x"), "x")
    catalog = Catalog(ws)
    proc = subprocess.Popen([sys.executable, "-c", _TRACK, ws.root, video.video_id, str(person_detector)],
                            cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    deadline = time.time() + 120
    while catalog.state("tracks", video.video_id) != "running" and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()  # what a kill on the other host leaves: its lock and its running record
    proc.wait(timeout=30)
    _as_if_on_another_host(ws, "tracks", video.video_id, heartbeat=time.time())
    assert catalog.state("tracks", video.video_id) == "running"  # a fresh heartbeat elsewhere: alive, not judged
    _as_if_on_another_host(ws, "tracks", video.video_id, heartbeat=time.time() - 1000)
    assert catalog.state("tracks", video.video_id) == "interrupted"
    runner = CliRunner()
    shown = runner.invoke(app, ["status", "-w", ws.root, "--kind", "tracks"])
    assert "interrupted" in shown.output and "running" not in shown.output, shown.output
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"name": "c", "skeleton": "coco17", "fps": 15, "pose": {"backend": "mediapipe"},
                                      "sources": [{"kind": "local", "value": "x"}]}))  # fmt: skip
    posed = runner.invoke(app, ["pose", "-c", str(config), "-w", ws.root])
    said = " ".join(posed.output.split())
    assert posed.exit_code == 2, posed.output
    assert (f"the tracks of video {video.video_id} were interrupted (the run of pid 4242 on host-b" in said
            and f"rerun `mas track -c {config} -w {ws.root} --video {video.video_id}`" in said), said  # fmt: skip
    leftover = Path(ws.path("tracks")) / f".tmp-{video.video_id}.parquet.killed.parquet"  # a write the kill cut
    leftover.parent.mkdir(exist_ok=True)
    leftover.write_bytes(b"PAR1 half")
    cfg = DetectorConfig(weights=str(person_detector), classes=["person"], class_names=PERSON_DETECTOR_CLASSES,
                         imgsz=160)  # fmt: skip
    with pytest.warns(UserWarning, match="taking over the stale lock of tracks .* held by pid 4242 on host-b"):
        rerun = track_video(ws, video.video_id, cfg, progress=False)
    assert rerun.status == "done", rerun.error
    assert catalog.state("tracks", video.video_id) == "done" and not leftover.exists()
    assert ArtifactLock(ws, "tracks", video.video_id).holder() is None  # released
    live = ArtifactLock(ws, "poses", video.video_id)
    ws.write_json(live.path, {**live.owner, "host": "host-b", "pid": 4242})  # a live pose run on another host
    busy = pose_video(ws, video.video_id, PoseConfig(backend="mediapipe"), "coco17", progress=False)
    assert busy.status == "failed" and "is being written by pid 4242 on host-b" in busy.error
    assert catalog.get("poses", video.video_id) is None  # its record is left to the run that holds the lock


def test_temporary_files_of_killed_runs_are_removed_by_the_next_run_of_their_stage(tmp_path):
    """Killed writes leave ``.tmp-*`` files; the next run of the stage, holding the artifact's lock, removes those of
    its own files (any age) and anonymous old ones, never a fresh one of another artifact (a live writer)."""
    import pandas as pd

    from pipeline.config import DatasetConfig, ProcessConfig, Source
    from pipeline.dataset_stage import build_dataset
    from pipeline.download import ingest_file
    from pipeline.overlay import write_overlay
    from pipeline.video import probe_video
    from storage import Catalog, file_sha256
    from storage.tables import TRACK_COLUMNS, write_tracks
    from tests.test_download import make_video
    from tests.test_process import CFG, _write_video_poses, pixel_track

    def leave(folder, name: str, age: float = 0.0) -> Path:
        path = Path(folder) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"cut short")
        os.utime(path, (time.time() - age, time.time() - age))
        return path

    ws = Workspace(tmp_path / "ws")
    clip = make_video(tmp_path / "clip.mp4", frames=20)
    video_id = f"clip-{file_sha256(clip)[:10]}"
    killed_import = leave(ws.video_dir(video_id), ".tmp-video.mp4.k0.mp4")
    assert ingest_file(ws, clip, Source(kind="local", value="x"), "x").video_id == video_id
    assert not killed_import.exists()

    empty = pd.DataFrame({c: pd.Series(dtype="object" if c in ("video_id", "class") else "float64")
                          for c in TRACK_COLUMNS}).astype({"frame": "int64", "track_id": "int64"})  # fmt: skip
    path = write_tracks(ws, video_id, empty, {"fps": 15.0, "width": 160, "height": 120, "frames": 20})
    Catalog(ws).mark_done("tracks", video_id, key="k", outputs=[path])
    overlays = ws.path("overlays")
    mine = [leave(overlays, f".tmp-{video_id}.mp4.k1.mp4"), leave(overlays, f".tmp-{video_id}.png.k2.png"),
            leave(overlays, ".tmp-k3.mp4", age=1000)]  # the last: named before names said their target  # fmt: skip
    live = leave(overlays, ".tmp-other-video.mp4.k4.mp4")  # another video's overlay, being written right now
    mp4, _ = write_overlay(ws, video_id)
    assert not any(p.exists() for p in mine) and live.exists() and probe_video(mp4).frames == 20

    for v in range(2):
        _write_video_poses(ws, f"video{v}", [pixel_track(10 + v, 100, video=f"video{v}")])
    cut = [leave(ws.dataset_dir("toy"), ".tmp-preview.png.k5.png"), leave(ws.dataset_dir("toy"), ".tmp-k6.npy")]
    config = DatasetConfig(name="toy", skeleton="coco17", fps=30, sources=[{"kind": "local", "value": "x"}],
                           process=ProcessConfig(**{**CFG.model_dump(), "test_fraction": 0.5}))  # fmt: skip
    assert build_dataset(ws, config).num_clips > 0
    assert not any(p.exists() for p in cut)  # the dataset's folder is its own: every leftover there goes
