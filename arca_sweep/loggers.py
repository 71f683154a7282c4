"""Where metrics go. ``metrics.jsonl`` in the arm's output dir is always written first: one JSON
object per step, each step exactly once (:mod:`arca_sweep.arm_dir` owns it); then the tracker, if any.

Metric namespace (stable; see README "Metrics"):
``reward/*``, ``loss``, ``grad_norm``, ``data/batch_hash``, ``credit/*`` (the training signal's
weights), ``shadow/<signal>/*`` (every signal's weights from the same passes), ``rollout/*``,
``perf/*``, ``eval/*``.
"""

from __future__ import annotations

import uuid
import warnings
from pathlib import Path

from arca_sweep.arm_dir import WANDB_RUN_ID, atomic_write, json_safe

RUN_MEAN_PREFIX = "run_mean/"
NAME_FREE_KEYS = {"seed", "threads", "device"}  # with logger*: not in a W&B run's name


class WandbTracker:
    """``logger=wandb``: the arm as one W&B run, next to (never instead of) ``metrics.jsonl``.

    ``group`` is the sweep (``<experiment>/<sweep dir name>``, or the dir name alone without an
    experiment preset, unless ``logger.group`` is set), ``name`` the arm's overrides without the seed
    and the keys that cannot change results (``logger.*``, ``threads``, ``device``), tags ``model=/rank=/credit=/budget=``, ``config`` the resolved config, and an
    ``id`` kept in the arm dir (``wandb_run_id.txt``, beside the checkpoint) with ``resume="allow"``,
    so a requeued or relaunched arm continues the same W&B run. At the end the run means go under
    ``run_mean/...`` (never over the per-step keys). Offline unless ``logger.mode=online``;
    when W&B cannot be reached the run warns once and continues offline, losing nothing.
    """

    def __init__(
        self, logger_cfg, out_dir: Path, config: dict, name: str, group: str | None, tags: list[str]
    ):
        import wandb

        self.wandb = wandb
        id_file = out_dir / WANDB_RUN_ID
        if not id_file.exists():
            atomic_write(id_file, uuid.uuid4().hex[:12] + "\n")
        kwargs = dict(
            project=logger_cfg.project,
            entity=logger_cfg.entity,
            group=logger_cfg.group or group,
            name=name,
            tags=tags,
            job_type=logger_cfg.job_type,
            config=config,
            id=id_file.read_text().strip(),
            resume="allow",
            dir=str(out_dir),
            reinit="finish_previous",
        )
        self.run = self._init(kwargs, logger_cfg.mode, logger_cfg.init_timeout_s)
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def _init(self, kwargs: dict, mode: str, timeout_s: float):
        settings = self.wandb.Settings(init_timeout=timeout_s, silent=True)
        try:
            return self.wandb.init(mode=mode, settings=settings, **kwargs)
        except Exception as e:  # unreachable server, no API key, ...: keep going offline
            if mode != "online":
                raise
            warnings.warn(
                f"W&B online init failed ({type(e).__name__}: {e}); continuing offline. "
                f"Upload later with `wandb sync {kwargs['dir']}/wandb/offline-run-*`.",
                stacklevel=2,
            )
            self.wandb.teardown()  # the failed online attempt still holds the run id in wandb's service
            return self.wandb.init(mode="offline", settings=settings, **kwargs)

    def log(self, metrics: dict) -> None:
        self.run.log({k: json_safe(v) for k, v in metrics.items() if not isinstance(v, str)})

    def log_samples(self, step: int, samples: list[dict]) -> None:
        """A bounded table of sample rollouts, each rendered as a token-weight heatmap."""
        from arca_sweep.heatmap import sample_html

        table = self.wandb.Table(columns=["step", "row", "reward", "advantage", "question", "weights"])
        for s in samples:
            table.add_data(
                step, s["row"], s["reward"], s["advantage"], s["question"], self.wandb.Html(sample_html(s))
            )
        self.run.log({"samples/rollouts": table, "step": step})

    def finish(self, summary: dict) -> None:
        """The arm's summary (its config is the run's W&B config already); its run means under
        ``run_mean/<key>``, apart from the per-step keys,
        whose summary stays W&B's default: the last logged value."""
        self.run.summary.update({k: v for k, v in summary.items() if k not in ("run_means", "config")})
        self.run.summary.update({f"{RUN_MEAN_PREFIX}{k}": v for k, v in summary.get("run_means", {}).items()})
        self.run.finish()


def build_tracker(
    logger_cfg, out_dir: Path, config: dict, overrides: list[str], sweep_dir: str | None, choices: dict
) -> WandbTracker | None:
    """The optional experiment tracker named by ``logger.name`` (``jsonl`` has none)."""
    if logger_cfg.name == "jsonl":
        return None
    name = ",".join(sorted(o for o in overrides if not _name_free(o.lstrip("+~").split("=")[0]))) or "default"
    tags = [f"{g}={choices[g]}" for g in ("model", "rank", "credit", "budget") if g in choices]
    return WandbTracker(
        logger_cfg, out_dir, config, name=name, group=default_group(config, sweep_dir), tags=tags
    )


def _name_free(key: str) -> bool:
    return key in NAME_FREE_KEYS or key == "logger" or key.startswith("logger.")


def default_group(config: dict, sweep_dir: str | None) -> str | None:
    """``<experiment>/<sweep dir name>`` (either alone when the other is missing); None for neither."""
    parts = [p for p in (config.get("experiment"), Path(sweep_dir).name if sweep_dir else None) if p]
    return "/".join(str(p) for p in parts) or None
