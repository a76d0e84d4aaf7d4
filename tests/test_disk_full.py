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
