"""The report's generation budget: what each arm generated, kept or dropped, and whether the arms of a
sweep spent the same (``budget.dynamic_sampling`` makes an arm that drops more groups generate more;
arca_sweep/sampling.py)."""

from __future__ import annotations

from arca_sweep.report.data import Arm


def generated(arm: Arm) -> tuple[int | None, int | None, int]:
    """(rollouts, response tokens, groups dropped) summed over the arm's steps; None where its records
    predate the count (``rollout/generated_*``)."""
    steps = arm.steps
    counted = [r for r in steps if "rollout/generated_rollouts" in r]
    if not steps or len(counted) < len(steps):
        return None, None, 0
    rollouts = sum(int(r["rollout/generated_rollouts"]) for r in counted)
    tokens = sum(int(r["rollout/generated_tokens"]) for r in counted)
    dropped = sum(int(r.get("sampling/groups_dropped", 0)) for r in counted)
    return rollouts, tokens, dropped


def budget_section(arms: list[Arm]) -> list[str]:
    """One row per arm, then a flag when the arms' generated rollouts differ."""
    from arca_sweep.report.markdown import table

    rows, counts = [], {}
    for arm in arms:
        rollouts, tokens, dropped = generated(arm)
        dynamic = bool(arm.config.get("budget", {}).get("dynamic_sampling", False))
        rows.append(
            [
                f"`{arm.name}`",
                str(len(arm.steps)),
                "-" if rollouts is None else f"{rollouts:,}",
                "-" if tokens is None else f"{tokens:,}",
                str(dropped) if dynamic else "-",
            ]
        )
        if rollouts is not None:
            counts[arm.name] = rollouts
    out = [
        "## Generation budget (finished arms)",
        "",
        table(["arm", "steps", "rollouts generated", "response tokens generated", "groups dropped"], rows),
        "",
        "Every rollout each arm generated, kept or not (`rollout/generated_rollouts`, `rollout/generated_tokens`"
        " summed over its steps); groups dropped: zero-spread groups refilled under `budget.dynamic_sampling`.",
        "",
    ]
    unknown = [arm.name for arm in arms if arm.name not in counts]
    if unknown and counts:
        out += [
            f"Budget unknown for {len(unknown)} arm{'s' if len(unknown) > 1 else ''} (records without "
            f"`rollout/generated_*`: {', '.join(f'`{n}`' for n in unknown)}): whether the budgets match "
            "cannot be read from them.",
            "",
        ]
    if len(set(counts.values())) > 1:
        low, high = min(counts.values()), max(counts.values())
        most = [name for name, n in counts.items() if n == high]
        out += [
            f"**Budgets differ**: the arms generated {low:,} to {high:,} rollouts ({high / low - 1:+.0%}; most: "
            f"{', '.join(f'`{n}`' for n in most)}). Their comparison is not at matched generation cost: "
            "read it with each arm's budget above.",
            "",
        ]
    return out
