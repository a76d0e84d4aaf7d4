"""A full disk or a file size limit: the stage fails saying where and what to do, leaves no temporary file, and its
catalog record says failed, never running."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from models.trainer import TrainConfig
from pipeline.synthetic import build_synthetic_dataset
from pipeline.train_stage import run_training
from storage import Catalog, Workspace
from storage.workspace import DiskFullError

BIG = dict(latent_dim=128, ff_size=256, num_layers=2, num_heads=4, dropout=0.0, max_len=16, device="cpu",
           steps=1, batch_size=4, save_every=1, log_every=1)  # fmt: skip  # checkpoint of about 4 MB


def _leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.name.startswith(".tmp-")]


@pytest.fixture()
def small_disk(tmp_path):
    """A real 2 MB filesystem (tmpfs); needs root (or CAP_SYS_ADMIN) to mount."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); the file size limit test covers it")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)  # lazy: a memory-mapped dataset may still be open


def test_training_on_a_full_disk_fails_by_name_and_cleans_up(small_disk):
    ws = Workspace(small_disk / "ws")
    build_synthetic_dataset(ws, "synth", num_motions=16, length=16, seed=0)
    with pytest.raises(DiskFullError, match=r"disk full \(\d+ bytes free\) at .*checkpoints/run/last\.pt: free "
                                            r"space and rerun"):  # fmt: skip
        run_training(ws, "synth", "run", TrainConfig(**BIG), progress=False)
    assert _leftovers(small_disk) == []
    record = Catalog(ws).get("checkpoint", "run")
    assert record.status == "failed" and "disk full" in record.error and "free space and rerun" in record.error


def test_a_failure_that_cannot_be_recorded_does_not_stay_running(small_disk):
    ws = Workspace(small_disk / "ws")
    catalog = Catalog(ws)
    catalog.mark_running("dataset", "toy")
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as handle:  # fill the disk to the last block
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    with pytest.raises(DiskFullError, match="catalog/dataset/toy.json: free space and rerun"):
        catalog.put(catalog.get("dataset", "toy"))
    catalog.mark_failed("dataset", "toy", DiskFullError("disk full at x: free space and rerun"))
    assert catalog.state("dataset", "toy") == "missing"  # not "running" forever
    assert _leftovers(small_disk) == []


_LIMITED = textwrap.dedent("""
    import resource, signal, sys
    sys.path.insert(0, {repo!r})
    from models.trainer import TrainConfig
    from pipeline.train_stage import run_training
    from storage import Workspace
    from tests.test_disk_full import BIG
    ws = Workspace({root!r})
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, resource.RLIM_INFINITY))
    try:
        run_training(ws, "synth", "run", TrainConfig(**BIG), progress=False)
    except Exception as exc:
        print(type(exc).__name__, exc)
""")


def test_a_file_size_limit_is_named_too(tmp_path):
    ws = Workspace(tmp_path / "ws")
    build_synthetic_dataset(ws, "synth", num_motions=16, length=16, seed=0)
    script = _LIMITED.format(repo=str(Path(__file__).resolve().parents[1]), root=ws.root)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(__file__)))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DiskFullError file size limit reached" in done.stdout and "checkpoints/run/last.pt" in done.stdout
    assert "free space and rerun" in done.stdout, done.stdout
    assert _leftovers(tmp_path) == []
    record = Catalog(ws).get("checkpoint", "run")
    assert record.status == "failed" and "file size limit" in record.error


def _noise_video(path: Path, frames: int = 30, size=(160, 120)) -> Path:
    """Frames of noise: an mp4 that does not compress, so its overlay needs hundreds of kB."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 15.0, size)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    writer.release()
    return path


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` up to ``leave`` bytes free (0: to the last block)."""
    filler = disk / f"filler-{leave}"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while (free := os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize) > leave:
                handle.write(b"\0" * min(65536, max(free - leave, 4096)))
        except OSError:
            pass
    return filler


def test_a_full_disk_never_publishes_a_torn_overlay_and_says_so_in_one_line(small_disk, tmp_path, person_detector):
    """OpenCV's writer says nothing when the disk fills: the overlay is read back (frame count) before the rename,
    so no torn mp4 takes its final name, and `mas pose` prints the one-line error (no traceback), on a nearly full
    disk and on a full one; once space is freed the rerun writes the whole overlay."""
    import yaml
    from typer.testing import CliRunner

    from pipeline.assets import PERSON_DETECTOR_CLASSES
    from pipeline.cli import app
    from pipeline.config import Source
    from pipeline.download import ingest_file
    from pipeline.video import probe_video

    ws = Workspace(small_disk / "ws")
    video = ingest_file(ws, _noise_video(tmp_path / "noise.mp4"), Source(kind="local", value="x"), "x")
    assert video.status == "done", video.error
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"name": "c", "skeleton": "coco17", "fps": 15,
                                      "sources": [{"kind": "local", "value": "x"}], "pose": {"backend": "mediapipe"},
                                      "detector": {"weights": str(person_detector), "classes": ["person"],
                                                   "class_names": PERSON_DETECTOR_CLASSES, "imgsz": 160}}))  # fmt: skip
    runner = CliRunner()
    args = ["-c", str(config), "-w", ws.root]
    for stage in (["track"], ["pose", "--no-overlay"]):
        done = runner.invoke(app, [*stage, *args])
        assert done.exit_code == 0, done.output
    overlay = Path(ws.overlay_path(video.video_id))
    fillers = [_fill(small_disk, 64 * 1024)]  # room for a lock file, not for the overlay
    for _ in range(2):  # the rerun on the same disk fails the same way
        torn = runner.invoke(app, ["pose", *args])
        said = " ".join(torn.output.split())
        assert torn.exit_code == 2 and isinstance(torn.exception, SystemExit), torn.output
        assert said.startswith("error: disk full") and f"at {overlay}: free space and rerun" in said, said
        assert "Traceback" not in torn.output and not overlay.exists() and _leftovers(small_disk) == []
    fillers.append(_fill(small_disk, 0))  # not a block left: the lock file itself cannot be written
    full = runner.invoke(app, ["pose", *args])
    said = " ".join(full.output.split())
    assert full.exit_code == 2 and said.startswith("error: disk full") and "free space and rerun" in said, said
    assert "Traceback" not in full.output and not overlay.exists() and _leftovers(small_disk) == []
    for filler in fillers:
        filler.unlink()
    again = runner.invoke(app, ["pose", *args])
    assert again.exit_code == 0 and "overlay" in again.output, again.output
    assert probe_video(overlay).frames == 30
