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
