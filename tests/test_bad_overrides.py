"""Bad overrides through the real CLI: each fails before any weights load, before the modules of a run are
imported and before anything is written, with one message naming the key (and no traceback).
``scripts/bench_startup.py`` times them.

The table runs through ``arca_sweep.main.cli`` (the ``python -m arca_sweep`` entry point) in one child
process, case after case, so the suite pays the interpreter's start-up once; a few cases also run as
separate ``python -m arca_sweep`` processes, in parallel.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.helpers import cli, cli_env

# (overrides, text the message must contain: the key, and where it matters the valid choices)
CASES = [
    # the issue's list
    (["budget.eval_size=100000000"], ["budget.eval_size=100000000", "lower budget.eval_size"]),
    (["credit.layer=99"], ["credit.layer=99", "0..4"]),
    (["optim.betas=[1.5,0.9]"], ["optim.betas=[1.5, 0.9]", "[0, 1)"]),
    (["seed=-1"], ["seed=-1"]),
    (["rank.target_modules=[foo_proj]"], ["rank.target_modules", "'foo_proj'", "q_proj", "down_proj"]),
    (["+foo=1"], ["foo is not a config key", "credit"]),
    # LoRA targets (issue 10's item: checked against the architecture before weights load)
    (["rank.target_modules=[q_proj,lm_head]"], ["rank.target_modules", "'lm_head'", "not supported"]),
    (["rank.target_modules=[embed_tokens]"], ["rank.target_modules", "'embed_tokens'", "tied"]),
    (["rank.target_modules=[]"], ["rank.target_modules"]),
    # unknown nested keys
    (["+credit.foo=2"], ["credit.foo is not a config key", "credit.normalize"]),
    (["+optim.momentum=0.9"], ["optim.momentum is not a config key", "optim.betas"]),
    # choices
    (["credit.normalize=softmaxx"], ["credit.normalize='softmaxx'", "mean, softmax, rank"]),
    (["loss.agg=foo"], ["loss.agg='foo'", "token-mean"]),
    (["credit.mode=square"], ["credit.mode", "clamp, abs"]),
    (["credit.estimator=k2"], ["credit.estimator", "exact, k3"]),
    (["advantage.estimator=max"], ["advantage.estimator='max'", "grpo, dr_grpo, rloo"]),
    (
        ["advantage.scale=none"],
        ["advantage.scale was replaced by advantage.estimator", "advantage.estimator=dr_grpo"],
    ),
    (["device=tpu"], ["device='tpu'", "auto, cpu, cuda"]),
    (["logger.name=foo"], ["logger.name='foo'", "jsonl, wandb"]),
    (["rollout.name=sglang"], ["rollout.name='sglang'", "auto, hf, vllm"]),
    (["model.dtype=float8"], ["model.dtype='float8'", "bfloat16"]),
    # ranges
    (["rank.r=-1"], ["rank.r=-1"]),
    (["rank.alpha=0"], ["rank.alpha=0"]),
    (["rank.dropout=-0.1"], ["rank.dropout=-0.1"]),
    (["rank.init_seed=-5"], ["rank.init_seed=-5"]),
    (["budget.group_size=1"], ["budget.group_size=1"]),
    (["budget.steps=0"], ["budget.steps=0"]),
    (["budget.max_new_tokens=0"], ["budget.max_new_tokens=0"]),
    (["budget.eval_every=-1"], ["budget.eval_every=-1"]),
    (["rollout.top_p=1.5"], ["rollout.top_p=1.5"]),
    (["rollout.temperature=0"], ["rollout.temperature=0"]),
    (["rollout.gpu_memory_utilization=1.5"], ["rollout.gpu_memory_utilization=1.5"]),
    (["credit.mix=2"], ["credit.mix=2"]),
    (["credit.clip_max=0.5"], ["credit.clip_max=0.5"]),
    (["credit.layer=-7"], ["credit.layer=-7"]),
    (["loss.beta=-1"], ["loss.beta=-1"]),
    (["optim.lr=0"], ["optim.lr=0"]),
    (["optim.grad_clip=-1"], ["optim.grad_clip=-1"]),
    (["optim.betas=[0.9]"], ["optim.betas=[0.9]"]),
    (["learner.micro_batch_size=0"], ["learner.micro_batch_size=0"]),
    (["threads=-1"], ["threads=-1"]),
    (["data.ops=/"], ["data.ops='/'"]),
    (["data.min_operands=1"], ["data.min_operands=1"]),
    (["data.min_operand=10", "data.max_operand=9"], ["data.min_operand=10", "data.max_operand=9"]),
    (["data.answer_format=json"], ["data.answer_format='json'", "boxed, number"]),
    (["data.max_prompt_tokens=0"], ["data.max_prompt_tokens=0"]),
    (["data.levels=[6]"], ["data.levels=[6]"]),
    (["data.grader_timeout_s=0"], ["data.grader_timeout_s=0"]),
    (["diagnostics.uniform_at=0.1"], ["diagnostics", "uniform_at"]),
    (["model=qwen3_1_7b", "model.hub_id=null"], ["model.path", "qwen3_1_7b"]),
    (["model.path=/nowhere/Qwen3-1.7B"], ["model.path='/nowhere/Qwen3-1.7B' has no config.json"]),
    (["data=math", "data.path=/nowhere/train.jsonl"], ["data.path='/nowhere/train.jsonl': no such file"]),
]

# imported only once a run starts (the training loop, the learner's update, the rollout engines); validation
# reads only the learner's registries (arca_sweep.learner.loss, .rollout_correction)
RUN_MODULES = ("arca_sweep.train", "arca_sweep.learner.update", "arca_sweep.rollout")
RUNNER = f"RUN_MODULES = {RUN_MODULES!r}\n" + textwrap.dedent(
    """
    import contextlib, io, json, sys
    from arca_sweep.main import cli
    from transformers import PreTrainedModel
    loads = []  # every checkpoint load: none may happen
    PreTrainedModel.from_pretrained = classmethod(lambda cls, *a, **k: loads.append(a))
    out = []
    for args, run_dir in json.loads(sys.argv[1]):
        sys.argv = ["arca_sweep", *args, f"hydra.run.dir={run_dir}", "logger.progress=false"]
        err = io.StringIO()
        code = None
        with contextlib.redirect_stderr(err):
            try:
                cli()
            except SystemExit as e:
                code = e.code
        out.append({"code": code, "stderr": err.getvalue()})
    # no case got as far as a run: no weights loaded, the modules that run steps never imported
    loaded = [m for m in RUN_MODULES if m in sys.modules]
    print(json.dumps({"cases": out, "run_modules": loaded, "loads": len(loads)}))
    """
)


def test_table_has_the_issue_cases_and_enough_rows():
    assert len(CASES) >= 30
    keys = {args[0] for args, _ in CASES}
    for case in ("budget.eval_size=100000000", "credit.layer=99", "optim.betas=[1.5,0.9]", "seed=-1"):
        assert case in keys
    assert "rank.target_modules=[foo_proj]" in keys and "+foo=1" in keys


def test_every_bad_override_fails_fast_naming_the_key(tmp_path):
    table = [(args, str(tmp_path / f"case{i}")) for i, (args, _) in enumerate(CASES)]
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(table)],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["run_modules"] == [] and report["loads"] == 0, f"a case got as far as a run: {report}"
    for (args, expected), (_, run_dir), case in zip(CASES, table, report["cases"], strict=True):
        where = f"{args}: {case['stderr']}"
        assert case["code"] == 2, where
        assert case["stderr"].startswith("error: invalid config:"), where
        for text in expected:
            assert text in case["stderr"], (text, where)
        assert "Traceback" not in case["stderr"], where
        assert not Path(run_dir).exists(), f"{args}: the run dir was created"


def test_separate_processes_fail_before_anything_is_written(tmp_path):
    """Real ``python -m arca_sweep`` processes, in parallel: a run, and ``--cfg job`` (which runs nothing);
    ``-X importtime`` lists every module each imported, and no model module is among them."""
    cases = [["rank.target_modules=[q_proj,lm_head]"], ["credit.layer=99", "--cfg", "job"]]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-X",
                "importtime",
                "-m",
                "arca_sweep",
                *args,
                f"hydra.run.dir={tmp_path / str(i)}",
            ],
            cwd=tmp_path,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, args in enumerate(cases)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for args, proc, (stdout, log) in zip(cases, procs, outputs, strict=True):
        imported = {
            line.rsplit("|", 1)[1].strip() for line in log.splitlines() if line.startswith("import time:")
        }
        stderr = "\n".join(line for line in log.splitlines() if not line.startswith("import time:"))
        assert "arca_sweep.main" in imported, log[-3000:]
        assert not imported & set(RUN_MODULES), (args, sorted(imported & set(RUN_MODULES)))
        assert "Loading weights" not in stderr, (args, stderr)
        assert proc.returncode == 2, (args, stderr)
        assert args[0].lstrip("+").split("=")[0].split("[")[0] in stderr, (args, stderr)
        assert "Traceback" not in stderr and stdout == "", (args, stderr)
    assert not any((tmp_path / str(i)).exists() for i in range(len(cases)))


def test_traceback_on_request(tmp_path):
    env = cli_env(traceback=True)
    proc = cli(
        "seed=-1",
        f"hydra.run.dir={tmp_path / 'arm'}",
        cwd=tmp_path,
        quiet=False,
        check=False,
        timeout=120,
        env=env,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "seed=-1" in proc.stderr


def test_lora_targets_are_matched_like_peft_against_the_meta_built_architecture():
    from arca_sweep.model import TINY_PATH
    from arca_sweep.preflight import lora_target_names, target_module_errors

    names = lora_target_names(str(TINY_PATH / "config.json"))
    assert "model.layers.0.self_attn.q_proj" in names and "lm_head" in names
    # a target matches a module named exactly so, or ending in ".<target>" (peft's rule for a list)
    assert target_module_errors(["q_proj", "self_attn.v_proj", "layers.3.mlp.down_proj"], names) == []
    (typo,) = target_module_errors(["q_prj"], names)
    assert "'q_prj' matches no module" in typo and "q_proj" in typo and "lm_head" not in typo
    (head,) = target_module_errors(["lm_head"], names)
    assert "not supported" in head and "base weight" in head
    (embed,) = target_module_errors(["model.embed_tokens"], names)
    assert "not supported" in embed and "tied" in embed
