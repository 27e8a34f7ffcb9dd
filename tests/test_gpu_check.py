"""The GPU check (benchmarks/gpu/): its dry run on the CPU writes what the GPU run writes, and the wheels script
refuses a target the GPU machine is not. The `cuda` lane it runs there is tests/test_cuda.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_checks_dry_run_writes_what_the_gpu_run_writes(tmp_path):
    """benchmarks/gpu/run.sh --dry-run: the CUDA lane (skipped here, with its reason) and every measurement at tiny
    shapes on the CPU, through the same code, into the same files."""
    out = tmp_path / "gpu"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "SYLLABUS_GPU_SITE": str(tmp_path / "site")}
    done = subprocess.run(["bash", "benchmarks/gpu/run.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "needs a CUDA GPU" in (out / "cuda-tests.txt").read_text()
    results = json.loads((out / "gpu.json").read_text())
    phases = {**results["ce"], **results["kd"]}
    for name in ("ce_padded", "ce_packed", "topk_capture", "kd_step_live", "kd_step_cached",
                 "kd_step_checkpointed"):
        # > 0 only: at tiny shapes on a shared CPU the matmul ceiling is noise, and MFU past 1 happens
        assert phases[name]["tokens_per_second"] > 0 and phases[name]["mfu"] > 0
    assert results["ce"]["packing_is_exact"] and results["ce"]["ce_max_abs_diff_packed_vs_padded"] < 0.01
    assert results["kd"]["checkpointing_loss_diff"] < 1e-5
    assert done.stdout.rstrip().splitlines()[-1].startswith("checkpointing changes")  # the table comes last
    assert "kd_step_cached" in (out / "gpu.txt").read_text()


@pytest.mark.parametrize("args, message", [
    (["--platform", "macosx_14_0_arm64"], "not an x86-64 Linux (manylinux) platform"),
    (["--platform", "manylinux_2_17_aarch64"], "not an x86-64 Linux (manylinux) platform"),
    (["--python-version", "2.7.18"], "not a CPython 3.x version"),
])
def test_the_wheels_script_refuses_a_platform_the_gpu_machine_is_not(tmp_path, args, message):
    done = subprocess.run([sys.executable, "benchmarks/gpu/wheels.py", "--dest", str(tmp_path / "w"), *args],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0 and message in done.stderr
    assert not (tmp_path / "w").exists()  # refused before anything is downloaded or deleted
