"""An arm's console output, fit for a terminal and for a file (a SLURM or CI log, ``> log``).

On a terminal with ``logger.progress=true``: a live tqdm bar. Otherwise one log line every
``logger.progress_every`` steps (and at least every ``logger.progress_every_s`` seconds, and at the last
step) with the step, reward, Gini and the latest eval accuracy: a bar's ``\\r`` refreshes are
hundreds of lines in a file. Either way the arm starts and ends with one line naming its dir; the
closing line holds its final numbers.

:func:`quiet_libraries` turns known library noise down to INFO (transformers' weight-loading bars,
vLLM's start-up chatter and its warnings that do not apply to how this project drives it).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from pathlib import Path

from arca_sweep.arm_dir import METRICS, read_jsonl

log = logging.getLogger("arca_sweep.train")

# vLLM warnings that are expected with how arca_sweep drives the engine (rollout/vllm.py), logged at INFO:
VLLM_EXPECTED = (
    "Failed to load weights",  # merged sync reloads only the adapted layers; the others keep their weights
    "doesn't allow to use `torch.set_num_threads`",  # project_state_kept restores the learner's threads
    "The global random seed is set to",  # project_state_kept restores the project's RNG states
    "is not found in LD_PRELOAD",  # tcmalloc/iomp: a speed hint for CPU serving
    "Triton is not installed",
    "Triton is installed, but doesn't include CPU backend",
    "Model Runner V2 requires Triton",
    "Reset SSM cache type",  # no SSM layers in these models
    "is already registered. Overwriting",  # a second engine in one process (bench, tests) re-registers kernels
    "Unknown vLLM environment variable detected: VLLM_DIST_IDENT",  # vLLM sets it itself for its first engine
    "different tokenizers for different LoRAs",  # adapter sync passes no tokenizer of its own
)


def is_terminal() -> bool:
    return sys.stdout.isatty() and sys.stderr.isatty()


class Progress:
    """Progress of one arm over steps ``start+1 .. total``: :meth:`update` after every step. Not live:
    a first line naming the arm dir, then the progress lines."""

    def __init__(
        self,
        out_dir: Path,
        start: int,
        total: int,
        live: bool,
        every: int,
        every_s: float,
        clock=time.monotonic,
    ):
        name = out_dir.name
        self.name, self.total, self.every, self.every_s, self.clock = name, total, every, every_s, clock
        self.started = self.last_line = clock()
        self.start = start
        self.accuracy = latest_eval(out_dir / METRICS)  # (step, eval accuracy) of the latest eval
        self.bar = None
        if live:
            from tqdm.auto import tqdm

            self.bar = tqdm(initial=start, total=total, desc=name[:40], dynamic_ncols=True)
        else:
            log.info("arm %s: steps %d..%d", name, start + 1, total)  # its dir: in the closing line

    def update(self, step: int, metrics: dict) -> None:
        if metrics.get("eval/accuracy") is not None:
            self.accuracy = (step, metrics["eval/accuracy"])
        reward, gini = metrics.get("reward/mean"), metrics.get("credit/gini/mean")
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(
                reward=_num(reward, 2), gini=_num(gini, 2), acc=_num(self.accuracy and self.accuracy[1], 3)
            )
            return
        now = self.clock()
        due = step == self.total or (self.every > 0 and step % self.every == 0)
        if not (due or (self.every_s > 0 and now - self.last_line >= self.every_s)):
            return
        self.last_line = now
        per_step = (now - self.started) / max(step - self.start, 1)
        acc = "-"
        if self.accuracy is not None:
            acc = _num(self.accuracy[1], 3) + (
                "" if self.accuracy[0] == step else f" (step {self.accuracy[0]})"
            )
        log.info(  # no arm name: the arm's first line names it, and each arm's lines come in one run
            "step %d/%d: reward %s, gini %s, eval acc %s | %.2f s/step, %s left",
            step,
            self.total,
            _num(reward, 3),
            _num(gini, 3),
            acc,
            per_step,
            _duration(per_step * (self.total - step)),
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def latest_eval(metrics_path: Path) -> tuple[int, float] | None:
    """``(step, eval/accuracy)`` of the last eval in an arm's ``metrics.jsonl`` (the step-0 eval of a
    fresh run, or the last one before a resume), or None."""
    if not metrics_path.is_file():
        return None
    found = None
    for r in read_jsonl(metrics_path, bad_lines="torn"):
        if r.get("eval/accuracy") is not None:
            found = (r["step"], r["eval/accuracy"])
    return found


def closing_line(out_dir: Path, summary: dict) -> str:
    """One line: the arm, its final numbers, its dir."""
    means = summary.get("run_means", {})
    return (
        f"arm {out_dir.name} finished: {summary['steps']} step{'' if summary['steps'] == 1 else 's'} "
        f"in {_duration(summary['wall_s'])}; "
        f"eval acc {_num(summary.get('eval/accuracy_initial'), 3)} -> {_num(summary.get('eval/accuracy_final'), 3)}, "
        f"reward {_num(means.get('reward/mean'), 3)}, gini {_num(means.get('credit/gini/mean'), 3)}, "
        f"etr {_num(means.get('credit/etr/mean'), 3)}; results in {out_dir}"
    )


def skip_line(out_dir: Path, summary: dict) -> str:
    """A finished arm met again (a relaunched sweep): one line, not its summary."""
    return (
        f"arm already finished, skipping: {out_dir} (eval acc {_num(summary.get('eval/accuracy_initial'), 3)} -> "
        f"{_num(summary.get('eval/accuracy_final'), 3)}; summary.json)"
    )


class _ExpectedVllmWarnings(logging.Filter):
    """A handler filter: the warnings of :data:`VLLM_EXPECTED` become INFO records, shown only when
    vLLM's level admits INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno == logging.WARNING
            and record.name.startswith("vllm")
            and any(text in record.getMessage() for text in VLLM_EXPECTED)
        ):
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger("vllm").isEnabledFor(logging.INFO)
        return True


def quiet_libraries() -> None:
    """Library noise off or down to INFO; real warnings stay. Call once logging is set up (Hydra's
    handlers on the root logger) and before the model and engine load.

    - transformers: no "Loading weights" progress bars.
    - vLLM: its records go through the app's handlers (``VLLM_CONFIGURE_LOGGING=0``: one format, and
      into the arm's log file), at level ``VLLM_LOGGING_LEVEL`` (default here: WARNING, not vLLM's
      INFO start-up chatter), with the warnings of :data:`VLLM_EXPECTED` demoted to INFO. Setting
      either variable yourself wins.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.reduce_op` is deprecated")
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    logging.getLogger("vllm").setLevel(os.environ.get("VLLM_LOGGING_LEVEL", "WARNING").upper())
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _ExpectedVllmWarnings) for f in handler.filters):
            handler.addFilter(_ExpectedVllmWarnings())


def _num(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}:{seconds:02d} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d} h"
