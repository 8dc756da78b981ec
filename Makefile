# Two commands on a fresh machine: `make analyze` (the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install analyze test bench bench-run bench-gpu gpu-identities timings clean browser

$(STAMP): pyproject.toml
	@echo "setting up $(VENV): a virtual environment, torch 2.13.0 (CPU build), then mllm-arb with its dev extra (a few minutes, once)"
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the pinned CPU build first: an unpinned torch pulls gigabytes of CUDA packages
	@echo "installing torch 2.13.0 (CPU build)"
	$(BIN)/pip install -q torch==2.13.0
	@echo "installing mllm-arb and its dependencies (transformers, hydra, datasets, matplotlib, pytest, ...)"
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)
	@echo "$(VENV) is ready"

install: $(STAMP)

analyze: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/mllm-arb analyze

# two workers, each test file on one of them (its module fixtures load each tiny model once)
test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile

# measured ratios of the fast paths against the straightforward ones (benchmarks/, docs/performance.md); < 10 min on 2 cores
bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.run

# the fast paths' ratios in bfloat16 on random-weight 7B-shaped LLaVA and Qwen2.5-VL models; needs a CUDA device, < 8 min
# `mllm-arb run` before the speed work (f769875) and now, side by side in three alternating rounds
# (benchmarks/bench_run.py; about 25 minutes)
bench-run: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.bench_run --before f769875 --rounds 3

bench-gpu: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.gpu

# every family's correctness identities in bfloat16 on a GPU (benchmarks/gpu_identities.py; under a minute)
gpu-identities: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.gpu_identities

# the wall times the docs quote, in one go, into docs/timings.md (benchmarks/timings.py); about 15 min on 2 idle cores
timings: $(STAMP) browser
	$(BIN)/python -m benchmarks.timings

# headless Chromium for the report's browser tests (tests/report/test_report.py); best effort: where it cannot
# be installed (no apt-get, no root or password-less sudo) that test is skipped and says why
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }; } || \
	echo "warning: could not install Chromium (apt-get chromium); the report's browser test will be skipped"

clean:
	rm -rf $(VENV)
