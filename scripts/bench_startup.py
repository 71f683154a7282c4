"""How fast the guards answer: bad overrides through ``python -m arca_sweep``, a second run refused by the
lock, and the grader cutting hostile answers. Prints times; asserts nothing (the tests assert the facts:
no weights loaded, no run dir written, the hang stopped by its worker's CPU limit).

    python scripts/bench_startup.py [--repeats 3]

- ``bad override``: wall and CPU seconds of one failing ``python -m arca_sweep <override>`` process
  (interpreter start-up, composition, validation, the LoRA-target preflight).
- ``extract_boxed``: seconds to scan 2 MB of text and 10,000-deep braces.
- ``hostile grade``: wall seconds of each answer that hangs sympy until its worker's CPU limit (2.5 s).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from arca_sweep.grade import Grader, extract_boxed  # noqa: E402

BAD_OVERRIDES = [
    ["credit.normalize=softmaxx"],
    ["rank.target_modules=[q_proj,lm_head]"],
    ["budget.eval_size=100000000"],
    ["+foo=1"],
]
HANGING = ["\\boxed{9^{9^{9^{9^{9}}}}}", "\\boxed{10^{10^{10^{10}}}}"]


def bad_override(args: list[str], run_dir: Path) -> tuple[float, float, int]:
    """Wall s, CPU s (user + system) and exit code of one failing CLI process."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("ARCA_TRACEBACK", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "arca_sweep", *args, f"hydra.run.dir={run_dir}"],
        env=env,
        capture_output=True,
        timeout=600,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, cpu, proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for overrides in BAD_OVERRIDES:
            for i in range(args.repeats):
                wall, cpu, code = bad_override(overrides, Path(tmp) / f"arm{i}")
                print(f"bad override {' '.join(overrides):<40} exit={code} wall_s={wall:.2f} cpu_s={cpu:.2f}")

    start = time.perf_counter()
    extract_boxed("x" * 10**6 + "\\boxed{7}" + "y" * 10**6)
    extract_boxed("\\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}")
    print(f"extract_boxed 2 MB + 10,000-deep: {time.perf_counter() - start:.3f} s")

    with Grader(workers=2, timeout_s=2.5) as grader:
        start = time.perf_counter()
        results = grader.grade([(text, "5") for text in HANGING])
        total = time.perf_counter() - start
    for text, result in zip(HANGING, results, strict=True):
        print(f"hostile grade {text:<28} status={result.status} wall_s={result.seconds:.2f}")
    print(f"hostile grade total wall_s={total:.2f} (limit 2.5 s of CPU each, 2 workers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
