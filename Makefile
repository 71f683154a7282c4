# make demo   set up .venv on first use, then run the demo sweep (five credit signals, tiny model, CPU)
# make test   set up .venv on first use, then run the whole test suite
# make lint   ruff check + format check
# GPU machines: make venv TORCH_SPEC=torch   (PyPI's default CUDA build instead of the CPU pin)

VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv demo smoke test test-fast lint format model clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(PY) -m arca_sweep experiment=demo -m

smoke: venv
	$(PY) -m arca_sweep credit=arca,entropy,surprisal rank=8,16 budget=smoke -m

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check arca_sweep tests scripts

format: venv
	$(VENV)/bin/ruff format arca_sweep tests scripts
	$(VENV)/bin/ruff check --fix .

model: venv
	$(PY) scripts/build_tiny_model.py

clean:
	rm -rf outputs/runs outputs/multirun
