"""One arm across processes (arca_sweep/distributed/): two gloo ranks of one thread each against one process.

What ran must be the same: the batch hashes, rewards, lengths and finish counts equal exactly; every other
per-step statistic within ``REL`` of the one-process value (but the shadow diagnostics of the signals
that difference policy and reference: ``DIFFERENCE_SIGNALS``); the final adapters within the dtype's bound:
``F32_ADAPTER`` (float32: measured 5e-6 to 7e-5 on weights up to 0.09 after three AdamW steps at lr 2e-3;
Adam divides each gradient coordinate by its running RMS, so a coordinate whose true gradient is noise
moves by up to ~lr whatever its size: the bound is a fraction of lr, not of the weights) and ``F64_ADAPTER``
(float64: measured 1.1e-15). With and without FSDP2 (``dist.shard=true``). The ranks are torchrun's, or
plain processes given the rank variables, as a SLURM task gets them from submitit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import cli, cli_env

pytestmark = pytest.mark.slow

BASE = ["budget=smoke", "rollout=hf", "threads=1", "logger.progress=false"]
EXACT = ("step", "data/batch_hash", "reward/", "response/", "loss/updates", "eval/accuracy")
REL, ABS = 1e-3, 1e-6
F32_ADAPTER, F64_ADAPTER = 1e-3 * 2e-3 * 100, 1e-12  # float32: 0.1 lr (2e-4); float64: float64 rounding
# entropy_mask's 20% cut can flip on a tie at float32's last bit (tests/test_resume_across_versions.py)
ROUNDING_DOMINATED = ("shadow/entropy_mask/",)
# the sampler's and the learner's log-probs differ by float32 rounding alone (~1e-6): their gap is rounding
ROUNDING_SIZED = ("rollout/logp_diff_", "rollout/is_ratio/")
# The signals that difference the policy against the reference (SPEC "Credit signals"). At the first step
# the adapter is the identity (LoRA B = 0): policy and reference agree to rounding, so these signals are
# rounding alone, and a shadow signal's reference pass runs on the shadow rows only (another batch shape
# than the policy's): their shadow diagnostics are noise in one process as well (measured: the one-process
# float64 arm with micro_batch_size 8 instead of 64 moves shadow/entropy/gini from 0.229 to 0.467 at
# step 1). In these few-step runs most tokens' values stay rounding-sized, and the diagnostics rank and
# threshold them (gini, etr, regime shares, Spearman: 0.3% to 2% apart after float32 rounding): only
# their presence is compared. (The arca arm's own training credit is compared, through its adapter.)
DIFFERENCE_SIGNALS = ("shadow/arca/", "shadow/entropy/", "shadow/divergence/")


def torchrun(*args, cwd: Path, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "arca_sweep", *map(str, args)]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=cli_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun {' '.join(map(str, args))} failed:\n{proc.stderr[-6000:]}")
    return proc


def records(arm: Path) -> list[dict]:
    return [json.loads(x) for x in (arm / "metrics.jsonl").read_text().splitlines()]


def adapter(arm: Path) -> dict[str, torch.Tensor]:
    return load_file(arm / "adapter" / "adapter_model.safetensors")


def assert_same_arm(got: Path, want: Path, bound: float) -> float:
    """The arms' records and final adapters agree (module docstring); returns the adapters' largest gap."""
    g_records, w_records = records(got), records(want)
    assert [r["step"] for r in g_records] == [r["step"] for r in w_records]
    for g, w in zip(g_records, w_records, strict=True):
        assert g.keys() == w.keys(), (w["step"], g.keys() ^ w.keys())
        for key, value in w.items():
            if key.startswith(("perf/", *ROUNDING_DOMINATED)):
                continue
            if key.startswith(DIFFERENCE_SIGNALS):
                assert (g[key] is None) == (value is None), (got.name, w["step"], key)
                continue
            if key.startswith(ROUNDING_SIZED):
                assert abs(g[key] - value) <= 1e-5, (got.name, w["step"], key, g[key], value)
            elif key.startswith(EXACT) or not isinstance(value, float):
                assert g[key] == value, (got.name, w["step"], key, g[key], value)
            else:
                assert abs(g[key] - value) <= ABS + REL * abs(value), (
                    got.name,
                    w["step"],
                    key,
                    g[key],
                    value,
                )
    a, b = adapter(got), adapter(want)
    assert a.keys() == b.keys()
    gap = max((a[k] - b[k]).abs().max().item() for k in a)
    assert gap <= bound, (got.name, gap)
    return gap


def arms(sweep: Path) -> dict[str, Path]:
    return {p.name: p for p in sweep.iterdir() if (p / "summary.json").is_file()}


@pytest.mark.parametrize(
    "extra, bound",
    [
        (["credit=uniform,arca,entropy_mask"], F32_ADAPTER),
        (
            ["credit=uniform,arca", "learner.ppo_epochs=2", "learner.mini_batches=2", "model.dtype=float64"],
            F64_ADAPTER,
        ),
    ],
    ids=["float32-grpo", "float64-ppo"],
)
def test_two_ranks_update_as_one_process(tmp_path, extra, bound):
    one, two, sharded = tmp_path / "one", tmp_path / "two", tmp_path / "sharded"
    cli(*BASE, *extra, "-m", f"hydra.sweep.dir={one}", cwd=tmp_path)
    torchrun(*BASE, *extra, "-m", f"hydra.sweep.dir={two}", cwd=tmp_path)
    torchrun(*BASE, *extra, "dist.shard=true", "-m", f"hydra.sweep.dir={sharded}", cwd=tmp_path)
    want = arms(one)
    assert len(want) == len(extra[0].split(","))  # (dist.* keys stay out of arm names: the same names)
    assert arms(two).keys() == want.keys() == arms(sharded).keys()
    for name, arm in want.items():
        for other in (two, sharded):
            assert_same_arm(other / name, arm, bound)
            summary = json.loads((other / name / "summary.json").read_text())
            assert summary["dist"] == {"world_size": 2, "backend": "gloo", "shard": other == sharded}
        # one writer: rank 0's records only (one step 0 line, one line per step)
        assert [r["step"] for r in records(two / name)] == list(range(len(records(arm))))


def test_sharded_ranks_with_uneven_shares_update_as_one_process(tmp_path):
    """``dist.shard=true`` where the ranks' shares differ: 3 prompts on 2 ranks with rollout batches of 4
    rows (rank 0 makes two generate calls, rank 1 one), an eval of 9 prompts (two calls against one),
    and mini-batches of one prompt each in micro-batches of 2 rows (in every update one rank holds no
    rows and runs stand-ins for the other's micro-batches). float64: the one-process update. The sharded arm
    also asks for the fidelity probe, which is off under dist.shard (it cast the weights under FSDP2's copies
    of them, and the updates stopped reaching the model): the records and adapter are still the same."""
    extra = [
        "budget.prompts_per_step=3",
        "rollout.batch_size=4",
        "budget.eval_size=9",
        "learner.ppo_epochs=2",
        "learner.mini_batches=3",
        "learner.micro_batch_size=2",
        "model.dtype=float64",
    ]
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    cli(*BASE, *extra, f"hydra.run.dir={one}", cwd=tmp_path)
    shard = ["dist.shard=true", "diagnostics.fidelity_every=1"]
    proc = torchrun(*BASE, *extra, *shard, f"hydra.run.dir={sharded}", cwd=tmp_path)
    assert "the fidelity probe is off under dist.shard" in proc.stdout + proc.stderr
    assert len(adapter(sharded)) == len(adapter(one)) > 0
    assert_same_arm(sharded, one, F64_ADAPTER)


def test_the_comparison_catches_a_different_update(tmp_path):
    """Not vacuous: another learning rate's arm fails it."""
    a, b = tmp_path / "a", tmp_path / "b"
    cli(*BASE, f"hydra.run.dir={a}", cwd=tmp_path)
    cli(*BASE, "optim.lr=2.1e-3", f"hydra.run.dir={b}", cwd=tmp_path)
    with pytest.raises(AssertionError):
        assert_same_arm(a, b, F32_ADAPTER)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ranks(arm: Path, *args: str, timeout_s: int = 20) -> list[subprocess.Popen]:
    """Two plain processes given the rank variables (as submitit sets them in a SLURM job's tasks)."""
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = cli_env(
            RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        cmd = [
            sys.executable,
            "-m",
            "arca_sweep",
            *BASE,
            *args,
            f"dist.timeout_s={timeout_s}",
            f"hydra.run.dir={arm}",
        ]
        procs.append(
            subprocess.Popen(
                cmd, cwd=arm.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    return procs


def test_a_killed_rank_ends_the_job_and_a_relaunch_resumes(tmp_path):
    steps = ["budget.steps=8", "budget.checkpoint_every=1"]
    arm, straight = tmp_path / "arm", tmp_path / "straight"
    procs = ranks(arm, *steps)
    metrics = arm / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):  # step 2 is done
        assert time.time() < deadline and all(p.poll() is None for p in procs), [
            p.communicate()[0][-3000:] for p in procs
        ]
        time.sleep(0.05)
    os.kill(procs[1].pid, signal.SIGKILL)
    out0 = procs[0].communicate(timeout=120)[0]
    procs[1].wait()
    assert procs[0].returncode != 0, out0[-3000:]  # the survivor fails, it does not hang
    done = len(metrics.read_text().splitlines()) - 1
    assert 2 <= done < 8, done

    again = ranks(arm, *steps)
    outs = [p.communicate(timeout=600)[0] for p in again]
    assert [p.returncode for p in again] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert "resuming" in outs[0] and "after step" in outs[0]
    cli(*BASE, *steps, f"hydra.run.dir={straight}", cwd=tmp_path)
    assert_same_arm(arm, straight, F32_ADAPTER)


@pytest.mark.parametrize(
    "override, message",
    [
        ("rollout=vllm", "error: rollout=vllm with 2 processes is not supported"),
        ("dist.backend=nccl", "error: dist.backend=nccl needs CUDA, and this arm runs on cpu"),
    ],
)
def test_what_cannot_run_across_processes_is_refused_before_any_model_loads(tmp_path, override, message):
    arm = tmp_path / "arm"
    proc = torchrun(
        *[a for a in BASE if a.split("=")[0] != override.split("=")[0]],
        override,
        f"hydra.run.dir={arm}",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode != 0
    assert proc.stderr.count(message) == 1  # rank 0 says it, once
    assert "Traceback" not in proc.stderr.split("failed (exitcode")[0]  # (torchrun's own report follows)
    assert not (arm / "metrics.jsonl").exists()
