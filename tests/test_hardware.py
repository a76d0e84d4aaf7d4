"""Hardware policy: torch threads that match the free cores, set before torch loads."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.hardware import thread_policy, usable_cores

PROBE = """
import sys
from typer.testing import CliRunner
from pipeline.cli import app
result = CliRunner().invoke(app, [*sys.argv[2:], "check-config", sys.argv[1]])
assert result.exit_code == 0, result.output
import torch
print("THREADS", torch.get_num_threads())
"""


def test_thread_policy_follows_request_env_and_load(monkeypatch):
    assert thread_policy(3) == (3, "3 threads: asked for")
    with pytest.raises(ValueError, match="threads must be >= 1"):
        thread_policy(0)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert thread_policy() == (2, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    cores = usable_cores()
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert thread_policy()[0] == cores  # a quiet host: every core
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 3.0, 0.0, 0.0))
    count, why = thread_policy()
    assert count == 1 and why == f"1 of {cores} cores free (load average {cores + 3.0:.1f})"  # never 0


@pytest.mark.parametrize("threads", ["1", "2"])
def test_cli_sets_torch_threads_before_torch_loads(tmp_path, threads):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    config = Path(__file__).resolve().parents[1] / "configs" / "gymnastics.yaml"
    out = subprocess.run([sys.executable, "-c", PROBE, str(config), "--threads", threads], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"THREADS {threads}" in out.stdout
