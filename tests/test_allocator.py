"""The malloc settings of models.allocator: freed activations stay in the process instead of being page-faulted in
again, measured by the kernel's own minor-fault count in a fresh process."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOOP = """
import resource, torch
from models.allocator import keep_freed_memory
state = keep_freed_memory()
def passes(count):  # a pass's activations: allocated, written, freed
    for _ in range(count):
        torch.empty(16 << 20).fill_(1.0)
passes(10)  # the heap settles (freed aligned blocks coalesce until one fits the next request)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
passes(20)
print("FAULTS", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print("STATE", state)
"""


def run_loop(keep: str, script: str = LOOP) -> tuple[int, str]:
    env = {**os.environ, "MAS_KEEP_FREED_MEMORY": keep, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300, check=True).stdout  # fmt: skip
    return int(out.split("FAULTS", 1)[1].split()[0]), out.split("STATE", 1)[1].strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's")
def test_freed_activations_are_reused_instead_of_faulted_in_again():
    default_faults, default_state = run_loop("0")
    kept_faults, kept_state = run_loop("1")
    assert "glibc's defaults (MAS_KEEP_FREED_MEMORY=0)" in default_state
    assert "keeps freed memory" in kept_state and "256 MiB" in kept_state
    pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")  # one 64 MiB tensor
    assert default_faults > 15 * pages  # glibc maps every 64 MiB block afresh
    assert kept_faults < pages, (kept_faults, default_faults)  # the settled heap is reused


def test_the_cli_applies_the_settings_before_any_command():
    script = "\n".join(["from typer.testing import CliRunner", "from pipeline.cli import app",
                        "import models.allocator as a", "assert a._state is None",
                        "assert CliRunner().invoke(app, ['check-config', 'configs/nba.yaml']).exit_code == 0",
                        "print('FAULTS 0')", "print('STATE', a._state)"])  # fmt: skip
    _, state = run_loop("1", script)
    expected = "keeps freed memory" if platform.libc_ver()[0] == "glibc" else "not glibc"
    assert expected in state, state
